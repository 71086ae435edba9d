"""Our networks have the released key tables, dtypes and documented semantics."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, PARITY
from safetensors.torch import load_file

from iscene_server.nn import attention as attn
from iscene_server.nn.dinov2 import DinoVisionTransformer
from iscene_server.nn.embeddings import grid_coordinates, sincos_position_embedding
from iscene_server.nn.precision import TorsoPrecision
from iscene_server.nn.registry import build_network
from iscene_server.nn.ss_sc_flow import SlotLayout

MANIFESTS = {
    "ss_dec_conv3d_16l8_fp16": "SparseStructureDecoder",
    "ss_enc_conv3d_16l8_fp16": "SparseStructureEncoder",
    "ss_flow_img_dit_L_16l8_fp16": "SparseStructureFlowModel",
    "iscene_ss_sc_flow_img_dit_L_16l8": "SparseStructureSceneContextFlowModel",
    "iscene_image_conditioner": "ImageConditioner",
    "dinov2_vitl14_reg": None,
    "slat_flow_img_dit_L_64l8p2_fp16": "SLatFlowModel",
    "slat_dec_mesh_swin8_B_64l8m256c_fp16": "SLatMeshDecoder",
    "slat_dec_gs_swin8_B_64l8gs32_fp16": "SLatGaussianDecoder",
}


def _released_network(name: str, class_name: str | None, args: dict) -> torch.nn.Module:
    with torch.device("meta"):
        if class_name is None:
            return DinoVisionTransformer.from_preset(args["hub_entry"])
        net = build_network(class_name, args)
    if isinstance(net, TorsoPrecision) and args.get("use_fp16"):
        net.set_torso_dtype(torch.float16)
    return net


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_full_size_key_table_matches_the_release(name):
    manifest = json.loads((FIXTURES / "manifests" / f"manifest_{name}.json").read_text())
    net = _released_network(name, MANIFESTS[name], manifest["constructor_args"])
    ours = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in net.state_dict().items()}
    released = {e["key"]: (e["shape"], e["dtype"]) for e in manifest["keys"]}
    assert len(ours) == manifest["num_keys"]
    assert ours == released
    assert sum(v.numel() for v in net.state_dict().values()) == manifest["total_numel"]


def test_iscene_denoiser_has_exactly_the_trellis_keys():
    args = json.loads((FIXTURES / "manifests" / "manifest_ss_flow_img_dit_L_16l8_fp16.json").read_text())
    with torch.device("meta"):
        trellis = build_network("SparseStructureFlowModel", args["constructor_args"])
        iscene = build_network("SparseStructureSceneContextFlowModel",
                               {**args["constructor_args"], "scene_context_attn_num": 5, "exp_setting": "global"})
    assert list(trellis.state_dict()) == list(iscene.state_dict())
    scene_blocks = [i for i, b in enumerate(iscene.blocks) if type(b).__name__ == "SceneContextCrossBlock"]
    assert scene_blocks == [10, 11, 12, 13, 14]


def test_position_embedding_buffer_is_the_documented_formula():
    stored = load_file(str(PARITY / "ss_flow.safetensors"))["state_dict.pos_emb"]
    ours = sincos_position_embedding(grid_coordinates(8), 32)
    torch.testing.assert_close(ours, stored, atol=1e-6, rtol=0)


def test_gaussian_offset_buffer_is_the_documented_hammersley_formula():
    sidecar = json.loads((PARITY / "slat_dec_gs.json").read_text())
    stored = load_file(str(PARITY / "slat_dec_gs.safetensors"))["state_dict.offset_perturbation"]
    decoder = build_network("SLatGaussianDecoder", sidecar["constructor_args"])
    torch.testing.assert_close(decoder.offset_perturbation, stored, atol=1e-6, rtol=0)


def test_attention_backends_agree():
    q, k, v = torch.randn(3, 2, 40, 4, 16).unbind(0)
    results = {}
    for backend in ("sdpa", "naive"):
        attn.set_attention_backend(backend)
        results[backend] = attn.attention(q, k, v)
    attn.set_attention_backend("auto")
    torch.testing.assert_close(results["sdpa"], results["naive"], atol=1e-5, rtol=1e-5)


def test_unknown_attention_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown attention backend"):
        attn.set_attention_backend("flash")


def _tiny_scene_model(**extra) -> torch.nn.Module:
    sidecar = json.loads((PARITY / "ss_sc_flow.json").read_text())
    net = build_network("SparseStructureSceneContextFlowModel", {**sidecar["constructor_args"], **extra})
    net.load_state_dict({k[11:]: v for k, v in load_file(str(PARITY / "ss_sc_flow.safetensors")).items()
                         if k.startswith("state_dict.")})
    return net.eval()


def test_shared_scene_rows_equal_the_grouped_reference_layout():
    """One shared scene row serves every instance exactly as per-instance copies of it would."""
    model = _tiny_scene_model()
    batch, slots = 3, model.num_slots
    x = torch.randn(batch, slots, 8, 8, 8, 8)
    cond = torch.randn(batch, slots, 12, 32)
    x[:, 1], cond[:, 1] = x[0, 1], cond[0, 1]  # the scene slot is the same for every instance
    t = torch.full((batch,), 700.0)
    with torch.no_grad():
        reference = model(x, t, cond)
        rows = torch.cat([x[0, 1:2], x[:, [0, 2]].flatten(0, 1)])
        row_cond = torch.cat([cond[0, 1:2], cond[:, [0, 2]].flatten(0, 1)])
        shared = model.forward_rows(rows, torch.full((rows.shape[0],), 700.0), row_cond,
                                    SlotLayout.shared_scene(batch, slots))
    torch.testing.assert_close(shared[0], reference[0, 1], atol=1e-5, rtol=1e-5)
    own = shared[1:].unflatten(0, (batch, slots - 1))
    torch.testing.assert_close(own[:, 0], reference[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(own[:, 1], reference[:, 2], atol=1e-5, rtol=1e-5)


def test_scene_slot_ignores_the_instance_slot():
    """Only slot-0 queries see the other slots: changing slot 0 leaves the scene slot's velocity alone."""
    model = _tiny_scene_model()
    x, cond, t = torch.randn(1, 3, 8, 8, 8, 8), torch.randn(1, 3, 12, 32), torch.tensor([500.0])
    with torch.no_grad():
        before = model(x, t, cond)
        x2 = x.clone()
        x2[:, 0] += 1.0
        after = model(x2, t, cond)
    torch.testing.assert_close(after[:, 1:], before[:, 1:])
    assert (after[:, 0] - before[:, 0]).abs().max() > 1e-3


def test_half_precision_torso_keeps_norms_in_float32():
    sidecar = json.loads((PARITY / "ss_flow.json").read_text())
    model = build_network("SparseStructureFlowModel", sidecar["constructor_args"])
    model.set_torso_dtype(torch.bfloat16)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    assert dtypes["blocks.0.self_attn.to_qkv.weight"] == torch.bfloat16
    assert dtypes["blocks.0.self_attn.q_rms_norm.gamma"] == torch.float32
    assert dtypes["blocks.0.norm2.weight"] == torch.float32
    assert dtypes["input_layer.weight"] == torch.float32 and dtypes["pos_emb"] == torch.float32
    x, t, cond = torch.randn(1, 8, 8, 8, 8), torch.tensor([300.0]), torch.randn(1, 12, 32)
    with torch.no_grad():
        out = model(x, t, cond)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_config_with_unknown_argument_is_refused():
    with pytest.raises(TypeError, match="does not take argument"):
        build_network("SparseStructureDecoder", {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 1,
                                                 "channels": [8], "colour": "blue"})
