"""What each job sends, built from the Blender data on the main thread (the operators stay thin): the
uploads and parameters of Generate, the seeds and targets of Regenerate, the edits of Refine."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import bpy

from . import frames, masks, provenance, wording
from .importer import MESH_SEED, SEED
from .png import image_png
from .props import label_names, label_stats


def image_bytes(image: bpy.types.Image) -> bytes:
    """The encoded file of an image datablock: packed data or the file on disk while they hold what the artist
    sees, else a PNG of its pixels in memory (painted, generated or edited images)."""
    if not image.is_dirty:
        if image.packed_file is not None:
            return bytes(image.packed_file.data)
        path = Path(bpy.path.abspath(image.filepath)) if image.filepath else None
        if path is not None and path.is_file():
            return path.read_bytes()
    return image_png(image)


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
              "name": name}
    stats = label_stats(labels)
    title = wording.job_title("generate", name, stats.count if stats else None, settings.seed, time.time())
    return Request("generate", title, params, inputs, image=settings.image.name, names=label_names(settings))


def random_seed() -> int:
    return random.randrange(2 ** 31)


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


def refine_request(context, root, selected_only: bool, strength: float) -> Request:
    """The artist's edits of the scene's objects in its frame, and the labels to keep as they are."""
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
    params = {"transforms": transforms, "locked": sorted(set(locked) | set(deleted)), "strength": strength}
    title = wording.job_title("refine", root.name, len(transforms))
    return Request("refine", title, params, parent=root[provenance.JOB], root=root[provenance.SCENE],
                   targets=targets)


def segment_request(image, prompts: dict) -> Request:
    title = wording.job_title("segment", masks.image_stem(image), len(prompts.get("objects", [])) or None)
    return Request("segment", title, {"prompts": prompts}, {"image": image_bytes(image)}, image=image.name)
