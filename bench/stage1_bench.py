"""Stage-1 benchmark: time per sampling step, total time and peak memory for N instances.

    python bench/stage1_bench.py                       # tiny package on the CPU, N = 1, 4, 8
    python bench/stage1_bench.py --full-size --device cuda --steps 25   # release sizes, random weights

Each N runs in its own process so peak memory is per configuration. ``--compare-reference`` also times
the reference layout (the scene slot denoised once per instance) for the same inputs and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from device_clock import device_name, peak_memory_mb, stamp
from random_models import random_model_set
from reference_layout import decode_every_slot, reference_stage1


def synthetic_conditions(conditioner, count: int, device: torch.device):
    images = torch.rand(1 + count, 3, 518, 518, generator=torch.Generator().manual_seed(0))
    from iscene_server.engine.conditioning import encode_images
    tokens = encode_images(conditioner, images, device)
    return tokens[0], tokens[1:, None]


def run_one(args) -> dict:
    from iscene_server.devices import resolve_device, resolve_dtype
    from iscene_server.engine.packages.layouts import IScenePackage
    from iscene_server.engine.packages.loader import ModelSet
    from iscene_server.engine.samplers import SamplerSettings
    from iscene_server.engine.stage1 import Stage1

    device = resolve_device(args.device)
    dtype = resolve_dtype(device, args.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        models = (random_model_set(Path(tmp), device, dtype) if args.full_size
                  else ModelSet(IScenePackage.open(args.model), device, dtype))
        denoiser, decoder, conditioner = (models.get(r) for r in
                                          ("denoiser", "sparse_structure_decoder", "image_conditioner"))
    settings = SamplerSettings(steps=args.steps)
    stage1 = Stage1(denoiser, decoder, settings, device)
    scene_cond, instance_cond = synthetic_conditions(conditioner, args.instances, device)
    seeds = list(range(args.instances))

    step_times: list[float] = []
    last = [0.0]

    def on_step(step, total, t):
        now = stamp(device)  # one wait per sampling step: the step's own time, not its launch
        step_times.append(now - last[0])
        last[0] = now

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = last[0] = stamp(device)
    if args.reference_layout:
        decode_every_slot(stage1, reference_stage1(stage1, scene_cond, instance_cond, seeds, on_step))
    else:
        _, latents = stage1.sample(scene_cond, instance_cond, 0, seeds, callback=on_step)
        stage1.decode(latents)
    total = stamp(device) - start
    return {"instances": args.instances, "layout": "reference" if args.reference_layout else "shared-scene",
            "steps": settings.steps, "step_s_mean": sum(step_times) / len(step_times),
            "stage1_total_s": total, "peak_memory_mb": peak_memory_mb(device), "device": device_name(device),
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
            from iscene_server.tiny.package import write_tiny_package
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
    memory = "peak RSS MB" if "CPU" in rows[0]["device"] else "GPU peak MB"
    print(f"{'N':>3} {'layout':<13} {'s/step':>8} {'stage1 s':>9} {memory:>12}")
    for row in rows:
        print(f"{row['instances']:>3} {row['layout']:<13} {row['step_s_mean']:>8.3f} "
              f"{row['stage1_total_s']:>9.2f} {row['peak_memory_mb']:>12.0f}")
    if args.compare_reference:
        for count in args.counts:
            ours, ref = (next(r for r in rows if r["instances"] == count and r["layout"] == lay)
                         for lay in ("shared-scene", "reference"))
            print(f"N={count}: reference / ours step time = {ref['step_s_mean'] / ours['step_s_mean']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
