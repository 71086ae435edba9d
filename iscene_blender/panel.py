"""The sidebar panel (View3D > Sidebar > I-Scene). Drawing never waits on the network: it only reads the
runtime state, and at most asks a worker thread for fresh server health."""

from __future__ import annotations

import time

import bpy

from . import importer
from .preferences import client, network_problem, preferences
from .props import label_count
from .pump import HEALTH_EVERY, RUNTIME, ensure_timer

STATE_ICONS = {"submitting": "EXPORT", "queued": "SORTTIME", "running": "PLAY", "downloading": "IMPORT",
               "importing": "IMPORT", "succeeded": "CHECKMARK", "failed": "ERROR", "cancelled": "CANCEL"}
MAX_LISTED_JOBS = 8


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(round(seconds))
    return f" · ETA {seconds // 60}:{seconds % 60:02d}"


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


def draw_health(context, layout) -> None:
    icon, text = health_line(context)
    row = layout.row()
    row.label(text=text, icon=icon)
    row.operator("iscene.check_server", text="", icon="FILE_REFRESH")


def draw_masks(layout, settings) -> None:
    """Segmenting: annotate boxes/dots on the image, then Segment; or Auto-segment; and the overlay."""
    col = layout.column(align=True)
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


def draw_inputs(layout, settings) -> None:
    box = layout.box()
    row = box.row(align=True)
    row.prop(settings, "image")
    row.operator("iscene.use_active_image", text="", icon="EYEDROPPER")
    row = box.row(align=True)
    row.prop(settings, "labels")
    row.operator("iscene.load_label_map", text="", icon="FILEBROWSER")
    if settings.labels is not None:
        box.label(text=f"{label_count(settings.labels)} instances in the label map")
    draw_masks(box, settings)
    col = box.column(align=True)
    col.prop(settings, "seed")
    col.prop(settings, "steps")
    col.prop(settings, "detail")
    col.prop(settings, "scene_size")
    box.operator("iscene.generate", icon="SCENE_DATA")


def draw_jobs(layout) -> None:
    """The recent jobs: state, progress with stage, step and ETA, Cancel / Retry / Open Results Folder, errors."""
    jobs = list(RUNTIME.jobs.values())[-MAX_LISTED_JOBS:][::-1]
    if not jobs:
        return
    box = layout.box()
    box.label(text="Jobs")
    for job in jobs:
        row = box.row(align=True)
        row.label(text=f"{job.kind} {job.title}", icon=STATE_ICONS.get(job.state, "DOT"))
        if job.active:
            row.operator("iscene.cancel", text="", icon="X").key = job.key
            stage = job.stage or job.state
            steps = f" {job.step}/{job.total}" if job.total else ""
            queued = f" (#{job.queue_position} in queue)" if job.queue_position else ""
            box.progress(text=f"{stage}{steps}{queued}{_clock(job.eta_s)}", factor=job.progress, type="BAR")
            continue
        row.operator("iscene.retry", text="", icon="FILE_REFRESH").key = job.key
        row.operator("iscene.open_folder", text="", icon="FILE_FOLDER").key = job.key
        if job.state in ("failed", "cancelled") and job.message:
            col = box.column(align=True)
            col.label(text=job.message, icon="INFO")
            if job.hint:
                col.label(text=job.hint)
            col.operator("iscene.copy_error", icon="COPYDOWN").key = job.key


def draw_edit(context, layout, settings) -> None:
    """Regenerate, lock and refine for the active generated object."""
    obj = context.active_object
    if obj is None or importer.LABEL not in obj:
        return
    box = layout.box()
    box.label(text=f"{obj.name}: label {obj[importer.LABEL]}, seed {obj.get('iscene_seed')}")
    box.prop(obj, "iscene_locked")
    box.operator("iscene.regenerate", icon="FILE_REFRESH")
    col = box.column(align=True)
    col.prop(settings, "strength")
    col.prop(settings, "refine_selected")
    col.operator("iscene.refine", icon="MOD_SMOOTH")


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
        draw_inputs(self.layout, settings)
        draw_jobs(self.layout)
        draw_edit(context, self.layout, settings)


class IMAGE_PT_iscene(SidebarPanel, bpy.types.Panel):
    """The same inputs where the artist draws the prompts and paints the label map."""

    bl_space_type = "IMAGE_EDITOR"

    def draw(self, context):
        draw_health(context, self.layout)
        draw_inputs(self.layout, context.scene.iscene)
        draw_jobs(self.layout)


CLASSES = (VIEW3D_PT_iscene, IMAGE_PT_iscene)

register, unregister = bpy.utils.register_classes_factory(CLASSES)
