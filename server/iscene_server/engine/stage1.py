"""Stage 1: the sparse structure of every instance (I-Scene scene-context flow + SS decoder), spec §8.6.

Per instance the reference denoises ``N`` slot sequences (scene-space instance, scene, ...). The scene
slot has the same image, condition and noise for every instance and never looks at the others, so its
trajectory is identical across instances: we denoise it once per scene in a shared row that every
instance's slot-0 queries attend to (:meth:`SlotLayout.shared_scene`). Only the scene-space instance slot
is exported, so only its latent is decoded.

Noise follows the reference: ``torch.manual_seed(seed); randn(1, N, 8, r, r, r)`` on the CPU. The scene
row takes its slot-1 part from the scene seed and each instance takes its own slots from its own seed, so
with one seed for everything the result equals the reference, and re-seeding one instance leaves the
scene (and every other instance) untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..nn.condition import ConditionRows
from ..nn.ss_decoder import occupied_coords
from ..nn.ss_sc_flow import SCENE_SLOT, SlotLayout
from .samplers import FlowEulerSampler, SamplerSettings, StepCallback, renoise

DECODE_BATCH = 4


def slot_noise(seed: int, num_slots: int, channels: int, resolution: int) -> torch.Tensor:
    """The reference noise draw for ``seed``: ``[N, C, r, r, r]`` from a CPU generator."""
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(1, num_slots, channels, resolution, resolution, resolution, generator=generator)[0]


@dataclass
class InstanceStructure:
    label: int
    seed: int
    latent: torch.Tensor  # [C, r, r, r], scene-space instance slot, CPU float32
    coords: np.ndarray  # int16 [M, 3] occupied (x, y, z) on the 64^3 grid of the scene frame


@dataclass
class SceneStructure:
    scene_seed: int
    scene_latent: torch.Tensor  # [C, r, r, r]
    instances: list[InstanceStructure]


class SharedSceneRows:
    """Row bookkeeping for one scene: row 0 is the shared scene slot, then each instance's own slots."""

    def __init__(self, num_instances: int, num_slots: int):
        self.num_instances = num_instances
        self.num_slots = num_slots
        self.layout = SlotLayout.shared_scene(num_instances, num_slots)

    @property
    def own_slots(self) -> list[int]:
        return [s for s in range(self.num_slots) if s != SCENE_SLOT]

    def stack(self, scene: torch.Tensor, per_instance: torch.Tensor) -> torch.Tensor:
        """``scene [...]`` and ``per_instance [K, N-1, ...]`` -> rows ``[1 + K(N-1), ...]``."""
        return torch.cat([scene[None], per_instance.flatten(0, 1)], dim=0)

    def instance_rows(self, rows: torch.Tensor, slot: int = 0) -> torch.Tensor:
        """The rows of slot ``slot`` (not the scene slot) of every instance."""
        own = rows[1:].unflatten(0, (self.num_instances, self.num_slots - 1))
        return own[:, self.own_slots.index(slot)]


class Stage1:
    """Samples the stage-1 latents of a scene and decodes each instance's occupancy."""

    def __init__(self, denoiser, decoder, settings: SamplerSettings, device: torch.device):
        self.denoiser = denoiser
        self.decoder = decoder
        self.settings = settings
        self.device = device
        self.sampler = FlowEulerSampler(settings.sigma_min)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.denoiser.in_channels, self.denoiser.resolution

    def initial_noise(self, rows: SharedSceneRows, scene_seed: int, seeds: list[int]) -> torch.Tensor:
        channels, resolution = self.latent_shape
        scene = slot_noise(scene_seed, rows.num_slots, channels, resolution)[SCENE_SLOT]
        own = torch.stack([slot_noise(s, rows.num_slots, channels, resolution)[rows.own_slots] for s in seeds])
        return rows.stack(scene, own)

    def sample(self, scene_cond: torch.Tensor, instance_cond: torch.Tensor, scene_seed: int, seeds: list[int],
               callback: StepCallback | None = None, clean: tuple[torch.Tensor, torch.Tensor] | None = None,
               t_start: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Denoise one scene. ``scene_cond [T, C]``, ``instance_cond [K, N-1, T, C]`` (own slots in order).

        ``clean`` (refine): latents ``(scene [C, r, r, r], own [K, N-1, C, r, r, r])`` to start from, re-noised
        to ``t_start`` with the seeds' noise. Returns the final scene-slot latent ``[C, r, r, r]`` and slot-0
        latents ``[K, C, r, r, r]``.
        """
        rows = SharedSceneRows(len(seeds), self.denoiser.num_slots)
        layout = rows.layout.to(self.device)
        cond = rows.stack(scene_cond, instance_cond).to(self.device)
        noise = self.initial_noise(rows, scene_seed, seeds)
        if clean is not None:
            noise = renoise(rows.stack(*clean), noise, t_start, self.settings.sigma_min)
        noise = noise.to(self.device)

        model = self.denoiser.rows_denoiser(layout)
        result = self.sampler.sample(model, noise, cond, ConditionRows.zeros_like(cond), steps=self.settings.steps,
                                     rescale_t=self.settings.rescale_t, guidance=self.settings.guidance,
                                     t_start=t_start, callback=callback)
        latents = result.samples.float().cpu()
        return latents[0], rows.instance_rows(latents)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[np.ndarray]:
        """Occupied voxels ``[M, 3]`` (int16, x/y/z on the 64^3 grid) for each latent ``[K, C, r, r, r]``."""
        out: list[np.ndarray] = []
        for i in range(0, latents.shape[0], DECODE_BATCH):
            chunk = latents[i:i + DECODE_BATCH].to(self.device)
            coords = occupied_coords(self.decoder(chunk)).cpu().numpy()
            out += [coords[coords[:, 0] == b, 1:].astype(np.int16) for b in range(chunk.shape[0])]
        return out

    def assemble(self, labels: list[int], seeds: list[int], scene_seed: int, scene_latent: torch.Tensor,
                 latents: torch.Tensor) -> SceneStructure:
        """Decode the slot-0 latents and bundle everything per instance."""
        coords = self.decode(latents)
        instances = [InstanceStructure(label, seed, latent, c)
                     for label, seed, latent, c in zip(labels, seeds, latents, coords, strict=True)]
        return SceneStructure(scene_seed, scene_latent, instances)
