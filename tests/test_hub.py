"""The download path every user takes, through huggingface-hub against a hub-compatible endpoint on 127.0.0.1.

The tiny package is served as two repos, an I-Scene repo whose ``iscene_config.json`` names its TRELLIS base by
repo id, as ``LuLing/IScene`` names ``microsoft/TRELLIS-image-large``. The CLI runs as a subprocess with
``HF_ENDPOINT`` and ``HF_HOME`` set, so nothing reaches beyond 127.0.0.1 and the user's cache is never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hub_server import Hub, Repo, read_tree
from server_process import ServerProcess, refusing_url

from iscene_server.engine.packages.source import PackageSource, pinned
from iscene_server.errors import ModelPackageError
from iscene_server.tiny.package import RELEASE_SIZES

ISCENE, BASE, INCOMPLETE, SAM = "tiny/IScene", "tiny/TRELLIS-image-tiny", "tiny/IScene-incomplete", "tiny/sam"
BASE_STEMS = ["ckpts/ss_dec_conv3d_16l8_fp16", "ckpts/ss_enc_conv3d_16l8_fp16", "ckpts/slat_flow_img_dit_L_64l8p2_fp16",
              "ckpts/slat_dec_mesh_swin8_B_64l8m256c_fp16", "ckpts/slat_dec_gs_swin8_B_64l8gs32_fp16"]
# Everything generation, refine and both decoders read; the base's own ss_flow model is never fetched.
NEEDED = ({(ISCENE, p) for p in ["iscene_config.json", "config.yml", "ckpts/iscene_denoiser.pt",
                                 "ckpts/iscene_image_conditioner.pt"]}
          | {(BASE, "pipeline.json")}
          | {(BASE, f"{stem}{ext}") for stem in BASE_STEMS for ext in (".json", ".safetensors")})


def iscene_files(tiny_package: Path, model_name: str) -> dict[str, bytes]:
    files = read_tree(tiny_package, skip=("trellis-image-tiny", "sam"))
    config = json.loads(files["iscene_config.json"])
    files["iscene_config.json"] = json.dumps({**config, "model_name": model_name, "base_model_id": BASE}).encode()
    return files


@pytest.fixture(scope="module")
def hub(tiny_package):
    with Hub() as served:
        served.repos[BASE] = Repo()
        served.repos[BASE].push(read_tree(tiny_package / "trellis-image-tiny"))
        served.repos[ISCENE] = Repo()
        served.repos[ISCENE].push(iscene_files(tiny_package, "IScene-tiny-v1"))
        served.repos[ISCENE].push(iscene_files(tiny_package, "IScene-tiny-v2"))
        incomplete = iscene_files(tiny_package, "IScene-tiny-incomplete")
        del incomplete["ckpts/iscene_denoiser.pt"]
        served.repos[INCOMPLETE] = Repo()
        served.repos[INCOMPLETE].push(incomplete)
        served.repos[SAM] = Repo()  # with weights in formats the server never reads, as SAM's repos have
        served.repos[SAM].push({**read_tree(tiny_package / "sam"), "tf_model.h5": b"TF", "pytorch_model.bin": b"PT"})
        yield served


def first_commit(hub: Hub, repo: str) -> str:
    """The repo's oldest commit (``main`` has moved past it)."""
    return next(iter(hub.repos[repo].commits))


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "iscene_server.cli", *args]


def environment(home: Path, endpoint: str, **env: str) -> dict[str, str]:
    """This process's environment without any Hugging Face setting of its own, pointed at ``endpoint``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    return {**clean, "HF_ENDPOINT": endpoint, "HF_HOME": str(home / "hf"), "XDG_CACHE_HOME": str(home / "cache"),
            "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1", **env}


def cli(*args: str, home: Path, endpoint: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), check=False, capture_output=True, text=True, timeout=300,
                          env=environment(home, endpoint, **env))


def snapshot_root(home: Path, repo: str) -> Path:
    return home / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots"


def assert_clear_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "\nhint: " in "\n" + proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr


@pytest.fixture(scope="module", autouse=True)
def unreachable_hub_download(tmp_path_factory):
    """A download from a hub that refuses connections, started at once: its retries wait while the others run."""
    with refusing_url() as unreachable:
        proc = subprocess.Popen(command("download", "--model", ISCENE), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True,
                                env=environment(tmp_path_factory.mktemp("offline-home"), unreachable))
        yield proc
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def downloaded(hub, tmp_path_factory):
    """A cache filled by one `iscene-server download` of the I-Scene repo (its main branch)."""
    home = tmp_path_factory.mktemp("home")
    hub.clear_log()
    proc = cli("download", "--model", ISCENE, home=home, endpoint=hub.url)
    assert proc.returncode == 0, proc.stderr
    return home, proc, list(hub.downloads())


def test_download_fetches_exactly_the_files_the_pipeline_needs(hub, downloaded):
    home, proc, fetched = downloaded
    assert sorted(fetched) == sorted(NEEDED)  # each once, nothing more
    assert str(snapshot_root(home, ISCENE) / hub.repos[ISCENE].main) in proc.stdout
    assert str(snapshot_root(home, BASE) / hub.repos[BASE].main) in proc.stdout
    assert "ss_flow_img_dit" not in proc.stdout
    hub.clear_log()
    again = cli("download", "--model", ISCENE, home=home, endpoint=hub.url)
    assert again.returncode == 0, again.stderr
    assert hub.downloads() == []  # a second run only checks the commit, it fetches nothing


def test_generate_by_repo_id_reads_the_cache_converts_once_and_runs_offline(hub, downloaded, scene_files, tmp_path):
    home, _, _ = downloaded
    image, labels = scene_files
    generate = ("generate", "--model", ISCENE, "--image", str(image), "--labels", str(labels), "--stage", "1",
                "--steps", "1", "--device", "cpu")
    hub.clear_log()
    first = cli(*generate, "--out", str(tmp_path / "a"), home=home, endpoint=hub.url)
    assert first.returncode == 0, first.stderr
    assert hub.downloads() == []
    summary = json.loads((tmp_path / "a" / "scene.json").read_text())
    assert summary["models"]["model_name"] == "IScene-tiny-v2" and summary["models"]["trellis"] == BASE
    snapshot = snapshot_root(home, ISCENE) / hub.repos[ISCENE].main / "ckpts"
    assert (snapshot / "iscene_denoiser.pt").is_symlink()  # the cache's layout: snapshot links to blobs
    converted = {name: (snapshot / f"{name}.safetensors").stat().st_mtime_ns
                 for name in ("iscene_denoiser", "iscene_image_conditioner")}
    assert not any((snapshot / f"{name}.safetensors").is_symlink() for name in converted)
    with refusing_url() as unreachable:
        second = cli(*generate, "--out", str(tmp_path / "b"), home=home, endpoint=unreachable, HF_HUB_OFFLINE="1")
    assert second.returncode == 0, second.stderr
    assert json.loads((tmp_path / "b" / "scene.json").read_text())["instances"] == summary["instances"]
    assert {name: (snapshot / f"{name}.safetensors").stat().st_mtime_ns for name in converted} == converted


def test_a_pinned_revision_is_honoured(hub, tmp_path):
    hub.clear_log()
    old = first_commit(hub, ISCENE)
    proc = cli("download", "--model", ISCENE, "--revision", old, home=tmp_path, endpoint=hub.url)
    assert proc.returncode == 0, proc.stderr
    assert {r.revision for r in hub.log if r.repo == ISCENE} == {old}
    config = snapshot_root(tmp_path, ISCENE) / old / "iscene_config.json"
    assert json.loads(config.read_text())["model_name"] == "IScene-tiny-v1"
    assert [p.name for p in snapshot_root(tmp_path, ISCENE).iterdir()] == [old]


def test_the_served_config_has_the_released_keys(hub):
    config = yaml.safe_load(hub.repos[ISCENE].commits[hub.repos[ISCENE].main]["config.yml"])
    for role, entry in (("denoiser", "denoiser"), ("image_conditioner", "img_conditioner")):
        assert config["models"][entry]["args"].keys() == RELEASE_SIZES[role].keys()


def test_a_revision_needs_a_plain_repo_id(tiny_package):
    assert pinned(ISCENE, None) == ISCENE
    source = PackageSource(pinned(ISCENE, "v1"))
    assert (source.repo_id, source.revision, source.id) == (ISCENE, "v1", f"{ISCENE}@v1")
    for spec in (str(tiny_package), f"{ISCENE}@v1"):
        with pytest.raises(ModelPackageError, match="needs a Hugging Face repo id without a revision"):
            pinned(spec, "v2")


def test_a_dropped_connection_is_retried(hub, tiny_package, tmp_path):
    hub.clear_log()
    hub.cut_after[(ISCENE, "ckpts/iscene_denoiser.pt")] = 4096
    proc = cli("download", "--model", ISCENE, home=tmp_path, endpoint=hub.url)
    assert proc.returncode == 0, proc.stderr
    assert hub.downloads().count((ISCENE, "ckpts/iscene_denoiser.pt")) == 2
    fetched = snapshot_root(tmp_path, ISCENE) / hub.repos[ISCENE].main / "ckpts" / "iscene_denoiser.pt"
    assert fetched.read_bytes() == (tiny_package / "ckpts" / "iscene_denoiser.pt").read_bytes()


def test_an_interrupted_download_resumes_with_the_files_it_lacks(hub, tmp_path):
    broken = (BASE, "ckpts/slat_flow_img_dit_L_64l8p2_fp16.safetensors")
    hub.clear_log()
    hub.unavailable.add(broken)
    try:
        failed = cli("download", "--model", ISCENE, home=tmp_path, endpoint=hub.url)
    finally:
        hub.unavailable.discard(broken)
    assert_clear_error(failed, "slat_flow_img_dit_L_64l8p2_fp16.safetensors", "503")
    kept = set(hub.downloads()) - {broken}
    assert kept and broken not in kept
    hub.clear_log()
    resumed = cli("download", "--model", ISCENE, home=tmp_path, endpoint=hub.url)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(hub.downloads()) == sorted(NEEDED - kept)


@pytest.mark.parametrize("model, revision, fragments", [
    (INCOMPLETE, None, ["has no file ckpts/iscene_denoiser.pt", INCOMPLETE]),
    ("tiny/no-such-repo", None, ["tiny/no-such-repo was not found"]),
    (ISCENE, "0" * 40, ["has no revision " + "0" * 40]),
])
def test_what_the_hub_lacks_is_a_clear_error(hub, tmp_path, model, revision, fragments):
    proc = cli("download", "--model", model, *(["--revision", revision] if revision else []),
               home=tmp_path, endpoint=hub.url)
    assert_clear_error(proc, *fragments)


def test_serve_by_repo_id_at_a_pinned_revision_runs_offline_from_the_cache(hub, tmp_path):
    old = first_commit(hub, ISCENE)
    fetched = cli("download", "--model", ISCENE, "--revision", old, home=tmp_path, endpoint=hub.url)
    assert fetched.returncode == 0, fetched.stderr
    hub.clear_log()
    with refusing_url() as unreachable:
        server = ServerProcess(ISCENE, tmp_path / "jobs", "--revision", old,
                               env=environment(tmp_path, unreachable, HF_HUB_OFFLINE="1"))
        try:
            health = server.start().get("/v1/health")
        finally:
            server.stop()
    assert health["models"] == {"iscene": f"{ISCENE}@{old}", "trellis": BASE,
                                "model_name": "IScene-tiny-v1"}
    assert hub.log == []


def test_download_segment_also_fetches_the_sam_model(hub, downloaded):
    home, _, _ = downloaded
    hub.clear_log()
    proc = cli("download", "--model", ISCENE, "--segment", "--segment-model", SAM, home=home, endpoint=hub.url)
    assert proc.returncode == 0, proc.stderr
    sam_files = {p for p in hub.repos[SAM].commits[hub.repos[SAM].main] if p.endswith((".json", ".safetensors"))}
    assert sorted(hub.downloads()) == sorted((SAM, p) for p in sam_files)  # the I-Scene files are cached already
    folder = snapshot_root(home, SAM) / hub.repos[SAM].main
    assert f"segmentation model: {folder}" in proc.stdout
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == sam_files


def test_an_unreachable_hub_is_a_clear_error(unreachable_hub_download):
    # huggingface-hub retries with backoff (about 25 s) before it gives up: the run started with the module
    out, err = unreachable_hub_download.communicate(timeout=120)
    assert_clear_error(subprocess.CompletedProcess([], unreachable_hub_download.returncode, out, err),
                       "hub is unreachable", "iscene_config.json")
