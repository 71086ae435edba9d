"""An image and its prompts → ``labels.png`` + ``segments.json``, with progress and cancellation.

Used alike by the job runner and ``iscene-server segment``. The stages are those of
:data:`iscene_server.segment.SEGMENT_PLAN`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..engine.preprocess import DEFAULT_MAX_PIXELS, ImageSource, open_image, to_rgb
from ..engine.progress import ProgressTracker
from ..errors import InputError
from .auto import grid_batches, propose_masks
from .labels import LabelAssembler, Segmentation, write_segmentation
from .model import SamSegmenter
from .prompts import SegmentPrompts, parse_prompts

UPSCALE_BATCH = 8  # masks brought to full resolution at once


def segment_image(segmenter: SamSegmenter, rgb: np.ndarray, request: SegmentPrompts,
                  tracker: ProgressTracker) -> Segmentation:
    """The label map of ``rgb`` (``uint8 [H, W, 3]``) for ``request``; fails if no object is left."""
    tracker.begin("loading segmentation model")
    segmenter.load()
    tracker.begin("embedding image")
    embedding = segmenter.embed(rgb)
    if request.auto:
        tracker.begin("segmenting", grid_batches(request.points_per_side))
        logits, scores = propose_masks(segmenter, embedding, request, tracker.step)
        prompts = [None] * len(scores)
    else:
        tracker.begin("segmenting", len(request.objects))
        logits, scores = segmenter.predict_objects(embedding, request.objects, tracker.step)
        prompts = list(range(len(scores)))
    tracker.begin("assembling labels", len(scores))
    assembler = LabelAssembler(*embedding.original_size)
    for start in range(0, len(scores), UPSCALE_BATCH):
        masks = segmenter.upscale(embedding, logits[start:start + UPSCALE_BATCH, None])[:, 0] > 0
        for offset, mask in enumerate(masks.cpu().numpy()):
            index = start + offset
            assembler.add(mask, float(scores[index]), prompts[index])
        tracker.step(min(start + UPSCALE_BATCH, len(scores)))
    segmentation = assembler.finish(request.min_area, request.fill_holes)
    if not segmentation.segments:
        raise InputError(_nothing_found(request), "draw boxes around the objects, or lower min_area"
                         + (", min_score or min_stability" if request.auto else ""))
    return segmentation


def _nothing_found(request: SegmentPrompts) -> str:
    if request.auto:
        return (f"no object was found: none of the {request.points_per_side}² grid points gave a mask that passed "
                f"min_score {request.min_score:g}, min_stability {request.min_stability:g} and "
                f"min_area {request.min_area:g}")
    return (f"no object was found: the masks of all {len(request.objects)} prompts ended up empty (covered by "
            f"other masks, or in fragments smaller than min_area {request.min_area:g})")


def segment_to_files(segmenter: SamSegmenter, image: ImageSource, prompts: SegmentPrompts | Mapping,
                     labels_path: str | Path, json_path: str | Path, tracker: ProgressTracker,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Decode ``image``, check ``prompts`` (``SegmentPrompts``, or the data a job stored of them) against it,
    segment, and write the label map and its description; returns the ``segments.json`` content."""
    rgb = to_rgb(open_image(image, what="image", max_pixels=max_pixels))
    request = parse_prompts(prompts, rgb.size)
    segmentation = segment_image(segmenter, np.asarray(rgb), request, tracker)
    tracker.begin("writing files")
    info = write_segmentation(segmentation, labels_path, json_path, {"mode": request.mode, "model": segmenter.spec})
    tracker.finish()
    return info
