"""Context objects of a refine: the artist's own meshes, kept as fixed parts of the scene (DESIGN.md §3, Refine).

A refine may bring meshes the artist modelled (a room shell, a table) that the generated objects should be
arranged around. Each arrives as a GLB with a 4x4 transform into the scene frame S; it is checked and voxelised
at submit (every refusal names the object and the fix), stored with the job as one ``.npz`` input, and during the
refine it is rendered into the edited view and joins the clean scene occupancy like a locked instance. It is never
an instance: never re-sampled, exported or written to ``structure.npz``.

This module is the one place for the context limits.
"""

from __future__ import annotations

import base64
import binascii
import io
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from ...geometry.affine import check_affine
from ...geometry.checks import no_check
from ...geometry.gltf_scene import GltfError, read_scene_mesh
from ...geometry.mesh_voxels import voxelise_mesh
from ...geometry.voxels import GRID

MAX_CONTEXT_OBJECTS = 8  # context objects per refine
MAX_CONTEXT_GLB_MB = 16  # MiB of each decoded GLB
MAX_CONTEXT_FACES = 200_000  # triangles of each GLB
CONTEXT_REACH = 1.5  # a context object lies within [-reach, reach]^3 of S (three times the scene volume)
MAX_CONTEXT_VOXELS = GRID ** 3 // 8  # occupied cells of one context object inside the scene volume (an eighth)
MAX_CONTEXT_NAME = 64  # characters of a context object's name

TRANSFORM_HINT = ("send a 4x4 affine matrix (rows, column vectors, last row 0 0 0 1) from the GLB's frame to the "
                  "scene frame")
GLB_HINT = (f"export it as binary glTF (.glb) with embedded buffers, triangles, no Draco or meshopt compression and "
            f"at most {MAX_CONTEXT_FACES:,} triangles (decimate it if needed)")


def damaged_context() -> InputError:
    """The error of a refine whose stored context input is missing or unreadable."""
    return InputError("this job's context objects are damaged on disk", "submit the refine again")


@dataclass
class ContextObject:
    """One context object in the scene frame S, checked and voxelised."""

    name: str
    vertices: np.ndarray  # float32 [V, 3] in S (transformed)
    faces: np.ndarray  # int32 [F, 3]
    colors: np.ndarray  # float32 [V, 3] sRGB in [0, 1]
    coords: np.ndarray  # int16 [M, 3] canonical: its occupied (surface and filled) cells in the volume
    clipped: bool  # part of it lies outside the scene volume (those cells were dropped)

    def summary(self) -> dict:
        """What a refine job's parameters record of it (no geometry)."""
        return {"name": self.name, "faces": len(self.faces), "voxels": len(self.coords), "clipped": self.clipped}

    def bbox(self) -> dict:
        """The extents in S of its occupied cells."""
        lo, hi = self.coords.min(axis=0) / GRID - 0.5, (self.coords.max(axis=0) + 1) / GRID - 0.5
        return {"min": lo.round(6).tolist(), "max": hi.round(6).tolist()}


def _refused(name: str, problem: str, hint: str) -> InputError:
    return InputError(f"context object {name!r} {problem}", hint)


def check_names(entries: Sequence[Mapping]) -> None:
    """At most :data:`MAX_CONTEXT_OBJECTS` entries, each with a name of 1 to :data:`MAX_CONTEXT_NAME` characters,
    no two alike."""
    if len(entries) > MAX_CONTEXT_OBJECTS:
        raise InputError(f"{len(entries)} context objects given, over the limit of {MAX_CONTEXT_OBJECTS}",
                         f"send at most {MAX_CONTEXT_OBJECTS} (join small meshes into one, or leave some out)")
    seen = set()
    for entry in entries:
        name = entry.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_CONTEXT_NAME:
            raise InputError(f"the context object name {name!r} is not 1 to {MAX_CONTEXT_NAME} characters",
                             "give every context object a short name (its Blender object name)")
        if name in seen:
            raise InputError(f"two context objects are named {name!r}", "give every context object its own name")
        seen.add(name)


def _too_big(name: str, size: int) -> InputError:
    return _refused(name, f"is a {size / 2 ** 20:.1f} MiB GLB, over the limit of {MAX_CONTEXT_GLB_MB} MiB",
                    "decimate the mesh, remove its textures, or leave it out of the context")


def decode_glb(name: str, text: str) -> bytes:
    """The GLB bytes of base64 ``text``, refused over :data:`MAX_CONTEXT_GLB_MB` before decoding."""
    limit = MAX_CONTEXT_GLB_MB * 2 ** 20
    if not isinstance(text, str):
        raise _refused(name, "has no GLB", "send its GLB as a base64 string in 'glb'")
    size = len(text) * 3 // 4  # what the base64 decodes to (within the 2 bytes of padding)
    if size > limit + 2:
        raise _too_big(name, size)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _refused(name, "has a 'glb' that is not valid base64",
                       "send the .glb file's bytes as standard base64 (RFC 4648, with padding)") from None
    if len(data) > limit:
        raise _too_big(name, len(data))
    return data


def decode_object(entry: Mapping, hollow_around: np.ndarray, check: Callable[[], None] = no_check) -> ContextObject:
    """One API entry ``{name, transform, glb}`` as a context object, else :class:`InputError` naming it.
    ``hollow_around``: the parent scene's occupied cells ``[K, 3]`` (an enclosure around them stays hollow)."""
    name = entry["name"]
    try:
        matrix = check_affine(entry.get("transform"))  # its own units: any scale; its bounds are checked below
    except ValueError as exc:
        raise _refused(name, f"has a transform that is not usable: {exc}", TRANSFORM_HINT) from None
    data = decode_glb(name, entry.get("glb"))
    try:
        mesh = read_scene_mesh(data, MAX_CONTEXT_FACES)
    except GltfError as exc:
        raise _refused(name, f"has a GLB that cannot be used: {exc}", GLB_HINT) from None
    with np.errstate(over="ignore", invalid="ignore"):  # a huge transform gives non-finite vertices: refused below
        vertices = (mesh.vertices.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]).astype(np.float32)  # [V, 3]
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    if not np.isfinite(vertices).all() or (lo < -CONTEXT_REACH).any() or (hi > CONTEXT_REACH).any():
        raise _refused(name, f"reaches beyond [-{CONTEXT_REACH:g}, {CONTEXT_REACH:g}]^3 around the scene (its bounds "
                             f"are {np.round(lo, 3).tolist()} to {np.round(hi, 3).tolist()} in scene units)",
                       "scale it down or move it closer: the scene volume is the cube [-0.5, 0.5]^3, and a context "
                       f"object must lie within [-{CONTEXT_REACH:g}, {CONTEXT_REACH:g}]^3 (crop it to what is near)")
    voxels = voxelise_mesh(vertices, mesh.faces, hollow_around=hollow_around, reach=CONTEXT_REACH, check=check)
    if len(voxels.coords) == 0:
        raise _refused(name, "lies outside the scene volume", "move it into the scene (the generated cube "
                       "[-0.5, 0.5]^3, where the generated objects are), or leave it out of the context")
    if len(voxels.coords) > MAX_CONTEXT_VOXELS:
        raise _refused(name, f"fills {len(voxels.coords):,} cells of the scene volume, over the limit of "
                             f"{MAX_CONTEXT_VOXELS:,} (an eighth of it)",
                       "scale it down, or send only the part of it near the generated objects")
    return ContextObject(name, vertices, mesh.faces.astype(np.int32), mesh.colors.astype(np.float32),
                         voxels.coords, bool(voxels.clipped))


def decode_context(entries: Sequence[Mapping], hollow_around: np.ndarray,
                   check: Callable[[], None] = no_check) -> list[ContextObject]:
    """The context objects of a refine's API entries (see :func:`decode_object`), in their order."""
    check_names(entries)
    return [decode_object(entry, hollow_around, check) for entry in entries]


def context_to_npz(objects: Sequence[ContextObject]) -> bytes:
    """The job input that stores ``objects`` (``vertices_i``, ``faces_i``, ``colors_i``, ``coords_i`` for each i,
    and their ``names`` and ``clipped`` flags)."""
    arrays = {"names": np.array([o.name for o in objects], dtype=f"<U{MAX_CONTEXT_NAME}"),
              "clipped": np.array([o.clipped for o in objects], dtype=bool)}
    for i, o in enumerate(objects):
        arrays.update({f"vertices_{i}": o.vertices, f"faces_{i}": o.faces, f"colors_{i}": o.colors,
                       f"coords_{i}": o.coords})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _object_from(arrays, i: int, name: str, clipped: bool) -> ContextObject:
    """Object ``i`` of a loaded context input, its arrays checked, else ``ValueError``."""
    vertices, faces = arrays[f"vertices_{i}"], arrays[f"faces_{i}"]
    colors, coords = arrays[f"colors_{i}"], arrays[f"coords_{i}"]
    shapes_ok = (vertices.ndim == 2 and vertices.shape[1] == 3 and colors.shape == vertices.shape
                 and faces.ndim == 2 and faces.shape[1] == 3 and len(faces) > 0
                 and coords.ndim == 2 and coords.shape[1] == 3 and len(coords) > 0)
    if not shapes_ok or not (np.isfinite(vertices).all() and np.isfinite(colors).all()):
        raise ValueError(f"object {i} has arrays of the wrong shape or non-finite values")
    if faces.min() < 0 or faces.max() >= len(vertices) or coords.min() < 0 or coords.max() >= GRID:
        raise ValueError(f"object {i} has indices out of range")
    return ContextObject(name, vertices.astype(np.float32), faces.astype(np.int32),
                         np.clip(colors, 0.0, 1.0).astype(np.float32), coords.astype(np.int16), clipped)


def context_from_npz(data: bytes) -> list[ContextObject]:
    """The objects :func:`context_to_npz` stored, else the damaged-input :class:`InputError`."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
            names, clipped = arrays["names"], arrays["clipped"]
            if names.ndim != 1 or clipped.shape != names.shape or len(names) > MAX_CONTEXT_OBJECTS:
                raise ValueError("names and clipped flags do not match")
            return [_object_from(arrays, i, str(name), bool(flag)) for i, (name, flag) in
                    enumerate(zip(names.tolist(), clipped.tolist(), strict=True))]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        raise damaged_context() from None


def manifest_entries(objects: Sequence[ContextObject], pixels: Sequence[int] | None) -> list[dict]:
    """The manifest's ``context`` list; ``pixels``: what each object covers in the edited render, None when the
    refine did not use them (strength 0, a layout, nothing re-sampled)."""
    return [{**o.summary(), "applied": pixels is not None, "pixels": 0 if pixels is None else int(pixels[i]),
             "bbox": o.bbox()} for i, o in enumerate(objects)]
