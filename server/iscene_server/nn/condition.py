"""Condition tokens whose trailing rows are the all-zero (unconditional) condition, never materialised.

Classifier-free guidance runs every flow model a second time with ``neg_cond = 0``. Cross-attention to an
all-zero context is a constant: every key is ``to_k(0) = b_k`` and every value ``b_v``, so the attention is
uniform and its output is ``to_out(b_v)`` for every token, whatever the queries. Passing the zero condition as
:class:`ConditionRows` (instead of ``torch.zeros_like(cond)``) tells the blocks so without a host sync, and they
skip those rows' cross-attention. The same object describes the batched guidance pass: the conditional rows
with their tokens first, then the unconditional rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ConditionRows:
    """``tokens [R0, ..., T, C]`` for the first ``R0`` rows, then ``zero_rows`` rows of all-zero tokens."""

    tokens: torch.Tensor
    zero_rows: int

    @classmethod
    def zeros_like(cls, tokens: torch.Tensor) -> ConditionRows:
        """The all-zero condition with the shape of ``tokens [R, ..., T, C]``."""
        return cls(tokens[:0], tokens.shape[0])

    @staticmethod
    def stack(cond: torch.Tensor | ConditionRows, neg: torch.Tensor | ConditionRows) -> torch.Tensor | ConditionRows:
        """The condition of a batch of ``cond``'s rows followed by ``neg``'s rows."""
        if isinstance(neg, ConditionRows) and isinstance(cond, torch.Tensor) and neg.real_rows == 0:
            return ConditionRows(cond, neg.zero_rows)
        return torch.cat([materialize(cond), materialize(neg)], dim=0)

    @property
    def real_rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def shape(self) -> torch.Size:
        return torch.Size([self.real_rows + self.zero_rows, *self.tokens.shape[1:]])

    @property
    def dtype(self) -> torch.dtype:
        return self.tokens.dtype

    @property
    def device(self) -> torch.device:
        return self.tokens.device

    def type(self, dtype: torch.dtype) -> ConditionRows:
        return ConditionRows(self.tokens.type(dtype), self.zero_rows)

    def to(self, *args, **kwargs) -> ConditionRows:
        return ConditionRows(self.tokens.to(*args, **kwargs), self.zero_rows)

    def flatten(self, start_dim: int, end_dim: int) -> ConditionRows:
        """Merge the two leading axes (``[B, N, T, C]`` per-slot tokens into rows); only ``(0, 1)``."""
        if (start_dim, end_dim) != (0, 1):
            raise ValueError("ConditionRows can only merge its two leading (row) axes")
        return ConditionRows(self.tokens.flatten(0, 1), self.zero_rows * self.tokens.shape[1])

    def materialize(self) -> torch.Tensor:
        zeros = self.tokens.new_zeros(self.zero_rows, *self.tokens.shape[1:])
        return torch.cat([self.tokens, zeros], dim=0)


def materialize(cond: torch.Tensor | ConditionRows) -> torch.Tensor:
    """A plain tensor for either kind of condition."""
    return cond.materialize() if isinstance(cond, ConditionRows) else cond
