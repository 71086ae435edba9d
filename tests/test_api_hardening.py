"""Issue 12, the request side: hostile or careless requests get a 400/404/503 with a hint before any job exists,
never a 500, a traceback or a path of the server's disk."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import FAST
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from server_process import multipart

from iscene_server.api import errors
from iscene_server.api.decoding import BusyError, DecodeGate
from iscene_server.api.schemas import GenerationParams
from iscene_server.api.security import is_loopback
from iscene_server.engine.preprocess import decode_label_map, open_image
from iscene_server.errors import InputError, ModelPackageError
from iscene_server.jobs.json_fields import parse_json_field
from iscene_server.segment.prompts import SegmentPrompts

HOSTILE_JSON = ["[" * 100000, '{"a":' * 50000, '{"seed": ' + "9" * 5000 + "}", "x" * 2_000_000]


@pytest.fixture(scope="module")
def finished(server, small_scene) -> str:
    status, created = server.submit(*small_scene, FAST)
    assert status == 202 and server.wait(created["job_id"])["state"] == "succeeded"
    return created["job_id"]


def job_count(server) -> int:
    return len(server.get("/v1/jobs")["jobs"])


def refused(status: int, body: dict) -> str:
    """The message of a 400 (bad input, or a body that does not fit the schema) with a hint and no server path."""
    assert status == 400 and body["error"]["code"] in ("bad_input", "bad_request") and body["error"]["hint"], body
    assert "/tmp" not in json.dumps(body) and "Traceback" not in json.dumps(body)
    return body["error"]["message"]


# --- finding 7: loopback --------------------------------------------------------------------------------------

@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True),
    ("localhost", True), ("127.attacker.invalid", False), ("127.0.0.1.nip.invalid", False), ("0.0.0.0", False),
    ("::", False), ("", False), ("192.168.1.10", False),
])
def test_loopback_is_decided_by_the_address(host, loopback):
    assert is_loopback(host) is loopback


def test_a_name_resolving_to_any_other_address_is_not_loopback(monkeypatch):
    answers = {"mixed.test": ["127.0.0.1", "203.0.113.5"], "local.test": ["127.0.0.1", "::1"]}
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: [(0, 0, 0, "", (a, 0)) for a in answers[host]])
    assert not is_loopback("mixed.test")
    assert is_loopback("local.test")


def test_a_loopback_looking_name_needs_a_token(tiny_package, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "iscene_server.cli", "serve", "--model", str(tiny_package),
                           "--host", "127.attacker.invalid", "--data-dir", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "without an access token" in proc.stderr


# --- finding 8: only regular files inside the job folder are served -----------------------------------------

def test_a_symlink_in_a_job_folder_is_not_served(server, finished, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the data folder")
    folder = server.data_dir / "jobs" / finished
    (folder / "instance_999.glb").symlink_to(secret)
    (folder / "instance_998.glb").symlink_to(folder / "scene.glb")  # a link even to a file of the job
    for name in ("instance_999.glb", "instance_998.glb"):
        status, _, data = server.request("GET", f"/v1/jobs/{finished}/files/{name}")
        assert status == 404 and b"outside" not in data
    assert server.request("GET", f"/v1/jobs/{finished}/files/scene.glb")[0] == 200


# --- finding 4: deep or huge JSON in form fields ----------------------------------------------------------------

@pytest.mark.parametrize("text", HOSTILE_JSON, ids=["deep-list", "deep-object", "long-int", "huge"])
@pytest.mark.parametrize("model", [GenerationParams, SegmentPrompts])
def test_hostile_json_fields_are_input_errors(text, model):
    with pytest.raises(InputError) as caught:
        parse_json_field(text, model, "field", "{}")
    assert caught.value.hint


def test_strings_that_look_nested_are_not_counted_as_depth():
    assert parse_json_field('{"name": "[[[[[[[[[[[[[[[[[[[[\\" {{{{{{{{{{{{{{{{{{"}', GenerationParams, "params",
                            "{}").name.startswith("[[[")


@pytest.mark.parametrize("text", HOSTILE_JSON[:3])
def test_hostile_form_json_is_400_on_the_server(server, small_scene, text):
    before = job_count(server)
    body, content_type = multipart({"image": ("a.png", small_scene[0]), "labels": ("b.png", small_scene[1])},
                                   {"params": text})
    status, _, data = server.request("POST", "/v1/jobs", body, {"Content-Type": content_type})
    refused(status, json.loads(data))
    body, content_type = multipart({"image": ("a.png", small_scene[0])}, {"prompts": text})
    status, _, data = server.request("POST", "/v1/segment", body, {"Content-Type": content_type})
    refused(status, json.loads(data))
    assert job_count(server) == before


@pytest.mark.parametrize("text", HOSTILE_JSON[:3])
def test_hostile_json_bodies_stay_400(server, finished, text):
    status, _, data = server.request("POST", f"/v1/jobs/{finished}/refine", text.encode(),
                                     {"Content-Type": "application/json"})
    assert status == 400 and json.loads(data)["error"]["hint"]


# --- finding 6: label maps hold whole, non-negative ids -------------------------------------------------------

def tiff(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="TIFF")
    return buffer.getvalue()


BAD_LABELS = {"fraction": np.full((240, 320), 1.5, np.float32), "nan": np.full((240, 320), np.nan, np.float32),
              "negative": np.full((240, 320), -5, np.int32)}


@pytest.mark.parametrize("kind", BAD_LABELS)
def test_float_nan_and_negative_label_maps_are_refused(kind):
    with pytest.raises(InputError, match="whole-number ids"):
        decode_label_map(open_image(tiff(BAD_LABELS[kind]), what="label map"))


def test_whole_number_label_maps_keep_their_ids():
    ids = np.zeros((4, 4), np.int32)
    ids[1:3, 1:3] = 70000
    assert decode_label_map(open_image(tiff(ids), what="label map")).tolist() == ids.tolist()
    assert decode_label_map(open_image(tiff(ids.astype(np.float32)), what="label map")).tolist() == ids.tolist()


def test_a_float_label_map_is_400_on_the_server(server, small_scene):
    before = job_count(server)
    status, body = server.submit(small_scene[0], tiff(BAD_LABELS["fraction"]), FAST)
    assert "fractional" in refused(status, body)
    assert job_count(server) == before


# --- finding 5: refine edits are checked before the 202 -------------------------------------------------------

def moved(x: float) -> list[list[float]]:
    return [[1, 0, 0, x], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize("body, fragment", [
    ({"transforms": {"1": moved(1e300)}}, "translation"),
    ({"transforms": {"1": moved(3.0)}, "strength": 0}, "out of the scene volume"),
    ({"transforms": {"1": moved(3.0)}}, "out of the scene volume"),
    ({"locked": [1, 4]}, "nothing to refine"),
    ({"transforms": {"1": moved(0.1)}, "locked": [1, 4]}, "nothing to refine"),
    ({"strength": 0}, "nothing to refine"),
])
def test_bad_refine_edits_fail_at_submit(server, finished, body, fragment):
    before = job_count(server)
    assert fragment in refused(*server.post_json(f"/v1/jobs/{finished}/refine", body))
    assert job_count(server) == before


def test_non_finite_refine_matrices_fail_at_submit(server, finished):
    text = json.dumps({"transforms": {"1": moved(0.0)}}).replace("0.0", "NaN", 1)
    status, _, data = server.request("POST", f"/v1/jobs/{finished}/refine", text.encode(),
                                     {"Content-Type": "application/json"})
    assert status == 400 and "finite" in json.loads(data)["error"]["message"]


def test_a_good_refine_edit_is_still_accepted(server, finished):
    status, created = server.post_json(f"/v1/jobs/{finished}/refine",
                                       {"transforms": {"1": moved(0.05)}, "locked": [4], "strength": 0})
    assert status == 202 and server.wait(created["job_id"])["state"] == "succeeded"


# --- finding 10: model errors and the protocol layer's 400 ----------------------------------------------------

@pytest.mark.parametrize("weights", [b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": evil}" + b"x" * 64, None])
def test_a_bad_sam_checkpoint_is_a_model_error_without_paths(tiny_package, tmp_path, weights):
    import pickle

    from iscene_server.segment.model import SamSegmenter
    folder = tmp_path / "sam"
    shutil.copytree(tiny_package / "sam", folder)
    if weights is None:  # a pickle that would run a command if unpickled without weights_only
        (folder / "model.safetensors").unlink()
        (folder / "pytorch_model.bin").write_bytes(pickle.dumps(subprocess.Popen) + b"\x95evil")
    else:
        (folder / "model.safetensors").write_bytes(weights)
    with pytest.raises(ModelPackageError) as caught:
        SamSegmenter(str(folder), device="cpu").load()
    assert str(tmp_path) not in str(caught.value)


def test_a_bad_iscene_checkpoint_is_a_model_error_without_paths(tmp_path):
    from iscene_server.engine.packages.checkpoints import read_safetensors
    weights = tmp_path / "ckpts" / "ss_flow.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelPackageError) as caught:
        read_safetensors(weights)
    assert str(tmp_path) not in str(caught.value) and "ckpts/ss_flow.safetensors" in str(caught.value)


def test_an_unparsable_content_length_gets_the_json_error_shape(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert set(json.loads(body)["error"]) == {"code", "message", "hint"}


# --- finding 9: decoding is bounded ---------------------------------------------------------------------------

def test_the_decode_gate_bounds_concurrency_and_memory():
    gate = DecodeGate(max_decodes=2, max_bytes=1000 * 12, wait_s=0.05)
    with gate.admit(100), gate.admit(100), pytest.raises(BusyError), gate.admit(1):  # a third decode
        pass
    with gate.admit(800):
        with pytest.raises(BusyError), gate.admit(300):  # 800 + 300 pixels are over the memory bound
            pass
        with gate.admit(200):
            pass
    with gate.admit(10 ** 9):  # one decode alone always fits
        pass
    assert gate.running == 0 and gate.reserved == 0


def test_a_waiting_decode_gets_in_when_one_finishes():
    gate = DecodeGate(max_decodes=1, max_bytes=10 ** 9, wait_s=5)
    inside, release = threading.Event(), threading.Event()

    def first():
        with gate.admit(1):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(5)
    threading.Timer(0.2, release.set).start()
    with gate.admit(1):
        assert gate.running == 1
    thread.join(5)


def test_busy_is_503_with_retry_after():
    app = FastAPI()
    errors.install(app)

    @app.get("/busy")
    def busy():
        raise BusyError("busy decoding", "retry")

    response = TestClient(app).get("/busy")
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["error"]["code"] == "busy"
