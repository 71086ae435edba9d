"""Per-instance slot images: the images the I-Scene model is conditioned on.

For every instance the reference builds, in this order:

0. ``scene_space_instance``: the scene frame (a square around all instances, ×1.2) showing only the
   instance, everything else black;
1. ``scene_space_scene`` (exp_setting contains "global"): the same frame showing every instance;
2. ``canonical_space_instance`` (exp_setting contains "local"): a square crop around the instance alone.

Each is a float32 RGB image in [0, 1], resized to 518×518 with OpenCV-style Lanczos (no uint8 rounding).
The scene frame and the scene slot do not depend on the instance, so they are computed once per scene.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from iscene_server.errors import InputError

from .images import SceneInput
from .lanczos import resize_lanczos4_rows

SLOT_SIZE = 518
Box = tuple[float, float, float, float]

SCENE_SPACE_INSTANCE = "scene_space_instance"
SCENE_SPACE_SCENE = "scene_space_scene"
CANONICAL_SPACE_INSTANCE = "canonical_space_instance"

# Mask values above this count as inside (reference threshold of its bounding-box helper).
_BBOX_THRESHOLD = 0.8
_FRAME_MARGIN = 1.2
_MAX_LISTED_IDS = 20


def slot_names(exp_setting: str) -> list[str]:
    """Names of the slots for ``exp_setting``, in the reference order ("global" and "local" are
    substring flags, as in the reference)."""
    names = [SCENE_SPACE_INSTANCE]
    if "global" in exp_setting:
        names.append(SCENE_SPACE_SCENE)
    if "local" in exp_setting:
        names.append(CANONICAL_SPACE_INSTANCE)
    return names


def crop_bbox(mask: np.ndarray) -> Box:
    """Square box around the pixels of ``mask`` above 0.8, enlarged 1.2×, as (left, upper, right, lower).

    The centre is the midpoint of the extreme pixel indices, so the box can be at half pixels, and it
    may extend past the image. Raises ValueError for an empty mask.
    """
    inside = np.asarray(mask) > _BBOX_THRESHOLD
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    if rows.size == 0:
        raise ValueError("crop_bbox of an empty mask")
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = int(max(x1 - x0, y1 - y0) * _FRAME_MARGIN) // 2
    return (cx - half, cy - half, cx + half, cy + half)


def pixel_box(box: Box) -> tuple[int, int, int, int]:
    """The integer box Pillow's ``Image.crop`` uses for a float box (Python ``round``: halves to even)."""
    left, upper, right, lower = (round(float(v)) for v in box)
    return left, upper, right, lower


def crop(arr: np.ndarray, box: Box) -> np.ndarray:
    """``Image.crop`` on an ``[H, W]`` or ``[H, W, C]`` array: rounded box, zeros outside the image."""
    left, upper, right, lower = pixel_box(box)
    if right < left or lower < upper:
        raise ValueError(f"invalid crop box {box}")
    out = np.zeros((lower - upper, right - left) + arr.shape[2:], dtype=arr.dtype)
    height, width = arr.shape[:2]
    x0, y0 = max(left, 0), max(upper, 0)
    x1, y1 = min(right, width), min(lower, height)
    if x1 > x0 and y1 > y0:
        out[y0 - upper : y1 - upper, x0 - left : x1 - left] = arr[y0:y1, x0:x1]
    return out


def _masked_float(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``rgb / 255`` in float32 with the pixels outside ``mask`` (bool [H, W]) set to 0."""
    return rgb.astype(np.float32) / np.float32(255) * mask[..., None]


def _masked_slot(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Slot image of ``rgb`` (uint8 HWC) masked by ``mask``: /255, masked, 518×518 Lanczos, clipped to
    [0, 1], CHW. Only the rows the mask touches are resampled (the others are zero)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return np.zeros((3, SLOT_SIZE, SLOT_SIZE), dtype=np.float32)
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    band = _masked_float(rgb[top:bottom], mask[top:bottom])
    out = resize_lanczos4_rows(band, top, mask.shape[0], (SLOT_SIZE, SLOT_SIZE))
    np.clip(out, 0.0, 1.0, out=out)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


@dataclass
class SceneSlots:
    """Slot images of the selected instances of one scene.

    ``instances[k]``, ``canonical[k]`` and ``canonical_boxes[k]`` belong to ``label_ids[k]``. Boxes are in
    the reference's float form: ``scene_box`` in label-map pixels, canonical boxes in the pixels of the
    scene-frame crop.
    """

    label_ids: list[int]
    exp_setting: str
    image_size: tuple[int, int]  # (width, height) of the label map
    scene_box: Box
    scene: np.ndarray  # float32 [3, 518, 518]
    instances: np.ndarray  # float32 [K, 3, 518, 518]
    canonical: np.ndarray | None  # float32 [K, 3, 518, 518], None unless exp_setting has "local"
    canonical_boxes: list[Box]

    def index(self, label: int) -> int:
        """Position of instance ``label`` in ``label_ids``."""
        return self.label_ids.index(int(label))

    def slot_names(self, exp_setting: str | None = None) -> list[str]:
        return slot_names(self.exp_setting if exp_setting is None else exp_setting)

    def slots(self, i: int, exp_setting: str | None = None) -> np.ndarray:
        """float32 ``[N_slots, 3, 518, 518]`` for the i-th instance, in the reference slot order."""
        images = []
        for name in self.slot_names(exp_setting):
            if name == SCENE_SPACE_INSTANCE:
                images.append(self.instances[i])
            elif name == SCENE_SPACE_SCENE:
                images.append(self.scene)
            else:
                if self.canonical is None:
                    raise ValueError("no canonical slots: build_slots needs an exp_setting with 'local'")
                images.append(self.canonical[i])
        return np.stack(images)

    def batch(self, exp_setting: str | None = None) -> np.ndarray:
        """float32 ``[K, N_slots, 3, 518, 518]`` for all instances."""
        return np.stack([self.slots(i, exp_setting) for i in range(len(self.label_ids))])

    def crop_boxes(self, i: int) -> list[Box]:
        """The reference's five ``Image.crop`` boxes for the i-th instance, in call order: the scene box on
        the scene RGB, the scene mask and the instance mask, then the canonical box on the scene crop and
        on the cropped instance mask."""
        return [self.scene_box] * 3 + [self.canonical_boxes[i]] * 2


def _format_ids(ids: Iterable[int]) -> str:
    ids = list(ids)
    shown = ", ".join(str(v) for v in ids[:_MAX_LISTED_IDS])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > _MAX_LISTED_IDS else "")


def _select_labels(available: list[int], labels: Iterable[int] | None) -> list[int]:
    if labels is None:
        return list(available)
    requested = sorted({int(v) for v in labels})
    if not requested:
        raise InputError("no instances were selected", f"select one or more of the ids {_format_ids(available)}")
    known = set(available)
    unknown = [v for v in requested if v not in known]
    if unknown:
        raise InputError(
            f"the label map has no instance with id {_format_ids(unknown)}",
            f"the available ids are {_format_ids(available)}",
        )
    return requested


def _check_frame(box: Box) -> Box:
    values = [float(v) for v in box]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"the scene frame {box} is not a box", "give the frame as (left, upper, right, lower)")
    left, upper, right, lower = values
    rounded = pixel_box((left, upper, right, lower))
    if rounded[2] <= rounded[0] or rounded[3] <= rounded[1]:
        raise InputError(f"the scene frame {box} has no area", "give the frame as (left, upper, right, lower)")
    return (left, upper, right, lower)


def _too_small(what: str, box: Box) -> InputError:
    left, upper, right, lower = pixel_box(box)
    return InputError(
        f"{what} is too small to build slot images from (crop box {right - left}×{lower - upper} pixels)",
        "paint every object at least 3 pixels across, or remove its id from the label map",
    )


def _scene_frame(scene: SceneInput) -> Box:
    box = crop_bbox(scene.ids > 0)
    left, upper, right, lower = pixel_box(box)
    if right <= left or lower <= upper:
        raise _too_small("the painted area of the label map", box)
    return box


def _canonical_slot(rgb_frame: np.ndarray, inst_mask: np.ndarray, box: Box, label: int) -> np.ndarray:
    """Crop the unmasked scene-frame RGB and the instance mask around the instance, mask, resize."""
    rgb = crop(rgb_frame, box)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise _too_small(f"instance {label}", box)
    return _masked_slot(rgb, crop(inst_mask, box))


def build_slots(
    scene: SceneInput,
    exp_setting: str = "global",
    labels: Iterable[int] | None = None,
    scene_box: Box | None = None,
    check: Callable[[], None] | None = None,
) -> SceneSlots:
    """Build the slot images of the instances of ``scene``.

    ``labels`` selects instances (default all; the result is in ascending id order). ``scene_box``
    replaces the scene frame, e.g. to regenerate some instances in the frame of an earlier job; by default
    the frame surrounds all instances of the label map, not only the selected ones. Canonical slots are
    only computed when ``exp_setting`` contains "local". ``check`` is called before each instance (a job's
    cancellation check: it raises to stop).
    """
    selected = _select_labels(scene.label_ids, labels)
    frame = _scene_frame(scene) if scene_box is None else _check_frame(scene_box)
    ids_frame = crop(scene.ids, frame)
    rgb_frame = crop(scene.rgb, frame)

    local = "local" in exp_setting
    count = len(selected)
    instances = np.empty((count, 3, SLOT_SIZE, SLOT_SIZE), dtype=np.float32)
    canonical = np.empty_like(instances) if local else None
    canonical_boxes: list[Box] = []
    for k, label in enumerate(selected):
        if check is not None:
            check()
        inst_mask = ids_frame == label
        if not inst_mask.any():
            raise InputError(
                f"instance {label} lies outside the scene frame {frame}",
                "regenerate it without keeping the earlier frame, or paint it inside that frame",
            )
        instances[k] = _masked_slot(rgb_frame, inst_mask)
        box = crop_bbox(inst_mask)
        canonical_boxes.append(box)
        if canonical is not None:
            canonical[k] = _canonical_slot(rgb_frame, inst_mask, box, label)

    return SceneSlots(
        label_ids=selected,
        exp_setting=exp_setting,
        image_size=scene.size,
        scene_box=frame,
        scene=_masked_slot(rgb_frame, ids_frame > 0),
        instances=instances,
        canonical=canonical,
        canonical_boxes=canonical_boxes,
    )
