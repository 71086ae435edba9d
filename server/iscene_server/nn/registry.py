"""Network classes by the names the released configs use (``ckpts/*.json`` ``name``, ``config.yml`` ``name``)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch.nn as nn

from .image_conditioner import ImageConditioner
from .slat_flow import SLatFlowModel
from .slat_gs_decoder import SLatGaussianDecoder
from .slat_mesh_decoder import SLatMeshDecoder
from .ss_decoder import SparseStructureDecoder
from .ss_encoder import SparseStructureEncoder
from .ss_flow import SparseStructureFlowModel
from .ss_sc_flow import SparseStructureSceneContextFlowModel

NETWORKS: dict[str, type[nn.Module]] = {
    "SparseStructureDecoder": SparseStructureDecoder,
    "SparseStructureEncoder": SparseStructureEncoder,
    "SparseStructureFlowModel": SparseStructureFlowModel,
    "SparseStructureSceneContextFlowModel": SparseStructureSceneContextFlowModel,
    "ImageConditioner": ImageConditioner,
    "SLatFlowModel": SLatFlowModel,
    "SLatMeshDecoder": SLatMeshDecoder,
    "SLatGaussianDecoder": SLatGaussianDecoder,
}

# Training-time argument names some released configs carry; they do not change the network.
_TRAINING_ONLY_ARGS = {"use_checkpoint", "learning_pattern"}


def network_class(name: str) -> type[nn.Module]:
    """The class for a config ``name`` (the ``Elastic*`` training variants map to their plain class)."""
    plain = name.removeprefix("Elastic")
    if plain not in NETWORKS:
        raise KeyError(f"unknown network {name!r}; known: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[plain]


def build_network(name: str, args: Mapping) -> nn.Module:
    """Construct a network from its config name and arguments (reference argument names)."""
    cls = network_class(name)
    accepted = _accepted_args(cls)
    unknown = sorted(set(args) - accepted - _TRAINING_ONLY_ARGS)
    if unknown:
        raise TypeError(f"{name} does not take argument(s) {', '.join(unknown)}")
    return cls(**{k: v for k, v in args.items() if k in accepted})


def _accepted_args(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass is nn.Module or "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names - {"self"}
