"""The xformers path of segmented attention, run on the CPU against a stand-in for ``xformers.ops``.

CI has no GPU and no xformers, so the stand-in implements the two pieces the server uses, as xformers documents
them: ``fmha.BlockDiagonalMask.from_seqlens(q_seqlen, kv_seqlen=None)`` (query segment i sees key segment i only)
and ``memory_efficient_attention(q, k, v, attn_bias)`` on ``[1, rows, heads, dim]``. What is tested is the
server's side: the segment lengths it passes, the row order, the packed context of cross-attention, and that
all segments go through one kernel call; the result must equal the padded SDPA path's.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from iscene_server.nn import attention as dense_attention
from iscene_server.nn.sparse import Segments, segmented_attention, segmented_cross_attention
from iscene_server.nn.sparse import attention as sparse_attention


class BlockDiagonalMask:
    def __init__(self, q_seqlen: list[int], kv_seqlen: list[int]):
        self.q_seqlen, self.kv_seqlen = q_seqlen, kv_seqlen

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None) -> BlockDiagonalMask:
        return cls(list(q_seqlen), list(q_seqlen if kv_seqlen is None else kv_seqlen))

    def dense(self) -> torch.Tensor:
        """``[Nq, Nk]`` bool: True where a query may see a key."""
        mask = torch.zeros(sum(self.q_seqlen), sum(self.kv_seqlen), dtype=torch.bool)
        q0 = k0 = 0
        for nq, nk in zip(self.q_seqlen, self.kv_seqlen, strict=True):
            mask[q0:q0 + nq, k0:k0 + nk] = True
            q0, k0 = q0 + nq, k0 + nk
        return mask


class FakeXformersOps:
    def __init__(self):
        self.fmha = SimpleNamespace(BlockDiagonalMask=BlockDiagonalMask)
        self.calls = 0

    def memory_efficient_attention(self, q, k, v, attn_bias=None):
        self.calls += 1
        assert q.shape[0] == k.shape[0] == v.shape[0] == 1  # a block-diagonal mask packs everything in one item
        assert attn_bias.dense().shape == (q.shape[1], k.shape[1])
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=attn_bias.dense())  # [1, H, Nq, D]
        return out.transpose(1, 2)


def test_xformers_path_equals_the_padded_sdpa_path_in_one_call_each(monkeypatch):
    lengths = [5, 9, 5, 1, 12]
    order = torch.randperm(sum(lengths), generator=torch.Generator().manual_seed(4))
    q, k, v = torch.randn(3, sum(lengths), 2, 8, generator=torch.Generator().manual_seed(5)).unbind(0)
    ctx_k, ctx_v = torch.randn(2, len(lengths), 7, 2, 8, generator=torch.Generator().manual_seed(6)).unbind(0)
    padded = segmented_attention(q, k, v, Segments(lengths, order))  # SDPA on the CPU (tests/test_sparse.py)
    padded_cross = segmented_cross_attention(q, ctx_k, ctx_v, Segments(lengths))

    ops = FakeXformersOps()
    monkeypatch.setattr(dense_attention, "_xformers_ops", lambda: ops)
    monkeypatch.setattr(sparse_attention, "resolve_backend", lambda device: "xformers")
    torch.testing.assert_close(segmented_attention(q, k, v, Segments(lengths, order)), padded, atol=1e-5, rtol=1e-5)
    assert ops.calls == 1
    torch.testing.assert_close(segmented_cross_attention(q, ctx_k, ctx_v, Segments(lengths)), padded_cross,
                               atol=1e-5, rtol=1e-5)
    assert ops.calls == 2
