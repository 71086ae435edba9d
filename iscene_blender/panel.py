"""The sidebar panels (3D View and Image Editor > Sidebar > I-Scene) and the preferences' layout. Drawing never
waits on the network and reads no pixels: it shows the runtime state and the last label-map count, and at most
asks a worker thread for fresh server health."""

from __future__ import annotations

import time

import bpy

from . import context_objects, history, provenance, wording
from .client import is_loopback, normalise_url
from .preferences import client, network_problem, preferences
from .props import label_stats
from .pump import HEALTH_EVERY, RUNTIME, ensure_timer
from .server import LocalServer

STATE_ICONS = {"waiting": "TIME", "submitting": "EXPORT", "queued": "SORTTIME", "running": "PLAY",
               "downloading": "IMPORT", "importing": "IMPORT", "succeeded": "CHECKMARK", "failed": "ERROR",
               "cancelled": "CANCEL"}
MAX_LISTED_JOBS = 8


def health_line(context) -> tuple[str, str]:
    """(icon, text) of the server badge; refreshes health in the background when stale."""
    problem = network_problem(preferences(context).server_url)
    if problem:
        return "ERROR", problem
    if time.time() - RUNTIME.health_checked > HEALTH_EVERY:
        RUNTIME.check_health(client(context))
        ensure_timer()
    error, health = RUNTIME.health_error, RUNTIME.health
    if error is not None:
        labels = {"unreachable": "Server not reachable", "timeout": "Server not answering",
                  "wrong_service": "Not an I-Scene server at this URL",
                  "unauthorized": "Token rejected: set the server's token in the preferences"}
        return "ERROR", labels.get(error.kind, error.message)
    if health is None:
        return "QUESTION", "Checking the server…"
    if health["state"] == "loading":
        return "TIME", f"Loading: {health['message']}"
    if health["state"] == "error":
        return "ERROR", f"Model failed to load: {health['message']}"
    device = health["device"]
    if health.get("vram"):
        device = f"{health['vram']['name']}, {health['vram']['free_mb'] // 1024} GB free"
    model = (health.get("models") or {}).get("model_name", health["model"])
    return "CHECKMARK", f"Ready: {model} on {device}"


def width_px(context) -> float:
    region = getattr(context, "region", None)
    return float(region.width) if region is not None else 300.0


def wrapped(layout, context, text: str, icon: str = "NONE") -> None:
    """``text`` as labels that fit the sidebar (the first one with ``icon``)."""
    col = layout.column(align=True)
    scale = context.preferences.view.ui_scale
    for i, line in enumerate(wording.wrap(text, width_px(context), scale)):
        col.label(text=line, icon=icon if i == 0 else "BLANK1" if icon != "NONE" else "NONE")


def draw_health(context, layout) -> None:
    icon, text = health_line(context)
    row = layout.row()
    row.label(text=text.split(":")[0] if icon == "ERROR" and len(text) > 40 else text, icon=icon)
    row.operator("iscene.check_server", text="", icon="FILE_REFRESH")
    if icon == "ERROR" and len(text) > 40:
        wrapped(layout, context, text)


def draw_label_names(layout, settings) -> None:
    stats = label_stats(settings.labels)
    present = set(stats.ids) if stats is not None else set()
    box = layout.column(align=True)
    for entry in settings.label_names:
        if entry.label in present:
            box.prop(entry, "name", text=f"Object {entry.label}")


def draw_inputs(context, layout, settings) -> None:
    box = layout.box()
    row = box.row(align=True)
    row.prop(settings, "image")
    row.operator("iscene.use_active_image", text="", icon="EYEDROPPER")
    row = box.row(align=True)
    row.prop(settings, "labels")
    row.operator("iscene.load_label_map", text="", icon="FILEBROWSER")
    if settings.labels is not None:
        stats = label_stats(settings.labels)
        row = box.row()
        if stats is None:
            row.label(text="Counting the objects…", icon="TIME")
        else:
            icon = "ERROR" if stats.count == 0 else "OBJECT_DATA"
            row.label(text=f"{wording.plural(stats.count, 'object')} in the label map", icon=icon)
            row.prop(settings, "show_names", text="", icon="SORTALPHA")
        if settings.show_names:
            draw_label_names(box, settings)
    col = box.column(align=True)
    col.prop(settings, "seed")
    col.prop(settings, "steps")
    col.prop(settings, "detail")
    col.prop(settings, "room_width")
    col.prop(settings, "make_camera_active")
    col.prop(settings, "layout_only")
    box.operator("iscene.generate", icon="SCENE_DATA")


def draw_masks(layout, settings) -> None:
    """Segmenting (Image Editor only: it reads the annotations drawn there): Segment or Auto-segment, overlay."""
    box = layout.box()
    col = box.column(align=True)
    row = col.row(align=True)
    row.operator("iscene.segment", icon="SELECT_SET").mode = "PROMPTS"
    row.operator("iscene.segment", text="Auto-segment", icon="AUTO").mode = "AUTO"
    col.prop(settings, "points_per_side")
    segment = (RUNTIME.health or {}).get("segment") or {}
    if segment and not segment.get("available"):
        col.label(text="The server cannot segment: pip install iscene-server[segment]", icon="ERROR")
    row = col.row(align=True)
    row.prop(settings, "show_overlay", text="Overlay")
    row.prop(settings, "overlay_opacity", slider=True)


def draw_jobs(context, layout) -> None:
    """The history: progress with the stage in artist words and ETA, Cancel / Retry / Re-import / folder /
    Remove, errors with their hints."""
    records = history.visible(context.scene)[:MAX_LISTED_JOBS]
    box = layout.box()
    row = box.row(align=True)
    row.label(text="Jobs")
    row.operator("iscene.refresh_jobs", text="", icon="FILE_REFRESH")
    row.operator("iscene.clear_jobs", text="", icon="TRASH")
    for record in records:
        job = RUNTIME.jobs.get(record.key)
        state = job.state if job is not None else record.state
        row = box.row(align=True)
        row.label(text=record.title, icon=STATE_ICONS.get(state, "DOT"))
        if job is not None and job.active:
            row.operator("iscene.cancel", text="", icon="X").key = job.key
            box.progress(text=wording.progress_text(job.state, job.stage, job.step, job.total, job.queue_position,
                                                    job.eta_s, job.after), factor=job.progress, type="BAR")
            continue
        if job is not None:
            row.operator("iscene.retry", text="", icon="FILE_REFRESH").key = job.key
        if state == "succeeded" and record.kind != "segment":
            row.operator("iscene.reimport", text="", icon="IMPORT").key = record.key
        row.operator("iscene.open_folder", text="", icon="FILE_FOLDER").key = record.key
        row.operator("iscene.remove_job", text="", icon="X").key = record.key
        if state == "failed":
            wrapped(box, context, record.message or "Failed", icon="ERROR")
            if record.hint:
                wrapped(box, context, record.hint)
            box.operator("iscene.copy_error", icon="COPYDOWN").key = record.key
        elif state == "cancelled":
            box.label(text="Cancelled", icon="CANCEL")


def draw_candidate(context, layout) -> None:
    """The active variant candidate: keep it or discard them all."""
    obj = context.active_object
    box = layout.box()
    original = provenance.original_of(obj)
    box.label(text=f"Candidate {obj[provenance.CANDIDATE_INDEX]} of {original.name if original else 'a deleted object'}"
                   f", seed {obj[provenance.CANDIDATE_SEED]}", icon="OUTLINER_OB_GROUP_INSTANCE")
    row = box.row(align=True)
    row.operator("iscene.keep_variant", icon="CHECKMARK")
    row.operator("iscene.discard_variants", icon="X")


def draw_edit(context, layout, settings) -> None:
    """The selected objects of a generated scene: seed, lock, Regenerate, Refine, Build Meshes (a layout),
    Variants, real size, camera."""
    if provenance.is_candidate(context.active_object):
        draw_candidate(context, layout)
        return
    root, selected = provenance.selected_scene(context)
    if root is None:
        return
    obj = context.active_object if provenance.is_instance(context.active_object) else (selected or [None])[0]
    box = layout.box()
    if obj is not None:
        box.label(text=f"{obj.name}: object {obj[provenance.LABEL]}", icon="OBJECT_DATA")
        row = box.row(align=True)
        row.prop(obj, "iscene_seed")
        row.operator("iscene.randomize_seed", text="", icon="FILE_REFRESH")
        box.prop(obj, "iscene_locked")
    if provenance.is_layout_scene(root):
        box.operator("iscene.build_meshes", icon="MESH_DATA")
    box.operator("iscene.regenerate", icon="FILE_REFRESH")
    row = box.row(align=True)
    row.operator("iscene.variants", icon="OUTLINER_OB_GROUP_INSTANCE")
    if provenance.candidates_of(obj):
        row.operator("iscene.discard_variants", text="", icon="X")
    col = box.column(align=True)
    col.prop(settings, "strength")
    col.prop(settings, "refine_selected")
    own_meshes = context_objects.context_objects(context, root)
    if own_meshes:
        col.label(text=context_objects.context_line(own_meshes), icon="MESH_CUBE")
    col.operator("iscene.refine", icon="MOD_SMOOTH")
    box.operator("iscene.set_size", icon="FULLSCREEN_ENTER")
    camera = context.scene.camera
    if camera is not None and camera.get(provenance.SCENE) == root[provenance.SCENE]:
        render = context.scene.render
        box.label(text=f"Scene camera: {camera.name}, {render.resolution_x}×{render.resolution_y}", icon="CAMERA_DATA")


def draw_active_object(context, layout) -> None:
    """Use as Context for the active mesh when it is the artist's own (not a generated object or candidate)."""
    obj = context.active_object
    if obj is None or obj.type != "MESH" or provenance.is_instance(obj) or provenance.is_candidate(obj):
        return
    box = layout.box()
    box.label(text=f"Active Object: {obj.name}", icon="OBJECT_DATA")
    box.prop(obj, "iscene_context")
    if obj.iscene_context and not obj.visible_get(view_layer=context.view_layer):
        box.label(text="Hidden: Refine sends it only while visible", icon="HIDE_ON")


class SidebarPanel:
    """An "I-Scene" tab in an editor's sidebar."""

    bl_region_type = "UI"
    bl_category = "I-Scene"
    bl_label = "I-Scene"


class VIEW3D_PT_iscene(SidebarPanel, bpy.types.Panel):
    bl_space_type = "VIEW_3D"

    def draw(self, context):
        settings = context.scene.iscene
        draw_health(context, self.layout)
        draw_inputs(context, self.layout, settings)
        draw_active_object(context, self.layout)
        draw_edit(context, self.layout, settings)
        draw_jobs(context, self.layout)


class IMAGE_PT_iscene(SidebarPanel, bpy.types.Panel):
    """Where the artist draws the prompts and paints the label map."""

    bl_space_type = "IMAGE_EDITOR"

    def draw(self, context):
        settings = context.scene.iscene
        draw_health(context, self.layout)
        draw_masks(self.layout, settings)
        draw_inputs(context, self.layout, settings)
        draw_jobs(context, self.layout)


def draw_preferences(prefs, context) -> None:
    layout = prefs.layout
    layout.prop(prefs, "server_url")
    problem = network_problem(prefs.server_url)
    if problem:
        box = layout.box()
        wrapped(box, context, problem, icon="ERROR")
        if not bpy.app.online_access and "online access" in problem:
            box.operator("screen.userpref_show", text="Open System Preferences", icon="PREFERENCES").section = "SYSTEM"
    layout.prop(prefs, "token")
    row = layout.row()
    row.prop(prefs, "timeout")
    row.prop(prefs, "download_timeout")
    row.prop(prefs, "poll_interval")
    layout.prop(prefs, "download_limit_gb")
    box = layout.box()
    box.label(text="Local server (optional)")
    box.prop(prefs, "server_command")
    try:
        local = is_loopback(normalise_url(prefs.server_url))
    except ValueError:
        local = False
    if local:
        icon, text = LocalServer.state(ready=RUNTIME.health is not None and RUNTIME.health.get("state") == "ready")
        box.label(text=text, icon=icon)
    row = box.row()
    row.operator("iscene.start_server", icon="PLAY")
    row.operator("iscene.stop_server", icon="CANCEL")
    row.operator("iscene.open_log", icon="TEXT")


CLASSES = (VIEW3D_PT_iscene, IMAGE_PT_iscene)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
