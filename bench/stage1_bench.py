"""Stage-1 benchmark: time per sampling step, total time and peak memory for N instances.

    python bench/stage1_bench.py                       # tiny package on the CPU, N = 1, 4, 8
    python bench/stage1_bench.py --full-size --device cuda --steps 25   # release sizes, random weights

Each N runs in its own process so peak memory is per configuration. ``--compare-reference`` also times
the reference layout (the scene slot denoised once per instance) for the same inputs and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

RELEASE_DENOISER = {"resolution": 16, "in_channels": 8, "out_channels": 8, "model_channels": 1024,
                    "cond_channels": 1024, "num_blocks": 24, "num_heads": 16, "mlp_ratio": 4, "patch_size": 1,
                    "pe_mode": "ape", "qk_rms_norm": True, "use_fp16": True, "scene_context_attn_num": 5,
                    "exp_setting": "global"}
RELEASE_DECODER = {"out_channels": 1, "latent_channels": 8, "num_res_blocks": 2, "num_res_blocks_middle": 2,
                   "channels": [512, 128, 32], "use_fp16": True}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def random_networks(device: torch.device, dtype: torch.dtype):
    """Release-size denoiser, decoder and conditioner with random weights (for timing only)."""
    from iscene_server.nn.image_conditioner import ImageConditioner
    from iscene_server.nn.registry import build_network

    nets = [build_network("SparseStructureSceneContextFlowModel", RELEASE_DENOISER),
            build_network("SparseStructureDecoder", RELEASE_DECODER), ImageConditioner()]
    for net in nets[:2]:
        net.set_torso_dtype(dtype)
    return [net.to(device).eval().requires_grad_(False) for net in nets]


def synthetic_conditions(conditioner, count: int, device: torch.device):
    images = torch.rand(1 + count, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    from iscene_server.engine.conditioning import encode_images
    tokens = encode_images(conditioner, images, device)
    return tokens[0], tokens[1:, None]


def run_one(args) -> dict:
    from iscene_server.engine.packages.loader import resolve_device, resolve_dtype
    from iscene_server.engine.samplers import FlowEulerSampler, SamplerSettings
    from iscene_server.engine.stage1 import Stage1, slot_noise

    device = resolve_device(args.device)
    dtype = resolve_dtype(device, args.dtype)
    if args.full_size:
        denoiser, decoder, conditioner = random_networks(device, dtype)
    else:
        from iscene_server.engine.packages.layouts import IScenePackage
        from iscene_server.engine.packages.loader import ModelSet
        models = ModelSet(IScenePackage.open(args.model), device, dtype)
        denoiser, decoder, conditioner = (models.get(r) for r in
                                          ("denoiser", "sparse_structure_decoder", "image_conditioner"))
    settings = SamplerSettings(steps=args.steps)
    stage1 = Stage1(denoiser, decoder, settings, device)
    scene_cond, instance_cond = synthetic_conditions(conditioner, args.instances, device)
    seeds = list(range(args.instances))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step_times: list[float] = []
    last = [0.0]

    def on_step(step, total, t):
        sync()
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync()
    start = last[0] = time.perf_counter()
    if args.reference_layout:
        num_slots = denoiser.num_slots
        noise = torch.stack([slot_noise(s, num_slots, 8, denoiser.resolution) for s in seeds]).to(device)
        cond = torch.stack([instance_cond[:, 0], scene_cond[None].expand(args.instances, -1, -1)], 1)
        result = FlowEulerSampler().sample(denoiser, noise, cond, torch.zeros_like(cond), steps=settings.steps,
                                           rescale_t=settings.rescale_t, guidance=settings.guidance,
                                           callback=on_step)
        stage1.decode(result.samples.flatten(0, 1))  # the reference decodes every slot
    else:
        _, latents = stage1.sample(scene_cond, instance_cond, 0, seeds, callback=on_step)
        stage1.decode(latents)
    sync()
    total = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"instances": args.instances, "layout": "reference" if args.reference_layout else "shared-scene",
            "steps": settings.steps, "step_s_mean": sum(step_times) / len(step_times),
            "stage1_total_s": total, "peak_memory_mb": peak / 2 ** 20, "device": device_name(device),
            "dtype": str(dtype).removeprefix("torch."), "full_size": args.full_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="I-Scene package (default: a freshly made tiny package)")
    parser.add_argument("--full-size", action="store_true", help="release-size networks with random weights")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compare-reference", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--instances", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reference-layout", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instances is not None:  # a worker process: one configuration
        print(json.dumps(run_one(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        if not args.model and not args.full_size:
            from iscene_server.engine.packages.tiny import write_tiny_package
            args.model = str(write_tiny_package(Path(tmp) / "tiny"))
        rows = []
        for count in args.counts:
            for reference in ([False, True] if args.compare_reference else [False]):
                cmd = [sys.executable, __file__, "--instances", str(count), "--steps", str(args.steps),
                       "--device", args.device, "--dtype", args.dtype]
                cmd += ["--full-size"] if args.full_size else ["--model", args.model]
                cmd += ["--reference-layout"] if reference else []
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"device: {rows[0]['device']}, dtype {rows[0]['dtype']}, "
          f"{'release-size random weights' if args.full_size else 'tiny package'}, {args.steps} steps")
    memory = "GPU peak MB" if rows[0]["device"].find("CPU") < 0 else "peak RSS MB"
    print(f"{'N':>3} {'layout':<13} {'s/step':>8} {'stage1 s':>9} {memory:>12}")
    for row in rows:
        print(f"{row['instances']:>3} {row['layout']:<13} {row['step_s_mean']:>8.3f} {row['stage1_total_s']:>9.2f} "
              f"{row['peak_memory_mb']:>12.0f}")
    if args.compare_reference:
        for count in args.counts:
            ours, ref = (next(r for r in rows if r["instances"] == count and r["layout"] == lay)
                         for lay in ("shared-scene", "reference"))
            print(f"N={count}: reference / ours step time = {ref['step_s_mean'] / ours['step_s_mean']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
