"""The one place where results of network work become Blender data: :func:`pump_once` drains the event queue
on the main thread. A ``bpy.app.timers`` timer calls it while there is work; tests call it directly (timers do
not fire in the ``bpy`` module).

A progressive job lands in steps (its ``layout`` as proxies, then ``objects`` as they finish) and is pushed as one
undo step when it ends, however it ends: a cancelled or failed job keeps the proxies and objects it brought.
"""

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
    for job in RUNTIME.release(_latest_job):  # waiting jobs whose scene is free now
        history.save(_scene(job), job)
        count += 1
    if count:
        redraw()
    return count


def _latest_job(job: Job) -> str:
    """The server job a released job derives from: its scene's latest (main thread: reads the root empty)."""
    return _job_root(job)[provenance.JOB]


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
        if not job.active:
            return  # already ended here (an import problem), the worker's last word changes nothing
        job.state, job.finished = event.kind, time.time()
        job.message, job.hint = event.data.get("message", ""), event.data.get("hint", "")
        if job.landed:
            bpy.ops.ed.undo_push(message=f"I-Scene: {job.title} ({event.kind})")
    elif event.kind in ("layout", "objects"):
        _land(job, event.kind, event.data["manifest"], event.data["files"])
    elif event.kind == "finished":
        _finish(job, event.data["manifest"], event.data["files"])
        _prune(job)
    history.save(_scene(job), job)


def _fail_import(job: Job, err: Exception) -> None:
    job.state, job.finished = "failed", time.time()
    job.message = f"could not apply the result in Blender: {err}"
    job.hint = "the files were downloaded to the job folder (Open Results Folder)"


def _land(job: Job, kind: str, manifest: dict, files: dict[str, bytes]) -> None:
    """A running job's layout (a new scene of proxies) or newly finished objects (swapped in place)."""
    if not job.active:
        return
    try:
        if kind == "layout" and job.root is None:
            _import(job, manifest, files)
        else:
            _update_objects(job, manifest, files)
        bpy.context.view_layer.update()
        job.landed = True
    except Exception as err:  # as in _finish: the job ends visibly; its worker stops
        _fail_import(job, err)
        job.cancel.set()


def _import(job: Job, manifest: dict, files: dict[str, bytes]):
    """A new scene from a manifest (final or partial); its objects become the job's targets."""
    scene = _scene(job)
    settings = scene.iscene
    root = importer.import_scene(scene, job.server_id, _scene_title(job), manifest, files,
                                 image=bpy.data.images.get(job.image or ""), room_width=settings.room_width,
                                 make_camera_active=settings.make_camera_active, names=job.names)
    job.root = root[provenance.SCENE]
    job.targets = {int(o[provenance.LABEL]): [o[provenance.OBJECT]] for o in provenance.instances(root)}
    return root


def _finish(job: Job, manifest: dict, files: dict[str, bytes]) -> None:
    """Import (generate, import; or the rest of a progressive one), update objects (regenerate, refine, build),
    lay out candidates (variants) or store a label map (segment), as one undo step."""
    job.state = "importing"
    try:
        scene = _scene(job)
        if job.kind == "segment":
            _store_label_map(scene, job, manifest)
        elif job.kind == "variants":
            _place_candidates(job, manifest, files)
        else:
            if job.kind in ("generate", "import") and job.root is None:
                root = _import(job, manifest, files)
            else:
                root = _update_objects(job, manifest, files)
            if job.kind in ("generate", "import", "build"):
                importer.fit_to_meshes(root, manifest)
            root[provenance.JOB] = job.server_id  # the scene's latest job: the parent of its next one
            root[provenance.STAGE] = "layout" if manifest.get("stage") == "layout" else "meshes"
        bpy.context.view_layer.update()  # world matrices of the new objects, before anything reads them
        bpy.ops.ed.undo_push(message=f"I-Scene: {job.title}")
        job.state, job.progress, job.finished = "succeeded", 1.0, time.time()
    except Exception as err:  # never let an import problem kill the timer or leave the job "importing"
        _fail_import(job, err)


def _scene_title(job: Job) -> str:
    """The name the imported objects start with: the image's (or the job's id when nobody named it)."""
    image = bpy.data.images.get(job.image or "")
    return job.params.get("name") or (masks.image_stem(image) if image is not None else (job.server_id or "")[:8])


def _job_root(job: Job):
    root = next((o for o in bpy.data.objects if o.get(provenance.ROOT) and o.get(provenance.SCENE) == job.root),
                None)
    if root is None:
        raise LookupError("the generated scene's root empty was deleted; re-import the job from the history")
    return root


def _targets(job: Job) -> dict[int, list]:
    """The job's target objects that still exist (a deleted one is not brought back)."""
    objects = provenance.by_object_id(i for ids in job.targets.values() for i in ids)
    return {label: [objects[i] for i in ids if i in objects] for label, ids in job.targets.items()}


def _update_objects(job: Job, manifest: dict, files: dict[str, bytes]):
    """Swap the job's results into its targets: a refine's result holds the artist's edit, every other kind
    keeps it on the new mesh. Returns the scene's root."""
    root = _job_root(job)
    importer.replace_meshes(root, job.server_id, manifest, files, _targets(job), keep_edits=job.kind != "refine")
    return root


def _place_candidates(job: Job, manifest: dict, files: dict[str, bytes]) -> None:
    root = _job_root(job)
    (original,) = [obj for objects in _targets(job).values() for obj in objects] or [None]
    if original is None:
        raise LookupError("the object the variants were made for was deleted")
    importer.discard_candidates(original[provenance.OBJECT])  # a new round replaces the last one
    importer.place_candidates(original, root, job.server_id, manifest, files, job.params["view_x"])


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

