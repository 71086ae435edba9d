"""Submanifold convolution against an independent dense oracle, and its GPU-oriented structure (op counts, no
data-dependent operations in the neighbour table)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from iscene_server.nn.dispatch_count import DispatchCounter
from iscene_server.nn.sparse import (
    SparseConv3d,
    SparseDownsample,
    SparseSubdivide,
    SparseTensor,
    SparseUpsample,
)
from iscene_server.nn.sparse import conv as conv_module

SIZE = 7


def voxels(counts: list[int], size: int = SIZE, channels: int = 6, seed: int = 0) -> SparseTensor:
    """Random distinct voxels per batch item (``counts[b]`` of them, the two grid corners always among them),
    rows in random order within each item, batch-contiguous."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b, count in enumerate(counts):
        inner = torch.randperm(size ** 3 - 2, generator=g)[:count - 2] + 1
        cells = torch.cat([torch.tensor([0, size ** 3 - 1]), inner])[torch.randperm(count, generator=g)]
        xyz = torch.stack([cells // size ** 2, cells // size % size, cells % size], 1)
        rows.append(torch.cat([torch.full((count, 1), b), xyz], 1))
    coords = torch.cat(rows).int()
    return SparseTensor(torch.randn(len(coords), channels, generator=g), coords)


def dense_oracle(x: SparseTensor, conv: SparseConv3d, size: int = SIZE) -> torch.Tensor:
    """Densify, ``F.conv3d`` (cross-correlation, zero padding), read the outputs at the input voxels."""
    weight, bias = conv.conv.weight.detach(), conv.conv.bias.detach()
    c_out, k, c_in = weight.shape[0], weight.shape[1], weight.shape[-1]
    if k == 1:  # spconv's 1x1x1 fast path reads the stored memory as [C_in, C_out]
        weight = weight.reshape(c_in, c_out).t().reshape(c_out, 1, 1, 1, c_in)
    c = x.coords.long()
    grid = torch.zeros(x.batch_size, c_in, size, size, size)
    grid[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = x.feats
    out = F.conv3d(grid, weight.permute(0, 4, 1, 2, 3), bias, padding=k // 2)
    return out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]]


def columns_conv(c_in: int, c_out: int, k: int = 3) -> SparseConv3d:
    """A conv forced onto the CUDA strategy (the one the GPU runs), here on the CPU."""
    conv = SparseConv3d(c_in, c_out, k)
    conv.strategy = "columns"
    return conv


def conv_with_budget(c_in: int, c_out: int, k: int, rows_per_chunk: int | None = None) -> SparseConv3d:
    conv = columns_conv(c_in, c_out, k)
    if rows_per_chunk is not None:
        conv.column_budget_bytes = rows_per_chunk * k ** 3 * c_in * 4
    return conv


@pytest.mark.parametrize("counts", [[5, 40, 343], [60, 12], [150]], ids=["sparse-mid-full", "two", "one"])
@pytest.mark.parametrize("k", [3, 1])
@pytest.mark.parametrize("strategy", conv_module.STRATEGIES)
def test_conv_equals_a_dense_conv3d_read_at_the_voxels(counts, k, strategy):
    x = voxels(counts, seed=len(counts) + k)
    conv = SparseConv3d(6, 5, k)
    conv.strategy = strategy
    with torch.no_grad():
        torch.testing.assert_close(conv(x).feats, dense_oracle(x, conv), atol=1e-5, rtol=1e-5)


def test_small_chunks_give_the_single_chunk_result():
    x = voxels([30, 200, 90], seed=3)
    whole = conv_with_budget(6, 4, 3)
    chunked = conv_with_budget(6, 4, 3, rows_per_chunk=7)  # 46 chunks, the last one partial
    chunked.load_state_dict(whole.state_dict())
    with torch.no_grad():
        expected = whole(x).feats
        torch.testing.assert_close(chunked(x).feats, expected, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(expected, dense_oracle(x, whole), atol=1e-5, rtol=1e-5)


def test_keys_hold_up_to_the_coordinate_limit():
    """Copies of one pattern against the origin and against the far end of every axis, in one tensor: far
    apart, each copy convolves as the pattern alone (a key that wrapped between axes would mix them)."""
    x = voxels([80], seed=4)
    far = conv_module.COORDINATE_LIMIT - SIZE
    shifts = torch.tensor([[0, 0, 0], [far, 0, 0], [0, far, 0], [0, 0, far], [far, far, far]], dtype=torch.int32)
    coords = torch.cat([x.coords + torch.cat([shift.new_zeros(1), shift]) for shift in shifts])
    copies = SparseTensor(x.feats.repeat(len(shifts), 1), coords)
    conv = SparseConv3d(6, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(conv(copies).feats, conv(x).feats.repeat(len(shifts), 1), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("axis, value", [(1, conv_module.COORDINATE_LIMIT), (3, -1), (0, -1)])
def test_coordinates_outside_the_key_span_are_refused(axis, value):
    x = voxels([20], seed=5)
    coords = x.coords.clone()
    coords[3, axis] = value
    with pytest.raises(RuntimeError, match="COORDINATE_LIMIT"):
        SparseConv3d(6, 3, 3)(SparseTensor(x.feats, coords, batch_size=1))


def test_empty_input_gives_empty_output():
    x = SparseTensor(torch.zeros(0, 6), torch.zeros(0, 4, dtype=torch.int32), batch_size=0)
    assert SparseConv3d(6, 3, 3)(x).feats.shape == (0, 3)


def test_kernel_one_conv_reads_the_stored_weight_as_in_by_out():
    """spconv's 1x1x1 fast path: feats @ W.view(C_in, C_out), not feats @ W[:, 0, 0, 0, :].T."""
    x = voxels([20], size=4)
    conv = SparseConv3d(6, 3, 1)
    weight = conv.conv.weight  # [3, 1, 1, 1, 6]
    torch.testing.assert_close(conv(x).feats, x.feats @ weight.reshape(6, 3) + conv.conv.bias)
    assert not torch.allclose(conv(x).feats, x.feats @ weight[:, 0, 0, 0, :].T + conv.conv.bias)


def test_neighbour_table_is_built_once_per_coordinate_set(monkeypatch):
    calls = []
    real = conv_module.neighbour_table
    monkeypatch.setattr(conv_module, "neighbour_table", lambda *a: calls.append(1) or real(*a))
    x = voxels([50], size=6, channels=5)
    conv_a, conv_b = SparseConv3d(5, 5), SparseConv3d(5, 5)
    for _ in range(3):  # e.g. three sampling steps: x - dt * v keeps the coordinates and their cache
        x = x - 0.1 * conv_b(conv_a(x))
    assert len(calls) == 1


DATA_DEPENDENT = {"nonzero", "_local_scalar_dense", "item", "unique", "_unique", "_unique2", "unique_dim",
                  "unique_consecutive", "unique_dim_consecutive", "masked_select", "repeat_interleave"}


class FailOnDataDependentOps(TorchDispatchMode):
    """Raises on operations whose output size (or a host value) depends on tensor data, and, given a
    ``device``, on operations that take a tensor from another one (a copy from the host): on CUDA each of
    them makes the host wait for the device."""

    def __init__(self, device: str | None = None):
        super().__init__()
        self.device = None if device is None else torch.device(device)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in DATA_DEPENDENT:
            raise AssertionError(f"data-dependent operation aten.{name}")
        if name in {"index", "index_put", "index_put_"}:
            indices = args[1] if len(args) > 1 else kwargs["indices"]
            if any(i is not None and i.dtype == torch.bool for i in indices):
                raise AssertionError(f"boolean-mask aten.{name}")
        if self.device is not None:
            for value in tree_flatten((args, kwargs))[0]:
                if isinstance(value, torch.Tensor) and value.dim() > 0 and value.device != self.device:
                    raise AssertionError(f"aten.{name} takes a tensor from {value.device}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
def test_a_cached_3x3x3_conv_dispatches_at_most_8_operations(weight_dtype):
    x = voxels([100, 100], channels=64, seed=6)  # float32 features: bfloat16 weights add the input cast
    conv = columns_conv(64, 32).to(weight_dtype)
    with torch.no_grad():
        conv(x)  # builds and caches the table
        with DispatchCounter() as counter:
            out = conv(x)
    assert out.feats.dtype == weight_dtype
    assert counter.total <= 8, counter.ops
    assert counter.ops["aten.addmm"] == 1 and counter.ops["aten.embedding"] == 1, counter.ops


@pytest.mark.parametrize("strategy", conv_module.STRATEGIES)
def test_bfloat16_weights_give_the_float32_result_within_rounding(strategy):
    x = voxels([60, 120], channels=64, seed=7)
    conv = SparseConv3d(64, 32, 3)
    conv.strategy = strategy
    with torch.no_grad():
        expected = conv(x).feats
        out = conv.to(torch.bfloat16)(x).feats
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def test_table_build_and_conv_have_no_data_dependent_operation():
    x = voxels([30, 90], seed=8)
    conv = columns_conv(6, 4)
    conv.column_budget_bytes = 9 * 27 * 6 * 4  # several chunks
    with torch.no_grad(), FailOnDataDependentOps():
        table = conv_module.neighbour_table(x.coords, 3)
        out = conv(x)
    assert table.shape == (120, 27) and out.feats.shape == (120, 4)


def on_meta(x: SparseTensor) -> SparseTensor:
    """The same shapes on the meta device, a stand-in accelerator: whatever is not made there shows up."""
    return SparseTensor(x.feats.to("meta"), x.coords.to("meta"), x.batch_size)


def test_table_conv_and_subdivision_make_everything_on_the_device():
    x = on_meta(voxels([30, 90], seed=8))
    conv = columns_conv(6, 4).to("meta")
    with torch.no_grad(), FailOnDataDependentOps(device="meta"):
        out = conv(SparseSubdivide()(x))
    assert out.feats.shape == (8 * 120, 4)


def test_resampling_forwards_have_no_data_dependent_operation():
    """Pooling with its cached map and unpooling run without waiting for the device; only building the
    pooling map does, once per coordinate set, since its size depends on the data."""
    x = voxels([30, 90], seed=9)
    down = SparseDownsample(2)
    down(x)  # builds the pooling map
    with torch.no_grad(), FailOnDataDependentOps():
        restored = SparseUpsample(2)(down(x))
    assert restored.coords is x.coords and restored.feats.shape == x.feats.shape


def test_the_guard_catches_syncs_masks_and_host_copies():
    values = torch.arange(6)
    for operation in (torch.nonzero, lambda v: int(v.max()), lambda v: v[v > 2], torch.unique):
        with pytest.raises(AssertionError, match=r"data-dependent|boolean"), FailOnDataDependentOps():
            operation(values)
    with pytest.raises(AssertionError, match="from cpu"), FailOnDataDependentOps(device="meta"):
        torch.zeros(6, device="meta") + values


def test_the_cpu_picks_the_pairs_strategy_and_cuda_the_columns():
    assert conv_module.default_strategy(torch.device("cpu")) == "pairs"
    assert conv_module.default_strategy(torch.device("cuda")) == "columns"
    conv = SparseConv3d(6, 4, 3)
    conv.strategy = "dense"
    with pytest.raises(ValueError, match="columns, pairs"):
        conv(voxels([20], seed=10))


def test_pairs_skip_missing_neighbours_and_match_the_table():
    x = voxels([5, 40, 343], seed=11)
    table = conv_module.neighbour_table(x.coords, 3)
    pairs = conv_module.neighbour_pairs(table)
    assert sum(len(out_rows) for out_rows, _ in pairs) == int((table < len(table)).sum())
    for column, (out_rows, in_rows) in zip(table.t(), pairs, strict=True):
        assert torch.equal(column[out_rows], in_rows) and bool((in_rows < len(table)).all())
