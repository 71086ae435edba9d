"""The one place where results of network work become Blender data: :func:`pump_once` drains the event queue
on the main thread. A ``bpy.app.timers`` timer calls it while there is work; tests call it directly (timers do
not fire in the ``bpy`` module)."""

from __future__ import annotations

import queue
import time

import bpy

from . import importer, masks
from .jobs import SEGMENT_LABELS, Event, Job, Runtime

RUNTIME = Runtime()
INTERVAL = 0.2  # seconds between pumps while jobs run
HEALTH_EVERY = 10.0  # seconds between background health checks while the panel is shown


def tick() -> float | None:
    """Timer callback: pump, and keep the timer only while something is in flight."""
    pump_once()
    return INTERVAL if RUNTIME.any_active() or not RUNTIME.events.empty() else None


def ensure_timer() -> None:
    if not bpy.app.timers.is_registered(tick):
        bpy.app.timers.register(tick, first_interval=INTERVAL)


def shutdown() -> None:
    if bpy.app.timers.is_registered(tick):
        bpy.app.timers.unregister(tick)
    RUNTIME.stop()


def redraw() -> None:
    for window in getattr(bpy.context.window_manager, "windows", []):
        for area in window.screen.areas:
            if area.type in ("VIEW_3D", "IMAGE_EDITOR", "PREFERENCES"):
                area.tag_redraw()


def pump_once() -> int:
    """Apply every pending event; returns how many were applied."""
    count = 0
    while True:
        try:
            event = RUNTIME.events.get_nowait()
        except queue.Empty:
            break
        _apply(event)
        count += 1
    if count:
        redraw()
    return count


def _apply(event: Event) -> None:
    if event.kind == "health":
        RUNTIME.health = event.data.get("health")
        RUNTIME.health_error = event.data.get("error")
        return
    job = RUNTIME.jobs.get(event.key)
    if job is None:
        return
    if event.kind == "update":
        for name, value in event.data.items():
            setattr(job, name, value)
    elif event.kind in ("failed", "cancelled"):
        job.state = event.kind
        job.message, job.hint = event.data.get("message", ""), event.data.get("hint", "")
    elif event.kind == "finished":
        _finish(job, event.data["manifest"], event.data["files"])


def _finish(job: Job, manifest: dict, files: dict[str, bytes]) -> None:
    """Import (generate), update objects (regenerate, refine) or store a label map (segment), as one undo step."""
    job.state = "importing"
    try:
        scene = bpy.data.scenes.get(job.scene) or bpy.context.scene
        if job.kind == "segment":
            _store_label_map(scene, job)
        elif job.kind == "generate":
            settings = scene.iscene
            collection = importer.import_scene(scene, job.server_id, job.title, manifest, files,
                                               image=settings.image, scale=settings.scene_size)
            job.collection = collection.name
        else:
            collection = bpy.data.collections.get(job.collection or "")
            if collection is None:
                raise LookupError(f"the collection {job.collection!r} of this scene no longer exists")
            importer.replace_meshes(collection, job.server_id, manifest, files, keep_edits=job.kind == "regenerate")
        bpy.context.view_layer.update()  # world matrices of the new objects, before anything reads them
        bpy.ops.ed.undo_push(message=f"I-Scene: {job.kind} {job.title}")
        job.state, job.progress, job.finished = "succeeded", 1.0, time.time()
    except Exception as err:  # never let an import problem kill the timer or leave the job "importing"
        job.state, job.message = "failed", f"could not apply the result in Blender: {err}"
        job.hint = "the files were downloaded to the job folder (Open Results Folder)"


def _store_label_map(scene, job: Job) -> None:
    image = bpy.data.images.get(job.image or "")
    if image is None:
        raise LookupError(f"the image {job.image!r} no longer exists")
    labels = masks.store_label_map(image, job.folder / SEGMENT_LABELS)
    settings = scene.iscene
    if settings.image is None:
        settings.image = image
    if settings.image == image:
        settings.labels = labels
