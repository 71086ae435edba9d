"""Whole-scene benchmark: per-stage time and peak memory for N instances, ours beside the reference's way.

    python bench/scene_bench.py                        # tiny package, CPU, N = 1, 4, 8
    python bench/scene_bench.py --device cuda --model LuLing/IScene

"reference" does what the reference pipeline does with the same networks: the scene slot is denoised once
per instance in stage 1, every slot (the scene slot included) is decoded and sampled through stage 2, and
meshes are extracted with dense FlexiCubes grids. "ours" is `ScenePipeline.generate`. Each configuration
runs in its own process, so peak memory (GPU peak, or the process's peak RSS on the CPU) is its own.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from device_clock import Laps, device_name, peak_memory_mb, stamp
from reference_layout import decode_every_slot, reference_conditions, reference_stage1
from scenes import synthetic_scene

COLUMNS = ("stage1", "camera", "stage2", "mesh_decoder", "extraction", "cleanup", "export")


def run_ours(pipeline, scene, request, out: Path) -> dict:
    """``ScenePipeline.generate`` and the export; ``wall`` is the whole of it (the camera solve and the mesh
    clean-up overlap the GPU work, so the stage figures add up to more than the wall time)."""
    from iscene_server.engine.results import SceneWriter

    start = stamp(pipeline.device)
    result = pipeline.generate(scene, request)
    export_start = time.perf_counter()
    SceneWriter(out, {"models": pipeline.package.model_ids(), "inputs": {}}).write_scene(result)
    end = time.perf_counter()
    t = result.timings
    return {"stage1": t["preprocess"] + t["condition"] + t["stage1"] + t["decode"], "camera": t.get("camera", 0.0),
            "stage2": t["stage2"], "mesh_decoder": t["mesh_decoder"], "extraction": t["extraction"],
            "cleanup": t.get("mesh_cleanup", 0.0), "export": end - export_start, "wall": end - start}


def run_reference(pipeline, scene, request, out: Path) -> dict:
    """The reference's work with our networks: per-instance scene slots, all slots through stage 2,
    dense FlexiCubes, clean-up one object after another; no camera solve (the reference has none)."""
    from iscene_server.engine.preprocess import build_slots
    from iscene_server.engine.stage1 import Stage1
    from iscene_server.engine.stage2 import Stage2
    from iscene_server.geometry.glb_writer import write_instance_glb
    from iscene_server.geometry.postprocess import ColoredMesh, postprocess

    models, device = pipeline.models, pipeline.device
    laps = Laps(device)
    slots = build_slots(scene, pipeline.package.exp_setting)
    scene_cond, instance_cond = pipeline.conditions(slots)
    seeds = [request.seed] * len(slots.label_ids)  # one seed for every object, as the reference runs
    settings = pipeline.package.sampler("sparse_structure_sampler", steps=request.steps)
    denoiser = models.get("denoiser")
    stage1 = Stage1(denoiser, models.get("sparse_structure_decoder"), settings, device)
    coords = decode_every_slot(stage1, reference_stage1(stage1, scene_cond, instance_cond, seeds))
    laps.lap("stage1")

    slat = pipeline.package.sampler("slat_sampler", steps=request.slat_steps)
    stage2 = Stage2(models.get("slat_flow_model"), models.get("slat_decoder_mesh"), slat,
                    pipeline.package.base.args["slat_normalization"], device, mesh_grid=request.mesh_grid)
    cond = reference_conditions(scene_cond, instance_cond).flatten(0, 1)
    sampled = stage2.sample(coords, cond, [request.seed] * len(coords), denoiser.num_slots)
    laps.lap("stage2")

    for k, label in enumerate(slots.label_ids):
        head = stage2.mesh_head(sampled, k * denoiser.num_slots)  # slot 0; the reference skips scene slots here
        laps.lap("mesh_decoder")
        raw = stage2.extract(head, dense=True)
        laps.lap("extraction")
        mesh = postprocess(ColoredMesh(raw.vertices.cpu().numpy(), raw.faces.cpu().numpy(),
                                       raw.vertex_attrs[:, :3].cpu().numpy()),
                           min_fraction=request.min_floater_fraction, target_faces=request.target_faces)
        laps.lap("cleanup")
        write_instance_glb(out / f"instance_{label}.glb", mesh, label=label, seed=request.seed, model_ids={})
        laps.lap("export")
    return {"camera": 0.0, **laps.times, "wall": laps.wall}


def worker(args) -> dict:
    from random_models import build_generation_networks

    from iscene_server.engine.pipeline import GenerationRequest, ScenePipeline
    from iscene_server.engine.preprocess import load_scene

    with ScenePipeline.from_pretrained(args.model, args.device, args.dtype) as pipeline, \
            tempfile.TemporaryDirectory() as tmp:
        build_generation_networks(pipeline)  # load before timing
        scene = load_scene(*synthetic_scene(args.instances, Path(tmp)))
        request = GenerationRequest(steps=args.steps, slat_steps=args.steps, target_faces=args.target_faces)
        if pipeline.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pipeline.device)
        run = run_reference if args.mode == "reference" else run_ours
        times = run(pipeline, scene, request, Path(tmp))
        return {"instances": args.instances, "mode": args.mode, **{k: round(v, 3) for k, v in times.items()},
                "peak_mb": round(peak_memory_mb(pipeline.device)), "device": device_name(pipeline.device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="I-Scene package (default: a freshly made tiny package)")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--steps", type=int, default=25, help="sampling steps of both stages")
    parser.add_argument("--target-faces", type=int, default=50_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--instances", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.instances is not None:
        print(json.dumps(worker(args)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        if not args.model:
            from iscene_server.tiny.package import write_tiny_package
            args.model = str(write_tiny_package(Path(tmp) / "tiny"))
        rows = []
        for count in args.counts:
            for mode in ("ours", "reference"):
                cmd = [sys.executable, __file__, "--instances", str(count), "--mode", mode, "--model", args.model,
                       "--steps", str(args.steps), "--target-faces", str(args.target_faces),
                       "--device", args.device, "--dtype", args.dtype]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
    memory = "process RSS" if "CPU" in rows[0]["device"] else "GPU"
    print(f"device: {rows[0]['device']}, {args.steps} steps per stage, times in s, peak memory in MB ({memory}); "
          "wall: start to last file written (ours overlaps the camera solve and clean-up with the GPU)")
    table = COLUMNS + ("wall", "peak_mb")
    print(f"{'N':>2} {'mode':<9}" + "".join(f"{c:>13}" for c in table))
    for row in rows:
        print(f"{row['instances']:>2} {row['mode']:<9}" + "".join(f"{row[c]:>13}" for c in table))
    print("reference / ours:")
    for count in args.counts:
        ours, ref = (next(r for r in rows if r["instances"] == count and r["mode"] == m) for m in ("ours", "reference"))
        ratios = "".join(f"{(ref[c] / ours[c] if ours[c] else float('nan')):>12.2f}x" for c in table)
        print(f"{count:>2} {'':<9}{ratios}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
