"""Model sets with seeded random weights at the release's (or the tiny package's) sizes, built directly on the
device: full-size GPU figures without a 4.6 GB package on disk.

The package folder holds only the config files (:func:`write_package_configs`), so samplers, normalisation and
network classes come from the same files the engine reads; :class:`RandomWeightModelSet` builds each network
from its config with the tiny package's seeded weights (:func:`random_network`: the SS decoder calibrated to a
realistic occupancy, the mesh head biased to follow the voxels) instead of loading a checkpoint, and puts it in
the engine's precision and compile mode.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
import torch.nn as nn

from iscene_server.engine.packages.layouts import PACKAGE_ROLES, IScenePackage
from iscene_server.engine.packages.loader import ModelSet, runs_half_torso
from iscene_server.engine.pipeline import ScenePipeline
from iscene_server.nn.compile import compile_network
from iscene_server.tiny.package import (
    RELEASE_OCCUPANCY_FRACTION,
    RELEASE_SIZES,
    SEED,
    TINY_SIZES,
    random_network,
    write_package_configs,
)

# Tiny networks at a twentieth of the tiny package's occupancy (~80 voxels per object): the mesh stage of a
# tiny CPU check then takes about a second per object instead of twenty.
TINY_CHECK_OCCUPANCY_FRACTION = 80 / 64 ** 3


class RandomWeightModelSet(ModelSet):
    """A :class:`ModelSet` whose networks get seeded random weights instead of the package's checkpoints."""

    def __init__(self, package: IScenePackage, device: torch.device, dtype: torch.dtype, occupancy: float,
                 compile: str | bool = "auto", seed: int = SEED):
        super().__init__(package, device, dtype, compile)
        self.occupancy = occupancy
        self.seed = seed
        self.built: dict[str, nn.Module] = {}
        self.lock = threading.Lock()

    def get(self, role: str) -> nn.Module:
        with self.lock:
            if role not in self.built:
                self.built[role] = self.build(role)
            return self.built[role]

    def loaded(self) -> list[str]:
        return list(self.built)

    def build(self, role: str) -> nn.Module:
        """The network of ``role`` as the engine would run it, with random weights."""
        spec = self.package.network(role)
        net = random_network(spec.name, spec.args, self.seed + PACKAGE_ROLES.index(role), self.occupancy,
                             self.device)
        # the loader's precision rule (engine/packages/loader.py build_from_spec)
        if runs_half_torso(net, spec):
            net.set_torso_dtype(self.dtype)
        if self.compiled:
            compile_network(net)
        return net.eval().requires_grad_(False)


def random_model_set(folder: Path, device: torch.device, dtype: torch.dtype, tiny: bool = False,
                     compile: str | bool = "auto") -> RandomWeightModelSet:
    """Random-weight networks at the release's sizes (or the tiny package's); their config files are written
    into ``folder``, which must outlive the first :meth:`~RandomWeightModelSet.get` of every role."""
    sizes, occupancy = (TINY_SIZES, TINY_CHECK_OCCUPANCY_FRACTION) if tiny else (RELEASE_SIZES,
                                                                                 RELEASE_OCCUPANCY_FRACTION)
    root = write_package_configs(folder, sizes, "IScene-random-tiny" if tiny else "IScene-random-release-size")
    return RandomWeightModelSet(IScenePackage.open(str(root)), device, dtype, occupancy, compile)


def random_pipeline(folder: Path, device: torch.device, dtype: torch.dtype, tiny: bool = False,
                    compile: str | bool = "auto", cleanup_workers: int | None = None) -> ScenePipeline:
    """A scene pipeline on :func:`random_model_set` networks."""
    return ScenePipeline(random_model_set(folder, device, dtype, tiny, compile), cleanup_workers)


GENERATION_ROLES = ("image_conditioner", "denoiser", "sparse_structure_decoder", "slat_flow_model",
                    "slat_decoder_mesh")


def build_generation_networks(pipeline: ScenePipeline) -> None:
    """Build every network a mesh scene needs (before any timing)."""
    for role in GENERATION_ROLES:
        pipeline.models.get(role)
