"""Model packages: both official layouts, strict loading, the .pt cache, Hugging Face ids offline."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, fake_hub_repo
from safetensors.torch import load_file, save_file

from iscene_server.engine.packages import checkpoints
from iscene_server.engine.packages.layouts import PACKAGE_ROLES as ROLES
from iscene_server.engine.packages.layouts import IScenePackage, TrellisPackage
from iscene_server.engine.packages.loader import ModelSet, build_from_spec
from iscene_server.engine.packages.source import PackageSource
from iscene_server.errors import ModelPackageError
from iscene_server.tiny.package import RELEASE_SIZES


@pytest.fixture
def package_copy(tiny_package, tmp_path) -> Path:
    target = tmp_path / "pkg"
    shutil.copytree(tiny_package, target)
    return target


def test_tiny_package_has_the_official_layouts(tiny_package):
    config = json.loads((tiny_package / "iscene_config.json").read_text())
    assert set(config) >= {"base_model_id", "config_file", "denoiser_checkpoint", "image_conditioner_checkpoint"}
    assert (tiny_package / config["denoiser_checkpoint"]).suffix == ".pt"
    base = tiny_package / config["base_model_id"]
    pipeline = json.loads((base / "pipeline.json").read_text())
    for stem in pipeline["args"]["models"].values():
        assert (base / f"{stem}.json").is_file() and (base / f"{stem}.safetensors").is_file()
    assert pipeline["args"]["sparse_structure_sampler"]["name"] == "FlowEulerGuidanceIntervalSampler"


def test_every_network_of_the_tiny_package_loads(tiny_package):
    package = IScenePackage.open(str(tiny_package))
    assert package.exp_setting == "global"
    models = ModelSet(package, torch.device("cpu"), torch.float32)
    for role in ROLES:
        net = models.get(role)
        assert not net.training and all(not p.requires_grad for p in net.parameters())
    assert models.get("denoiser") is models.get("denoiser")
    assert type(models.get("denoiser")).__name__ == "SparseStructureSceneContextFlowModel"


def test_release_storage_dtypes_load_into_float32(tiny_package):
    """Checkpoints store the torso in float16 as released; the CPU model runs float32."""
    stored = load_file(str(tiny_package / "trellis-image-tiny/ckpts/ss_dec_conv3d_16l8_fp16.safetensors"))
    assert stored["blocks.0.conv1.weight"].dtype == torch.float16
    assert stored["input_layer.weight"].dtype == torch.float32
    decoder = ModelSet(IScenePackage.open(str(tiny_package)), torch.device("cpu"), torch.float32).get(
        "sparse_structure_decoder")
    assert decoder.blocks[0].conv1.weight.dtype == torch.float32
    torch.testing.assert_close(decoder.blocks[0].conv1.weight, stored["blocks.0.conv1.weight"].float())


@pytest.mark.parametrize("role, manifest", [
    ("denoiser", "iscene_ss_sc_flow_img_dit_L_16l8"), ("image_conditioner", "iscene_image_conditioner"),
    ("sparse_structure_decoder", "ss_dec_conv3d_16l8_fp16"), ("sparse_structure_encoder", "ss_enc_conv3d_16l8_fp16"),
    ("sparse_structure_flow_model", "ss_flow_img_dit_L_16l8_fp16"),
    ("slat_flow_model", "slat_flow_img_dit_L_64l8p2_fp16"),
    ("slat_decoder_mesh", "slat_dec_mesh_swin8_B_64l8m256c_fp16"),
    ("slat_decoder_gs", "slat_dec_gs_swin8_B_64l8gs32_fp16")])
def test_release_size_packages_use_the_released_arguments(role, manifest):
    released = json.loads((FIXTURES / "manifests" / f"manifest_{manifest}.json").read_text())["constructor_args"]
    released.pop("pretrained_base", None)
    assert RELEASE_SIZES[role] == released


def test_trellis_layout_opens_on_its_own(tiny_package):
    trellis = TrellisPackage.open(PackageSource(tiny_package / "trellis-image-tiny"))
    spec = trellis.network("sparse_structure_flow_model")
    assert spec.name == "SparseStructureFlowModel" and spec.weights.endswith(".safetensors")
    assert build_from_spec(spec, torch.device("cpu")).pos_emb.shape[1] == spec.args["model_channels"]
    assert trellis.sampler("sparse_structure_sampler").cfg_strength == 5.0


def test_iscene_overrides_the_base_sampler_settings(tiny_package):
    package = IScenePackage.open(str(tiny_package))
    settings = package.sampler("sparse_structure_sampler", steps=7, cfg_strength=None)
    chosen = (settings.steps, settings.cfg_strength, settings.cfg_interval, settings.rescale_t)
    assert chosen == (7, 3.0, (0.5, 1.0), 3.0)


def _edit_checkpoint(path: Path, edit) -> None:
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


@pytest.mark.parametrize("edit, expected", [
    (lambda s: s.pop("out_layer.2.bias"), r"missing 1 key\(s\): out_layer.2.bias \(expected shape \[1\]\)"),
    (lambda s: s.update(extra=torch.zeros(2)), r"unexpected 1 key\(s\): extra"),
    (lambda s: s.update({"out_layer.2.bias": torch.zeros(3)}),
     r"out_layer.2.bias has shape \[3\], expected \[1\]"),
])
def test_strict_loading_names_file_key_and_shape(package_copy, edit, expected):
    path = package_copy / "trellis-image-tiny/ckpts/ss_dec_conv3d_16l8_fp16.safetensors"
    _edit_checkpoint(path, edit)
    models = ModelSet(IScenePackage.open(str(package_copy)), torch.device("cpu"), torch.float32)
    with pytest.raises(ModelPackageError, match=expected) as info:
        models.get("sparse_structure_decoder")
    assert "ss_dec_conv3d_16l8_fp16.safetensors" in info.value.message
    assert "different model" in info.value.hint


def test_pt_checkpoint_is_cached_as_safetensors_beside_it(package_copy):
    pt = package_copy / "ckpts/iscene_denoiser.pt"
    cached = pt.with_suffix(".safetensors")
    cached.unlink(missing_ok=True)
    assert checkpoints.safetensors_for(pt) == cached
    first = cached.stat().st_mtime_ns
    state = torch.load(pt, weights_only=True)
    assert load_file(str(cached)).keys() == state.keys()
    assert checkpoints.safetensors_for(pt) == cached and cached.stat().st_mtime_ns == first  # reused
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, pt)
    checkpoints.safetensors_for(pt)  # the source changed: the copy is rewritten
    torch.testing.assert_close(load_file(str(cached))["out_layer.bias"], state["out_layer.bias"] + 1)


def test_pt_copy_is_rewritten_when_a_same_sized_source_keeps_its_mtime(package_copy):
    """A re-downloaded or ``cp -p``-copied checkpoint of the same architecture: same size, and the very same
    mtime (to the nanosecond); the copy must follow the new weights, not the stale ones."""
    pt = package_copy / "ckpts/iscene_denoiser.pt"
    cached = pt.with_suffix(".safetensors")
    cached.unlink(missing_ok=True)
    checkpoints.safetensors_for(pt)
    before = pt.stat()
    state = torch.load(pt, weights_only=True)
    torch.save({k: -v if v.is_floating_point() else v for k, v in state.items()}, pt)
    os.utime(pt, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = pt.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert checkpoints.safetensors_for(pt) == cached
    torch.testing.assert_close(load_file(str(cached))["out_layer.bias"], -state["out_layer.bias"])


def test_pt_cache_falls_back_to_the_user_cache_when_the_package_is_read_only(package_copy, tmp_path, monkeypatch):
    pt = package_copy / "ckpts/iscene_image_conditioner.pt"
    pt.with_suffix(".safetensors").unlink(missing_ok=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_mkstemp = tempfile.mkstemp

    def refuse_package_dir(*args, dir=None, **kwargs):
        if Path(dir) == pt.parent:
            raise PermissionError("read-only")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(checkpoints.tempfile, "mkstemp", refuse_package_dir)
    copy = checkpoints.safetensors_for(pt)
    assert copy.parent == tmp_path / "cache" / "iscene" / "converted"
    assert not pt.with_suffix(".safetensors").exists()


def test_pickled_code_in_a_checkpoint_is_refused(package_copy):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    pt = package_copy / "ckpts/iscene_denoiser.pt"
    torch.save({"weight": Payload()}, pt)
    pt.with_suffix(".safetensors").unlink(missing_ok=True)
    with pytest.raises(ModelPackageError, match="cannot read checkpoint"):
        checkpoints.read_checkpoint(pt)


def test_a_trellis_package_is_not_mistaken_for_iscene(tiny_package):
    with pytest.raises(ModelPackageError, match="not an I-Scene model package") as info:
        IScenePackage.open(str(tiny_package / "trellis-image-tiny"))
    assert "TRELLIS package" in info.value.hint


def test_missing_folder_and_bad_names_are_explained(tmp_path):
    with pytest.raises(ModelPackageError, match="neither a folder nor a Hugging Face repo id"):
        IScenePackage.open(str(tmp_path / "nope" / "deeper"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelPackageError, match="is a file, not a folder"):
        IScenePackage.open(str(tmp_path / "file.txt"))


def test_incomplete_package_names_the_missing_file(package_copy):
    (package_copy / "ckpts/iscene_denoiser.pt").unlink()
    (package_copy / "ckpts/iscene_denoiser.safetensors").unlink(missing_ok=True)
    models = ModelSet(IScenePackage.open(str(package_copy)), torch.device("cpu"), torch.float32)
    with pytest.raises(ModelPackageError, match=r"has no file ckpts/iscene_denoiser\.pt"):
        models.get("denoiser")


def test_repo_ids_are_served_from_the_offline_cache(tiny_package, offline_hub):
    fake_hub_repo(offline_hub, "tiny/trellis", tiny_package / "trellis-image-tiny")
    fake_hub_repo(offline_hub, "tiny/iscene", tiny_package, skip="trellis-image-tiny")
    snapshot_config = next((offline_hub / "models--tiny--iscene" / "snapshots").iterdir()) / "iscene_config.json"
    config = json.loads(snapshot_config.read_text())
    snapshot_config.write_text(json.dumps({**config, "base_model_id": "tiny/trellis"}))

    package = IScenePackage.open("tiny/iscene")
    assert package.model_ids() == {"iscene": "tiny/iscene", "trellis": "tiny/trellis", "model_name": "IScene-tiny"}
    models = ModelSet(package, torch.device("cpu"), torch.float32)
    for role in ROLES:
        models.get(role)
    with pytest.raises(ModelPackageError, match="not in the local Hugging Face cache") as info:
        IScenePackage.open("tiny/not-downloaded")
    assert "iscene-server download" in info.value.hint
