"""Frames: the scene frame S of a job (the model's cube, z up), placed in the world in metres by the job's root
empty. Meshes arrive in S: :data:`.glb.GLTF_TO_S` undoes the server's glTF axis swap (its ``S_TO_GLTF``).

The root is an unscaled empty (at the 3D cursor on import). ``scale`` (metres per S unit) and ``anchor`` (the
point of S that sits on the root: the bottom centre of the scene's box, so the floor lands on the cursor) are
stored on it; ``M = Scale(scale) · Translation(-anchor)`` maps S into the root's frame, in metres.

Every object's *generated* matrix ``G`` (stored on it) places its mesh in S: a translation to its origin, the
bottom centre of its box. Mesh data are in metres (``scale`` · S units, about that origin), so the object sits
at ``W = R · M · E · G · Scale(1/scale)`` with ``R`` the root's world matrix and ``E`` the artist's edit in S,
the identity on import. Hence ``E = M⁻¹ · R⁻¹ · W · Scale(scale) · G⁻¹``: moving the root alone is no edit,
moving an object by ``d`` metres is an edit of ``d / scale`` in S, and rotating or scaling it about its origin
is the same rotation or scale about its origin in S. Regenerate keeps ``E`` on the new mesh; refine sends
``E`` to the server, whose result already includes it.
"""

from __future__ import annotations

from mathutils import Matrix, Vector

GENERATED = "iscene_generated"
SCALE = "iscene_scale"  # on the root: metres per scene-frame unit
ANCHOR = "iscene_anchor"  # on the root: the point of S on the root's origin


def translation(origin) -> Matrix:
    return Matrix.Translation(Vector(origin))


def to_rows(matrix: Matrix) -> list[list[float]]:
    return [[float(v) for v in row] for row in matrix]


def store_generated(obj, matrix: Matrix) -> None:
    obj[GENERATED] = [float(v) for row in matrix for v in row]


def generated(obj) -> Matrix:
    flat = list(obj[GENERATED])
    return Matrix([flat[0:4], flat[4:8], flat[8:12], flat[12:16]])


def scene_scale(root) -> float:
    return float(root[SCALE])


def scene_to_root(root) -> Matrix:
    """``M``: S into the root's frame, in metres."""
    return Matrix.Scale(scene_scale(root), 4) @ Matrix.Translation(-Vector(root[ANCHOR]))


def scene_to_world(root) -> Matrix:
    return root.matrix_world @ scene_to_root(root)


def placed(root, edit: Matrix, generated_matrix: Matrix) -> Matrix:
    """The world matrix of an object whose mesh is in metres about its origin ``generated_matrix`` (in S)."""
    return scene_to_world(root) @ edit @ generated_matrix @ Matrix.Scale(1.0 / scene_scale(root), 4)


def edit_in_scene(root, obj) -> Matrix:
    """The artist's edit of ``obj`` in the scene frame (identity if untouched)."""
    return (scene_to_world(root).inverted_safe() @ obj.matrix_world @ Matrix.Scale(scene_scale(root), 4)
            @ generated(obj).inverted_safe())


def is_identity(matrix: Matrix, tolerance: float = 1e-5) -> bool:
    return all(abs(matrix[i][j] - (1.0 if i == j else 0.0)) <= tolerance for i in range(4) for j in range(4))
