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


class VIEW3D_PT_iscene(bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "I-Scene"
    bl_label = "I-Scene"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.iscene
        icon, text = health_line(context)
        row = layout.row()
        row.label(text=text, icon=icon)
        row.operator("iscene.check_server", text="", icon="FILE_REFRESH")

        box = layout.box()
        row = box.row(align=True)
        row.prop(settings, "image")
        row.operator("iscene.use_active_image", text="", icon="EYEDROPPER")
        row = box.row(align=True)
        row.prop(settings, "labels")
        row.operator("iscene.load_label_map", text="", icon="FILEBROWSER")
        if settings.labels is not None:
            box.label(text=f"{label_count(settings.labels)} instances in the label map")
        col = box.column(align=True)
        col.prop(settings, "seed")
        col.prop(settings, "steps")
        col.prop(settings, "detail")
        col.prop(settings, "scene_size")
        box.operator("iscene.generate", icon="SCENE_DATA")

        self.draw_jobs(layout)
        self.draw_edit(context, layout, settings)

    @staticmethod
    def draw_jobs(layout):
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

    @staticmethod
    def draw_edit(context, layout, settings):
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


def register():
    bpy.utils.register_class(VIEW3D_PT_iscene)


def unregister():
    bpy.utils.unregister_class(VIEW3D_PT_iscene)
