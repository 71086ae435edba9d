"""Context objects: the artist's own meshes (a table, a room shell) that Refine sends as fixed parts of the
generated scene, so the model arranges the generated objects around them. They are only read, never changed.

Refine of a scene sends every mesh object of the Blender scene with **Use as Context** on that is visible in
the view layer and is not in that scene already (its instances, proxies, variant candidates). Each goes as its
evaluated mesh (modifiers applied), triangulated, in object-local metres written to glTF's y-up frame, with
each triangle's material base colour, and the ``transform`` that maps those local coordinates into the scene
frame S: ``scene_to_world(root)⁻¹ · matrix_world`` (:mod:`.frames`).
"""

from __future__ import annotations

import base64

import numpy as np

from . import frames, provenance, wording
from .glb import GLTF_TO_S
from .glb_write import glb_bytes

# Deliberate copies of the server's limits, iscene_server/engine/refine/context.py (the add-on refuses before
# sending; tests/test_addon_copies.py checks that they agree).
MAX_CONTEXT_OBJECTS = 8
MAX_CONTEXT_FACES = 200_000  # triangles per object
MAX_CONTEXT_GLB_MB = 16  # MiB of GLB per object
CONTEXT_REACH = 1.5  # every vertex within [-REACH, REACH]^3 of S (the scene's volume is [-0.5, 0.5]^3)

NEUTRAL_GREY = 0.5  # sRGB of a mesh without colours: a deliberate copy of iscene_server/geometry/gltf_scene.py's
GREY_LINEAR = ((NEUTRAL_GREY + 0.055) / 1.055) ** 2.4  # the same grey, sRGB-decoded
GREY = (GREY_LINEAR, GREY_LINEAR, GREY_LINEAR, 1.0)  # linear RGBA of triangles without a material
MAX_LISTED = 3  # names the panel lists


def is_context(obj, root, view_layer) -> bool:
    """Whether Refine of ``root``'s scene sends ``obj``: toggled, a mesh, visible, not in that scene already."""
    return (obj.type == "MESH" and obj.iscene_context and obj.visible_get(view_layer=view_layer)
            and not provenance.is_candidate(obj) and obj.get(provenance.SCENE) != root[provenance.SCENE])


def context_objects(context, root) -> list:
    """The objects Refine of ``root``'s scene would send, by name (cheap: reads no mesh, safe in ``draw()``)."""
    view_layer = context.view_layer
    return sorted((o for o in context.scene.objects if is_context(o, root, view_layer)), key=lambda o: o.name)


def context_line(objects) -> str:
    """"Context: 2 objects (sofa, table)" for the Refine box."""
    names = ", ".join(o.name for o in objects[:MAX_LISTED]) + ("…" if len(objects) > MAX_LISTED else "")
    return f"Context: {wording.plural(len(objects), 'object')} ({names})"


def material_color(material) -> tuple[float, ...]:
    """A material's base colour, linear RGBA: its Principled BSDF's Base Color, else its viewport colour."""
    if material is None:
        return GREY
    if material.use_nodes and material.node_tree is not None:
        principled = next((n for n in material.node_tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
        if principled is not None:
            return tuple(principled.inputs["Base Color"].default_value)
    return tuple(material.diffuse_color)


def evaluated_triangles(obj, depsgraph) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(vertices [V, 3] local metres, triangles [F, 3], material slot [F], slot colours [S, 4] or None when no
    slot has a material) of ``obj`` with its modifiers applied. Raises ``ValueError`` over the face limit."""
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        mesh.calc_loop_triangles()
        count = len(mesh.loop_triangles)
        if count == 0:
            raise ValueError(f"{obj.name!r} has no faces to use as context: give it faces or turn off its "
                             "Use as Context")
        if count > MAX_CONTEXT_FACES:
            raise ValueError(f"{obj.name!r} has {count:,} triangles with its modifiers; a context object may have "
                             f"at most {MAX_CONTEXT_FACES:,}: add a Decimate modifier (or lower its Subdivision "
                             "levels)")
        vertices = np.empty(len(mesh.vertices) * 3, np.float32)
        mesh.vertices.foreach_get("co", vertices)
        triangles = np.empty(count * 3, np.int32)
        mesh.loop_triangles.foreach_get("vertices", triangles)
        slots = np.empty(count, np.int32)
        mesh.loop_triangles.foreach_get("material_index", slots)
        materials = [slot.material for slot in evaluated.material_slots]
    finally:
        evaluated.to_mesh_clear()
    colors = (np.array([material_color(m) for m in materials] + [GREY], np.float32)  # [S + 1, 4]
              if any(m is not None for m in materials) else None)
    slots = np.where(slots < len(materials), slots, len(materials))  # a missing slot: grey
    return vertices.reshape(-1, 3), triangles.reshape(-1, 3), slots, colors


def split_by_material(vertices, triangles, slots, colors) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(vertices [V', 3], faces [F, 3], colours [V', 4] or None): one vertex per (vertex, material) pair used,
    so every triangle shows its own material's colour; unused vertices are dropped."""
    kinds = len(colors) if colors is not None else 1
    keys = triangles.astype(np.int64) * kinds + (slots[:, None] if colors is not None else 0)  # [F, 3]
    unique, inverse = np.unique(keys.ravel(), return_inverse=True)  # [V'], [3F]
    split_colors = colors[unique % kinds] if colors is not None else None
    return vertices[unique // kinds], inverse.reshape(-1, 3).astype(np.int64), split_colors


def scene_transform(root, obj):
    """The object's local frame (metres) into the scene frame S."""
    return frames.scene_to_world(root).inverted_safe() @ obj.matrix_world


def context_entry(obj, root, depsgraph) -> dict:
    """``{"name", "transform", "glb"}`` for one context object (the refine body's entry); raises
    ``ValueError`` naming the object and the fix when it is over a limit."""
    vertices, faces, colors = split_by_material(*evaluated_triangles(obj, depsgraph))
    transform = scene_transform(root, obj)
    matrix = np.array(transform, np.float64)  # [4, 4]
    in_scene = vertices @ matrix[:3, :3].T + matrix[:3, 3]  # [V, 3] in S
    if np.abs(in_scene).max() > CONTEXT_REACH:
        raise ValueError(f"{obj.name!r} reaches too far from the generated scene (more than a scene width beyond "
                         "its box): move it next to the generated objects, make it smaller, or turn off its "
                         "Use as Context")
    data = glb_bytes(vertices @ GLTF_TO_S, faces, colors, obj.name)  # local z up -> glTF y up
    if len(data) > MAX_CONTEXT_GLB_MB * 2 ** 20:
        raise ValueError(f"{obj.name!r} makes a {len(data) / 2 ** 20:.1f} MiB mesh; a context object may have "
                         f"at most {MAX_CONTEXT_GLB_MB} MiB: add a Decimate modifier (or use fewer materials)")
    return {"name": obj.name, "transform": frames.to_rows(transform), "glb": base64.b64encode(data).decode("ascii")}


def context_payload(context, root) -> list[dict]:
    """Every context object of a Refine of ``root``'s scene, ready to send; raises ``ValueError`` with the fix
    when one is over a limit (nothing is sent then)."""
    objects = context_objects(context, root)
    if len(objects) > MAX_CONTEXT_OBJECTS:
        raise ValueError(f"{len(objects)} objects have Use as Context on; Refine sends at most "
                         f"{MAX_CONTEXT_OBJECTS}: turn it off on some, or join them into one object")
    depsgraph = context.evaluated_depsgraph_get()
    return [context_entry(obj, root, depsgraph) for obj in objects]
