"""Fit the camera that maps the scene frame S onto the input image, from generated voxels and instance masks.

The released model's view convention is not documented, so it is fitted (DESIGN.md §5):

1. **Orientation search.** For each of the 24 axis-aligned orientations, an orthographic camera (scale and
   offset) is fitted in closed form by matching each instance's rendered silhouette moments (centroid, spread,
   occlusion included) to its mask's, then scored by silhouette IoU on a coarse canvas.
2. **Orthographic refinement** of the best few orientations by silhouette alignment (below); the best IoU wins.
3. **Perspective refinement** of the winner, started from the orthographic fit at a few camera distances.
4. The perspective camera is kept when its perspective is visible and it fits clearly better.

Silhouette alignment is an ICP between outlines: the voxels are splatted with a z-buffer (each voxel as the
bounding rectangle of its projected cube), and Levenberg-Marquardt steps reduce the robust distance, along the
edge normals, between the rendered outline edges (placed exactly on the voxel rectangles' sides) and the mask
outline edges (pixel-exact, from the full-resolution label map), both ways. Only voxels that can show are
splatted: per instance, the first voxel of each grid line along the view axis and, in perspective, the outermost
ones across it. The region around the crop is sampled on a "canvas" of cells (the label map is sampled, the
voxels never are); IoU is counted on it, inside the image only.

All cameras share one parametrisation, ``theta = (m, k, tx, ty, cx, cy)``, with ``q = R p`` an S point in the
camera axes of the orientation ``R`` (OpenCV: x right, y down, z forward):

    u = m (q_x + tx) / (1 + k q_z) + cx,     v = m (q_y + ty) / (1 + k q_z) + cy

``m`` is the magnification (pixels per scene unit at the depth of S's origin) and ``k`` the inverse distance
from the camera to that depth; ``k = 0`` is orthographic. The perspective camera is ``f = m / k``,
``t = (tx, ty, 1 / k)``. Unlike ``(f, distance)``, this stays well conditioned as the perspective vanishes.
The principal point is free in perspective, with a weak prior at the crop centre (it trades against the lateral
offset and is only determined by parallax); orthographic cameras keep it at the crop centre.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .model import ORTHOGRAPHIC, PERSPECTIVE, Camera, axis_aligned_rotations

GRID = 64
ORTHO_DEPTH = 2.0  # distance from an orthographic camera to S's origin plane (any value in front of S works)
SCENE_FILL = 1 / 1.2  # the crop box is the masks' bounding box enlarged 1.2x: the scene spans ~1/1.2 of it

SEARCH_CELLS, REFINE_CELLS, FINAL_CELLS = 96, 160, 320  # canvas resolutions, in cells across the crop box
SEARCH_KEEP = 3  # orientations refined after the moment fit ...
SEARCH_MARGIN = 0.25  # ... among those whose IoU is within this of the best one
ORTHO_ITERATIONS = (8, 6)  # refinement iterations on the REFINE / FINAL canvas
PERSPECTIVE_ITERATIONS = (16, 8)
PERSPECTIVE_START_K = (0.2, 0.45)  # inverse distances the perspective refinement starts from
PERSPECTIVE_MIN_PIXELS = 1.0  # perspective is kept only when it moves some voxel by this much ...
PERSPECTIVE_GAIN = 0.9  # ... and lowers the orthographic fit's misfit by this factor
PRINCIPAL_PRIOR = 0.25  # the principal point's prior sd around the crop centre, in crop sizes ...
PRINCIPAL_PRIOR_PIXELS = 0.5  # ... costs as much as this rms outline distance
HUBER = 2.0  # outline distances above this many cells count linearly
MAX_OUTLINE_POINTS = 400  # outline points per instance and edge class in one alignment step
MAX_FOOTPRINT = 12.0  # cells; larger voxel footprints only occur for absurd candidate cameras

DEFAULT_ROTATION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""Best guess of the model's view, used when nothing can be fitted: along +y of S, z up, +x to the right (the
view of S that Blender's front view and a glTF viewer's default view show)."""


# --- public API ------------------------------------------------------------------------------------------
@dataclass
class CameraFit:
    camera: Camera
    mean_iou: float  # mean over all input instances (those left out of the fit count as 0)
    per_instance_iou: dict[int, float]
    orientation: int  # index into axis_aligned_rotations()
    details: dict = field(default_factory=dict)  # JSON-ready facts about the fit (method, kind, misfit, ...)

    def to_dict(self) -> dict:
        fit = {
            "mean_iou": float(self.mean_iou),
            "per_instance_iou": {str(label): float(iou) for label, iou in self.per_instance_iou.items()},
            "orientation": int(self.orientation),
            **self.details,
        }
        return {"camera": self.camera.to_dict(), "fit": fit}


def default_camera(crop_box, image_size) -> Camera:
    """The camera used when nothing can be fitted: orthographic front view (:data:`DEFAULT_ROTATION`), S's origin
    at the crop centre, the unit cube spanning the masks' extent (1/1.2 of the crop box)."""
    x0, y0, x1, y1 = (float(v) for v in crop_box)
    side = max(x1 - x0, y1 - y0, 1.0)
    return Camera(ORTHOGRAPHIC, DEFAULT_ROTATION, (0.0, 0.0, ORTHO_DEPTH), side * SCENE_FILL,
                  ((x0 + x1) / 2, (y0 + y1) / 2), tuple(image_size))


def default_orientation() -> int:
    """Index of :data:`DEFAULT_ROTATION` in :func:`axis_aligned_rotations`."""
    return int(np.argmin(np.abs(axis_aligned_rotations() - DEFAULT_ROTATION).sum(axis=(1, 2))))


def solve_camera(voxels: dict[int, np.ndarray], ids: np.ndarray, crop_box, *,
                 kinds=(PERSPECTIVE, ORTHOGRAPHIC), check: Callable[[], None] | None = None) -> CameraFit:
    """Fit the camera that maps S onto the image whose label map is ``ids`` (``[H, W]``, 0 = background).

    ``voxels[label]``: ``[M, 3]`` integer coordinates in the 64³ grid of S; ``crop_box``: the model's input crop
    ``(x0, y0, x1, y1)`` in image pixels; ``kinds``: the camera models to try. Instances without voxels or without
    a mask are left out of the fit and get IoU 0; when none is left, :func:`default_camera` is returned.
    ``check`` is called between pieces of the search (each a small fraction of a second); it raises to stop.
    """
    if not voxels:
        raise ValueError("solve_camera needs at least one instance (got an empty voxels dict)")
    kinds = tuple(kinds)
    if not kinds or any(kind not in (PERSPECTIVE, ORTHOGRAPHIC) for kind in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {(PERSPECTIVE, ORTHOGRAPHIC)}, got {kinds}")
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"ids must be a [H, W] label map, got shape {ids.shape}")
    image_size = (ids.shape[1], ids.shape[0])
    crop = _Crop.from_box(crop_box)
    scene = _Scene.build(voxels, ids)
    if scene is None:
        return CameraFit(default_camera(crop_box, image_size), 0.0, {int(label): 0.0 for label in voxels},
                         default_orientation(), {"method": "default", "kind": ORTHOGRAPHIC,
                                                 "reason": "no instance has both voxels and a mask"})
    return _Solver(scene, ids, crop, image_size, kinds, check).solve()


# --- inputs ----------------------------------------------------------------------------------------------
@dataclass
class _Crop:
    centre: np.ndarray  # [2] pixels
    side: float  # pixels

    @classmethod
    def from_box(cls, crop_box) -> _Crop:
        x0, y0, x1, y1 = (float(v) for v in crop_box)
        if not np.all(np.isfinite([x0, y0, x1, y1])):
            raise ValueError(f"crop_box must be finite, got {crop_box}")
        return cls(np.array([(x0 + x1) / 2, (y0 + y1) / 2]), max(abs(x1 - x0), abs(y1 - y0), 1.0))


@dataclass
class _Scene:
    """The instances taking part in the fit: their surface voxels and the bounding boxes of their masks."""

    labels: list[int]  # every input label, in input order
    fitted: list[int]  # the labels with voxels and a mask; position in this list = instance index below
    coords: np.ndarray  # [N, 3] surface voxels (grid coordinates)
    instance: np.ndarray  # [N]
    mask_boxes: np.ndarray  # [n, 4] pixel bounding boxes (x0, y0, x1, y1) of the fitted masks, x1/y1 exclusive

    @classmethod
    def build(cls, voxels: dict[int, np.ndarray], ids: np.ndarray) -> _Scene | None:
        fitted, boxes, surfaces = [], [], []
        for label, coords in voxels.items():
            coords = _clean_coords(coords)
            box = _mask_box(ids, int(label)) if len(coords) and int(label) > 0 else None
            if box is not None:
                fitted.append(int(label))
                boxes.append(box)
                surfaces.append(_surface(coords))
        if not fitted:
            return None
        instance = np.concatenate([np.full(len(coords), i) for i, coords in enumerate(surfaces)])
        return cls([int(label) for label in voxels], fitted, np.concatenate(surfaces), instance, np.array(boxes))

    @property
    def points(self) -> np.ndarray:
        """Voxel centres in S, ``[N, 3]``."""
        return (self.coords + 0.5) / GRID - 0.5


def _clean_coords(coords) -> np.ndarray:
    coords = np.asarray(coords).reshape(-1, 3).astype(np.int64)
    return np.unique(coords[np.all((coords >= 0) & (coords < GRID), axis=1)], axis=0)


def _mask_box(ids: np.ndarray, label: int) -> tuple[int, int, int, int] | None:
    mask = ids == label
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def _surface(coords: np.ndarray) -> np.ndarray:
    """The voxels of ``coords`` with an empty 6-neighbour."""
    occupied = np.zeros((GRID + 2,) * 3, dtype=bool)
    occupied[tuple((coords + 1).T)] = True
    steps = np.concatenate([np.eye(3, dtype=np.int64), -np.eye(3, dtype=np.int64)])
    neighbours = coords[:, None, :] + 1 + steps  # [N, 6, 3]
    return coords[~occupied[tuple(np.moveaxis(neighbours, 2, 0))].all(axis=1)]


def _outermost(coords: np.ndarray, instance: np.ndarray, axis: int, lowest: bool) -> np.ndarray:
    """Whether each voxel is the lowest (or highest) along ``axis`` of its instance's voxels on its grid line."""
    others = [a for a in range(3) if a != axis]
    line = (instance * GRID + coords[:, others[0]]) * GRID + coords[:, others[1]]
    position = coords[:, axis] if lowest else GRID - 1 - coords[:, axis]
    best = np.full((instance.max(initial=0) + 1) * GRID * GRID, GRID)
    np.minimum.at(best, line, position)
    return position == best[line]


_EDGE_CLASSES = ((0, 1), (0, -1), (1, 1), (1, -1))
"""Outline edges by (image axis, side): right (x max), left, bottom (y max) and top edges of a region."""


def _mask_edges(ids: np.ndarray, label: int, box) -> list[np.ndarray]:
    """The pixel-exact outline of one label's mask, per :data:`_EDGE_CLASSES`: points ``[n, 2]`` in the middle of
    the pixel edges between the mask and its outside, except edges on the image border (nothing is known past
    it). At most :data:`MAX_OUTLINE_POINTS` per class, evenly spread."""
    height, width = ids.shape
    x0, y0, x1, y1 = int(box[0]) - 1, int(box[1]) - 1, int(box[2]) + 1, int(box[3]) + 1
    known = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    known[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = True
    mask = np.zeros_like(known)
    mask[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = ids[cy0:cy1, cx0:cx1] == label
    edges = []
    for axis, side in _EDGE_CLASSES:
        array_axis = 1 - axis
        beyond = np.roll(mask, -side, axis=array_axis)
        beyond_known = np.roll(known, -side, axis=array_axis)
        found = mask & ~beyond & beyond_known
        border = [slice(None), slice(None)]
        border[array_axis] = -1 if side > 0 else 0
        found[tuple(border)] = False  # np.roll wrapped around there
        rows, columns = np.nonzero(found)
        points = np.stack([x0 + columns + 0.5, y0 + rows + 0.5], axis=1)
        points[:, axis] += 0.5 * side
        edges.append(points[_subsample(np.arange(len(points)))])
    return edges


# --- the camera parameters -------------------------------------------------------------------------------
M, K, TX, TY, CX, CY = range(6)


def _project(q: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Pixels ``[n, 2]`` of camera-axis points ``q`` under ``theta``."""
    scale = theta[M] / (1.0 + theta[K] * q[:, 2])
    return (q[:, :2] + theta[TX:TY + 1]) * scale[:, None] + theta[CX:CY + 1]


def _footprint(q: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel bounding rectangles ``(low, high)``, ``[n, 2]`` each, of the projected voxel cubes centred on ``q``.

    The rectangle spans the cube's near and far faces, so off the optical axis it holds the side faces a cube
    shows in perspective; it exceeds the exact (hexagonal) silhouette only at two corners.
    """
    half = 0.5 / GRID
    near, far = 1.0 + theta[K] * (q[:, 2:] - half), 1.0 + theta[K] * (q[:, 2:] + half)
    start = q[:, :2] + theta[TX:TY + 1] - half
    end = start + 2 * half
    low = np.minimum(start / near, start / far)
    high = np.maximum(end / near, end / far)
    return theta[M] * low + theta[CX:CY + 1], theta[M] * high + theta[CX:CY + 1]


def _jacobian(q: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``d(u, v) / d theta`` of camera-axis points ``q``, ``[n, 2, 6]``."""
    denominator = 1.0 + theta[K] * q[:, 2]
    xy = q[:, :2] + theta[TX:TY + 1]
    jac = np.zeros((len(q), 2, 6))
    jac[:, :, M] = xy / denominator[:, None]
    jac[:, :, K] = -theta[M] * xy * (q[:, 2] / denominator ** 2)[:, None]
    jac[:, 0, TX] = jac[:, 1, TY] = theta[M] / denominator
    jac[:, 0, CX] = jac[:, 1, CY] = 1.0
    return jac


def _edge_jacobian(q: np.ndarray, theta: np.ndarray, axis: int, side: np.ndarray) -> np.ndarray:
    """``d(edge) / d theta``, ``[n, 6]``, of the ``side`` (+1 high, -1 low) edge along image ``axis`` of the
    footprints of voxels ``q``: the derivative of the projected cube corner that makes that edge."""
    half = 0.5 / GRID
    numerator = q[:, axis] + theta[TX + axis] + side * half
    corner = q.copy()
    corner[:, axis] += side * half
    corner[:, 2] += np.where(side * numerator > 0, -half, half)  # the near face sticks out away from the axis
    return _jacobian(corner, theta)[:, axis, :]


def _max_k(q: np.ndarray) -> float:
    """The largest inverse distance that keeps every point at least 1/8 of the distance in front of the camera."""
    nearest = -float(np.min(q[:, 2], initial=0.0))
    return 0.875 / nearest if nearest > 0 else 4.0


def _camera(rotation: np.ndarray, theta: np.ndarray, image_size: tuple[int, int]) -> Camera:
    principal = (theta[CX], theta[CY])
    if theta[K] <= 0:
        return Camera(ORTHOGRAPHIC, rotation, (theta[TX], theta[TY], ORTHO_DEPTH), theta[M], principal, image_size)
    distance = 1.0 / theta[K]
    return Camera(PERSPECTIVE, rotation, (theta[TX], theta[TY], distance), theta[M] * distance, principal,
                  image_size)


# --- canvas and rasterisation ----------------------------------------------------------------------------
@dataclass
class _Canvas:
    """A grid of sample points, one per square cell of ``cell`` pixels, each moved to the centre of the image pixel
    holding the cell's centre, so that the label map and the renders are sampled at the very same points."""

    xs: np.ndarray  # [columns] sample x (pixel centres, increasing)
    ys: np.ndarray  # [rows] sample y
    cell: float
    labels: np.ndarray  # [rows, columns] fitted-instance index of the label map at the samples, -1 elsewhere
    inside: np.ndarray  # [rows, columns] samples inside the image (outside it nothing is known)
    trusted: np.ndarray  # [rows, columns] samples with all 4 neighbours inside the image too

    @classmethod
    def covering(cls, box: np.ndarray, cell: float, ids: np.ndarray, fitted: list[int]) -> _Canvas:
        start = np.floor(box[:2] / cell) * cell
        columns, rows = (np.ceil((box[2:] - start) / cell).astype(int) + 1).tolist()
        xs = np.floor(start[0] + cell * (np.arange(columns) + 0.5)) + 0.5
        ys = np.floor(start[1] + cell * (np.arange(rows) + 0.5)) + 0.5
        height, width = ids.shape
        inside = ((ys >= 0) & (ys < height))[:, None] & ((xs >= 0) & (xs < width))[None, :]
        padded = np.pad(inside, 1, constant_values=True)
        trusted = inside & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
        return cls(xs, ys, cell, _sample_labels(ids, xs, ys, fitted), inside, trusted)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.ys), len(self.xs)


def _sample_labels(ids: np.ndarray, xs: np.ndarray, ys: np.ndarray, fitted: list[int]) -> np.ndarray:
    x, y = xs.astype(np.int64), ys.astype(np.int64)
    height, width = ids.shape
    valid_x, valid_y = (x >= 0) & (x < width), (y >= 0) & (y < height)
    sampled = np.zeros((len(ys), len(xs)), dtype=np.int64)
    sampled[np.ix_(valid_y, valid_x)] = ids[np.ix_(y[valid_y], x[valid_x])]
    order = np.argsort(fitted)
    sorted_labels = np.asarray(fitted, dtype=np.int64)[order]
    position = np.clip(np.searchsorted(sorted_labels, sampled), 0, len(fitted) - 1)
    hit = (sorted_labels[position] == sampled) & (sampled != 0)
    return np.where(hit, order[position], -1).astype(np.int32)


def _rasterise(canvas: _Canvas, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Z-buffered splats: for each sample the index of the first rectangle ``[low, high)`` (pixels, ``[n, 2]``
    each, sorted near to far) that covers it, ``-1`` for none; ``[rows, columns]``."""
    rows, columns = canvas.shape
    high = np.minimum(high, low + MAX_FOOTPRINT * canvas.cell)
    first = np.stack([np.searchsorted(canvas.xs, low[:, 0]), np.searchsorted(canvas.ys, low[:, 1])], axis=1)
    last = np.stack([np.searchsorted(canvas.xs, high[:, 0]), np.searchsorted(canvas.ys, high[:, 1])], axis=1)
    span = int(np.max(last - first, initial=0))
    nearest = np.full(rows * columns, len(low), dtype=np.int64)
    if span > 0:
        steps = np.arange(span)
        x = first[:, 0, None] + steps
        y = first[:, 1, None] + steps
        covered = (y < last[:, 1, None])[:, :, None] & (x < last[:, 0, None])[:, None, :]
        flat = y[:, :, None] * columns + x[:, None, :]
        index = np.broadcast_to(np.arange(len(low))[:, None, None], covered.shape)
        np.minimum.at(nearest, flat[covered], index[covered])
    nearest[nearest == len(low)] = -1
    return nearest.reshape(rows, columns)


def _iou(rendered: np.ndarray, canvas: _Canvas, count: int) -> np.ndarray:
    """Per-instance IoU of a rendered instance-index image (``-1`` = none) and the masks, inside the image."""
    masks = canvas.labels
    rendered = np.where(canvas.inside, rendered, -1)
    inter = np.bincount(rendered[(rendered == masks) & (rendered >= 0)], minlength=count)[:count]
    area_rendered = np.bincount(rendered[rendered >= 0], minlength=count)[:count]
    area_masks = np.bincount(masks[masks >= 0], minlength=count)[:count]
    union = area_rendered + area_masks - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


# --- views and candidates --------------------------------------------------------------------------------
@dataclass
class _View:
    """The scene's surface voxels that can show in one orientation, in its camera axes, sorted near to far."""

    index: int
    rotation: np.ndarray
    q: np.ndarray  # [N, 3]
    instance: np.ndarray  # [N]
    front: np.ndarray  # [N] first of its instance along the view direction: all an orthographic view can show
    side: np.ndarray  # [N] outermost of its instance sideways: what a perspective view shows besides

    @classmethod
    def build(cls, scene: _Scene, index: int, rotation: np.ndarray) -> _View:
        """Within one instance, only the first voxel of each line along the view axis can show orthographically
        (the others are exactly behind it); perspective also shows sides, whose voxels are outermost along the
        image axes. Silhouettes and inter-instance occlusion need nothing else."""
        coords, instance = scene.coords, scene.instance
        forward = int(np.argmax(np.abs(rotation[2])))
        front = _outermost(coords, instance, forward, lowest=rotation[2, forward] > 0)
        side = np.zeros_like(front)
        for axis in {0, 1, 2} - {forward}:
            side |= _outermost(coords, instance, axis, True) | _outermost(coords, instance, axis, False)
        keep = front | side
        q = scene.points[keep] @ rotation.T
        order = np.argsort(q[:, 2], kind="stable")
        return cls(index, rotation, q[order], instance[keep][order], front[keep][order], side[keep][order])

    def subset(self, perspective: bool) -> tuple[np.ndarray, np.ndarray]:
        keep = self.front | self.side if perspective else self.front
        return self.q[keep], self.instance[keep]

@dataclass
class _Candidate:
    view: _View
    theta: np.ndarray
    iou: np.ndarray  # per fitted instance, on the canvas it was last scored on
    cost: float = np.inf  # outline misfit on that canvas (see _Alignment), once refined

    @property
    def mean_iou(self) -> float:
        return float(self.iou.mean())


# --- orientation search: silhouette moments --------------------------------------------------------------
def _moments(image: np.ndarray, canvas: _Canvas, count: int) -> np.ndarray:
    """Per instance of an instance-index image: area (samples), centroid (pixels, 2) and spread (standard
    deviation, pixels, 2); ``[count, 5]``."""
    rows, columns = np.nonzero(image >= 0)
    which = image[rows, columns]
    x, y = canvas.xs[columns], canvas.ys[rows]
    area = np.bincount(which, minlength=count).astype(np.float64)
    safe = np.maximum(area, 1)
    mean_x, mean_y = np.bincount(which, x, count) / safe, np.bincount(which, y, count) / safe
    var_x = np.bincount(which, x * x, count) / safe - mean_x ** 2
    var_y = np.bincount(which, y * y, count) / safe - mean_y ** 2
    cell_var = canvas.cell ** 2 / 12  # the spread of one cell, so that tiny regions have a size
    return np.stack([area, mean_x, mean_y, np.sqrt(np.maximum(var_x, 0) + cell_var),
                     np.sqrt(np.maximum(var_y, 0) + cell_var)], axis=1)


def _similarity_fit(measured: np.ndarray, target: np.ndarray, theta: np.ndarray) -> np.ndarray | None:
    """The orthographic ``theta`` that makes the moments ``measured`` (of a render under ``theta``) match
    ``target``.

    Orthographic silhouettes, occlusion included, are similar figures for every scale and offset, so one render
    gives them in scene units (centroid ``(c - principal) / m - t``, spread ``s / m``) and the new ``(m, a, b)``
    of ``u = m x + a, v = m y + b`` solve the centroid and spread equations by least squares, each instance
    weighted by the square root of its mask's area.
    """
    m0, t0, principal = theta[M], theta[TX:TY + 1], theta[CX:CY + 1]
    centroid = (measured[:, 1:3] - principal) / m0 - t0
    spread = measured[:, 3:5] / m0
    n = len(measured)
    design, rhs = np.zeros((4 * n, 3)), np.zeros(4 * n)
    design[:n, 0], design[:n, 1], rhs[:n] = centroid[:, 0], 1.0, target[:, 1]
    design[n:2 * n, 0], design[n:2 * n, 2], rhs[n:2 * n] = centroid[:, 1], 1.0, target[:, 2]
    design[2 * n:3 * n, 0], rhs[2 * n:3 * n] = spread[:, 0], target[:, 3]
    design[3 * n:, 0], rhs[3 * n:] = spread[:, 1], target[:, 4]
    weight = np.tile(np.sqrt(target[:, 0] / target[:, 0].max()), 4)
    solution, *_ = np.linalg.lstsq(design * weight[:, None], rhs * weight, rcond=None)
    m, a, b = solution
    if not np.isfinite(solution).all() or m <= 0:
        return None
    out = theta.copy()
    out[M] = m
    out[TX:TY + 1] = (np.array([a, b]) - principal) / m
    return out


# --- silhouette alignment --------------------------------------------------------------------------------
@dataclass
class _State:
    theta: np.ndarray
    iou: np.ndarray
    cost: float
    jacobian: np.ndarray  # [n, 6] d(edge position along its normal) / d theta, per residual
    residual: np.ndarray  # [n] pixels, mask edge minus rendered edge along the normal
    weight: np.ndarray  # [n] outline balance times Huber weight


class _Alignment:
    """The outline misfit of one view on one canvas, and Levenberg-Marquardt steps that reduce it.

    The misfit is the mean robust squared distance (pixels²) along the edge normals between rendered and mask
    outline edges of the same instance and edge class, both ways (each rendered edge to its nearest mask edge,
    each mask edge to its nearest rendered edge; the two directions balanced per instance and class), plus the
    principal point's prior. A mask edge class with no rendered edge at all costs a fixed large distance.
    """

    def __init__(self, canvas: _Canvas, q: np.ndarray, instance: np.ndarray, mask_edges: list[list[np.ndarray]],
                 crop: _Crop):
        self.canvas, self.q, self.instance, self.mask_edges, self.crop = canvas, q, instance, mask_edges, crop
        self.huber = HUBER * canvas.cell
        self.norm = max(sum(len(points) for edges in mask_edges for points in edges), 1)
        self.prior = PRINCIPAL_PRIOR_PIXELS ** 2 / (PRINCIPAL_PRIOR * crop.side) ** 2
        self.missing = _huber(np.array([4 * self.huber]), self.huber)[0]

    def evaluate(self, theta: np.ndarray) -> _State:
        low, high = _footprint(self.q, theta)
        owner = _rasterise(self.canvas, low, high)
        rendered = np.where(owner >= 0, self.instance[owner], -1)
        iou = _iou(rendered, self.canvas, len(self.mask_edges))
        jacobians, residuals, weights = [], [], []
        unmatched = 0.0
        for edge_class, (axis, side) in enumerate(_EDGE_CLASSES):
            points, instance, maker, maker_side = self._rendered_edges(rendered, owner, low, high, axis, side)
            for i, mask_edges in enumerate(self.mask_edges):
                theirs = mask_edges[edge_class]
                ours = _subsample(np.flatnonzero(instance == i))
                if len(theirs) == 0:
                    continue
                if ours.size == 0:
                    unmatched += self.missing * len(theirs)
                    continue
                forward, backward = _mutual_nearest(points[ours], theirs)
                source = np.concatenate([ours, ours[backward]])
                residuals.append(np.concatenate([theirs[forward, axis], theirs[:, axis]]) - points[source, axis])
                jacobians.append(_edge_jacobian(self.q[maker[source]], theta, axis, maker_side[source]))
                weights.append(np.concatenate([np.full(ours.size, len(theirs) / ours.size), np.ones(len(theirs))]))
        if not residuals:
            return _State(theta, iou, np.inf, np.zeros((0, 6)), np.zeros(0), np.zeros(0))
        residual, balance = np.concatenate(residuals), np.concatenate(weights)
        offset = theta[CX:CY + 1] - self.crop.centre
        cost = (balance @ _huber(residual, self.huber) + unmatched) / self.norm + self.prior * offset @ offset
        huber_weight = np.minimum(1.0, self.huber / np.maximum(np.abs(residual), 1e-12))
        return _State(theta, iou, float(cost), np.concatenate(jacobians), residual, balance * huber_weight)

    def _rendered_edges(self, rendered: np.ndarray, owner: np.ndarray, low: np.ndarray, high: np.ndarray,
                        axis: int, side: int):
        """The rendered outline edges of one class: points ``[n, 2]`` (exact along ``axis``), their instance, and
        the voxel whose footprint side makes the edge with which side it is (+1 high, -1 low).

        An edge lies between a sample of an instance and the next sample along ``axis``; it is the owning voxel's
        footprint side, or the near side of a nearer voxel of another instance that covers the next sample
        (an occlusion edge), whichever comes first.
        """
        canvas = self.canvas
        array_axis = 1 - axis
        here, there = [slice(None)] * 2, [slice(None)] * 2
        here[array_axis] = slice(0, -1) if side > 0 else slice(1, None)
        there[array_axis] = slice(1, None) if side > 0 else slice(0, -1)
        here, there = tuple(here), tuple(there)
        found = ((rendered[here] >= 0) & (rendered[here] != rendered[there]) & canvas.trusted[here]
                 & canvas.trusted[there])
        rows, columns = np.nonzero(found)
        voxel, neighbour = owner[here][rows, columns], owner[there][rows, columns]
        rows, columns = (rows, columns + (side < 0)) if axis == 0 else (rows + (side < 0), columns)
        own_edge = (high if side > 0 else low)[voxel, axis]
        occluder_edge = (low if side > 0 else high)[np.maximum(neighbour, 0), axis]
        occluded = (neighbour >= 0) & (neighbour < voxel) & (side * (own_edge - occluder_edge) > 0)
        edge = np.where(occluded, occluder_edge, own_edge)
        samples = canvas.xs if axis == 0 else canvas.ys
        index = columns if axis == 0 else rows
        edge = np.clip(edge, np.minimum(samples[index], samples[index + side]),
                       np.maximum(samples[index], samples[index + side]))
        points = np.stack([canvas.xs[columns], canvas.ys[rows]], axis=1)
        points[:, axis] = edge
        return points, self.instance[voxel], np.where(occluded, neighbour, voxel), np.where(occluded, -side, side)

    def step(self, state: _State, free: np.ndarray, damping: float) -> np.ndarray | None:
        """The damped Gauss-Newton step for the ``free`` parameters, or None when there is nothing to fit."""
        if len(state.residual) < free.size:
            return None
        jac = state.jacobian[:, free]
        normal = jac.T @ (jac * state.weight[:, None]) / self.norm
        gradient = jac.T @ (state.weight * state.residual) / self.norm
        for column, parameter in enumerate(free):
            if parameter in (CX, CY):
                normal[column, column] += self.prior
                gradient[column] -= self.prior * (state.theta[parameter] - self.crop.centre[parameter - CX])
        diagonal = np.maximum(np.diag(normal), 1e-12 * max(np.diag(normal).max(), 1e-12))
        try:
            return np.linalg.solve(normal + damping * np.diag(diagonal), gradient)
        except np.linalg.LinAlgError:
            return None


def _huber(residual: np.ndarray, threshold: float) -> np.ndarray:
    magnitude = np.abs(residual)
    return np.where(magnitude <= threshold, magnitude ** 2, 2 * threshold * magnitude - threshold ** 2)


def _subsample(index: np.ndarray) -> np.ndarray:
    """At most :data:`MAX_OUTLINE_POINTS` of ``index``, evenly spread."""
    if index.size <= MAX_OUTLINE_POINTS:
        return index
    return index[np.linspace(0, index.size - 1, MAX_OUTLINE_POINTS).astype(np.int64)]


def _mutual_nearest(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point of ``first`` the index of its nearest point in ``second``, and the reverse."""
    squared = (first[:, None, 0] - second[None, :, 0]) ** 2 + (first[:, None, 1] - second[None, :, 1]) ** 2
    return squared.argmin(axis=1), squared.argmin(axis=0)


# --- the solver ------------------------------------------------------------------------------------------
class _Solver:
    def __init__(self, scene: _Scene, ids: np.ndarray, crop: _Crop, image_size: tuple[int, int], kinds,
                 check: Callable[[], None] | None = None):
        self.scene, self.ids, self.crop, self.image_size, self.kinds = scene, ids, crop, image_size, kinds
        self.check = check
        self.count = len(scene.fitted)
        self.region = self._region()
        self.canvases = {cells: _Canvas.covering(self.region, crop.side / cells, ids, scene.fitted)
                         for cells in (SEARCH_CELLS, REFINE_CELLS, FINAL_CELLS)}
        self.mask_edges = [_mask_edges(ids, label, box) for label, box in zip(scene.fitted, scene.mask_boxes)]

    def _region(self) -> np.ndarray:
        """The pixel box scored on: the crop box enlarged 1.5x around its centre, grown to hold every mask."""
        half = 0.75 * self.crop.side
        boxes = self.scene.mask_boxes
        return np.concatenate([np.minimum(self.crop.centre - half, boxes[:, :2].min(axis=0)),
                               np.maximum(self.crop.centre + half, boxes[:, 2:].max(axis=0))])

    def _checkpoint(self) -> None:
        if self.check is not None:
            self.check()

    def solve(self) -> CameraFit:
        views = [_View.build(self.scene, i, rotation) for i, rotation in enumerate(axis_aligned_rotations())]
        searched = sorted((self._moment_fit(view) for view in views), key=lambda c: -c.mean_iou)
        self._checkpoint()
        shortlist = [c for c in searched[:SEARCH_KEEP] if c.mean_iou >= searched[0].mean_iou - SEARCH_MARGIN]
        refined = sorted((self._refine(c, False, REFINE_CELLS, ORTHO_ITERATIONS[0]) for c in shortlist),
                         key=lambda c: -c.mean_iou)
        best = refined[0]
        runner_up = refined[1] if len(refined) > 1 else next(iter(searched[1:]), None)
        orthographic = self._refine(best, False, FINAL_CELLS, ORTHO_ITERATIONS[1])
        chosen = orthographic
        if PERSPECTIVE in self.kinds:
            perspective = self._perspective(best)
            if ORTHOGRAPHIC not in self.kinds or self._perspective_helps(perspective, orthographic):
                chosen = perspective
        return self._result(chosen, runner_up)

    # -- orientation search --
    def _moment_fit(self, view: _View) -> _Candidate:
        """An orthographic camera for ``view`` matching silhouette moments (see :func:`_similarity_fit`)."""
        self._checkpoint()
        canvas = self.canvases[SEARCH_CELLS]
        q, instance = view.subset(False)
        theta = self._initial_theta(q)
        rendered = self._render(canvas, q, instance, theta)
        measured = _moments(rendered, canvas, self.count)
        target = _moments(canvas.labels, canvas, self.count)
        usable = (measured[:, 0] > 0) & (target[:, 0] > 0)
        fitted = _similarity_fit(measured[usable], target[usable], theta) if usable.any() else None
        if fitted is not None:
            theta = fitted
            rendered = self._render(canvas, q, instance, theta)
        return _Candidate(view, theta, _iou(rendered, canvas, self.count))

    def _initial_theta(self, q: np.ndarray) -> np.ndarray:
        """Orthographic, the voxels' bounding box centred in the crop box and spanning 1/1.2 of it."""
        low, high = q.min(axis=0), q.max(axis=0)
        extent = max(float(np.max(high[:2] - low[:2])), 1.0 / GRID)
        centre = (low + high)[:2] / 2
        return np.array([self.crop.side * SCENE_FILL / extent, 0.0, -centre[0], -centre[1], *self.crop.centre])

    def _render(self, canvas: _Canvas, q: np.ndarray, instance: np.ndarray, theta: np.ndarray) -> np.ndarray:
        owner = _rasterise(canvas, *_footprint(q, theta))
        return np.where(owner >= 0, instance[owner], -1)

    # -- refinement --
    def _perspective(self, start: _Candidate) -> _Candidate:
        """Perspective refinements started from the orthographic fit at a few distances (``m`` kept, so S's
        origin plane keeps its scale); the best is refined on the final canvas."""
        best = None
        for k in PERSPECTIVE_START_K:
            theta = start.theta.copy()
            theta[K] = min(k, 0.5 * _max_k(start.view.q))
            candidate = self._refine(_Candidate(start.view, theta, start.iou), True, REFINE_CELLS,
                                     PERSPECTIVE_ITERATIONS[0])
            if best is None or candidate.cost < best.cost:
                best = candidate
        return self._refine(best, True, FINAL_CELLS, PERSPECTIVE_ITERATIONS[1])

    def _refine(self, start: _Candidate, perspective: bool, cells: int, iterations: int) -> _Candidate:
        """Levenberg-Marquardt on the outline misfit (see :class:`_Alignment`); a step is kept when it lowers the
        misfit. Orthographic refinement fixes the principal point at the crop centre."""
        q, instance = start.view.subset(perspective)
        free = np.array([M, K, TX, TY, CX, CY]) if perspective else np.array([M, TX, TY])
        theta = start.theta.copy()
        if not perspective:
            theta[K] = 0.0
            theta[CX:CY + 1] = self.crop.centre
        k_range = (1e-4 if perspective else 0.0, _max_k(q))
        canvas = self.canvases[cells]
        problem = _Alignment(canvas, q, instance, self.mask_edges, self.crop)
        self._checkpoint()
        state, damping = problem.evaluate(theta), 1e-3
        for _ in range(iterations):
            self._checkpoint()
            step = problem.step(state, free, damping)
            if step is None:
                break
            trial = state.theta.copy()
            trial[free] += step
            trial[K] = float(np.clip(trial[K], *k_range))
            trial[M] = max(trial[M], 1e-6)
            candidate = problem.evaluate(trial)
            if candidate.cost >= state.cost:
                damping *= 10
                continue
            moved = np.max(np.abs(state.jacobian[:, free] @ step), initial=0.0)
            state, damping = candidate, max(damping / 3, 1e-6)
            if moved < 0.05 * canvas.cell:
                break
        return _Candidate(start.view, state.theta, state.iou, state.cost)

    def _perspective_helps(self, perspective: _Candidate, orthographic: _Candidate) -> bool:
        """Whether the perspective fit is worth its extra parameters: its perspective visibly bends the image
        (against the same camera at k = 0) and it fits the outlines clearly better."""
        q = perspective.view.q
        flat = perspective.theta.copy()
        flat[K] = 0.0
        bend = np.max(np.linalg.norm(_project(q, perspective.theta) - _project(q, flat), axis=1), initial=0.0)
        return bend >= PERSPECTIVE_MIN_PIXELS and perspective.cost < PERSPECTIVE_GAIN * orthographic.cost

    # -- result --
    def _result(self, chosen: _Candidate, runner_up: _Candidate | None) -> CameraFit:
        self._checkpoint()
        camera = _camera(chosen.view.rotation, chosen.theta, self.image_size)
        iou = self._final_iou(chosen)
        per_label = {label: 0.0 for label in self.scene.labels}
        per_label.update({label: float(iou[i]) for i, label in enumerate(self.scene.fitted)})
        details = {
            "method": "silhouette",
            "kind": camera.kind,
            "fitted_labels": list(self.scene.fitted),
            "outline_rms_px": float(np.sqrt(chosen.cost)) if np.isfinite(chosen.cost) else None,
            "runner_up_orientation": None if runner_up is None else runner_up.view.index,
            "runner_up_iou": None if runner_up is None else runner_up.mean_iou,
        }
        return CameraFit(camera, float(np.mean(list(per_label.values()))), per_label, chosen.view.index, details)

    def _final_iou(self, candidate: _Candidate) -> np.ndarray:
        """IoU at the final resolution on a canvas that also holds every projected voxel (up to two crop sizes
        past the scored region), so that voxels projecting off the usual canvas count against the fit."""
        q, instance = candidate.view.subset(candidate.theta[K] > 0)
        low, high = _footprint(q, candidate.theta)
        margin = 2 * self.crop.side
        box = np.concatenate([np.maximum(np.minimum(self.region[:2], low.min(axis=0)), self.region[:2] - margin),
                              np.minimum(np.maximum(self.region[2:], high.max(axis=0)), self.region[2:] + margin)])
        canvas = _Canvas.covering(box, self.crop.side / FINAL_CELLS, self.ids, self.scene.fitted)
        owner = _rasterise(canvas, low, high)
        return _iou(np.where(owner >= 0, instance[owner], -1), canvas, self.count)
