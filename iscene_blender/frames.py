"""Frames: the scene frame S of a job, mapped into the world by the job's root empty.

Every instance object is parented to the root. Its *generated* matrix ``G`` (stored on the object) places its
mesh in S: a translation to the object's origin, the bottom centre of its bounding box. When the artist moves
the object, its world matrix becomes ``W``; the edit, expressed in S, is ``E = R^-1 W G^-1`` with ``R`` the
root's world matrix (moving the root alone is no edit). Regenerate keeps ``E`` on the new mesh; refine sends
``E`` to the server, whose result already includes it.
"""

from __future__ import annotations

from mathutils import Matrix, Vector

GENERATED = "iscene_generated"


def translation(origin) -> Matrix:
    return Matrix.Translation(Vector(origin))


def to_rows(matrix: Matrix) -> list[list[float]]:
    return [[float(v) for v in row] for row in matrix]


def store_generated(obj, matrix: Matrix) -> None:
    obj[GENERATED] = [float(v) for row in matrix for v in row]


def generated(obj) -> Matrix:
    flat = list(obj[GENERATED])
    return Matrix([flat[0:4], flat[4:8], flat[8:12], flat[12:16]])


def edit_in_scene(root, obj) -> Matrix:
    """The artist's edit of ``obj`` in the scene frame (identity if untouched)."""
    return root.matrix_world.inverted_safe() @ obj.matrix_world @ generated(obj).inverted_safe()


def is_identity(matrix: Matrix, tolerance: float = 1e-5) -> bool:
    return all(abs(matrix[i][j] - (1.0 if i == j else 0.0)) <= tolerance for i in range(4) for j in range(4))
