"""SAM through ``transformers``: the model found and loaded once, the image embedded once per image, prompts
decoded in batches against that embedding, and masks brought back to the image's size.

Coordinates handed in are image pixels (origin top-left, x right, y down); they are scaled into the model's
frame (the image resized to 1024 on its longest side, then padded to a square) here. Mask logits stay on the
model's 256² grid until :meth:`SamSegmenter.upscale` is asked for the image-size version.
"""

from __future__ import annotations

import math
import pickle
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError

from ..devices import resolve_device, resolve_dtype
from ..engine.packages.source import REPO_ID
from ..errors import ModelPackageError
from . import DEFAULT_SEGMENT_MODEL
from .prompts import ObjectPrompt

PACKAGE_FOLDER = "sam"  # a model package may carry its own SAM here (the tiny package does)
DECODE_BATCH = 64  # prompts per mask-decoder call
# What a damaged, truncated or hostile checkpoint raises in transformers (a pickle refused by torch.load's
# weights_only unpickler, a safetensors header that is not JSON, a config that does not fit the weights).
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError, SafetensorError)
MODEL_FILES = ["*.json", "*.safetensors"]  # what a hub download fetches (not the TF / pickle variants)
MODEL_HINT = (f"pass --segment-model a Hugging Face SAM repo id (e.g. {DEFAULT_SEGMENT_MODEL}) or a folder saved "
              "with transformers' save_pretrained (config.json, model.safetensors, preprocessor config)")


def default_segment_model(package: str) -> str:
    """``<package>/sam`` when the I-Scene package is a local folder that has one, else SAM ViT-B from the hub."""
    folder = Path(package).expanduser() / PACKAGE_FOLDER
    return str(folder) if folder.is_dir() else DEFAULT_SEGMENT_MODEL


def resolve_model_folder(spec: str) -> Path:
    """The local folder of a SAM model: ``spec`` itself, or its Hugging Face snapshot (downloaded once;
    ``HF_HUB_OFFLINE=1`` or an unreachable hub use the cache)."""
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    if not REPO_ID.match(spec):
        raise ModelPackageError(f"segmentation model {spec!r} is neither a folder nor a Hugging Face repo id",
                                MODEL_HINT)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(spec, allow_patterns=MODEL_FILES))
    except LocalEntryNotFoundError:
        raise ModelPackageError(f"segmentation model {spec} is not in the local Hugging Face cache and the hub is "
                                "unreachable", "connect to the internet once (the model is then cached), or "
                                "pass a local folder with --segment-model") from None
    except RepositoryNotFoundError:
        raise ModelPackageError(f"segmentation model {spec} was not found on Hugging Face", MODEL_HINT) from None
    except HfHubHTTPError as exc:
        raise ModelPackageError(f"segmentation model {spec} could not be downloaded ({exc})",
                                "try again later, or pass a local folder with --segment-model") from None


@dataclass
class ImageEmbedding:
    """One image as SAM sees it: the encoder's output and the sizes that map pixels into its frame."""

    embeddings: torch.Tensor  # [1, C, 64, 64]
    original_size: tuple[int, int]  # (height, width) of the image
    reshaped_size: tuple[int, int]  # (height, width) of the image inside the padded model input

    def to_model(self, xy: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``[..., 2]`` (x, y) in the model's input frame."""
        (height, width), (new_height, new_width) = self.original_size, self.reshaped_size
        return np.asarray(xy, dtype=np.float64) * (new_width / width, new_height / height)


class SamSegmenter:
    """A SAM checkpoint on one device, loaded on first use (thread-safe) and then kept."""

    def __init__(self, spec: str, device: str = "auto", dtype: str = "auto"):
        self.spec = spec
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, dtype)
        self._model = None
        self._processor = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            folder = resolve_model_folder(self.spec)
            from transformers import SamModel, SamProcessor

            try:
                processor = SamProcessor.from_pretrained(folder)
                model = SamModel.from_pretrained(folder)
            except LOAD_ERRORS as exc:
                shown = folder.name if Path(self.spec).exists() else self.spec  # no server paths in messages
                detail = str(exc).replace(str(folder), shown)[:300]
                raise ModelPackageError(f"segmentation model {shown} could not be loaded as SAM "
                                        f"({type(exc).__name__}: {detail})", MODEL_HINT) from None
            self._processor = processor
            self._model = model.to(self.device, self.dtype).eval().requires_grad_(False)

    @torch.inference_mode()
    def embed(self, rgb: np.ndarray) -> ImageEmbedding:
        """Run the image encoder once on ``uint8 [H, W, 3]`` pixels."""
        inputs = self._processor(images=Image.fromarray(rgb), return_tensors="pt")
        embeddings = self._model.get_image_embeddings(inputs["pixel_values"].to(self.device, self.dtype))
        return ImageEmbedding(embeddings, tuple(int(v) for v in inputs["original_sizes"][0]),
                              tuple(int(v) for v in inputs["reshaped_input_sizes"][0]))

    @torch.inference_mode()
    def decode(self, embedding: ImageEmbedding, points: np.ndarray | None = None, labels: np.ndarray | None = None,
               boxes: np.ndarray | None = None, multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks for ``B`` prompts of one shape: ``points [B, N, 2]`` with ``labels [B, N]`` (1 on the object,
        0 not on it) and/or ``boxes [B, 4]`` (x0, y0, x1, y1), all in image pixels. Returns float32 logits
        ``[B, M, 256, 256]`` and predicted IoUs ``[B, M]``: M = 3 with ``multimask``, else 1."""
        prompts = {}
        if points is not None:
            prompts["input_points"] = self._tensor(embedding.to_model(points))[None]
            prompts["input_labels"] = torch.as_tensor(labels, dtype=torch.long, device=self.device)[None]
        if boxes is not None:
            corners = embedding.to_model(np.asarray(boxes).reshape(-1, 2, 2)).reshape(-1, 4)
            prompts["input_boxes"] = self._tensor(corners)[None]
        output = self._model(image_embeddings=embedding.embeddings, multimask_output=multimask, **prompts)
        return output.pred_masks[0].float(), output.iou_scores[0].float()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=self.device)

    def low_res_size(self, embedding: ImageEmbedding, logits: torch.Tensor) -> tuple[int, int]:
        """(rows, columns) of the decoder's logit grid that cover the image (the rest covers padding)."""
        scale = logits.shape[-1] / self._model.config.vision_config.image_size
        return tuple(math.ceil(side * scale) for side in embedding.reshaped_size)

    @torch.inference_mode()
    def upscale(self, embedding: ImageEmbedding, logits: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, M, 256, 256]`` at the image's size ``[B, M, H, W]`` (SAM's own post-processing:
        bilinear to the padded input, crop the padding, bilinear to the image)."""
        return self._processor.image_processor.post_process_masks(
            [logits], [embedding.original_size], [embedding.reshaped_size], binarize=False)[0]

    def predict_objects(self, embedding: ImageEmbedding, objects: Sequence[ObjectPrompt],
                        step: Callable[[int], None] = lambda done: None) -> tuple[torch.Tensor, torch.Tensor]:
        """One mask per object, in order: logits ``[K, 256, 256]`` and scores ``[K]``. Objects whose prompts
        have the same shape are decoded together; ``step(done)`` reports the objects finished so far."""
        logits: list[torch.Tensor | None] = [None] * len(objects)
        scores: list[torch.Tensor | None] = [None] * len(objects)
        groups: dict[tuple, list[int]] = {}
        for index, prompt in enumerate(objects):
            groups.setdefault(prompt.batch_key, []).append(index)
        done = 0
        for indices in groups.values():
            for start in range(0, len(indices), DECODE_BATCH):
                chunk = indices[start:start + DECODE_BATCH]
                masks, iou = self.decode(embedding, *_prompt_arrays([objects[i] for i in chunk]))
                best = iou.argmax(dim=1)  # the best of SAM's three proposals (single-mask output: the only one)
                for row, index in enumerate(chunk):
                    logits[index], scores[index] = masks[row, best[row]], iou[row, best[row]]
                done += len(chunk)
                step(done)
        return torch.stack(logits), torch.stack(scores)


def _prompt_arrays(prompts: Sequence[ObjectPrompt]) -> tuple:
    """``decode`` arguments for prompts of one batch key (same box presence, point count and mask mode)."""
    first = prompts[0]
    points = labels = boxes = None
    if first.points or first.negative:
        points = np.array([p.points + p.negative for p in prompts], dtype=np.float64)
        labels = np.array([[1] * len(p.points) + [0] * len(p.negative) for p in prompts], dtype=np.int64)
    if first.box is not None:
        boxes = np.array([p.box for p in prompts], dtype=np.float64)
    return points, labels, boxes, first.multimask
