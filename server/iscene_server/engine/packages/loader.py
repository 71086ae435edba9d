"""Build a package's networks on a device, in the right precision, with strictly loaded weights."""

from __future__ import annotations

import threading

import torch
import torch.nn as nn

from ...errors import ModelPackageError
from ...nn.compile import compile_network, should_compile
from ...nn.precision import TorsoPrecision
from ...nn.registry import build_network
from .checkpoints import load_strict, read_checkpoint
from .layouts import IScenePackage, NetworkSpec


def runs_half_torso(net: nn.Module, spec: NetworkSpec) -> bool:
    """Whether ``net``'s torso takes the pipeline's half dtype: its config says ``use_fp16`` (as released), or
    the network always does (the DINOv2 image conditioner)."""
    return isinstance(net, TorsoPrecision) and (spec.args.get("use_fp16", False) or net.half_torso_always)


def build_from_spec(spec: NetworkSpec, device: torch.device, torso_dtype: torch.dtype = torch.float32) -> nn.Module:
    """Construct on the meta device (no wasted init), move to ``device`` and load the weights strictly."""
    try:
        with torch.device("meta"):
            net = build_network(spec.name, spec.args)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelPackageError(f"cannot build {spec.role} network {spec.name} from {spec.source.id}: {exc}",
                                "the package config is not one this server understands") from None
    if runs_half_torso(net, spec):
        net.set_torso_dtype(torso_dtype)
    net = net.to_empty(device=device)
    load_strict(net, read_checkpoint(spec.weights_path()), spec.describe())
    return net.eval().requires_grad_(False)


class ModelSet:
    """The networks of one I-Scene package, each built on first use and then kept.

    ``compile``: ``"auto"`` (``torch.compile`` of the transformer blocks' fused functions on CUDA only), ``True``
    or ``False``; a compile failure falls back to eager with one warning (:mod:`iscene_server.nn.compile`).
    """

    def __init__(self, package: IScenePackage, device: torch.device, dtype: torch.dtype,
                 compile: str | bool = "auto"):
        self.package = package
        self.device = device
        self.dtype = dtype
        self.compiled = should_compile(compile, device)
        self._networks: dict[str, nn.Module] = {}
        self._lock = threading.Lock()

    def get(self, role: str) -> nn.Module:
        with self._lock:
            if role not in self._networks:
                net = build_from_spec(self.package.network(role), self.device, self.dtype)
                if self.compiled:
                    compile_network(net)
                self._networks[role] = net
            return self._networks[role]
