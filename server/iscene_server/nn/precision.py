"""Mixed precision as the reference runs it: a half-precision torso, float32 everywhere else.

Networks are built in float32 (what the CPU runs and what parity is checked in). On CUDA the engine calls
:meth:`TorsoPrecision.set_torso_dtype` with float16 or bfloat16: the Linear/Conv weights inside the modules
named by ``torso_modules()`` are converted, norms, embedders, input and output layers stay float32, and the
forward pass casts activations on entry to the torso and back before the output head.
"""

from __future__ import annotations

import torch
import torch.nn as nn

_TORSO_LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class TorsoPrecision:
    """Mixin for networks whose torso may run in half precision."""

    torso_dtype: torch.dtype = torch.float32
    half_torso_always: bool = False  # True: the torso follows the pipeline dtype even without ``use_fp16``

    def torso_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def set_torso_dtype(self, dtype: torch.dtype) -> None:
        for container in self.torso_modules():
            for module in container.modules():
                if isinstance(module, _TORSO_LAYER_TYPES) or getattr(module, "is_torso_layer", False):
                    module.to(dtype)
        self.torso_dtype = dtype
