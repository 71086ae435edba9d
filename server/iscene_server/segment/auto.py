"""Automatic masks: SAM prompted with a grid of points, filtered and de-duplicated.

As SAM's automatic mask generator: every grid point asks for SAM's three proposals; a proposal is kept when
its predicted IoU reaches ``min_score`` and its *stability score* (the IoU between the mask thresholded at
+1 and at −1 of its logits: how little the mask moves when the threshold does) reaches ``min_stability``;
duplicates are then removed by greedy non-maximum suppression on mask IoU (0.7). The filters and the
suppression look at the decoder's own logit grid (256² over the padded input, cropped to the image), where
the masks are made; only the survivors are brought to full resolution, by the caller.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .model import ImageEmbedding, SamSegmenter
from .prompts import SegmentPrompts

POINTS_PER_BATCH = 64
STABILITY_OFFSET = 1.0
NMS_IOU = 0.7
NMS_CHUNK = 256  # candidates compared per matrix product in the suppression


def point_grid(points_per_side: int, width: int, height: int) -> np.ndarray:
    """``[n², 2]`` pixel coordinates (x, y): the centres of an n × n tiling of the image, row by row."""
    fractions = (np.arange(points_per_side) + 0.5) / points_per_side
    ys, xs = np.meshgrid(fractions * height, fractions * width, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


def grid_batches(points_per_side: int) -> int:
    return -(-points_per_side ** 2 // POINTS_PER_BATCH)


def stability_score(logits: torch.Tensor, offset: float = STABILITY_OFFSET, threshold: float = 0.0) -> torch.Tensor:
    """Per mask (``[..., H, W]`` logits): area above ``threshold + offset`` / area above ``threshold - offset``
    (0 for a mask that is empty even at the lower threshold)."""
    strict = (logits > threshold + offset).flatten(-2).sum(-1)
    loose = (logits > threshold - offset).flatten(-2).sum(-1)
    return torch.where(loose > 0, strict / loose.clamp(min=1), torch.zeros_like(strict, dtype=torch.float32))


def mask_nms(masks: torch.Tensor, scores: torch.Tensor, iou_threshold: float = NMS_IOU) -> torch.Tensor:
    """Greedy non-maximum suppression on mask IoU: in descending score order (ties: lower index first), a mask
    is kept unless its IoU with a mask already kept exceeds ``iou_threshold``. ``masks`` is ``[N, ...]`` bool;
    returns the kept indices, best first.

    Intersections come from matrix products, a chunk of candidates at a time against the masks kept so far and
    against each other; only the final greedy pass over a chunk is a Python loop over small tables.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    flat = masks.flatten(1)[order]  # bool; a chunk at a time becomes float for the products
    areas = flat.sum(1).float()
    kept: list[int] = []
    for start in range(0, len(order), NMS_CHUNK):
        block, block_areas = flat[start:start + NMS_CHUNK].float(), areas[start:start + NMS_CHUNK]
        previous = torch.as_tensor(kept, dtype=torch.long, device=flat.device)
        intersections = block @ flat[previous].float().T
        blocked = (_iou(intersections, block_areas, areas[previous]) > iou_threshold).any(1).tolist()
        overlaps = (_iou(block @ block.T, block_areas, block_areas) > iou_threshold).cpu().numpy()
        chosen: list[int] = []
        for row in range(len(block)):
            if not blocked[row] and not overlaps[row, chosen].any():
                chosen.append(row)
        kept.extend(start + row for row in chosen)
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


def _iou(intersections: torch.Tensor, areas_a: torch.Tensor, areas_b: torch.Tensor) -> torch.Tensor:
    unions = areas_a[:, None] + areas_b[None, :] - intersections
    return intersections / unions.clamp(min=1)


def propose_masks(segmenter: SamSegmenter, embedding: ImageEmbedding, request: SegmentPrompts,
                  step: Callable[[int], None] = lambda done: None) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid's masks that pass the filters and the suppression: logits ``[K, 256, 256]`` and scores ``[K]``,
    best first. ``step(batches done)`` is called after each batch of grid points."""
    height, width = embedding.original_size
    grid = point_grid(request.points_per_side, width, height)
    kept_logits, kept_scores = [], []
    for batch, start in enumerate(range(0, len(grid), POINTS_PER_BATCH), 1):
        points = grid[start:start + POINTS_PER_BATCH, None, :]
        logits, scores = segmenter.decode(embedding, points, np.ones(points.shape[:2]), multimask=True)
        logits, scores = logits.flatten(0, 1), scores.flatten()
        rows, cols = segmenter.low_res_size(embedding, logits)
        visible = logits[..., :rows, :cols]
        keep = ((scores >= request.min_score) & (stability_score(visible) >= request.min_stability)
                & (visible > 0).flatten(1).any(1))
        kept_logits.append(logits[keep].half())  # half: candidates of a dense grid stay small until suppressed
        kept_scores.append(scores[keep])
        step(batch)
    logits, scores = torch.cat(kept_logits), torch.cat(kept_scores)
    if not len(scores):
        return logits.float(), scores
    rows, cols = segmenter.low_res_size(embedding, logits)
    survivors = mask_nms(logits[..., :rows, :cols] > 0, scores)
    return logits[survivors].float(), scores[survivors]
