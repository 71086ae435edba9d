"""Fit the camera that maps the scene frame S onto the input image, from generated voxels and instance masks.

The released model's view convention is not documented, so it is fitted (DESIGN.md §5):

1. **Orientation search.** For each of the 24 axis-aligned orientations, an orthographic camera (scale and
   offset) is fitted in closed form by matching each instance's rendered silhouette moments (centroid, spread,
   occlusion included) to its mask's (:mod:`.moments`), then scored by silhouette IoU on a coarse canvas.
2. **Orthographic refinement** of the best few orientations by silhouette alignment (:mod:`.alignment`); the best
   IoU wins.
3. **Perspective refinement** of the winner, started from the orthographic fit at a few camera distances.
4. The perspective camera is kept when its perspective is visible and it fits clearly better.

Only voxels that can show are splatted (:mod:`.views`): per instance, the first voxel of each grid line along the
view axis and, in perspective, the outermost ones across it. The region around the crop is sampled on a "canvas"
of cells (``geometry.raster.splats``; the label map is sampled, the voxels never are); IoU is counted on it,
inside the image only. All cameras share one parametrisation (:mod:`.projection`); orthographic cameras keep the
principal point at the crop centre.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ...geometry.raster.splats import Canvas, canvas_iou
from ...geometry.voxels import GRID
from .alignment import Alignment
from .inputs import Crop, FitScene
from .model import ORTHOGRAPHIC, PERSPECTIVE, Camera, axis_aligned_rotations
from .moments import moments, similarity_fit
from .outlines import mask_edges
from .projection import (
    CX,
    CY,
    ORTHO_DEPTH,
    TX,
    TY,
    K,
    M,
    camera_from_theta,
    footprint,
    max_k,
    project,
    render_silhouettes,
)
from .views import View

SCENE_FILL = 1 / 1.2  # the crop box is the masks' bounding box enlarged 1.2x: the scene spans ~1/1.2 of it

SEARCH_CELLS, REFINE_CELLS, FINAL_CELLS = 96, 160, 320  # canvas resolutions, in cells across the crop box
SEARCH_KEEP = 3  # orientations refined after the moment fit ...
SEARCH_MARGIN = 0.25  # ... among those whose IoU is within this of the best one
ORTHO_ITERATIONS = (8, 6)  # refinement iterations on the REFINE / FINAL canvas
PERSPECTIVE_ITERATIONS = (16, 8)
PERSPECTIVE_START_K = (0.2, 0.45)  # inverse distances the perspective refinement starts from
PERSPECTIVE_MIN_PIXELS = 1.0  # perspective is kept only when it moves some voxel by this much ...
PERSPECTIVE_GAIN = 0.9  # ... and lowers the orthographic fit's misfit by this factor

DEFAULT_ROTATION = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
"""Best guess of the model's view, used when nothing can be fitted: along +y of S, z up, +x to the right (the
view of S that Blender's front view and a glTF viewer's default view show)."""


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
    crop = Crop.from_box(crop_box)
    scene = FitScene.build(voxels, ids)
    if scene is None:
        return CameraFit(default_camera(crop_box, image_size), 0.0, {int(label): 0.0 for label in voxels},
                         default_orientation(), {"method": "default", "kind": ORTHOGRAPHIC,
                                                 "reason": "no instance has both voxels and a mask"})
    return _Solver(scene, ids, crop, image_size, kinds, check).solve()


@dataclass
class _Candidate:
    view: View
    theta: np.ndarray
    iou: np.ndarray  # per fitted instance, on the canvas it was last scored on
    cost: float = np.inf  # outline misfit on that canvas (see :class:`.alignment.Alignment`), once refined

    @property
    def mean_iou(self) -> float:
        return float(self.iou.mean())


class _Solver:
    def __init__(self, scene: FitScene, ids: np.ndarray, crop: Crop, image_size: tuple[int, int], kinds,
                 check: Callable[[], None] | None = None):
        self.scene, self.ids, self.crop, self.image_size, self.kinds = scene, ids, crop, image_size, kinds
        self.check = check
        self.count = len(scene.fitted)
        self.region = self._region()
        self.canvases = {cells: Canvas.covering(self.region, crop.side / cells, ids, scene.fitted)
                         for cells in (SEARCH_CELLS, REFINE_CELLS, FINAL_CELLS)}
        self.mask_edges = [mask_edges(ids, label, box)
                           for label, box in zip(scene.fitted, scene.mask_boxes, strict=True)]

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
        views = [View.build(self.scene, i, rotation) for i, rotation in enumerate(axis_aligned_rotations())]
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
    def _moment_fit(self, view: View) -> _Candidate:
        """An orthographic camera for ``view`` matching silhouette moments (see :func:`.moments.similarity_fit`)."""
        self._checkpoint()
        canvas = self.canvases[SEARCH_CELLS]
        q, instance = view.subset(False)
        theta = self._initial_theta(q)
        rendered = self._render(canvas, q, instance, theta)
        measured = moments(rendered, canvas, self.count)
        target = moments(canvas.labels, canvas, self.count)
        usable = (measured[:, 0] > 0) & (target[:, 0] > 0)
        fitted = similarity_fit(measured[usable], target[usable], theta) if usable.any() else None
        if fitted is not None:
            theta = fitted
            rendered = self._render(canvas, q, instance, theta)
        return _Candidate(view, theta, canvas_iou(rendered, canvas, self.count))

    def _initial_theta(self, q: np.ndarray) -> np.ndarray:
        """Orthographic, the voxels' bounding box centred in the crop box and spanning 1/1.2 of it."""
        low, high = q.min(axis=0), q.max(axis=0)
        extent = max(float(np.max(high[:2] - low[:2])), 1.0 / GRID)
        centre = (low + high)[:2] / 2
        return np.array([self.crop.side * SCENE_FILL / extent, 0.0, -centre[0], -centre[1], *self.crop.centre])

    def _render(self, canvas: Canvas, q: np.ndarray, instance: np.ndarray, theta: np.ndarray) -> np.ndarray:
        return render_silhouettes(canvas, q, instance, theta).rendered

    # -- refinement --
    def _perspective(self, start: _Candidate) -> _Candidate:
        """Perspective refinements started from the orthographic fit at a few distances (``m`` kept, so S's
        origin plane keeps its scale); the best is refined on the final canvas."""
        best = None
        for k in PERSPECTIVE_START_K:
            theta = start.theta.copy()
            theta[K] = min(k, 0.5 * max_k(start.view.q))
            candidate = self._refine(_Candidate(start.view, theta, start.iou), True, REFINE_CELLS,
                                     PERSPECTIVE_ITERATIONS[0])
            if best is None or candidate.cost < best.cost:
                best = candidate
        return self._refine(best, True, FINAL_CELLS, PERSPECTIVE_ITERATIONS[1])

    def _refine(self, start: _Candidate, perspective: bool, cells: int, iterations: int) -> _Candidate:
        """Levenberg-Marquardt on the outline misfit (see :class:`.alignment.Alignment`); a step is kept when it
        lowers the misfit. Orthographic refinement fixes the principal point at the crop centre."""
        q, instance = start.view.subset(perspective)
        free = np.array([M, K, TX, TY, CX, CY]) if perspective else np.array([M, TX, TY])
        theta = start.theta.copy()
        if not perspective:
            theta[K] = 0.0
            theta[CX:CY + 1] = self.crop.centre
        k_range = (1e-4 if perspective else 0.0, max_k(q))
        canvas = self.canvases[cells]
        problem = Alignment(canvas, q, instance, self.mask_edges, self.crop)
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
        bend = np.max(np.linalg.norm(project(q, perspective.theta) - project(q, flat), axis=1), initial=0.0)
        return bend >= PERSPECTIVE_MIN_PIXELS and perspective.cost < PERSPECTIVE_GAIN * orthographic.cost

    # -- result --
    def _result(self, chosen: _Candidate, runner_up: _Candidate | None) -> CameraFit:
        self._checkpoint()
        camera = camera_from_theta(chosen.view.rotation, chosen.theta, self.image_size)
        iou = self._final_iou(chosen)
        per_label = dict.fromkeys(self.scene.labels, 0.0)
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
        low, high = footprint(q, candidate.theta)
        margin = 2 * self.crop.side
        box = np.concatenate([np.maximum(np.minimum(self.region[:2], low.min(axis=0)), self.region[:2] - margin),
                              np.minimum(np.maximum(self.region[2:], high.max(axis=0)), self.region[2:] + margin)])
        canvas = Canvas.covering(box, self.crop.side / FINAL_CELLS, self.ids, self.scene.fitted)
        return canvas_iou(render_silhouettes(canvas, q, instance, candidate.theta).rendered, canvas, self.count)
