"""The GPU fast paths of the transformers, proven on the CPU against the plain computation.

torch.compile of the fused block functions, the skipped cross-attention of the all-zero condition, both
guidance passes in one batched call, DINOv2 in half precision, padded segmented attention and single-item
group norm.
"""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import PARITY
from safetensors.torch import load_file

from iscene_server.engine.packages.layouts import IScenePackage
from iscene_server.engine.packages.loader import ModelSet, build_from_spec
from iscene_server.engine.samplers import FlowEulerSampler, Guidance
from iscene_server.nn import attention as dense_attention
from iscene_server.nn import compile as fused
from iscene_server.nn.condition import ConditionRows
from iscene_server.nn.dispatch_count import DispatchCounter
from iscene_server.nn.image_conditioner import ImageConditioner
from iscene_server.nn.registry import build_network
from iscene_server.nn.sparse import (
    Segments,
    SparseGroupNorm32,
    SparseTensor,
    segmented_attention,
    segmented_cross_attention,
)
from iscene_server.nn.sparse import attention as sparse_attention
from iscene_server.nn.sparse_transformer import (
    ModulatedSparseTransformerCrossBlock,
    SparseTransformerBlock,
    TokenBatch,
    window_segments,
)
from iscene_server.nn.ss_sc_flow import SlotLayout
from iscene_server.nn.transformer import ModulatedTransformerCrossBlock

TIGHT = {"atol": 1e-5, "rtol": 1e-5}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_voxels(batch: int, per_item: int, extent: int, seed: int) -> SparseTensor:
    g = seeded(seed)
    rows = []
    for b in range(batch):
        cells = torch.randperm(extent ** 3, generator=g)[:per_item - 3 * b].sort().values
        xyz = torch.stack([cells // extent ** 2, cells // extent % extent, cells % extent], dim=1)
        rows.append(torch.cat([torch.full((len(cells), 1), b), xyz], dim=1))
    coords = torch.cat(rows).int()
    return SparseTensor(torch.randn(len(coords), 32, generator=g), coords, batch)


def with_random_biases(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial weights everywhere (norm affines and RMS gammas too), so a wrong formula shows."""
    g = seeded(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


def dense_block(qk_rms_norm_cross: bool = False) -> ModulatedTransformerCrossBlock:
    torch.manual_seed(0)
    return with_random_biases(ModulatedTransformerCrossBlock(32, 24, 2, qk_rms_norm=True,
                                                             qk_rms_norm_cross=qk_rms_norm_cross), 1)


def sparse_block(qk_rms_norm_cross: bool = False) -> ModulatedSparseTransformerCrossBlock:
    torch.manual_seed(0)
    return with_random_biases(ModulatedSparseTransformerCrossBlock(32, 24, 2, qk_rms_norm=True,
                                                                   qk_rms_norm_cross=qk_rms_norm_cross), 2)


# --- torch.compile of the fused functions ---------------------------------------------------------------

def fused_function_inputs() -> dict[str, list[tuple]]:
    """Dense-row and sparse-row argument sets for every fused function."""
    g = seeded(3)
    x, y = torch.randn(2, 3, 10, 16, generator=g).unbind(0)  # dense [B, L, C]
    mod = torch.randn(3, 1, 16, generator=g)
    xs, ys = torch.randn(2, 25, 16, generator=g).unbind(0)  # sparse [N, C]
    per_item, rows = torch.randn(3, 16, generator=g), torch.randint(0, 3, (25,), generator=g)
    w, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    w1, b1, w2, b2 = torch.randn(64, 16, generator=g), torch.randn(64, generator=g), \
        torch.randn(16, 64, generator=g), torch.randn(16, generator=g)
    heads = torch.randn(25, 2, 8, generator=g)
    return {
        "modulated_norm": [(x, mod, mod * 2, None, 1e-6), (xs, per_item, per_item * 2, rows, 1e-6),
                           (xs, None, None, None, 1e-6)],
        "gated_residual_norm": [(x, y, mod, None, w, b, 1e-6), (xs, ys, per_item, rows, w, b, 1e-6),
                                (xs, ys, None, None, None, None, 1e-6)],
        "residual_modulated_norm": [(x, y, mod, mod * 2, None, 1e-6), (xs, ys, per_item, per_item, rows, 1e-6)],
        "gated_feed_forward": [(x, y, mod, None, w1, b1, w2, b2), (xs, ys, per_item, rows, w1, b1, w2, b2),
                               (xs, ys, None, None, w1, b1, w2, b2)],
        "head_rms_norm": [(heads, torch.randn(2, 8, generator=g), 8 ** 0.5)],
    }


def test_every_fused_function_captures_as_one_graph_and_equals_eager():
    torch._dynamo.reset()
    inputs = fused_function_inputs()
    assert set(inputs) == set(fused.FUNCTIONS)
    for name, fn in fused.FUNCTIONS.items():
        compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break raises
        for args in inputs[name]:
            torch.testing.assert_close(compiled(*args), fn(*args), atol=1e-6, rtol=1e-6)


def test_compiled_blocks_equal_eager_blocks():
    torch._dynamo.reset()
    functions = fused.CompiledFunctions(backend="aot_eager")
    x, mod, cond = torch.randn(3, 10, 32), torch.randn(3, 32), torch.randn(3, 7, 24)
    voxels = random_voxels(2, 40, 6, seed=4)
    tokens = TokenBatch.of(voxels)
    swin = with_random_biases(SparseTransformerBlock(32, 2, 4.0, window_size=4, shift=2, qk_rms_norm=True), 5)
    cases = [(dense_block(), (x, mod, cond)), (sparse_block(), (voxels.feats, mod[:2], cond[:2, :, :], tokens))]
    with torch.no_grad():
        for block, args in cases:
            eager = block(*args)
            assert fused.compile_network(block, functions) >= 3  # the block and its q/k RMS norms
            torch.testing.assert_close(block(*args), eager, **TIGHT)
        eager = swin(voxels).feats
        fused.compile_network(swin, functions)
        torch.testing.assert_close(swin(voxels).feats, eager, **TIGHT)
    assert not functions.failed


def test_a_compile_failure_warns_once_and_runs_eagerly(caplog):
    torch._dynamo.reset()

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C compiler here")

    block = dense_block()
    x, mod, cond = torch.randn(2, 10, 32), torch.randn(2, 32), torch.randn(2, 7, 24)
    with torch.no_grad():
        eager = block(x, mod, cond)
        functions = fused.CompiledFunctions(backend=broken_backend)
        fused.compile_network(block, functions)
        with caplog.at_level(logging.WARNING, logger="iscene_server.nn.compile"):
            first, second = block(x, mod, cond), block(x, mod, cond)
    torch.testing.assert_close(first, eager, atol=0, rtol=0)
    torch.testing.assert_close(second, eager, atol=0, rtol=0)
    assert functions.failed
    assert len([r for r in caplog.records if "torch.compile" in r.getMessage()]) == 1


def test_compile_is_automatic_on_cuda_only_and_a_per_model_set_option(tiny_package):
    assert fused.should_compile("auto", torch.device("cuda")) is True
    assert fused.should_compile("auto", torch.device("cpu")) is False
    assert fused.should_compile(False, torch.device("cuda")) is False
    with pytest.raises(ValueError, match="compile must be"):
        fused.should_compile("yes", torch.device("cpu"))
    package = IScenePackage.open(str(tiny_package))
    plain = ModelSet(package, torch.device("cpu"), torch.float32).get("denoiser")
    forced = ModelSet(package, torch.device("cpu"), torch.float32, compile=True).get("denoiser")
    assert all(b.fused is fused.EAGER for b in plain.blocks)
    assert all(isinstance(b.fused, fused.CompiledFunctions) for b in forced.blocks)


# --- the all-zero negative condition ----------------------------------------------------------------------

@pytest.mark.parametrize("qk_rms_norm_cross", [False, True])
def test_zero_condition_skips_cross_attention_exactly_in_the_dense_block(qk_rms_norm_cross):
    block = dense_block(qk_rms_norm_cross)
    x, mod, cond = torch.randn(4, 10, 32), torch.randn(4, 32), torch.randn(4, 7, 24)
    zeros = torch.zeros_like(cond)
    with torch.no_grad():
        torch.testing.assert_close(block(x, mod, ConditionRows.zeros_like(cond)), block(x, mod, zeros), **TIGHT)
        mixed = torch.cat([cond[:2], zeros[2:]])  # the batched guidance pass: conditional rows, then zero rows
        torch.testing.assert_close(block(x, mod, ConditionRows(cond[:2], 2)), block(x, mod, mixed), **TIGHT)
        with DispatchCounter() as skipped:
            block(x, mod, ConditionRows.zeros_like(cond))
        with DispatchCounter() as full:
            block(x, mod, zeros)
    assert full.attention_calls == 2 and skipped.attention_calls == 1  # only self-attention is left


@pytest.mark.parametrize("qk_rms_norm_cross", [False, True])
def test_zero_condition_skips_cross_attention_exactly_in_the_sparse_block(qk_rms_norm_cross):
    block = sparse_block(qk_rms_norm_cross)
    voxels = random_voxels(3, 40, 6, seed=6)
    tokens = TokenBatch.of(voxels)
    mod, cond = torch.randn(3, 32), torch.randn(3, 7, 24)
    zeros = torch.zeros_like(cond)
    with torch.no_grad():
        torch.testing.assert_close(block(voxels.feats, mod, ConditionRows.zeros_like(cond), tokens),
                                   block(voxels.feats, mod, zeros, tokens), **TIGHT)
        torch.testing.assert_close(block(voxels.feats, mod, ConditionRows(cond[:1], 2), tokens),
                                   block(voxels.feats, mod, torch.cat([cond[:1], zeros[1:]]), tokens), **TIGHT)


def scene_model(qk_rms_norm_cross: bool) -> torch.nn.Module:
    args = json.loads((PARITY / "ss_sc_flow.json").read_text())["constructor_args"]
    torch.manual_seed(7)
    return with_random_biases(build_network("SparseStructureSceneContextFlowModel",
                                            {**args, "qk_rms_norm_cross": qk_rms_norm_cross}), 8)


@pytest.mark.parametrize("qk_rms_norm_cross", [False, True])
def test_zero_condition_in_the_scene_context_model(qk_rms_norm_cross):
    model = scene_model(qk_rms_norm_cross)
    layout = SlotLayout.shared_scene(2, model.num_slots)
    rows = 1 + 2 * (model.num_slots - 1)
    x, t, cond = torch.randn(rows, 8, 8, 8, 8), torch.full((rows,), 600.0), torch.randn(rows, 12, 32)
    with torch.no_grad():
        skipped = model.forward_rows(x, t, ConditionRows.zeros_like(cond), layout)
        reference = model.forward_rows(x, t, torch.zeros_like(cond), layout)
    torch.testing.assert_close(skipped, reference, **TIGHT)


# --- both guidance passes in one call -------------------------------------------------------------------

def slat_flow() -> torch.nn.Module:
    sidecar = json.loads((PARITY / "slat_flow.json").read_text())
    model = build_network("SLatFlowModel", sidecar["constructor_args"])
    model.load_state_dict({k[11:]: v for k, v in load_file(str(PARITY / "slat_flow.safetensors")).items()
                           if k.startswith("state_dict.")}, strict=True)
    return model.eval()


def two_calls(model):
    """The same denoiser seen without ``paired``: the sampler makes two calls."""

    def denoise(x, t, cond):
        return model(x, t, cond)

    return denoise


def test_paired_stage2_call_equals_two_calls():
    model = slat_flow()
    g = seeded(9)
    coords = torch.cat([torch.cat([torch.full((n, 1), b), torch.randperm(16 ** 3, generator=g)[:n, None]
                                   .div(torch.tensor([256, 16, 1]), rounding_mode="floor") % 16], dim=1)
                        for b, n in enumerate((70, 45))]).int()
    x = SparseTensor(torch.randn(len(coords), 8, generator=g), coords, 2)
    cond, t = torch.randn(2, 6, 32, generator=g), torch.tensor([800.0, 800.0])
    with torch.no_grad():
        v, v_neg = model.paired(x, t, cond, ConditionRows.zeros_like(cond))
        torch.testing.assert_close(v.feats, model(x, t, cond).feats, **TIGHT)
        torch.testing.assert_close(v_neg.feats, model(x, t, torch.zeros_like(cond)).feats, **TIGHT)
        sampler, guidance = FlowEulerSampler(), Guidance(3.0, (0.5, 1.0))
        batched = sampler.sample(model, x, cond, ConditionRows.zeros_like(cond), steps=3, guidance=guidance)
        separate = sampler.sample(two_calls(model), x, cond, torch.zeros_like(cond), steps=3, guidance=guidance)
    torch.testing.assert_close(batched.samples.feats, separate.samples.feats, **TIGHT)
    assert batched.samples.coords is x.coords


def test_paired_stage1_rows_equal_two_calls():
    model = scene_model(False)
    layout = SlotLayout.shared_scene(3, model.num_slots)
    rows = 1 + 3 * (model.num_slots - 1)
    g = seeded(10)
    x, cond = torch.randn(rows, 8, 8, 8, 8, generator=g), torch.randn(rows, 12, 32, generator=g)
    t = torch.full((rows,), 900.0)
    denoiser = model.rows_denoiser(layout)
    with torch.no_grad():
        v, v_neg = denoiser.paired(x, t, cond, ConditionRows.zeros_like(cond))
        torch.testing.assert_close(v, model.forward_rows(x, t, cond, layout), **TIGHT)
        torch.testing.assert_close(v_neg, model.forward_rows(x, t, torch.zeros_like(cond), layout), **TIGHT)
        other = torch.randn(rows, 12, 32, generator=g)  # a real negative condition takes the concatenated path
        _, v_other = denoiser.paired(x, t, cond, other)
        torch.testing.assert_close(v_other, model.forward_rows(x, t, other, layout), **TIGHT)
        grouped = torch.randn(2, model.num_slots, 8, 8, 8, 8, generator=g)  # the reference layout, too
        grouped_cond, t2 = torch.randn(2, model.num_slots, 12, 32, generator=g), torch.full((2,), 900.0)
        v, v_neg = model.paired(grouped, t2, grouped_cond, ConditionRows.zeros_like(grouped_cond))
        torch.testing.assert_close(v_neg, model(grouped, t2, torch.zeros_like(grouped_cond)), **TIGHT)


# --- DINOv2 in half precision -----------------------------------------------------------------------------

HALF_TOLERANCE = {torch.bfloat16: (3e-2, 4e-3), torch.float16: (3e-3, 4e-4)}  # (max, mean) |error|, see module


def image_conditioner(dtype: torch.dtype) -> ImageConditioner:
    sidecar = json.loads((PARITY / "imgcond9.json").read_text())
    model = ImageConditioner(cond_in_channels=sidecar["constructor_args"]["cond_in_channels"],
                             image_cond_model_args=sidecar["tiny_dinov2_args"])
    model.load_state_dict({k[11:]: v for k, v in load_file(str(PARITY / "imgcond9.safetensors")).items()
                           if k.startswith("state_dict.")}, strict=True)
    model.set_torso_dtype(dtype)
    return model.eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_dinov2_stays_within_its_stated_tolerance(dtype):
    tensors = load_file(str(PARITY / "imgcond9.safetensors"))
    images = tensors["input.image_u8"].float() / 255.0
    model = image_conditioner(dtype)
    blocks = model.base_img_conditioner.blocks
    assert blocks[0].attn.qkv.weight.dtype == dtype and blocks[0].mlp.fc2.weight.dtype == dtype
    assert blocks[0].norm1.weight.dtype == torch.float32 and blocks[0].ls1.gamma.dtype == torch.float32
    with torch.no_grad():
        tokens = model(images)
    assert tokens.dtype == torch.float32
    error = (tokens - tensors["output.patchtokens"]).abs()
    worst, mean = HALF_TOLERANCE[dtype]
    assert error.max() < worst and error.mean() < mean
    assert error.max() > 0  # the torso really ran in half precision


def test_the_loader_puts_the_image_conditioner_torso_in_the_pipeline_dtype(tiny_package):
    spec = IScenePackage.open(str(tiny_package)).network("image_conditioner")
    net = build_from_spec(spec, torch.device("cpu"), torch.bfloat16)
    assert net.base_img_conditioner.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert net.base_img_conditioner.patch_embed.proj.weight.dtype == torch.float32


# --- segmented attention without one call per length ------------------------------------------------------

def many_lengths() -> list[int]:
    lengths = list(range(1, 41)) * 2  # 40 distinct lengths
    return [lengths[i] for i in torch.randperm(len(lengths), generator=seeded(11)).tolist()]


def reference_segments(q, k, v, lengths, order):
    """Attention segment by segment (the per-length path's result)."""
    out, start = torch.empty_like(q), 0
    for n in lengths:
        rows = order[start:start + n]
        out[rows] = F.scaled_dot_product_attention(*(t[rows].transpose(0, 1) for t in (q, k, v))).transpose(0, 1)
        start += n
    return out


@pytest.fixture
def backend(request):
    dense_attention.set_attention_backend(request.param)
    yield request.param
    dense_attention.set_attention_backend("auto")


@pytest.mark.parametrize("backend", ["sdpa", "naive"], indirect=True)
def test_segmented_attention_uses_one_call_per_length_bucket(backend):
    lengths = many_lengths()
    n = sum(lengths)
    order = torch.randperm(n, generator=seeded(12))
    q, k, v = torch.randn(3, n, 2, 8, generator=seeded(13)).unbind(0)
    ctx_k, ctx_v = torch.randn(2, len(lengths), 5, 2, 8, generator=seeded(14)).unbind(0)
    with DispatchCounter() as ops:
        out = segmented_attention(q, k, v, Segments(lengths, order))
    torch.testing.assert_close(out, reference_segments(q, k, v, lengths, order), **TIGHT)
    cross = segmented_cross_attention(q, ctx_k, ctx_v, Segments(lengths))
    start = 0
    for i, m in enumerate(lengths):
        expected = F.scaled_dot_product_attention(q[start:start + m].transpose(0, 1), ctx_k[i].transpose(0, 1),
                                                  ctx_v[i].transpose(0, 1)).transpose(0, 1)
        torch.testing.assert_close(cross[start:start + m], expected, **TIGHT)
        start += m
    if backend == "sdpa":
        buckets = len({math.ceil(math.log2(m)) for m in lengths})
        assert ops.attention_calls == buckets == 7  # not 40: one call per power-of-two bucket


def test_padded_batches_are_chunked_to_bound_memory(monkeypatch):
    lengths = many_lengths()
    n = sum(lengths)
    q, k, v = torch.randn(3, n, 2, 8, generator=seeded(15)).unbind(0)
    monkeypatch.setattr(sparse_attention, "PADDED_TOKENS_PER_CALL", 96)
    segments = Segments(lengths)
    batches = segments.padded_batches(q.device)
    assert all(len(b.segment_ids) * b.length <= 96 for b in batches)
    assert sorted(torch.cat([b.rows for b in batches]).tolist()) == list(range(n))  # every row exactly once
    torch.testing.assert_close(segmented_attention(q, k, v, segments),
                               reference_segments(q, k, v, lengths, torch.arange(n)), **TIGHT)


def test_swin_block_attention_calls_do_not_grow_with_window_lengths():
    voxels = random_voxels(1, 900, 16, seed=16)
    block = with_random_biases(SparseTransformerBlock(32, 2, 4.0, window_size=4, shift=0), 17)
    with torch.no_grad(), DispatchCounter() as ops:
        block(voxels)
    lengths = window_segments(voxels, 4, 0).lengths
    assert len(set(lengths)) > 15
    assert ops.attention_calls == len({math.ceil(math.log2(m)) for m in lengths}) <= 7


# --- group norm -------------------------------------------------------------------------------------------

def test_single_item_group_norm_is_one_group_norm_call_equal_to_the_per_item_path():
    x = random_voxels(1, 200, 8, seed=18)
    x = x.replace(torch.randn(len(x.coords), 64, generator=seeded(19)) * 3 + 1)
    norm = with_random_biases(SparseGroupNorm32(32, 64), 20)
    with torch.no_grad(), DispatchCounter() as ops:
        ours = norm(x).feats
    assert ops.ops["aten.native_group_norm"] == 1 and "aten.index_add" not in ops.ops
    two_items = SparseTensor(torch.cat([x.feats, x.feats]), torch.cat([x.coords, x.coords + torch.tensor(
        [1, 0, 0, 0], dtype=x.coords.dtype)]), 2)  # the multi-item path on the same features
    with torch.no_grad():
        batched = norm(two_items).feats
    torch.testing.assert_close(ours, batched[:len(ours)], **TIGHT)
    torch.testing.assert_close(ours, batched[len(ours):], **TIGHT)
    assert ours.is_contiguous()
