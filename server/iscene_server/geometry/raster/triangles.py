"""A small vectorised triangle rasteriser (PyTorch, CPU or CUDA): instance meshes seen through a camera.

Design:
- Vertices are projected with the camera's ``project`` (:class:`ProjectingCamera`); pixel ``(x, y)`` is sampled
  at its centre ``(x + 0.5, y + 0.5)`` in image pixel coordinates (the camera's convention). No antialiasing:
  every pixel belongs to one face or to the background, so instance ids are exact.
- Coverage is exact integer arithmetic, as in hardware rasterisers: screen positions are snapped to 1/256 pixel
  and the edge functions ``w = A x + B y + C`` are evaluated in int64 (no overflow within the guard band of
  +-2^21 pixels; faces reaching beyond it are dropped). A top-left rule settles ``w == 0``, so a pixel centre on an
  edge shared by two faces is drawn by exactly one of them: no cracks, no double hits, whatever the winding.
  Faces are made counter-clockwise on screen first, so back faces are drawn like front faces.
- Work is split into (face, pixel row) spans whose column range is solved exactly from the three edges; spans are
  expanded into fragments in chunks of bounded size (so a face covering the whole image is fine), and the nearest
  fragment per pixel is kept with one ``scatter_reduce(amin)`` on a packed int64 key
  ``(float32 depth bits << 32) | face index`` (positive floats sort like their bit patterns; ties go to the lower
  face index, so the result is deterministic).
- A last pass re-evaluates the winning face at each covered pixel and interpolates vertex colours
  perspective-correctly (linear in screen space for orthographic cameras, where that is exact).
- Faces with any vertex at depth <= ``near`` are dropped (no near-plane clipping; the scene lies in front of the
  solved camera).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..checks import no_check

NEAR = 1e-4
FRAGMENT_BUDGET = 1 << 19  # fragments evaluated at once (about 80 MB of temporaries)
FACE_CHUNK = 1 << 15  # faces projected and culled between two cancellation checks
FACE_BITS = 32
SUBPIXEL = 256  # fixed-point steps per pixel
GUARD_BAND = float(1 << 21)  # pixels; keeps every int64 edge-function term below 2^61


class ProjectingCamera(Protocol):
    """What the rasteriser needs of a camera (``engine.camera.Camera`` is one)."""

    image_size: tuple[int, int]  # (W, H) pixels

    @property
    def perspective(self) -> bool:
        """Whether depth divides the image coordinates (else an orthographic projection)."""

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates ``[N, 2]`` (pixel (0, 0)'s top-left corner at 0) and depths ``[N]`` of S points."""


@dataclass
class RenderMesh:
    vertices: np.ndarray  # [V, 3] float, scene frame S
    faces: np.ndarray  # [F, 3] int
    colors: np.ndarray  # [V, 3] float in [0, 1] (or integers in [0, 255])
    label: int  # instance id written to the id map (> 0)


@dataclass
class Rendering:
    rgb: np.ndarray  # uint8 [H, W, 3], background 0
    ids: np.ndarray  # uint32 [H, W], background 0
    depth: np.ndarray  # float32 [H, W], camera depth, background inf


@dataclass
class Faces:
    """All meshes' faces after culling, on the render device."""

    corners: torch.Tensor  # [F, 3, 2] int64 output-pixel coordinates in 1/SUBPIXEL steps
    depth: torch.Tensor  # [F, 3] float64 camera depth of the corners
    lines: torch.Tensor  # [F, 3, 3] int64 (A, B, C) of the edge opposite each corner, interior positive
    owns: torch.Tensor  # [F, 3] int64 1 where pixel centres exactly on that edge belong to the face (top-left rule)
    colors: torch.Tensor  # [F, 3, 3] float64 corner colours
    labels: torch.Tensor  # [F] int64


def check_mesh(mesh: RenderMesh) -> None:
    v, f, c = np.asarray(mesh.vertices), np.asarray(mesh.faces), np.asarray(mesh.colors)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"mesh {mesh.label}: vertices must be [V, 3], got {v.shape}")
    if f.size and (f.ndim != 2 or f.shape[1] != 3):
        raise ValueError(f"mesh {mesh.label}: faces must be [F, 3], got {f.shape}")
    if c.shape != v.shape:
        raise ValueError(f"mesh {mesh.label}: colors must be [V, 3] like the vertices, got {c.shape}")
    if not (np.isfinite(v).all() and np.isfinite(c).all()):
        raise ValueError(f"mesh {mesh.label}: vertices and colors must be finite")
    if f.size and (f.min() < 0 or f.max() >= len(v)):
        raise ValueError(f"mesh {mesh.label}: face indices out of range for {len(v)} vertices")
    if int(mesh.label) <= 0:
        raise ValueError(f"mesh label must be > 0 (0 is the background), got {mesh.label}")


def output_frame(camera: ProjectingCamera, size: tuple[int, int] | None,
                 region: tuple[float, float, float, float] | None) -> tuple[int, int, np.ndarray, np.ndarray]:
    """Output ``(W, H)`` and the affine map ``out = (uv - origin) * scale`` from camera-image pixels to it.

    ``region = (x0, y0, x1, y1)`` selects a rectangle of the camera image (in its pixels; default the whole image)
    and ``size = (W, H)`` the output resolution (default: the region's size in camera pixels).
    """
    cam_w, cam_h = camera.image_size
    x0, y0, x1, y1 = (0.0, 0.0, float(cam_w), float(cam_h)) if region is None else map(float, region)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"region must be (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {region}")
    width, height = (round(x1 - x0), round(y1 - y0)) if size is None else (int(size[0]), int(size[1]))
    if width <= 0 or height <= 0:
        raise ValueError(f"output size must be positive, got {(width, height)}")
    return width, height, np.array([x0, y0]), np.array([width / (x1 - x0), height / (y1 - y0)])


def lowest(t: torch.Tensor) -> torch.Tensor:
    """Minimum over the size-3 dim 1 (much faster than ``amin(dim=1)`` on CPU)."""
    return torch.minimum(torch.minimum(t[:, 0], t[:, 1]), t[:, 2])


def highest(t: torch.Tensor) -> torch.Tensor:
    return torch.maximum(torch.maximum(t[:, 0], t[:, 1]), t[:, 2])


def total(t: torch.Tensor) -> torch.Tensor:
    return t[:, 0] + t[:, 1] + t[:, 2]


def rows_of(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``t[index]`` for a ``[F, ...]`` tensor, via ``index_select`` (faster than advanced indexing on CPU)."""
    return t.reshape(len(t), -1).index_select(0, index).reshape(len(index), *t.shape[1:])


def floor_div(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    return torch.div(a, b, rounding_mode="floor")


def ceil_div(a: torch.Tensor, b: torch.Tensor | int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def centre(pixel: torch.Tensor) -> torch.Tensor:
    """Fixed-point coordinate of the centre of integer pixel index ``pixel``."""
    return pixel * SUBPIXEL + SUBPIXEL // 2


def pixel_range(lo: torch.Tensor, hi: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last pixel index whose centre lies in the fixed-point interval ``[lo, hi]``, clipped to the image."""
    first = ceil_div(lo - SUBPIXEL // 2, SUBPIXEL).clamp(min=0)
    last = floor_div(hi - SUBPIXEL // 2, SUBPIXEL).clamp(max=size - 1)
    return first, last


def edge_lines(corners: torch.Tensor) -> torch.Tensor:
    """``[F, 3, 3]`` int64 line coefficients (A, B, C) of the edge opposite each corner of ``[F, 3, 2]`` triangles."""
    j, k = corners.roll(-1, dims=1), corners.roll(-2, dims=1)
    a = j[..., 1] - k[..., 1]
    b = k[..., 0] - j[..., 0]
    c = j[..., 0] * k[..., 1] - j[..., 1] * k[..., 0]
    return torch.stack([a, b, c], dim=-1)


def unit_colors(colors: np.ndarray) -> np.ndarray:
    """Vertex colours as float64 in [0, 1] (integer colours are read as 0..255)."""
    c = np.asarray(colors)
    scale = 255.0 if np.issubdtype(c.dtype, np.integer) else 1.0
    return np.clip(c.astype(np.float64) / scale, 0.0, 1.0)


def project_mesh(mesh: RenderMesh, camera: ProjectingCamera, origin: np.ndarray,
                 scale: np.ndarray) -> tuple[np.ndarray, ...]:
    """One mesh's per-face corner pixels ``[F, 3, 2]``, depths ``[F, 3]``, colours ``[F, 3, 3]`` and labels ``[F]``."""
    faces = np.asarray(mesh.faces, dtype=np.int64).reshape(-1, 3)
    uv, z = camera.project(np.asarray(mesh.vertices, dtype=np.float64))
    return (((uv - origin) * scale)[faces], z[faces], unit_colors(mesh.colors)[faces],
            np.full(len(faces), int(mesh.label), dtype=np.int64))


def cull_faces(corners: torch.Tensor, depth: torch.Tensor, colors: torch.Tensor, labels: torch.Tensor,
               near: float) -> Faces:
    """Snap ``[F, 3, 2]`` corners to fixed point, drop faces behind the near plane, outside the guard band or
    degenerate on screen, and orient the rest counter-clockwise."""
    keep = (lowest(depth) > near) & (highest(corners.abs().amax(dim=2)) < GUARD_BAND)
    corners, depth, colors, labels = corners[keep], depth[keep], colors[keep], labels[keep]
    fixed = torch.round(corners * SUBPIXEL).long()
    lines = edge_lines(fixed)
    area2 = total(lines[:, :, 2])
    visible = area2 != 0
    lines = lines[visible] * torch.sign(area2[visible])[:, None, None]
    return Faces(fixed[visible], depth[visible], lines, owns_edges(lines), colors[visible], labels[visible])


def gather_faces(meshes: list[RenderMesh], camera: ProjectingCamera, origin: np.ndarray, scale: np.ndarray,
                 near: float, device: torch.device, check: Callable[[], None] = no_check) -> Faces:
    """Every mesh's faces, projected and culled (:func:`cull_faces`) in chunks of at most ``FACE_CHUNK`` faces,
    with ``check()`` before each mesh and each chunk."""
    parts = []
    for mesh in meshes:
        if not np.asarray(mesh.faces).size:
            continue
        check()
        projected = project_mesh(mesh, camera, origin, scale)
        for start in range(0, len(projected[0]), FACE_CHUNK):
            check()
            chunk = (torch.from_numpy(a[start:start + FACE_CHUNK]).to(device) for a in projected)
            parts.append(cull_faces(*chunk, near))
    if not parts:
        empty = (torch.zeros(0, 3, 2, dtype=torch.float64), torch.zeros(0, 3, dtype=torch.float64),
                 torch.zeros(0, 3, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.int64))
        return cull_faces(*(t.to(device) for t in empty), near)
    return Faces(*(torch.cat([getattr(part, name) for part in parts]) for name in Faces.__dataclass_fields__))


def face_rows(faces: Faces, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """First pixel row whose centre line crosses each face's bounding box, and how many rows (0 if off-screen)."""
    y = faces.corners[:, :, 1]
    first, last = pixel_range(lowest(y), highest(y), height)
    return first, (last - first + 1).clamp(min=0)


def row_spans(faces: Faces, chosen: torch.Tensor, y_first: torch.Tensor, rows: torch.Tensor,
              width: int) -> tuple[torch.Tensor, ...]:
    """Per (face, pixel row) spans ``(face, y, x_first, count)`` of the chosen faces' candidate pixels: exactly the
    pixel centres of the row with all three edge functions >= 0 (the top-left rule then settles the zeros)."""
    device = rows.device
    face = torch.repeat_interleave(chosen, rows[chosen])
    start = torch.cumsum(rows[chosen], 0) - rows[chosen]
    y = y_first[face] + (torch.arange(len(face), device=device) - torch.repeat_interleave(start, rows[chosen]))
    x = faces.corners[face, :, 0]
    x_first, x_last = pixel_range(lowest(x), highest(x), width)
    lo, hi = row_extent(rows_of(faces.lines, face), centre(y))
    x_first = torch.maximum(x_first, ceil_div(lo - SUBPIXEL // 2, SUBPIXEL))
    x_last = torch.minimum(x_last, floor_div(hi - SUBPIXEL // 2, SUBPIXEL))
    count = (x_last - x_first + 1).clamp(min=0)
    keep = count > 0
    return face[keep], y[keep], x_first[keep], count[keep]


def row_extent(lines: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-point x interval ``[lo, hi]`` where ``A x + B y + C >= 0`` for all three edges on the line ``y``."""
    a, rest = lines[..., 0], lines[..., 1] * y[:, None] + lines[..., 2]
    safe = torch.where(a == 0, torch.ones_like(a), a.abs())
    unbounded = torch.full_like(a, torch.iinfo(torch.int64).max // 2)
    lower = highest(torch.where(a > 0, ceil_div(-rest, safe), -unbounded))
    upper = lowest(torch.where(a < 0, floor_div(rest, safe), unbounded))
    return lower, upper


def chunks(sizes: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` ranges whose sizes sum to at most ``budget`` (or a single oversized item)."""
    ends = torch.cumsum(sizes.cpu(), 0)
    out, start = [], 0
    while start < len(sizes):
        before = int(ends[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(ends, before + budget, right=True)), start + 1)
        out.append((start, stop))
        start = stop
    return out


def owns_edges(lines: torch.Tensor) -> torch.Tensor:
    """Top-left rule ``[F, 3]`` (int64 0/1): a face owns the pixel centres lying exactly on an edge whose (A, B) is
    lexicographically positive. The face on the edge's other side sees exactly negated (A, B), so exactly one owns
    them; coverage is then ``w + owns > 0`` for all three edges, ``w`` being integers."""
    a, b = lines[..., 0], lines[..., 1]
    return ((a > 0) | ((a == 0) & (b > 0))).long()


def edge_values(lines: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact int64 edge functions ``[N, 3]`` at the centres of integer pixels ``x``, ``y``."""
    return lines[..., 0] * centre(x)[:, None] + lines[..., 1] * centre(y)[:, None] + lines[..., 2]


def barycentric(w: torch.Tensor) -> torch.Tensor:
    """Screen-space barycentric coordinates from the (exact) edge functions."""
    return w.double() / total(w).double()[:, None]


def corner_weights(w: torch.Tensor, depth: torch.Tensor, perspective: bool) -> torch.Tensor:
    """Interpolation weights of the three corners: screen barycentrics, made perspective-correct if needed."""
    bary = barycentric(w)
    if not perspective:
        return bary
    scaled = bary / depth
    return scaled / total(scaled)[:, None]


def fragment_depth(w: torch.Tensor, depth: torch.Tensor, perspective: bool) -> torch.Tensor:
    """Camera depth at fragments (``1 / z`` is affine in screen space for perspective cameras, ``z`` otherwise)."""
    bary = barycentric(w)
    if perspective:
        return 1.0 / total(bary / depth)
    return total(bary * depth)


def visibility(faces: Faces, width: int, height: int, perspective: bool, budget: int,
               check: Callable[[], None] = no_check) -> torch.Tensor:
    """Packed nearest-fragment key per pixel ``[H * W]`` int64 (``int64 max`` where nothing is drawn);
    ``check()`` before each chunk of work."""
    device = faces.lines.device
    keys = torch.full((height * width,), torch.iinfo(torch.int64).max, dtype=torch.int64, device=device)
    y_first, rows = face_rows(faces, height)
    chosen = torch.nonzero(rows > 0).squeeze(1)
    for start, stop in chunks(rows[chosen], budget // 4):
        check()
        face, y, x_first, count = row_spans(faces, chosen[start:stop], y_first, rows, width)
        for first, last in chunks(count, budget):
            check()
            draw_spans(keys, faces, face[first:last], y[first:last], x_first[first:last], count[first:last],
                       width, perspective)
    return keys


def draw_spans(keys: torch.Tensor, faces: Faces, face: torch.Tensor, y: torch.Tensor, x_first: torch.Tensor,
               count: torch.Tensor, width: int, perspective: bool) -> None:
    """Expand spans into fragments, test coverage and fold the nearest into ``keys`` in place.

    Integer edge functions are exact, so along a span they are stepped from its first pixel by ``A`` per pixel.
    """
    lines, owns = rows_of(faces.lines, face), faces.owns[face]
    first = edge_values(lines, x_first, y) + owns
    step = lines[..., 0] * SUBPIXEL
    span = torch.repeat_interleave(torch.arange(len(face), device=face.device), count)
    offset = torch.arange(len(span), device=face.device) - (torch.cumsum(count, 0) - count)[span]
    biased = first[span] + offset[:, None] * step[span]
    hit = lowest(biased) > 0
    span, offset, biased = span[hit], offset[hit], biased[hit]
    f = face[span]
    z = fragment_depth(biased - owns[span], faces.depth[f], perspective).float()
    key = (z.view(torch.int32).long() << FACE_BITS) | f
    keys.scatter_reduce_(0, y[span] * width + x_first[span] + offset, key, reduce="amin")


def shade(faces: Faces, keys: torch.Tensor, width: int, height: int, perspective: bool) -> Rendering:
    """Colours, ids and depths of the winning faces."""
    device = keys.device
    rgb = torch.zeros((height * width, 3), dtype=torch.uint8, device=device)
    ids = torch.zeros(height * width, dtype=torch.int64, device=device)
    depth = torch.full((height * width,), torch.inf, dtype=torch.float32, device=device)
    pixel = torch.nonzero(keys != torch.iinfo(torch.int64).max).squeeze(1)
    if len(pixel):
        key = keys[pixel]
        face = key & ((1 << FACE_BITS) - 1)
        depth[pixel] = (key >> FACE_BITS).int().view(torch.float32)
        w = edge_values(rows_of(faces.lines, face), pixel % width, pixel // width)
        weights = corner_weights(w, faces.depth[face], perspective)
        color = total(weights[:, :, None] * faces.colors[face])
        rgb[pixel] = torch.round(color.clamp(0.0, 1.0) * 255.0).to(torch.uint8)
        ids[pixel] = faces.labels[face]
    return Rendering(rgb.reshape(height, width, 3).cpu().numpy(),
                     ids.reshape(height, width).cpu().numpy().astype(np.uint32),
                     depth.reshape(height, width).cpu().numpy())


def render_instances(meshes: list[RenderMesh], camera: ProjectingCamera, *, size: tuple[int, int] | None = None,
                     region: tuple[float, float, float, float] | None = None, near: float = NEAR,
                     device: str | torch.device | None = None, budget: int = FRAGMENT_BUDGET,
                     check: Callable[[], None] = no_check) -> Rendering:
    """Render instance meshes (scene frame S) through the camera: vertex colours, instance ids and depth.

    The output is the camera's ``image_size`` ``(W, H)`` unless ``region`` (a rectangle ``(x0, y0, x1, y1)`` of the
    camera image, in its pixels) and/or ``size`` (the output ``(W, H)``) say otherwise. ``device`` defaults to CPU.
    ``check`` is called between pieces of the work (each mesh, each chunk of fragments); it raises to stop.
    """
    for mesh in meshes:
        check_mesh(mesh)
    width, height, origin, scale = output_frame(camera, size, region)
    device = torch.device(device or "cpu")
    perspective = camera.perspective
    faces = gather_faces(meshes, camera, origin, scale, near, device, check)
    if len(faces.labels) >= 1 << (FACE_BITS - 1):
        raise ValueError(f"too many faces to render at once: {len(faces.labels)}")
    keys = visibility(faces, width, height, perspective, max(int(budget), width), check)
    check()
    return shade(faces, keys, width, height, perspective)
