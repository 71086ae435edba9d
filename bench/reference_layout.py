"""Stage 1 in the reference's layout, with our networks and sampler: every instance denoises its own copy of
the scene slot (``K N`` rows in ``K`` slot groups), and every slot is decoded. The benchmarks time it beside
:meth:`Stage1.sample`, which denoises the scene slot once per scene; only the layout differs.
"""

from __future__ import annotations

import numpy as np
import torch

from iscene_server.engine.stage1 import Stage1, slot_noise
from iscene_server.nn.condition import ConditionRows
from iscene_server.nn.ss_sc_flow import SCENE_SLOT, SlotLayout


def reference_conditions(scene_cond: torch.Tensor, instance_cond: torch.Tensor) -> torch.Tensor:
    """``scene_cond [T, C]`` and own-slot ``instance_cond [K, N-1, T, C]`` -> every slot ``[K, N, T, C]``."""
    scene = scene_cond[None, None].expand(instance_cond.shape[0], 1, -1, -1).to(instance_cond.device)
    return torch.cat([instance_cond[:, :SCENE_SLOT], scene, instance_cond[:, SCENE_SLOT:]], dim=1)


def reference_stage1(stage1: Stage1, scene_cond: torch.Tensor, instance_cond: torch.Tensor, seeds: list[int],
                     callback=None) -> torch.Tensor:
    """Latents ``[K, N, C, r, r, r]`` (CPU float32), instance k's slots all drawn from ``seeds[k]``."""
    channels, resolution = stage1.latent_shape
    count, num_slots = len(seeds), stage1.denoiser.num_slots
    noise = torch.cat([slot_noise(s, num_slots, channels, resolution) for s in seeds]).to(stage1.device)  # [KN, ...]
    cond = reference_conditions(scene_cond, instance_cond).flatten(0, 1).to(stage1.device)  # [KN, T, C]
    model = stage1.denoiser.rows_denoiser(SlotLayout.grouped(count, num_slots).to(stage1.device))
    settings = stage1.settings
    result = stage1.sampler.sample(model, noise, cond, ConditionRows.zeros_like(cond), steps=settings.steps,
                                   rescale_t=settings.rescale_t, guidance=settings.guidance, callback=callback)
    return result.samples.float().cpu().unflatten(0, (count, num_slots))


def decode_every_slot(stage1: Stage1, latents: torch.Tensor) -> list[np.ndarray]:
    """The reference decodes the scene slot of every instance too: occupied voxels of all ``K N`` slots."""
    return stage1.decode(latents.flatten(0, 1))
