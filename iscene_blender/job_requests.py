"""What each job sends, built from the Blender data on the main thread (the operators stay thin): the
uploads and parameters of Generate, the prompts of Segment, the seeds and targets of Regenerate, the edits of
Refine, and the requests that run a job again (Retry) or download it again (Re-import)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import bpy
from mathutils import Vector

from . import context_objects, frames, masks, prompts, provenance, wording
from .image_files import image_bytes
from .importer import MESH_SEED, SEED
from .props import label_names, label_stats
from .seeds import random_seed

NOTHING_TO_SEGMENT = ("nothing to segment: in the Image Editor, draw a box around each object (or click on it) "
                      "with the Annotate tool, or use Auto-segment")


@dataclass
class Request:
    """One job to start: its kind, title, parameters, uploads and the objects it updates."""

    kind: str
    title: str
    params: dict
    inputs: dict[str, bytes] = field(default_factory=dict)
    parent: str | None = None
    root: str | None = None
    targets: dict[int, list[str]] = field(default_factory=dict)
    image: str | None = None
    names: dict[int, str] = field(default_factory=dict)


def generate_request(settings) -> Request:
    labels = settings.labels or masks.linked_label_map(settings.image)
    inputs = {"image": image_bytes(settings.image), "labels": image_bytes(labels)}
    name = masks.image_stem(settings.image)
    params = {"seed": settings.seed, "detail": settings.detail, "steps": settings.steps, "slat_steps": settings.steps,
              "name": name, **({"until": "layout"} if settings.layout_only else {})}
    stats = label_stats(labels)
    title = wording.job_title("generate", name, stats.count if stats else None, settings.seed, time.time())
    return Request("generate", title, params, inputs, image=settings.image.name, names=label_names(settings))


def seed_to_send(obj) -> int:
    """The object's Seed field if the artist changed it (or Randomize did), else a new random seed."""
    seed = int(obj.get(SEED, 0))
    return seed if seed != int(obj.get(MESH_SEED, -1)) else random_seed()


def regenerate_requests(root, objects) -> list[Request]:
    """One request per round of objects: a label appears once per request, so a duplicate and its original
    (same label) each get their own new shape."""
    rounds: list[list] = []
    for obj in objects:
        free = next((r for r in rounds if all(o[provenance.LABEL] != obj[provenance.LABEL] for o in r)), None)
        if free is None:
            rounds.append(free := [])
        free.append(obj)
    requests = []
    for members in rounds:
        provenance.claim(members)
        labels = sorted(int(o[provenance.LABEL]) for o in members)
        seeds = {int(o[provenance.LABEL]): seed_to_send(o) for o in members}
        for obj in members:
            obj[SEED] = seeds[int(obj[provenance.LABEL])]  # the field shows the seed being made
        targets = {int(o[provenance.LABEL]): [o[provenance.OBJECT]] for o in members}
        title = wording.job_title("regenerate", ", ".join(o.name for o in members), len(members))
        requests.append(Request("regenerate", title, {"labels": labels, "seeds": seeds}, parent=root[provenance.JOB],
                                root=root[provenance.SCENE], targets=targets))
    return requests


def keep_request(root, obj) -> Request:
    """Make the variant kept in ``obj`` part of the server's scene: a one-object regenerate with the candidate's
    seed, which reproduces the candidate (candidates are reproducible by seed), so that Refine and later jobs start
    from the kept shape rather than the one it replaced."""
    label, seed = int(obj[provenance.LABEL]), int(obj[MESH_SEED])
    targets = {label: provenance.claim([obj])}
    title = wording.job_title("keep", obj.name, seed=seed)
    return Request("regenerate", title, {"labels": [label], "seeds": {label: seed}}, parent=root[provenance.JOB],
                   root=root[provenance.SCENE], targets=targets)


def refine_request(context, root, selected_only: bool, strength: float) -> Request:
    """The artist's edits of the scene's objects in its frame, the labels to keep as they are, and the artist's
    own meshes to keep as context (:mod:`.context_objects`; raises ``ValueError`` with the fix when one is over
    a limit, before any object is touched)."""
    own_meshes = context_objects.context_payload(context, root)
    selected = {o.name for o in context.selected_objects}
    transforms, locked, targets = {}, [], {}
    for obj in provenance.instances(root):
        label = int(obj[provenance.LABEL])
        if label in targets:
            continue  # a duplicate: refine moves the original only
        targets[label] = provenance.claim([obj])
        if obj.iscene_locked or (selected_only and obj.name not in selected):
            locked.append(label)
            continue
        edit = frames.edit_in_scene(root, obj)
        if not frames.is_identity(edit):
            transforms[label] = frames.to_rows(edit)
    deleted = [label for label in root.get("iscene_labels", []) if label not in targets]
    params = {"transforms": transforms, "locked": sorted(set(locked) | set(deleted)), "strength": strength,
              **({"context": own_meshes} if own_meshes else {})}
    title = wording.job_title("refine", root.name, len(transforms))
    return Request("refine", title, params, parent=root[provenance.JOB], root=root[provenance.SCENE],
                   targets=targets)


def build_request(root) -> Request:
    """Build Meshes: stage 2 for the layout job of ``root``'s scene, landing on every proxy (duplicates too)."""
    targets: dict[int, list[str]] = {}
    proxies = [o for o in provenance.instances(root) if provenance.is_proxy(o)]
    for obj, object_id in zip(proxies, provenance.claim(proxies), strict=True):
        targets.setdefault(int(obj[provenance.LABEL]), []).append(object_id)
    title = wording.job_title("build", root.name, len(targets))
    return Request("build", title, {}, parent=root[provenance.JOB], root=root[provenance.SCENE], targets=targets)


def view_right(context) -> list[float]:
    """The world direction that points right in the 3D view (else in the scene camera's view, else +x)."""
    region = getattr(context, "region_data", None)
    camera = context.scene.camera
    if region is not None:
        rotation = region.view_rotation
    elif camera is not None:
        rotation = camera.matrix_world.to_quaternion()
    else:
        return [1.0, 0.0, 0.0]
    right = rotation @ Vector((1.0, 0.0, 0.0))
    return [float(v) for v in right]


def variants_request(context, root, obj, count: int) -> Request:
    """``count`` candidate shapes for ``obj``'s label, laid out along the view's right."""
    label = int(obj[provenance.LABEL])
    targets = {label: provenance.claim([obj])}
    params = {"label": label, "count": count, "view_x": view_right(context)}
    title = wording.job_title("variants", obj.name, count)
    return Request("variants", title, params, parent=root[provenance.JOB], root=root[provenance.SCENE],
                   targets=targets)


def segment_prompts(context, image, mode: str, annotation: str, points_per_side: int) -> dict:
    """The prompts of a Segment click: automatic over a grid (``mode`` "AUTO"), else one object per stroke of the
    image's annotation (the datablock named ``annotation``, default the Image Editor's). Raises ``ValueError``
    naming the fix when nothing is annotated."""
    if mode == "AUTO":
        return prompts.auto_prompts(points_per_side)
    found = masks.annotation_for(context, image, annotation)
    strokes = masks.annotation_strokes(found) if found is not None else []
    if not strokes:
        raise ValueError(NOTHING_TO_SEGMENT)
    return prompts.prompts_from_strokes(strokes, *image.size)


def segment_request(image, image_prompts: dict) -> Request:
    title = wording.job_title("segment", masks.image_stem(image), len(image_prompts.get("objects", [])) or None)
    return Request("segment", title, {"prompts": image_prompts}, {"image": image_bytes(image)}, image=image.name)


def retry_request(job) -> Request:
    """The same job again: its kind, parameters and uploads (kept in memory since it ran)."""
    return Request(job.kind, job.title, dict(job.params), dict(job.inputs), job.parent, job.root, dict(job.targets),
                   job.image, dict(job.names))


def reimport_request(context, record) -> Request:
    """Download the finished server job of a history ``record`` again, as a new scene named with the current
    object names, with the image it was made from (found by name if the record predates image tracking) behind
    its camera."""
    params = {"name": record.name} if record.name else {}
    image = record.image or next((i.name for i in bpy.data.images
                                  if record.name and masks.image_stem(i) == record.name), None)
    return Request("import", wording.job_title("import", record.title), params, parent=record.server_id,
                   image=image, names=label_names(context.scene.iscene))
