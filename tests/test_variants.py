"""Variants: K candidates of one object in one child job, batched through stage 1 and stage 2, reproducible from
their seeds, with the parent's other files kept, a ``variant`` event per candidate, and every bad request refused
with a hint.

Reproducibility is asserted on the meshes' vertices (within 1e-5, faces and voxels exactly), not on GLB bytes:
the batched pass computes the same sums as a regeneration's single-object pass in another order (even a Linear
layer on 3 rows rounds differently from one on 1 row, ~1e-7), and the quadric decimation is not continuous in its
input, so a decimated mesh can change by more than that rounding. The reproducibility tests therefore ask for
more faces than the tiny model extracts (no decimation); the same request twice is compared byte for byte.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FAST

from iscene_server.engine.eta import GENERATE_PLAN, JobSize
from iscene_server.engine.progress import ProgressTracker
from iscene_server.engine.results import read_manifest
from iscene_server.engine.stage1 import Stage1
from iscene_server.engine.stage2 import Stage2
from iscene_server.engine.variants import MAX_VARIANTS, random_variant_seeds
from iscene_server.errors import InputError
from iscene_server.geometry.glb_reader import read_glb, read_instance_mesh
from iscene_server.jobs.runner import check_stored_params, job_units, run_variants

UNDECIMATED = {**FAST, "target_faces": 2_000_000}  # more faces than the tiny model extracts: no decimation
LABEL = 4


def error_of(status_and_body) -> tuple[int, str]:
    status, body = status_and_body
    assert set(body["error"]) == {"code", "message", "hint"} and body["error"]["hint"], body
    return status, body["error"]["code"]


class RecordingPublisher:
    """Records each event and whether the file it announces was on disk when it was published."""

    def __init__(self, folder):
        self.folder = folder
        self.events: list[dict] = []

    def event(self, name: str, **fields) -> None:
        name_on_disk = f"instance_{fields['label']}_v{fields['index']}.glb"
        self.events.append({"event": name, **fields, "file_there": (self.folder / name_on_disk).is_file()})


class CallCounter:
    """Wraps a method, recording the batch size of each call (``size(args)``)."""

    def __init__(self, monkeypatch, owner, name, size):
        self.sizes: list[int] = []
        original = getattr(owner, name)

        def wrapper(this, *args, **kwargs):
            self.sizes.append(size(args))
            return original(this, *args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)


def variants_params(seeds, label=LABEL) -> dict:
    return {"label": label, "seeds": seeds, "parent_params": FAST}


def test_candidates_are_sampled_in_one_stage1_pass_and_one_stage2_pass(pipeline, generated_scene, small_inputs,
                                                                       tmp_path, monkeypatch):
    stage1 = CallCounter(monkeypatch, Stage1, "sample", lambda args: len(args[3]))  # seeds
    stage2 = CallCounter(monkeypatch, Stage2, "sample", lambda args: len(args[0]))  # coords per instance
    folder = tmp_path / "variants"
    folder.mkdir()
    publisher = RecordingPublisher(folder)
    manifest = run_variants(pipeline, folder, generated_scene, variants_params([5, 9, 13]),
                            small_inputs, ProgressTracker(GENERATE_PLAN), publisher)
    assert stage1.sizes == [3] and stage2.sizes == [3], "one pass per stage with all three candidates"

    section = manifest["variants"]
    assert section["label"] == LABEL
    assert [(c["index"], c["seed"], c["file"]) for c in section["candidates"]] == [
        (1, 5, "instance_4_v1.glb"), (2, 9, "instance_4_v2.glb"), (3, 13, "instance_4_v3.glb")]
    for candidate in section["candidates"]:
        mesh = read_instance_mesh((folder / candidate["file"]).read_bytes())
        assert (candidate["vertices"], candidate["faces"]) == (mesh.vertex_count, mesh.face_count) and mesh.face_count
        assert candidate["voxels"] > 0 and set(candidate["bbox"]) == {"min", "max", "origin"}
    meshes = [(folder / c["file"]).read_bytes() for c in section["candidates"]]
    assert len(set(meshes)) == 3, "three seeds, three shapes"

    assert sorted(e["index"] for e in publisher.events) == [1, 2, 3]
    assert all(e["event"] == "variant" and e["label"] == LABEL and e["file_there"] for e in publisher.events)

    parent = read_manifest(generated_scene)
    assert {k: v for k, v in manifest.items() if k != "variants"} == parent, "the parent's manifest plus variants"
    assert read_manifest(folder) == manifest
    for path in generated_scene.iterdir():
        if path.is_file() and path.name not in ("job.json", "scene.json"):
            assert (folder / path.name).read_bytes() == path.read_bytes(), f"{path.name} copied byte for byte"


def test_a_cancelled_variants_job_keeps_the_candidates_it_finished(pipeline, generated_scene, small_inputs,
                                                                   tmp_path):
    """The tracker is cancelled by the first candidate's event: that candidate's file stays, no manifest claims
    the job is done (the parent's is the one copied), and nothing after it was published."""
    import threading

    from iscene_server.errors import Cancelled

    folder = tmp_path / "variants"
    folder.mkdir()
    cancel = threading.Event()
    tracker = ProgressTracker(GENERATE_PLAN, cancel=cancel)

    class CancelOnFirst(RecordingPublisher):
        def event(self, name, **fields):
            super().event(name, **fields)
            cancel.set()

    publisher = CancelOnFirst(folder)
    with pytest.raises(Cancelled):
        run_variants(pipeline, folder, generated_scene, variants_params([5, 9]), small_inputs,
                     tracker, publisher)
    assert len(publisher.events) == 1 and publisher.events[0]["file_there"]
    assert "variants" not in read_manifest(folder)


def test_the_eta_counts_each_candidate_as_an_object_without_a_camera_solve():
    units = job_units("variants", {"label": 4, "seeds": [1, 2, 3], "parent_params": FAST}, {}, None, (25, 25))
    assert units == JobSize(kind="variants", instances=3, stage1_steps=2, stage2_steps=2, camera=False).units()
    assert units["camera"] == 0 and units["stage2"] == 2 * 3


@pytest.mark.parametrize("params", [
    {"label": 4, "parent_params": FAST}, {"label": "4", "seeds": [1], "parent_params": FAST},
    {"label": 4, "seeds": {"1": 2}, "parent_params": FAST}, {"label": 4, "seeds": [1], "parent_params": []},
])
def test_damaged_stored_variants_params_are_named(params):
    with pytest.raises(InputError, match="stored parameters are damaged"):
        check_stored_params("variants", params)


def test_random_seeds_are_distinct():
    seeds = random_variant_seeds(MAX_VARIANTS)
    assert len(set(seeds)) == MAX_VARIANTS


# --- through the API, on the real server --------------------------------------------------------------------
@pytest.fixture(scope="module")
def undecimated_parent(server, small_scene) -> str:
    """A finished generate job whose meshes are not decimated (see the module docstring)."""
    status, created = server.submit(*small_scene, UNDECIMATED)
    assert status == 202 and server.wait(created["job_id"])["state"] == "succeeded", created
    return created["job_id"]


def finished_child(server, path: str, body: dict) -> tuple[str, dict]:
    status, created = server.post_json(path, body)
    assert status == 202, created
    job = server.wait(created["job_id"])
    assert job["state"] == "succeeded", job
    return created["job_id"], job


def file_of(server, job: str, name: str) -> bytes:
    status, _, data = server.request("GET", f"/v1/jobs/{job}/files/{name}")
    assert status == 200, (name, data[:200])
    return data


@pytest.fixture(scope="module")
def variants_job(server, undecimated_parent) -> tuple[str, dict]:
    return finished_child(server, f"/v1/jobs/{undecimated_parent}/variants",
                          {"label": LABEL, "count": 3, "seeds": [5, 9, 13]})


def test_a_variants_job_serves_its_candidates_and_the_parents_scene(server, undecimated_parent, variants_job):
    job_id, status = variants_job
    assert status["kind"] == "variants" and status["parent"] == undecimated_parent
    assert status["ready_variants"] == [1, 2, 3] and status["ready_labels"] == []
    events = [e for e in status["events"] if e["event"] == "variant"]
    assert sorted((e["label"], e["index"]) for e in events) == [(LABEL, 1), (LABEL, 2), (LABEL, 3)]
    assert [e["seq"] for e in status["events"]] == list(range(len(status["events"])))

    manifest = server.get(f"/v1/jobs/{job_id}/scene")
    parent = server.get(f"/v1/jobs/{undecimated_parent}/scene")
    assert {k: v for k, v in manifest.items() if k != "variants"} == parent
    candidates = manifest["variants"]["candidates"]
    assert [c["seed"] for c in candidates] == [5, 9, 13]
    for candidate in candidates:
        mesh = read_instance_mesh(file_of(server, job_id, candidate["file"]))
        assert mesh.vertex_count == candidate["vertices"] and mesh.face_count == candidate["faces"]
    for entry in parent["instances"]:  # the whole parent scene is there, unchanged
        assert file_of(server, job_id, entry["file"]) == file_of(server, undecimated_parent, entry["file"])
    assert file_of(server, job_id, "scene.glb") == file_of(server, undecimated_parent, "scene.glb")


def test_a_candidate_is_the_regeneration_with_its_seed(server, undecimated_parent, variants_job):
    job_id, _ = variants_job
    regenerated, _ = finished_child(server, f"/v1/jobs/{undecimated_parent}/regenerate",
                                    {"labels": [LABEL], "seeds": {str(LABEL): 9}})
    one = file_of(server, regenerated, f"instance_{LABEL}.glb")
    candidate = file_of(server, job_id, f"instance_{LABEL}_v2.glb")
    a, b = read_instance_mesh(one), read_instance_mesh(candidate)
    # per triangle corner: the UV atlas (and so the vertex split at its seams) may differ with 1e-6 changes of
    # the vertices, the triangles may not; their colours, read from textures baked on those atlases (the GLBs have
    # no COLOR_0), agree to a few 8-bit levels
    assert a.face_count == b.face_count
    assert np.abs(a.vertices[a.faces] - b.vertices[b.faces]).max() <= 1e-5
    colour_error = np.abs(a.colors[a.faces] - b.colors[b.faces])  # [F, 3, 3]
    assert colour_error.max() <= 8 / 255 and colour_error.mean() <= 0.5 / 255, (colour_error.max(), colour_error.mean())
    assert read_glb(one)[0]["nodes"] == read_glb(candidate)[0]["nodes"], "same name, label and seed in the extras"
    entry = next(e for e in server.get(f"/v1/jobs/{regenerated}/scene")["instances"] if e["label"] == LABEL)
    chosen = server.get(f"/v1/jobs/{job_id}/scene")["variants"]["candidates"][1]
    assert (entry["seed"], entry["voxels"], entry["faces"]) == (chosen["seed"], chosen["voxels"], chosen["faces"])


def test_the_same_seeds_make_the_same_files(server, finished_job):
    body = {"label": LABEL, "count": 2, "seeds": [21, 22]}
    first, _ = finished_child(server, f"/v1/jobs/{finished_job}/variants", body)
    second, _ = finished_child(server, f"/v1/jobs/{finished_job}/variants", body)
    for index in (1, 2):
        name = f"instance_{LABEL}_v{index}.glb"
        assert file_of(server, first, name) == file_of(server, second, name)
    assert file_of(server, first, f"instance_{LABEL}_v1.glb") != file_of(server, first, f"instance_{LABEL}_v2.glb")


def test_seeds_left_out_are_random_and_distinct(server, finished_job):
    job_id, status = finished_child(server, f"/v1/jobs/{finished_job}/variants", {"label": 1, "count": 2})
    seeds = status["params"]["seeds"]
    assert len(seeds) == 2 and len(set(seeds)) == 2
    manifest = server.get(f"/v1/jobs/{job_id}/scene")
    assert [c["seed"] for c in manifest["variants"]["candidates"]] == seeds
    assert status["ready_variants"] == [1, 2]


@pytest.mark.parametrize("body, fragment", [
    ({"label": 77, "count": 2}, "no instance 77"),
    ({"label": LABEL, "count": 0}, "0 variants"),
    ({"label": LABEL, "count": MAX_VARIANTS + 1}, f"{MAX_VARIANTS + 1} variants"),
    ({"label": LABEL, "count": 3, "seeds": [1, 2]}, "2 seeds given for 3 variants"),
    ({"label": LABEL, "count": 2, "seeds": [7, 7]}, "seed(s) 7 given more than once"),
    ({"label": LABEL, "count": 1, "seeds": [-1]}, "not all integers"),
    ({"label": LABEL, "count": 1, "seeds": [2 ** 31]}, "not all integers"),
])
def test_bad_variants_requests_are_400_naming_the_problem(server, finished_job, body, fragment):
    status, answer = server.post_json(f"/v1/jobs/{finished_job}/variants", body)
    assert error_of((status, answer))[0] == 400 and fragment in answer["error"]["message"], answer


@pytest.mark.parametrize("body", [{"count": 2}, {"label": LABEL, "count": 2, "colour": "red"},
                                  {"label": LABEL, "count": "many"}])
def test_malformed_variants_bodies_are_400(server, finished_job, body):
    assert error_of(server.post_json(f"/v1/jobs/{finished_job}/variants", body)) == (400, "bad_request")


def test_variants_of_an_unknown_job_are_404(server):
    assert error_of(server.post_json(f"/v1/jobs/{'0' * 32}/variants", {"label": 1, "count": 2}))[0] == 404


def test_variants_of_an_unfinished_job_are_409(server, small_scene):
    _, created = server.submit(*small_scene, FAST)
    server.request("DELETE", f"/v1/jobs/{created['job_id']}")  # it will never succeed
    assert error_of(server.post_json(f"/v1/jobs/{created['job_id']}/variants",
                                     {"label": LABEL, "count": 2})) == (409, "wrong_state")


def test_variants_of_a_layout_job_are_409_pointing_to_build(server, small_scene):
    status, created = server.submit(*small_scene, {**FAST, "until": "layout"})
    assert status == 202 and server.wait(created["job_id"])["state"] == "succeeded", created
    status, answer = server.post_json(f"/v1/jobs/{created['job_id']}/variants", {"label": LABEL, "count": 2})
    assert error_of((status, answer)) == (409, "wrong_state") and "build" in answer["error"]["hint"]


def test_variants_in_the_api_schema(server):
    schema = server.get("/openapi.json")
    assert "/v1/jobs/{job_id}/variants" in schema["paths"]
    body = schema["components"]["schemas"]["VariantsBody"]
    assert set(body["required"]) == {"label", "count"} and "seeds" in body["properties"]



def test_variants_of_a_variants_job_keep_its_settings_and_drop_its_candidates(server, finished_job):
    first, _ = finished_child(server, f"/v1/jobs/{finished_job}/variants", {"label": 1, "count": 2, "seeds": [3, 4]})
    second, status = finished_child(server, f"/v1/jobs/{first}/variants", {"label": LABEL, "count": 1, "seeds": [8]})
    assert status["params"]["parent_params"] == server.get(f"/v1/jobs/{finished_job}")["params"]
    for name in ("instance_1_v1.glb", "instance_1_v2.glb"):
        assert server.request("GET", f"/v1/jobs/{second}/files/{name}")[0] == 404
    section = server.get(f"/v1/jobs/{second}/scene")["variants"]
    assert section["label"] == LABEL and [c["file"] for c in section["candidates"]] == [f"instance_{LABEL}_v1.glb"]
    assert file_of(server, second, f"instance_{LABEL}_v1.glb")
