"""Submit-time checks: what a job is checked for before it is queued, so that bad input fails in the request
(400 with a hint) instead of in the queue minutes later. Each check raises :class:`InputError`; the uploads'
checks decode the images, which the API bounds with its decode gate (:func:`upload_pixels` sizes the bound)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from ..engine.preprocess import DEFAULT_MAX_PIXELS, load_scene, open_image
from ..engine.preprocess.images import MAX_INSTANCES, header_pixels
from ..engine.refine.context import ContextObject, decode_context
from ..engine.refine.scene import ParentScene, check_refinable
from ..engine.results import is_layout, read_manifest
from ..engine.variants import check_variant_count, check_variant_seeds
from ..errors import InputError, StateError
from ..segment.prompts import parse_prompts
from .runner import refine_edit

__all__ = ["DEFAULT_MAX_PIXELS", "check_context", "check_generate", "check_labels", "check_refine",
           "check_regenerate", "check_segment", "check_variants", "upload_pixels"]


def upload_pixels(uploads: Iterable[bytes]) -> int:
    """The pixels the encoded ``uploads`` declare in their headers (what decoding them will hold)."""
    return sum(header_pixels(data) for data in uploads)


def check_labels(wanted: Iterable[int], available: Iterable[int], where: str) -> None:
    """Every ``wanted`` label is one of ``available`` (the instances of ``where``)."""
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise InputError(f"{where} has no instance {', '.join(map(str, unknown))}",
                         f"choose among {', '.join(map(str, sorted(available)))}")


def check_generate(params: Mapping, inputs: Mapping[str, bytes], max_pixels: int) -> None:
    """The uploads decode to a scene (as the job will decode them) holding every label ``params`` asks for."""
    scene = load_scene(inputs["image"], inputs["labels"], max_pixels=max_pixels)
    check_labels(params.get("labels") or [], scene.label_ids, "the label map")


def check_segment(prompts: Mapping, image: bytes, max_pixels: int) -> None:
    """The image decodes and the prompts fit it (boxes overlap it, points lie on it)."""
    size = open_image(image, what="image", max_pixels=max_pixels).size
    parse_prompts(prompts, size)


def check_regenerate(manifest: Mapping, labels: Iterable[int], job_id: str) -> None:
    check_labels(labels, [entry["label"] for entry in manifest["instances"]], f"job {job_id}")


def check_build(manifest: Mapping, job_id: str) -> None:
    """Scene ``job_id`` (its ``manifest``) is a layout whose meshes a build job can make, else :class:`StateError`."""
    if not is_layout(manifest):
        raise StateError(f"job {job_id} is not a layout job: it has meshes already",
                         "it has meshes already; use regenerate (POST /v1/jobs/{id}/regenerate) for new shapes")


def check_refine(parent_folder: Path, params: Mapping) -> None:
    """The edit is valid for the parent scene and leaves something to refine, as the job will find: an object
    moved out of the volume, a scene without a solved camera to re-render from (when re-sampling), or nothing
    to do (all locked; strength 0 and nothing moved) fail here."""
    parent, edit = refine_edit(parent_folder, params)
    check_refinable(parent, edit)


def check_context(parent_folder: Path, entries: list[Mapping]) -> list[ContextObject]:
    """A refine's context objects (API entries ``{name, transform, glb}``), decoded, checked and voxelised against
    the parent scene (an enclosure around its objects stays hollow): too many, a bad GLB or transform, one outside
    the volume or too large fail here, naming the object; so do more than the edited view can hold beside the
    scene's own objects (each is rendered with an id of its own)."""
    if not entries:
        return []
    parent = ParentScene(parent_folder, read_manifest(parent_folder))
    if len(parent.labels) + len(entries) > MAX_INSTANCES:
        raise InputError(f"the scene has {len(parent.labels)} objects: with {len(entries)} context objects the edited "
                         f"view would hold more than the {MAX_INSTANCES} one scene can",
                         f"join context objects into fewer meshes: {MAX_INSTANCES - len(parent.labels)} fit beside "
                         "this scene's objects")
    return decode_context(entries, parent.occupancy())


def check_variants(manifest: Mapping, label: int, count: int, seeds: list[int] | None, job_id: str) -> None:
    """A variants job of scene ``job_id`` (its ``manifest``) can run: the scene has meshes (a layout job is
    :class:`StateError`), instance ``label`` is in it, ``count`` is allowed (:func:`check_variant_count`) and
    ``seeds``, when given, are ``count`` distinct seeds in range."""
    if is_layout(manifest):
        raise StateError(f"job {job_id} is a layout: it has no meshes to make variants of",
                         "build its meshes first (POST /v1/jobs/{id}/build), then ask the built job for variants")
    check_labels([label], [entry["label"] for entry in manifest["instances"]], f"job {job_id}")
    check_variant_count(count)
    if seeds is not None:
        if len(seeds) != count:
            raise InputError(f"{len(seeds)} seeds given for {count} variants",
                             "give one seed per variant, or leave seeds out for random ones")
        check_variant_seeds(seeds)
