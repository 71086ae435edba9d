"""Cancellation points inside a network's forward pass, installed from the engine.

A decoder forward at release size takes seconds; checking the cancel flag only between objects leaves a
cancelled job running that long. :func:`cancellation_points` registers forward pre-hooks on a network's
repeated parts (its transformer blocks and upsampling stages: the children of its ``nn.ModuleList`` s), so the
check runs before each of them while the networks themselves stay unaware of jobs. The check only reads a
flag on the host: no device synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn


def stage_modules(network: nn.Module) -> list[nn.Module]:
    """The network's repeated stages, in registration order: every child of every ``nn.ModuleList`` in it."""
    return [child for module in network.modules() if isinstance(module, nn.ModuleList) for child in module]


@contextmanager
def cancellation_points(network: nn.Module, check: Callable[[], None]) -> Iterator[None]:
    """Call ``check()`` (which raises to cancel) before each of ``network``'s stages, while the block runs."""
    handles = [module.register_forward_pre_hook(lambda _module, _args: check()) for module in stage_modules(network)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
