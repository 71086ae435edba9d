"""Context objects in refine: the artist's own meshes, kept fixed, that the refined objects are arranged around.

A context box is placed just in front of the parent scene, as the solved camera sees it, so that it is seen and
hides part of an instance; the tests follow it through submit (refusals), the edited render and slot images, the
clean scene occupancy stage 1 starts from, and the results (where it must not be)."""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from conftest import FAST
from scipy.ndimage import binary_erosion

from iscene_server.engine.camera import Camera
from iscene_server.engine.eta import LAYOUT_PLAN
from iscene_server.engine.preprocess import build_slots
from iscene_server.engine.preprocess.slots import SLOT_SIZE, crop
from iscene_server.engine.progress import ProgressTracker
from iscene_server.engine.refine.context import (
    MAX_CONTEXT_GLB_MB,
    MAX_CONTEXT_OBJECTS,
    context_from_npz,
    context_to_npz,
    decode_context,
)
from iscene_server.engine.refine.scene import REFINE_PLAN, ParentScene, check_edit, render_edit
from iscene_server.errors import InputError
from iscene_server.geometry.glb_reader import read_glb
from iscene_server.geometry.voxels import GRID, occupancy_grid, union
from iscene_server.jobs import intake
from iscene_server.jobs.runner import check_stored_params, run_generate, run_refine

SHIFT = [[1, 0, 0, 4 / 64], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]  # 4 cells along +x
STAGE1_ONLY = {**FAST, "formats": ["gaussian"]}  # parent params whose rebuild skips the (slow) mesh extraction
BOX_COLOUR = (40, 200, 60)  # the context box's vertex colour (u8, linear as glTF says)
HALF_WIDTH, THICKNESS, GAP = 0.15, 0.004, 0.002  # the box across the view, along it, and in front of the scene


def glb_of(mesh: trimesh.Trimesh) -> str:
    """``mesh`` (coordinates already in glTF's frame) as the base64 GLB a client sends."""
    return base64.b64encode(mesh.export(file_type="glb")).decode()


def unit_box() -> str:
    """The cube [-0.5, 0.5]^3 (the same in glTF's y-up frame and in S) with :data:`BOX_COLOUR` vertices."""
    box = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    box.visual.vertex_colors = np.tile([*BOX_COLOUR, 255], (len(box.vertices), 1)).astype(np.uint8)
    return glb_of(box)


def placed_box(lo, hi) -> dict:
    """A context entry: the unit box moved onto the S box ``[lo, hi]`` by its transform."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    matrix = np.diag([*(hi - lo), 1.0])
    matrix[:3, 3] = (lo + hi) / 2
    return {"name": "box", "transform": matrix.tolist(), "glb": unit_box()}


def in_front(manifest: dict, label: int) -> np.ndarray:
    """The transform that lays the unit box across the camera's view just in front of every instance's bounding
    box, centred on the ray through instance ``label``'s centre: it is seen, and it hides that instance there."""
    camera = Camera.from_dict(manifest["camera"])
    boxes = {e["label"]: (np.array(e["bbox"]["min"]), np.array(e["bbox"]["max"])) for e in manifest["instances"]}
    corners = np.array([[(lo, hi)[(k >> a) & 1][a] for a in range(3)] for lo, hi in boxes.values() for k in range(8)])
    nearest = camera.to_camera(corners)[:, 2].min()
    target = camera.to_camera(sum(boxes[label])[None] / 2)[0]
    if camera.perspective:
        target = target * (nearest - GAP - THICKNESS / 2) / target[2]
    else:
        target[2] = nearest - GAP - THICKNESS / 2
    matrix = np.eye(4)
    matrix[:3, :3] = camera.rotation.T @ np.diag([2 * HALF_WIDTH, 2 * HALF_WIDTH, THICKNESS])  # camera axes in S
    matrix[:3, 3] = camera.rotation.T @ (target - camera.translation)
    return matrix


def box_entry(manifest: dict, label: int = 4, name: str = "table") -> dict:
    return {"name": name, "transform": in_front(manifest, label).tolist(), "glb": unit_box()}


def assert_box_cells(bbox: dict, matrix: np.ndarray) -> None:
    """``bbox`` is the extents of the cells the unit box moved by ``matrix`` overlaps (clipped to the volume)."""
    corners = np.array([[x, y, z, 1.0] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]) @ matrix.T
    first = np.clip(np.floor((corners[:, :3].min(0) + 0.5) * GRID), 0, GRID - 1)
    last = np.clip(np.floor((corners[:, :3].max(0) + 0.5) * GRID), 0, GRID - 1)
    assert np.allclose(bbox["min"], first / GRID - 0.5, atol=1e-6), (bbox, first)
    assert np.allclose(bbox["max"], (last + 1) / GRID - 0.5, atol=1e-6), (bbox, last)


@pytest.fixture(scope="module")
def parent(generated_scene) -> ParentScene:
    return ParentScene(generated_scene, json.loads((generated_scene / "scene.json").read_text()))


@pytest.fixture(scope="module")
def context(parent) -> list:
    return decode_context([box_entry(parent.manifest)], parent.occupancy())


def refine(pipeline, parent: ParentScene, inputs, folder: Path, objects, parent_params=FAST, **edit) -> dict:
    folder.mkdir()
    params = {"transforms": {}, "locked": [], "strength": 0.5, "seed": 3, "parent_params": parent_params,
              "context": [o.summary() for o in objects], **edit}
    stored = {**inputs, **({"context": context_to_npz(objects)} if objects else {})}
    return run_refine(pipeline, folder, parent.folder, params, stored, ProgressTracker(REFINE_PLAN))


def test_the_stored_context_reads_back_and_damage_is_named(context):
    (box,) = context_from_npz(context_to_npz(context))
    assert box.name == "table" and box.clipped == context[0].clipped
    for field in ("vertices", "faces", "colors", "coords"):
        assert np.array_equal(getattr(box, field), getattr(context[0], field)) and getattr(box, field).dtype == \
            getattr(context[0], field).dtype
    stored = context_to_npz(context)
    for damaged in (stored[: len(stored) // 2], b"not an npz", stored.replace(b"coords_0", b"coords_9")):
        with pytest.raises(InputError, match="context objects are damaged on disk"):
            context_from_npz(damaged)


def test_the_box_is_voxelised_where_its_transform_puts_it(parent, context):
    (box,) = context
    assert_box_cells(box.bbox(), in_front(parent.manifest, 4))
    assert len(box.coords) > 0 and len(box.faces) == 12
    assert np.allclose(box.colors, box.colors[0]) and box.colors[0][1] > box.colors[0][0]  # green, as sent


def view_mask(mask: np.ndarray, frame) -> np.ndarray:
    """Which slot pixels (``[518, 518]``) come from pixels of ``mask`` at least 4 pixels inside it (the Lanczos
    kernel reaches 4 pixels), for slot images of ``frame``."""
    inner = crop(binary_erosion(mask, iterations=4), frame)
    rows = ((np.arange(SLOT_SIZE) + 0.5) * inner.shape[0] / SLOT_SIZE).astype(int)
    cols = ((np.arange(SLOT_SIZE) + 0.5) * inner.shape[1] / SLOT_SIZE).astype(int)
    return inner[rows][:, cols]


def test_the_context_is_in_the_scene_slot_and_hides_what_is_behind_it(pipeline, parent, context):
    exp = pipeline.package.exp_setting
    plain = render_edit(parent, check_edit(parent, {}, [], 0.5, 1))
    edited = render_edit(parent, check_edit(parent, {}, [], 0.5, 1, context))
    (label,) = parent.context_labels(1)
    seen = edited.ids == label
    assert label not in parent.labels and seen.sum() > 100
    hidden = seen & (plain.ids == 4)
    assert hidden.any() and not (edited.ids == 4)[seen].any()
    before, after = (build_slots(s, exp, [4], parent.frame) for s in (plain, edited))
    region = view_mask(seen, parent.frame)
    assert region.sum() > 100
    colour = context[0].colors[0]
    assert np.allclose(after.scene[:, region].T, colour, atol=0.02)  # the scene slot shows the box's colour
    assert not np.allclose(before.scene[:, region].T, colour, atol=0.02)
    assert np.abs(after.instances[0][:, region]).max() < 0.02  # the instance slot lost what the box hides
    assert before.instances[0][:, region].sum() > 1.0


def test_stage1_starts_from_the_context_occupancy_and_no_output_holds_it(pipeline, parent, context, small_inputs,
                                                                       tmp_path):
    grids = []
    encoder = pipeline.models.get("sparse_structure_encoder")
    hook = encoder.register_forward_pre_hook(lambda module, args: grids.append(args[0].detach().cpu().clone()))
    try:
        manifest = refine(pipeline, parent, small_inputs, tmp_path / "child", context, STAGE1_ONLY)
    finally:
        hook.remove()
    scene = torch.from_numpy(occupancy_grid(union([*parent.coords().values(), context[0].coords])))
    assert not torch.equal(scene, torch.from_numpy(occupancy_grid(parent.occupancy())))  # the box adds cells
    assert sum(int(torch.equal(g[i], scene)) for g in grids for i in range(len(g))) == 1
    assert manifest["context"][0]["applied"] and manifest["context"][0]["pixels"] > 0
    assert [e["label"] for e in manifest["instances"]] == parent.labels
    with np.load(tmp_path / "child" / "structure.npz") as arrays:
        assert sorted(arrays.files) == sorted(["scene_latent", *(f"{k}_{label}" for label in parent.labels
                                                                 for k in ("coords", "latent"))])
    assert not any((tmp_path / "child").glob("*context*"))


def test_strength_zero_does_not_use_the_context(pipeline, parent, context, small_inputs, tmp_path):
    manifest = refine(pipeline, parent, small_inputs, tmp_path / "child", context, transforms={"4": SHIFT},
                      strength=0.0)
    (entry,) = manifest["context"]
    assert entry["applied"] is False and entry["pixels"] == 0 and entry["voxels"] == len(context[0].coords)
    assert manifest["refine"]["moved_only"] == [4]


def test_the_refine_of_a_layout_does_not_use_the_context(pipeline, small_inputs, tmp_path):
    folder = tmp_path / "layout"
    run_generate(pipeline, folder, {**FAST, "until": "layout"}, small_inputs, ProgressTracker(LAYOUT_PLAN))
    layout = ParentScene(folder, json.loads((folder / "scene.json").read_text()))
    objects = intake.check_context(folder, [box_entry(layout.manifest)])
    manifest = refine(pipeline, layout, small_inputs, tmp_path / "child", objects, transforms={"4": SHIFT})
    assert manifest["stage"] == "layout" and manifest["refine"]["moved_only"] == [4]
    assert [(e["applied"], e["pixels"]) for e in manifest["context"]] == [(False, 0)]


def test_a_damaged_or_missing_context_input_fails_the_job_clearly(pipeline, parent, context, small_inputs,
                                                                  tmp_path):
    params = {"transforms": {}, "locked": [], "strength": 0.5, "seed": 3, "parent_params": FAST,
              "context": [context[0].summary()]}
    for name, stored in (("missing", small_inputs), ("damaged", {**small_inputs, "context": b"PK\x03\x04 broken"}),
                         ("other", {**small_inputs, "context": context_to_npz([])})):
        folder = tmp_path / name
        folder.mkdir()
        with pytest.raises(InputError) as raised:
            run_refine(pipeline, folder, parent.folder, params, stored, ProgressTracker(REFINE_PLAN))
        error = raised.value.to_dict()
        assert error["message"] == "this job's context objects are damaged on disk"
        assert error["hint"] == "submit the refine again" and "/" not in error["message"] + error["hint"]
    with pytest.raises(InputError, match="stored parameters are damaged: context"):
        check_stored_params("refine", {**params, "context": [{"name": "box"}]})


def test_context_objects_beyond_the_ids_a_scene_can_hold_are_refused(parent, monkeypatch):
    entry = box_entry(parent.manifest)
    assert len(intake.check_context(parent.folder, [entry])) == 1
    monkeypatch.setattr(intake, "MAX_INSTANCES", len(parent.labels))  # a scene already as full as it can be
    with pytest.raises(InputError, match="more than the 2 one scene can") as raised:
        intake.check_context(parent.folder, [entry])
    assert "0 fit beside" in raised.value.hint


# --- through the HTTP API ---------------------------------------------------------------------------------

def post_refine(server, job: str, context: list[dict], **edit) -> tuple[int, dict]:
    return server.post_json(f"/v1/jobs/{job}/refine", {"strength": 0.5, "seed": 5, **edit, "context": context})


def accessor_vertices(glb: bytes) -> int:
    gltf, _ = read_glb(glb)
    return sum(gltf["accessors"][p["attributes"]["POSITION"]]["count"]
               for mesh in gltf["meshes"] for p in mesh["primitives"])


def test_a_refine_with_a_context_box_through_the_api(server, finished_job):
    parent = server.get(f"/v1/jobs/{finished_job}/scene")
    entry = box_entry(parent)
    status, created = post_refine(server, finished_job, [entry], transforms={"4": SHIFT})
    assert status == 202, created
    job = created["job_id"]
    assert server.wait(job)["state"] == "succeeded"
    manifest = server.get(f"/v1/jobs/{job}/scene")
    (used,) = manifest["context"]
    assert used["name"] == "table" and used["faces"] == 12 and used["voxels"] > 0 and used["clipped"] is False
    assert used["applied"] is True and used["pixels"] > 0
    assert_box_cells(used["bbox"], np.array(entry["transform"]))
    assert server.get(f"/v1/jobs/{job}")["params"]["context"] == [  # the record holds no GLB
        {key: used[key] for key in ("name", "faces", "voxels", "clipped")}]
    assert [e["label"] for e in manifest["instances"]] == [e["label"] for e in parent["instances"]]
    assert manifest["files"] == {"scene": "scene.glb", "structure": "structure.npz"}
    code, _, structure = server.request("GET", f"/v1/jobs/{job}/files/structure.npz")
    with np.load(io.BytesIO(structure)) as arrays:
        assert sorted(arrays.files) == sorted(["scene_latent", *(f"{k}_{e['label']}" for e in parent["instances"]
                                                                 for k in ("coords", "latent"))])
    code, _, scene_glb = server.request("GET", f"/v1/jobs/{job}/files/scene.glb")
    assert code == 200 and accessor_vertices(scene_glb) == sum(e["vertices"] for e in manifest["instances"])
    inputs = server.data_dir / "jobs" / job / "inputs"
    assert (inputs / "context").is_file()

    status, again = post_refine(server, job, [], transforms={"4": SHIFT}, strength=0.0)
    assert status == 202 and server.wait(again["job_id"])["state"] == "succeeded"
    assert server.get(f"/v1/jobs/{again['job_id']}/scene")["context"] == []  # a child of the refine: no context
    status, child = server.post_json(f"/v1/jobs/{job}/regenerate", {"labels": [4], "seeds": {"4": 2}})
    assert status == 202 and server.wait(child["job_id"])["state"] == "succeeded"
    for other in (again["job_id"], child["job_id"]):
        assert sorted(p.name for p in (server.data_dir / "jobs" / other / "inputs").iterdir()) == ["image", "labels"]


def planes(count: int) -> str:
    """``count`` open squares stacked along z across nearly the whole volume: many surface cells, no interior."""
    squares = [trimesh.Trimesh([[-0.47, -0.47, z], [0.47, -0.47, z], [0.47, 0.47, z], [-0.47, 0.47, z]],
                               [[0, 1, 2], [0, 2, 3]]) for z in np.linspace(-0.4, 0.4, count) + 0.003]
    mesh = trimesh.util.concatenate(squares)
    mesh.vertices = mesh.vertices[:, [0, 2, 1]] * [1, 1, -1]  # S -> glTF's y-up: (x, y, z) -> (x, z, -y)
    return glb_of(mesh)


IDENTITY = np.eye(4).tolist()
REFUSALS = {
    "bad base64": (lambda box: [{**box, "glb": "not base64 at all!"}], "not valid base64"),
    "not a GLB": (lambda box: [{**box, "glb": base64.b64encode(b"glTF but not really").decode()}],
                  "cannot be used"),
    "too many faces": (lambda box: [{**box, "glb": glb_of(trimesh.creation.icosphere(subdivisions=7))}],
                       "over the limit"),
    "outside the volume": (lambda box: [placed_box([0.8, 0.8, 0.8], [1.0, 1.0, 1.0])], "outside the scene volume"),
    "too large": (lambda box: [{"name": "box", "transform": IDENTITY, "glb": planes(10)}], "cells of the scene"),
    "beyond reach": (lambda box: [placed_box([0.0, 0.0, 0.0], [1.6, 0.2, 0.2])], "reaches beyond"),
    "duplicate names": (lambda box: [box, box], "two context objects are named 'table'"),
    "non-finite transform": (lambda box: [{**box, "transform": [[math.nan] * 4] * 3 + [[0, 0, 0, 1]]}],
                             "transform that is not usable"),
    "affine last row": (lambda box: [{**box, "transform": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1]]}],
                        "last row"),
    "oversize GLB": (lambda box: [{**box, "glb": "A" * (MAX_CONTEXT_GLB_MB * 2 ** 20 * 4 // 3 + 8)}],
                     f"over the limit of {MAX_CONTEXT_GLB_MB} MiB"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_unusable_context_objects_are_refused_at_submit(server, finished_job, case):
    make, fragment = REFUSALS[case]
    box = box_entry(server.get(f"/v1/jobs/{finished_job}/scene"))
    before = len(server.get("/v1/jobs")["jobs"])
    status, body = post_refine(server, finished_job, make(box))
    assert status == 400, body
    assert fragment in body["error"]["message"] and body["error"]["hint"]
    named = body["error"]["message"]
    assert "'box'" in named or "'table'" in named
    assert "Traceback" not in json.dumps(body) and str(server.data_dir) not in json.dumps(body)
    assert len(server.get("/v1/jobs")["jobs"]) == before and server.get("/v1/health")["state"] == "ready"


def test_too_many_context_objects_are_refused(server, finished_job):
    box = box_entry(server.get(f"/v1/jobs/{finished_job}/scene"))
    many = [{**box, "name": f"box {i}"} for i in range(MAX_CONTEXT_OBJECTS + 1)]
    status, body = post_refine(server, finished_job, many)
    assert status == 400 and "context" in body["error"]["message"] and str(MAX_CONTEXT_OBJECTS) in \
        body["error"]["message"]
    with pytest.raises(InputError, match=f"over the limit of {MAX_CONTEXT_OBJECTS}") as raised:
        decode_context(many, np.zeros((0, 3), np.int16))
    assert raised.value.hint
