"""Silhouette alignment: the outline misfit of a camera, and Levenberg-Marquardt steps that reduce it.

An ICP between outlines: the voxels are splatted with a z-buffer (each voxel as the bounding rectangle of its
projected cube), and the steps reduce the robust distance, along the edge normals, between the rendered outline
edges (placed exactly on the voxel rectangles' sides) and the mask outline edges (pixel-exact, from the
full-resolution label map), both ways. The principal point is free in perspective, with a weak prior at the crop
centre (it trades against the lateral offset and is only determined by parallax).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...geometry.raster.splats import Canvas, canvas_iou
from .inputs import Crop
from .outlines import EDGE_CLASSES, subsample
from .projection import CX, CY, Silhouettes, edge_jacobian, render_silhouettes

PRINCIPAL_PRIOR = 0.25  # the principal point's prior sd around the crop centre, in crop sizes ...
PRINCIPAL_PRIOR_PIXELS = 0.5  # ... costs as much as this rms outline distance
HUBER = 2.0  # outline distances above this many cells count linearly


@dataclass
class State:
    theta: np.ndarray
    iou: np.ndarray
    cost: float
    jacobian: np.ndarray  # [n, 6] d(edge position along its normal) / d theta, per residual
    residual: np.ndarray  # [n] pixels, mask edge minus rendered edge along the normal
    weight: np.ndarray  # [n] outline balance times Huber weight


class Alignment:
    """The outline misfit of one view on one canvas, and Levenberg-Marquardt steps that reduce it.

    The misfit is the mean robust squared distance (pixels²) along the edge normals between rendered and mask
    outline edges of the same instance and edge class, both ways (each rendered edge to its nearest mask edge,
    each mask edge to its nearest rendered edge; the two directions balanced per instance and class), plus the
    principal point's prior. A mask edge class with no rendered edge at all costs a fixed large distance.
    """

    def __init__(self, canvas: Canvas, q: np.ndarray, instance: np.ndarray, mask_edges: list[list[np.ndarray]],
                 crop: Crop):
        self.canvas, self.q, self.instance, self.mask_edges, self.crop = canvas, q, instance, mask_edges, crop
        self.huber = HUBER * canvas.cell
        self.norm = max(sum(len(points) for edges in mask_edges for points in edges), 1)
        self.prior = PRINCIPAL_PRIOR_PIXELS ** 2 / (PRINCIPAL_PRIOR * crop.side) ** 2
        self.missing = huber(np.array([4 * self.huber]), self.huber)[0]

    def evaluate(self, theta: np.ndarray) -> State:
        splats = render_silhouettes(self.canvas, self.q, self.instance, theta)
        iou = canvas_iou(splats.rendered, self.canvas, len(self.mask_edges))
        jacobians, residuals, weights = [], [], []
        unmatched = 0.0
        for edge_class, (axis, side) in enumerate(EDGE_CLASSES):
            points, instance, maker, maker_side = self._rendered_edges(splats, axis, side)
            for i, mask_edges in enumerate(self.mask_edges):
                theirs = mask_edges[edge_class]
                ours = subsample(np.flatnonzero(instance == i))
                if len(theirs) == 0:
                    continue
                if ours.size == 0:
                    unmatched += self.missing * len(theirs)
                    continue
                forward, backward = mutual_nearest(points[ours], theirs)
                source = np.concatenate([ours, ours[backward]])
                residuals.append(np.concatenate([theirs[forward, axis], theirs[:, axis]]) - points[source, axis])
                jacobians.append(edge_jacobian(self.q[maker[source]], theta, axis, maker_side[source]))
                weights.append(np.concatenate([np.full(ours.size, len(theirs) / ours.size), np.ones(len(theirs))]))
        if not residuals:
            return State(theta, iou, np.inf, np.zeros((0, 6)), np.zeros(0), np.zeros(0))
        residual, balance = np.concatenate(residuals), np.concatenate(weights)
        offset = theta[CX:CY + 1] - self.crop.centre
        cost = (balance @ huber(residual, self.huber) + unmatched) / self.norm + self.prior * offset @ offset
        huber_weight = np.minimum(1.0, self.huber / np.maximum(np.abs(residual), 1e-12))
        return State(theta, iou, float(cost), np.concatenate(jacobians), residual, balance * huber_weight)

    def _rendered_edges(self, splats: Silhouettes, axis: int, side: int):
        """The rendered outline edges of one class: points ``[n, 2]`` (exact along ``axis``), their instance, and
        the voxel whose footprint side makes the edge with which side it is (+1 high, -1 low).

        An edge lies between a sample of an instance and the next sample along ``axis``; it is the owning voxel's
        footprint side, or the near side of a nearer voxel of another instance that covers the next sample
        (an occlusion edge), whichever comes first.
        """
        canvas, rendered, owner, low, high = self.canvas, splats.rendered, splats.owner, splats.low, splats.high
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

    def step(self, state: State, free: np.ndarray, damping: float) -> np.ndarray | None:
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


def huber(residual: np.ndarray, threshold: float) -> np.ndarray:
    """Squared residuals up to ``threshold``, growing linearly past it."""
    magnitude = np.abs(residual)
    return np.where(magnitude <= threshold, magnitude ** 2, 2 * threshold * magnitude - threshold ** 2)


def mutual_nearest(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each point of ``first`` the index of its nearest point in ``second``, and the reverse."""
    squared = (first[:, None, 0] - second[None, :, 0]) ** 2 + (first[:, None, 1] - second[None, :, 1]) ** 2
    return squared.argmin(axis=1), squared.argmin(axis=0)
