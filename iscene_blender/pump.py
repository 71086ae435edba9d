"""The one place where results of network work become Blender data: :func:`pump_once` drains the event queue
on the main thread. A ``bpy.app.timers`` timer calls it while there is work; tests call it directly (timers do
not fire in the ``bpy`` module)."""

from __future__ import annotations

import queue
import time

import bpy

from . import cache, history, importer, masks, provenance
from .jobs import SEGMENT_LABELS, Event, Job, Runtime
from .preferences import client, preferences, user_dir
from .props import ensure_label_names

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


def _scene(job: Job):
    return bpy.data.scenes.get(job.scene) or bpy.context.scene


def _apply(event: Event) -> None:
    if event.kind == "health":
        was_ready = RUNTIME.health is not None
        RUNTIME.health = event.data.get("health")
        RUNTIME.health_error = event.data.get("error")
        if RUNTIME.health is not None and not was_ready:  # merge the server's jobs once it answers
            RUNTIME.list_server_jobs(client())
        return
    if event.kind == "server_jobs":
        if "jobs" in event.data:
            history.merge(bpy.context.scene, event.data["jobs"])
        return
    job = RUNTIME.jobs.get(event.key)
    if job is None:
        return
    if event.kind == "update":
        for name, value in event.data.items():
            setattr(job, name, value)
    elif event.kind in ("failed", "cancelled"):
        job.state, job.finished = event.kind, time.time()
        job.message, job.hint = event.data.get("message", ""), event.data.get("hint", "")
    elif event.kind == "finished":
        _finish(job, event.data["manifest"], event.data["files"])
        _prune(job)
    history.save(_scene(job), job)


def _finish(job: Job, manifest: dict, files: dict[str, bytes]) -> None:
    """Import (generate, import), update objects (regenerate, refine) or store a label map (segment), as one
    undo step."""
    job.state = "importing"
    try:
        scene = _scene(job)
        if job.kind == "segment":
            _store_label_map(scene, job, manifest)
        elif job.kind in ("generate", "import"):
            settings = scene.iscene
            root = importer.import_scene(scene, job.server_id, _scene_title(job), manifest, files,
                                         image=bpy.data.images.get(job.image or ""),
                                         room_width=settings.room_width,
                                         make_camera_active=settings.make_camera_active, names=job.names)
            job.root = root[provenance.SCENE]
        else:
            _update_objects(job, manifest, files)
        bpy.context.view_layer.update()  # world matrices of the new objects, before anything reads them
        bpy.ops.ed.undo_push(message=f"I-Scene: {job.title}")
        job.state, job.progress, job.finished = "succeeded", 1.0, time.time()
    except Exception as err:  # never let an import problem kill the timer or leave the job "importing"
        job.state, job.finished = "failed", time.time()
        job.message = f"could not apply the result in Blender: {err}"
        job.hint = "the files were downloaded to the job folder (Open Results Folder)"


def _scene_title(job: Job) -> str:
    """The name the imported objects start with: the image's (or the job's id when nobody named it)."""
    image = bpy.data.images.get(job.image or "")
    return job.params.get("name") or (masks.image_stem(image) if image is not None else (job.server_id or "")[:8])


def _update_objects(job: Job, manifest: dict, files: dict[str, bytes]) -> None:
    root = next((o for o in bpy.data.objects if o.get(provenance.ROOT) and o.get(provenance.SCENE) == job.root),
                None)
    if root is None:
        raise LookupError("the generated scene's root empty was deleted; re-import the job from the history")
    objects = provenance.by_object_id(i for ids in job.targets.values() for i in ids)
    targets = {label: [objects[i] for i in ids if i in objects] for label, ids in job.targets.items()}
    importer.replace_meshes(root, job.server_id, manifest, files, targets, keep_edits=job.kind == "regenerate")


def _store_label_map(scene, job: Job, manifest: dict) -> None:
    image = bpy.data.images.get(job.image or "")
    if image is None:
        raise LookupError(f"the image {job.image!r} no longer exists")
    labels = masks.store_label_map(image, job.folder / SEGMENT_LABELS, manifest.get("segments", []))
    settings = scene.iscene
    if settings.image is None:
        settings.image = image
    if settings.image == image:
        settings.labels = labels
    ensure_label_names(settings, [int(s["id"]) for s in manifest.get("segments", [])])


def folders_in_use() -> set:
    return {job.folder.resolve() for job in RUNTIME.jobs.values() if job.active}


def _prune(job: Job) -> None:
    """Keep the download folder under its cap (the job just finished and running ones are kept)."""
    limit = int(preferences().download_limit_gb * cache.GB)
    cache.prune(user_dir("jobs"), limit, folders_in_use() | {job.folder.resolve()})

