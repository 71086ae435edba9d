"""Stage 2: structured latents on each exported instance's voxels, decoded to coloured meshes (spec §3.3-3.5,
§8.6). Only the scene-space instance slot is exported, so only it goes through stage 2 — the reference also
samples and decodes the scene slot, whose result it then throws away.

Noise: each instance draws its SLat noise ``randn(M, 8)`` from its own generator, seeded with the instance
seed, right after that seed's stage-1 draw (the reference draws both from one global stream, which would tie
every object's noise to the voxel counts of the objects before it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..geometry.flexicubes import ExtractedMesh, extract_mesh
from ..nn.condition import ConditionRows
from ..nn.slat_gs_decoder import GaussianParams
from ..nn.sparse import SparseTensor
from .samplers import FlowEulerSampler, SamplerSettings, StepCallback

# FlexiCubes grid variants: TRELLIS uses 4x the latent resolution; the I-Scene release 5x while its voxel
# coordinates still span 4x, which shrinks its meshes to 0.8 x and shifts them by -0.1 (§8.7).
MESH_GRIDS = {"trellis": 4, "iscene": 5}


def slat_noise(seed: int, num_slots: int, voxels: int, channels: int = 8, resolution: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(seed))
    torch.randn(1, num_slots, channels, resolution, resolution, resolution, generator=generator)
    return torch.randn(voxels, channels, generator=generator)


def batch_coords(coords: list[np.ndarray]) -> torch.Tensor:
    """Per-instance ``[M_i, 3]`` voxel lists -> one int32 ``[sum M_i, 4]`` (batch, x, y, z) tensor."""
    rows = [np.concatenate([np.full((len(c), 1), i), c], axis=1) for i, c in enumerate(coords)]
    return torch.from_numpy(np.concatenate(rows).astype(np.int32))


@dataclass
class MeshFrame:
    """Where extracted vertices live relative to the scene frame S: ``v_S = scale * v + offset``."""

    grid: str
    flexicubes_res: int
    scale: float
    offset: float

    def describe(self) -> dict:
        return {"variant": self.grid, "flexicubes_res": self.flexicubes_res,
                "reference_vertices_to_scene": {"scale": self.scale, "offset": [self.offset] * 3}}


def mesh_frame(grid: str, head_resolution: int) -> MeshFrame:
    if grid not in MESH_GRIDS:
        raise ValueError(f"unknown mesh grid {grid!r}; choose {', '.join(MESH_GRIDS)}")
    res = head_resolution * MESH_GRIDS[grid] // 4
    # v = c/res - 0.5 over coordinates c that span head_resolution: map back onto [-0.5, 0.5]^3.
    scale = res / head_resolution
    return MeshFrame(grid, res, scale, 0.5 * scale - 0.5)


class Stage2:
    """Samples SLat latents for a batch of instances and decodes them."""

    def __init__(self, flow, mesh_decoder, settings: SamplerSettings, normalization: dict, device: torch.device,
                 gaussian_decoder=None, mesh_grid: str = "iscene"):
        self.flow = flow
        self.mesh_decoder = mesh_decoder
        self.gaussian_decoder = gaussian_decoder
        self.settings = settings
        self.device = device
        self.mean = torch.tensor(normalization["mean"], dtype=torch.float32, device=device)
        self.std = torch.tensor(normalization["std"], dtype=torch.float32, device=device)
        self.sampler = FlowEulerSampler(settings.sigma_min)
        self.frame = mesh_frame(mesh_grid, mesh_decoder.head_resolution)

    def sample(self, coords: list[np.ndarray], cond: torch.Tensor, seeds: list[int], num_slots: int,
               callback: StepCallback | None = None) -> SparseTensor:
        """Denormalised latents on every instance's voxels (batch item i = instance i); ``cond [K, T, C]``."""
        noise = torch.cat([slat_noise(s, num_slots, len(c)) for s, c in zip(seeds, coords, strict=True)])
        x = SparseTensor(noise.to(self.device), batch_coords(coords).to(self.device), len(coords))
        cond = cond.to(self.device)
        result = self.sampler.sample(self.flow, x, cond, ConditionRows.zeros_like(cond), steps=self.settings.steps,
                                     rescale_t=self.settings.rescale_t, guidance=self.settings.guidance,
                                     callback=callback)
        return result.samples.replace(result.samples.feats.float() * self.std + self.mean)

    @torch.no_grad()
    def mesh_head(self, latents: SparseTensor, index: int) -> SparseTensor:
        """The mesh decoder's 101-channel output for batch item ``index`` (on its 256^3 voxels)."""
        return self.mesh_decoder(latents[index])

    def extract(self, head: SparseTensor, dense: bool = False) -> ExtractedMesh:
        """FlexiCubes on a mesh head, with vertices moved into the scene frame S."""
        mesh = extract_mesh(head.coords[:, 1:], head.feats.float(), self.frame.flexicubes_res, dense=dense)
        mesh.vertices = mesh.vertices * self.frame.scale + self.frame.offset
        return mesh

    def decode_mesh(self, latents: SparseTensor, index: int) -> ExtractedMesh:
        return self.extract(self.mesh_head(latents, index))

    @torch.no_grad()
    def decode_gaussians(self, latents: SparseTensor, index: int) -> GaussianParams:
        if self.gaussian_decoder is None:
            raise ValueError("this model package has no Gaussian decoder")
        return self.gaussian_decoder.to_gaussians(self.gaussian_decoder(latents[index]))[0]

