"""Segment Anything on the server: prompts, label assembly, the automatic mask filters, the tiny SAM end to end
(through the job runner and through a real server), queue priority, and the server without the [segment] extra.

The tiny SAM's weights are random, so its masks mean nothing: these tests check structure (ids, areas, boxes,
the palette, prompt bookkeeping), never shape quality."""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
import torch
from conftest import FAST, fake_hub_repo, png, without_transformers
from PIL import Image
from server_process import ServerProcess

from iscene_server.engine.preprocess import decode_label_map, load_scene, open_image
from iscene_server.engine.progress import ProgressTracker
from iscene_server.errors import Cancelled, InputError, ModelPackageError
from iscene_server.jobs.json_fields import parse_json_field
from iscene_server.jobs.runner import run_segment
from iscene_server.segment import SEGMENT_PLAN
from iscene_server.segment.auto import mask_nms, point_grid, stability_score
from iscene_server.segment.labels import PALETTE, LabelAssembler, write_segmentation
from iscene_server.segment.model import SamSegmenter, default_segment_model
from iscene_server.segment.prompts import MAX_OBJECTS, SegmentPrompts, parse_prompts

SIZE = (320, 240)  # the small scene's width, height


def prompts(**fields) -> dict:
    """Schema-checked prompts, as the API stores them in a job."""
    return SegmentPrompts(**fields).model_dump()


# --- prompts ---------------------------------------------------------------------------------------------------

def test_prompts_become_pixel_space_objects_with_boxes_clipped():
    request = parse_prompts(prompts(objects=[{"box": [-20, 10, 100, 500]}, {"points": [[5, 6]], "negative": [[7, 8]]},
                                             {"points": [[1, 2]]}], min_area=0.01, fill_holes=True), SIZE)
    assert request.mode == "prompts" and request.min_area == 0.01 and request.fill_holes
    first, second, third = request.objects
    assert first.box == (0.0, 10.0, 100.0, 240.0) and first.points == () and not first.multimask
    assert second.points == ((5.0, 6.0),) and second.negative == ((7.0, 8.0),) and not second.multimask
    assert third.multimask  # a lone positive point: the best of SAM's three proposals
    auto = parse_prompts(prompts(auto=True, points_per_side=8), SIZE)
    assert auto.mode == "auto" and auto.objects == () and auto.points_per_side == 8 and auto.min_score == 0.88


@pytest.mark.parametrize("data, fragment", [
    ({}, "no prompts"),
    ({"objects": []}, "no prompts"),
    ({"objects": [{"box": [400, 10, 500, 100]}]}, "outside"),
    ({"objects": [{"box": [10, -90, 100, -1]}]}, "outside"),
    ({"objects": [{"box": [50, 10, 50, 100]}]}, "no area"),
    ({"objects": [{"box": [60, 10, 50, 100]}]}, "no area"),
    ({"objects": [{"points": [[320, 10]]}]}, "outside"),
    ({"objects": [{"points": [[10, 10]], "negative": [[-1, 5]]}]}, "outside"),
    ({"objects": [{"negative": [[10, 10]]}]}, "no box and no positive point"),
    ({"objects": [{"box": [0, 0, 10, 10]}] * (MAX_OBJECTS + 1)}, "more than the 255"),
    ({"objects": [{"box": [0, 0, 10, 10]}], "auto": True}, "both objects and auto"),
])
def test_bad_prompts_are_input_errors_naming_the_problem(data, fragment):
    with pytest.raises(InputError) as caught:
        parse_prompts(prompts(**data), SIZE)
    assert fragment in caught.value.message and caught.value.hint
    if fragment == "no prompts":
        assert caught.value.hint == "draw at least one box or point, or use auto"


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"objects": [{"box": [1, 2, 3]}]}', "box"),
    ('{"objects": [{"points": [[1, NaN]]}]}', "finite"), ('{"colour": "red"}', "colour"),
    ('{"auto": true, "points_per_side": 65}', "points_per_side"),
])
def test_prompts_json_is_schema_checked(text, fragment):
    with pytest.raises(InputError) as caught:
        parse_json_field(text, SegmentPrompts, "prompts", "{}")
    assert fragment in caught.value.message


# --- label assembly --------------------------------------------------------------------------------------------

def square(y0: int, x0: int, y1: int, x1: int, shape=(40, 50)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_overlaps_go_to_the_higher_score_and_ids_follow_the_order_added():
    assembler = LabelAssembler(40, 50)
    assembler.add(square(0, 0, 20, 30), 0.80, prompt=0)
    assembler.add(square(10, 10, 30, 40), 0.95, prompt=1)
    result = assembler.finish()
    assert result.labels[15, 15] == 2 and result.labels[5, 5] == 1 and result.labels[25, 35] == 2
    assert [(s["id"], s["prompt"]) for s in result.segments] == [(1, 0), (2, 1)]
    assert result.segments[0]["area"] == 20 * 30 - 10 * 20 and result.segments[1]["area"] == 20 * 30
    assert result.segments[0]["box"] == [0, 0, 30, 20] and result.segments[1]["box"] == [10, 10, 40, 30]
    assert result.dropped == []


def test_a_fully_covered_prompt_is_dropped_and_ids_stay_consecutive():
    assembler = LabelAssembler(40, 50)
    assembler.add(square(0, 0, 10, 10), 0.9, prompt=0)
    assembler.add(square(22, 22, 28, 28), 0.7, prompt=1)  # inside the next, higher-scoring mask
    assembler.add(square(20, 20, 30, 30), 0.8, prompt=2)
    assembler.add(np.zeros((40, 50), bool), 0.99, prompt=3)
    result = assembler.finish()
    assert [(s["id"], s["prompt"]) for s in result.segments] == [(1, 0), (2, 2)]
    assert result.dropped == [{"prompt": 1, "reason": "covered by higher-scoring masks"},
                              {"prompt": 3, "reason": "the model found no mask"}]
    assert set(np.unique(result.labels)) == {0, 1, 2}


def test_fragments_below_min_area_are_dropped_and_a_mask_of_fragments_only_is_dropped():
    main = square(0, 0, 20, 20) | square(30, 30, 32, 32)  # 400 pixels + a 4-pixel fragment
    crumbs = square(35, 0, 37, 2) | square(0, 45, 2, 47)
    assembler = LabelAssembler(40, 50)
    assembler.add(main, 0.9, prompt=0)
    assembler.add(crumbs, 0.9, prompt=1)
    result = assembler.finish(min_area=10 / (40 * 50))
    assert result.segments[0]["area"] == 400 and result.segments[0]["box"] == [0, 0, 20, 20]
    assert result.labels[31, 31] == 0 and result.labels[36, 1] == 0
    assert result.dropped == [{"prompt": 1, "reason": "only fragments smaller than min_area (10 pixels) were left"}]
    diagonal = LabelAssembler(40, 50)  # fragments are 8-connected, as in SAM: a diagonal line is one piece
    diagonal.add(np.eye(40, 50, dtype=bool), 0.9)
    assert diagonal.finish(min_area=30 / (40 * 50)).segments[0]["area"] == 40


def test_holes_are_filled_but_an_object_inside_the_hole_stays():
    ring = square(5, 5, 35, 35) & ~square(10, 10, 30, 30)
    assembler = LabelAssembler(40, 50)
    assembler.add(ring, 0.8, prompt=0)
    assembler.add(square(15, 15, 20, 20), 0.5, prompt=1)
    kept = assembler.finish(fill_holes=False)
    assert kept.labels[12, 12] == 0 and kept.segments[0]["area"] == 30 * 30 - 20 * 20
    filled = assembler.finish(fill_holes=True)
    assert filled.labels[12, 12] == 1 and filled.labels[17, 17] == 2
    assert filled.segments[0]["area"] == 30 * 30 - 25 and filled.segments[1]["area"] == 25


def test_the_palette_is_distinct_saturated_and_black_for_the_background():
    assert PALETTE.shape == (256, 3) and PALETTE[0].tolist() == [0, 0, 0]
    assert len({tuple(c) for c in PALETTE.tolist()}) == 256
    assert (PALETTE[1:].max(axis=1).astype(int) - PALETTE[1:].min(axis=1) >= 120).all()  # saturated
    near = PALETTE[1:33].astype(float)  # the ids of a typical scene are easy to tell apart
    distances = np.linalg.norm(near[:, None] - near[None], axis=-1) + np.eye(32) * 1e9
    assert distances.min() > 40


def test_the_label_png_round_trips_and_the_project_reads_it_as_the_same_instances(tmp_path):
    assembler = LabelAssembler(40, 50)
    for index, (y, x) in enumerate([(0, 0), (0, 25), (20, 0), (20, 25)]):
        assembler.add(square(y, x, y + 15, x + 20), 0.5 + index / 10, prompt=index)
    result = assembler.finish()
    info = write_segmentation(result, tmp_path / "labels.png", tmp_path / "segments.json",
                              {"mode": "prompts", "model": "test"})
    image = Image.open(tmp_path / "labels.png")
    assert image.format == "PNG" and image.mode == "P" and image.size == (50, 40)
    assert np.array_equal(np.array(image), result.labels)
    assert np.frombuffer(bytes(image.getpalette()), np.uint8)[:768].tolist() == PALETTE.ravel().tolist()
    assert json.loads((tmp_path / "segments.json").read_text()) == info
    assert info["image_size"] == [50, 40] and [s["colour"] for s in info["segments"]] == PALETTE[1:5].tolist()
    assert np.array_equal(decode_label_map(open_image(tmp_path / "labels.png", what="label map")), result.labels)
    scene = load_scene(png(np.zeros((40, 50, 3), np.uint8)), tmp_path / "labels.png")
    assert scene.label_ids == [1, 2, 3, 4]


# --- automatic masks -------------------------------------------------------------------------------------------

def test_stability_score_is_the_iou_of_the_mask_at_plus_and_minus_the_offset():
    logits = torch.full((2, 4, 5), -5.0)
    logits[0, 0, :4] = 3.0  # above +1: 4 pixels
    logits[0, 1, :2] = 0.5  # between -1 and +1: 2 more pixels inside the loose mask only
    logits[0, 2, :4] = -0.5  # 4 more
    assert stability_score(logits).tolist() == pytest.approx([4 / 10, 0.0])


def reference_nms(masks: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    kept = []
    for index in sorted(range(len(scores)), key=lambda i: (-scores[i], i)):
        ious = [(masks[index] & masks[k]).sum() / max((masks[index] | masks[k]).sum(), 1) for k in kept]
        if all(iou <= threshold for iou in ious):
            kept.append(index)
    return kept


def test_mask_nms_keeps_the_best_of_each_group_of_duplicates():
    a = square(0, 0, 10, 10)
    b = square(0, 0, 10, 11)  # IoU with a: 100/110
    c = square(20, 20, 30, 30)
    d = square(0, 3, 10, 13)  # IoU with b: 80/130
    masks = torch.as_tensor(np.stack([a, b, c, d]))
    kept = mask_nms(masks, torch.tensor([0.9, 0.95, 0.5, 0.7]))
    assert kept.tolist() == [1, 3, 2]


def test_mask_nms_matches_plain_greedy_suppression_across_chunks(monkeypatch):
    import iscene_server.segment.auto as auto

    generator = np.random.default_rng(5)
    base = generator.random((6, 12, 12)) > 0.5
    masks = np.concatenate([base ^ (generator.random((6, 12, 12)) > q) for q in (0.97, 0.9, 0.8, 0.7)])
    scores = generator.random(len(masks)).round(2)  # with ties
    expected = reference_nms(masks, scores, 0.7)
    monkeypatch.setattr(auto, "NMS_CHUNK", 5)
    assert mask_nms(torch.as_tensor(masks), torch.as_tensor(scores)).tolist() == expected


def test_the_point_grid_covers_the_image_at_cell_centres():
    grid = point_grid(4, 320, 240)
    assert grid.shape == (16, 2) and grid[0].tolist() == [40, 30] and grid[-1].tolist() == [280, 210]
    assert grid[1].tolist() == [120, 30]  # row by row


# --- the tiny SAM end to end -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def segmenter(tiny_package) -> SamSegmenter:
    assert default_segment_model(str(tiny_package)) == str(tiny_package / "sam")
    model = SamSegmenter(str(tiny_package / "sam"), device="cpu")
    model.load()
    return model


@pytest.fixture(scope="module")
def image(small_scene) -> bytes:
    return small_scene[0]


def test_a_sam_repo_id_is_served_from_the_offline_cache_and_a_missing_one_is_explained(tiny_package, offline_hub):
    fake_hub_repo(offline_hub, "tiny/sam", tiny_package / "sam")
    cached = SamSegmenter("tiny/sam", device="cpu")
    cached.load()
    assert cached.loaded
    with pytest.raises(ModelPackageError) as caught:
        SamSegmenter("tiny/not-downloaded", device="cpu").load()
    assert "tiny/not-downloaded" in caught.value.message and "--segment-model" in caught.value.hint
    with pytest.raises(ModelPackageError) as caught:
        SamSegmenter(str(tiny_package / "ckpts"), device="cpu").load()  # a folder, but no SAM in it
    assert "could not be loaded as SAM" in caught.value.message


def check_results(labels_png: bytes, info: dict, size=SIZE) -> np.ndarray:
    """Everything segments.json says agrees with labels.png; returns the ids."""
    picture = Image.open(io.BytesIO(labels_png))
    assert picture.mode == "P" and picture.size == size and info["image_size"] == list(size)
    ids = np.array(picture)
    segments = info["segments"]
    assert [s["id"] for s in segments] == list(range(1, len(segments) + 1))
    assert sorted(np.unique(ids)) in ([0, *range(1, len(segments) + 1)], list(range(1, len(segments) + 1)))
    for entry in segments:
        ys, xs = np.nonzero(ids == entry["id"])
        assert entry["area"] == len(xs) > 0
        assert entry["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert 0 <= entry["box"][0] < entry["box"][2] <= size[0] and 0 <= entry["box"][1] < entry["box"][3] <= size[1]
        assert entry["colour"] == PALETTE[entry["id"]].tolist() and entry["score"] > 0
    return ids


def run(segmenter, tmp_path, image: bytes, params: dict, listener=None, cancel=None) -> tuple[np.ndarray, dict]:
    tracker = ProgressTracker(SEGMENT_PLAN, listener, cancel)
    info = run_segment(segmenter, tmp_path, params, {"image": image}, tracker)
    assert json.loads((tmp_path / "segments.json").read_text()) == info
    return check_results((tmp_path / "labels.png").read_bytes(), info), info


PROMPTED = [{"box": [20, 100, 150, 220]}, {"points": [[250, 150]], "negative": [[300, 30]]},
            {"box": [200, 40, 310, 200], "points": [[250, 120]]}, {"points": [[60, 60]]},
            {"box": [0, 0, 20, 20]}, {"points": [[160, 120], [170, 125]]}]


def test_prompted_segmentation_gives_one_id_per_surviving_prompt_in_prompt_order(segmenter, image, tmp_path):
    seen = []
    _, info = run(segmenter, tmp_path, image, prompts(objects=PROMPTED, min_area=0.0),
                  lambda update: seen.append((update.stage, update.total)))
    assert info["mode"] == "prompts" and info["model"] == segmenter.spec
    kept = [s["prompt"] for s in info["segments"]]
    assert kept == sorted(kept) and sorted(kept + [d["prompt"] for d in info["dropped"]]) == list(range(6))
    assert ("segmenting", len(PROMPTED)) in seen and seen[-1][0] == "done"


def test_batched_prompts_decode_as_each_alone(segmenter, image):
    embedding = segmenter.embed(np.asarray(Image.open(io.BytesIO(image)).convert("RGB")))
    objects = parse_prompts(prompts(objects=PROMPTED + PROMPTED[:3]), SIZE).objects
    logits, scores = segmenter.predict_objects(embedding, objects)
    for index, prompt in enumerate(objects):
        alone_logits, alone_scores = segmenter.predict_objects(embedding, [prompt])
        torch.testing.assert_close(logits[index], alone_logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(scores[index], alone_scores[0])


def test_automatic_segmentation_numbers_masks_by_descending_score(segmenter, image, tmp_path):
    _, info = run(segmenter, tmp_path, image, prompts(auto=True, points_per_side=8, min_score=0, min_stability=0))
    scores = [s["score"] for s in info["segments"]]
    assert info["mode"] == "auto" and len(scores) >= 2 and scores == sorted(scores, reverse=True)
    assert all(s["prompt"] is None for s in info["segments"] + info["dropped"])


def test_the_filters_of_automatic_segmentation(segmenter, image, tmp_path):
    _, loose = run(segmenter, tmp_path, image, prompts(auto=True, points_per_side=8, min_score=0, min_stability=0))
    _, default = run(segmenter, tmp_path, image, prompts(auto=True, points_per_side=8))
    assert 1 <= len(default["segments"]) + len(default["dropped"]) < len(loose["segments"]) + len(loose["dropped"])
    with pytest.raises(InputError) as caught:
        run(segmenter, tmp_path, image, prompts(auto=True, points_per_side=8, min_score=0.99))
    assert "no object was found" in caught.value.message and "min_score" in caught.value.hint


def test_nothing_left_is_a_clear_failure(segmenter, image, tmp_path):
    with pytest.raises(InputError) as caught:
        run(segmenter, tmp_path, image, prompts(objects=PROMPTED[:2], min_area=1.0))
    assert "no object was found" in caught.value.message and "min_area" in caught.value.hint
    assert not (tmp_path / "labels.png").exists()


def test_cancellation_is_honoured_between_batches(segmenter, image, tmp_path):
    cancel = threading.Event()

    def listener(update):
        if update.stage == "segmenting" and update.step == 1:
            cancel.set()

    with pytest.raises(Cancelled):
        run(segmenter, tmp_path, image, prompts(auto=True, points_per_side=16), listener, cancel)


# --- through the server ----------------------------------------------------------------------------------------

def segment_and_wait(server, image: bytes, data: dict) -> str:
    status, created = server.segment(image, data)
    assert status == 202 and created["state"] == "queued" and created["parent"] is None, created
    assert server.wait(created["job_id"])["state"] == "succeeded", server.get(f"/v1/jobs/{created['job_id']}")
    return created["job_id"]


def test_segment_through_the_server(server, image):
    health = server.get("/v1/health")["segment"]
    assert health["available"] and health["model"].endswith("sam")
    job = segment_and_wait(server, image, {"objects": PROMPTED, "fill_holes": True})
    status = server.get(f"/v1/jobs/{job}")
    assert status["kind"] == "segment" and status["params"]["objects"][0]["box"] == [20, 100, 150, 220]
    info = server.get(f"/v1/jobs/{job}/segments")
    code, headers, data = server.request("GET", f"/v1/jobs/{job}/files/labels.png")
    assert code == 200 and headers["content-type"] == "image/png"
    check_results(data, info)
    assert server.request("GET", f"/v1/jobs/{job}/files/segments.json")[0] == 200
    assert server.get("/v1/health")["segment"]["loaded"]
    auto = segment_and_wait(server, image, {"auto": True, "points_per_side": 4, "min_score": 0, "min_stability": 0})
    check_results(server.request("GET", f"/v1/jobs/{auto}/files/labels.png")[2],
                  server.get(f"/v1/jobs/{auto}/segments"))
    code, _, body = server.request("GET", f"/v1/jobs/{job}/scene")  # a segment job has no scene
    assert code == 409 and "/segments" in json.loads(body)["error"]["hint"]
    assert server.post_json(f"/v1/jobs/{job}/regenerate", {"labels": [1]})[0] == 409


@pytest.mark.parametrize("data, fragment", [
    ("{not json", "not valid JSON"), ({}, "no prompts"), ({"objects": [{"box": [400, 0, 500, 10]}]}, "outside"),
    ({"objects": [{"points": [[10, 240]]}]}, "outside"), ({"objects": [{"box": [5, 5, 5, 9]}]}, "no area"),
    ({"objects": [{"box": [0, 0, 9, 9]}] * 256}, "more than the 255"), ({"auto": True, "size": 3}, "size"),
])
def test_bad_segment_requests_are_400_naming_the_problem(server, image, data, fragment):
    status, body = server.segment(image, data)
    assert status == 400 and fragment in body["error"]["message"] and body["error"]["hint"], body


def test_bad_images_and_unknown_jobs(server):
    status, body = server.segment(b"not an image", {"auto": True})
    assert status == 400 and "not a readable image" in body["error"]["message"]
    status, body = server.segment(png(np.zeros((10, 10, 3), np.uint8)), {"objects": [{"points": [[20, 5]]}]})
    assert status == 400 and "10×10" in body["error"]["message"]
    code, _, body = server.request("GET", "/v1/jobs/0123456789abcdef0123456789abcdef/segments")
    assert code == 404 and json.loads(body)["error"]["code"] == "not_found"
    for name in ("..%2Fjob.json", "labels.PNG", "labels.png.partial"):
        assert server.request("GET", f"/v1/jobs/0123456789abcdef0123456789abcdef/files/{name}")[0] == 404


def test_a_segment_job_runs_before_queued_generate_jobs(server, image, small_scene):
    _, long = server.submit(*small_scene, {**FAST, "steps": 100})
    server.wait(long["job_id"], states=("running",))
    _, queued = server.submit(*small_scene, FAST)
    jobs = [server.segment(image, {"objects": [{"box": [10, 10, 100, 100]}]})[1]["job_id"] for _ in range(2)]
    positions = [server.get(f"/v1/jobs/{job}")["queue_position"] for job in [*jobs, queued["job_id"]]]
    assert positions == [1, 2, 3]
    code, _, body = server.request("GET", f"/v1/jobs/{jobs[0]}/segments")  # not finished yet
    assert code == 409 and json.loads(body)["error"]["code"] == "wrong_state"
    server.request("DELETE", f"/v1/jobs/{long['job_id']}")
    first, second = (server.wait(job) for job in jobs)
    assert first["state"] == second["state"] == "succeeded" and first["finished"] <= second["started"]
    generate = server.wait(queued["job_id"], states=("running", "succeeded", "failed", "cancelled"))
    assert generate["started"] >= second["finished"]
    server.request("DELETE", f"/v1/jobs/{queued['job_id']}")
    code, _, body = server.request("GET", f"/v1/jobs/{long['job_id']}/segments")
    assert code == 409 and "not a segment job" in json.loads(body)["error"]["message"]


def test_without_the_segment_extra_the_endpoint_is_501(tiny_package, tmp_path, image):
    bare = ServerProcess(tiny_package, tmp_path / "data", env=without_transformers(tmp_path / "site")).start()
    try:
        status, body = bare.segment(image, {"auto": True})
        assert status == 501 and body["error"]["code"] == "not_installed"
        assert body["error"]["hint"] == "pip install iscene-server[segment]"
        assert "transformers" in body["error"]["message"]
        assert bare.get("/v1/health")["segment"] == {"available": False, "model": str(tiny_package / "sam"),
                                                     "loaded": False}
    finally:
        bare.stop()
