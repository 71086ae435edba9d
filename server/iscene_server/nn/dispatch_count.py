"""Count the ATen operations a piece of code dispatches (how many kernels it would launch on a GPU).

Used by tests and benchmarks to prove, on the CPU, how many kernels a block costs::

    with DispatchCounter() as ops:
        block(x)
    ops.total, ops.attention_calls
"""

from __future__ import annotations

from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode

# Ops that only reinterpret memory (no kernel on a GPU).
VIEW_OPS = frozenset({"aten.view", "aten._unsafe_view", "aten.t", "aten.transpose", "aten.permute", "aten.expand",
                      "aten.unsqueeze", "aten.squeeze", "aten.slice", "aten.select", "aten.alias", "aten.split",
                      "aten.split_with_sizes", "aten.chunk", "aten.unbind", "aten.as_strided", "aten.detach",
                      "aten.lift_fresh", "aten.unflatten", "aten.flatten", "aten.reshape"})


class DispatchCounter(TorchDispatchMode):
    """Counts every dispatched ATen op by name (``aten.addmm`` ...)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def kernels(self) -> int:
        """Ops that do work (views excluded)."""
        return sum(n for name, n in self.ops.items() if name not in VIEW_OPS)

    @property
    def attention_calls(self) -> int:
        """Scaled-dot-product attention kernels (any SDPA backend, or xformers)."""
        return sum(n for name, n in self.ops.items() if "scaled_dot_product" in name or "fmha" in name)
