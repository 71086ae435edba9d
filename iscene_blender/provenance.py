"""Which generated scene an object belongs to, from its own custom properties (never from its collection,
parent or name, which the artist may change).

The root empty of each imported scene carries a scene id; every object and camera of that scene carries the
same id, its label and the job that made its mesh. A duplicate carries them too, so it belongs to the same
scene; :func:`claim` gives the objects a request targets a fresh object id, so each result lands on exactly the
object it was asked for.
"""

from __future__ import annotations

import uuid

import bpy

ROOT = "iscene_root"
SCENE = "iscene_scene"  # on the root and every member: the id of the imported scene
JOB = "iscene_job"  # on the root: the scene's latest job; on an object: the job that made its mesh
LABEL = "iscene_label"
CAMERA = "iscene_camera"
OBJECT = "iscene_object"  # a member's own id, renewed when a request targets it
PROXY = "iscene_proxy"  # on a member whose mesh is still its layout proxy (stage 1's voxels), not its final mesh
STAGE = "iscene_stage"  # on the root: "layout" when its latest finished job stopped at the layout, else "meshes"
CANDIDATE_OF = "iscene_candidate_of"  # on a variant candidate (never a member): its original's object id
CANDIDATE_INDEX = "iscene_candidate_index"
CANDIDATE_SEED = "iscene_candidate_seed"


def new_id() -> str:
    return uuid.uuid4().hex[:16]


def is_member(obj) -> bool:
    return obj is not None and SCENE in obj and not obj.get(ROOT)


def is_instance(obj) -> bool:
    return is_member(obj) and LABEL in obj


def is_proxy(obj) -> bool:
    return is_instance(obj) and bool(obj.get(PROXY))


def is_layout_scene(root) -> bool:
    return root is not None and root.get(STAGE) == "layout"


def is_candidate(obj) -> bool:
    return obj is not None and CANDIDATE_OF in obj


def candidates_for(object_id: str | None) -> list:
    """The variant candidates laid out for the object with this id, by index."""
    found = [o for o in bpy.data.objects if object_id and o.get(CANDIDATE_OF) == object_id]
    return sorted(found, key=lambda o: int(o.get(CANDIDATE_INDEX, 0)))


def candidates_of(obj) -> list:
    """The variant candidates laid out for ``obj`` (an original)."""
    return candidates_for(obj.get(OBJECT) if obj is not None else None)


def original_of(candidate):
    """The object a candidate was made for (None if it was deleted)."""
    return by_object_id([candidate[CANDIDATE_OF]]).get(candidate[CANDIDATE_OF]) if is_candidate(candidate) else None


def root_of(obj):
    """The root empty of ``obj``'s scene (None if that scene's root was deleted)."""
    if obj is None or SCENE not in obj:
        return None
    if obj.get(ROOT):
        return obj
    scene_id = obj[SCENE]
    return next((o for o in bpy.data.objects if o.get(ROOT) and o.get(SCENE) == scene_id), None)


def members(root) -> list:
    """Every object (instances, duplicates, the camera) of the root's scene, parents before children."""
    scene_id = root[SCENE]
    found = [o for o in bpy.data.objects if o.get(SCENE) == scene_id and not o.get(ROOT)]
    return sorted(found, key=_depth)


def instances(root) -> list:
    return [o for o in members(root) if LABEL in o]


def _depth(obj) -> int:
    depth = 0
    while obj.parent is not None:
        obj, depth = obj.parent, depth + 1
    return depth


def selected_scene(context):
    """(root, selected instances of that scene) for the active object's scene, else the first selected one's."""
    candidates = [context.active_object, *context.selected_objects]
    root = next((r for r in map(root_of, (o for o in candidates if is_member(o))) if r is not None), None)
    if root is None:
        return None, []
    scene_id = root[SCENE]
    return root, [o for o in context.selected_objects if is_instance(o) and o[SCENE] == scene_id]


def claim(objects) -> list[str]:
    """Fresh object ids for ``objects`` (a duplicate stops sharing its original's); returns them."""
    ids = []
    for obj in objects:
        obj[OBJECT] = new_id()
        ids.append(obj[OBJECT])
    return ids


def by_object_id(ids) -> dict[str, object]:
    wanted = set(ids)
    return {o[OBJECT]: o for o in bpy.data.objects if o.get(OBJECT) in wanted}
