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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

EXAMPLE = Path(__file__).parents[1] / "examples" / "living_room.png"
COLUMNS = ("stage1", "stage2", "mesh_decoder", "extraction", "export")


def synthetic_scene(count: int, folder: Path) -> tuple[Path, Path]:
    """The example render with ``count`` rectangular instances laid out on a grid."""
    image = Image.open(EXAMPLE).convert("RGB")
    w, h = image.size
    ids = np.zeros((h, w), np.uint8)
    cols = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / cols))
    for i in range(count):
        r, c = divmod(i, cols)
        x0, y0 = 80 + c * (w - 160) // cols, 60 + r * (h - 120) // rows
        ids[y0:y0 + (h - 120) // rows - 12, x0:x0 + (w - 160) // cols - 12] = i + 1
    image_path, labels_path = folder / "scene.png", folder / "labels.png"
    image.save(image_path)
    Image.fromarray(ids).save(labels_path)
    return image_path, labels_path


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(pipeline, scene, request, out: Path) -> dict:
    from iscene_server.engine.results import SceneWriter

    result = pipeline.generate(scene, request)
    start = time.perf_counter()
    SceneWriter(out, {"models": pipeline.package.model_ids(), "inputs": {}}).write_scene(result)
    t = result.timings
    return {"stage1": t["preprocess"] + t["condition"] + t["stage1"] + t["decode"], "stage2": t["stage2"],
            "mesh_decoder": t["mesh_decoder"], "extraction": t["extraction"],
            "export": t["mesh_cleanup"] + time.perf_counter() - start}


def run_reference(pipeline, scene, request, out: Path) -> dict:
    """The reference's work with our networks: per-instance scene slots, all slots through stage 2,
    dense FlexiCubes."""
    from iscene_server.engine.preprocess import build_slots
    from iscene_server.engine.samplers import FlowEulerSampler
    from iscene_server.engine.stage1 import Stage1, slot_noise
    from iscene_server.engine.stage2 import Stage2
    from iscene_server.geometry.export import write_instance_glb
    from iscene_server.geometry.postprocess import ColoredMesh, postprocess

    times, clock = {}, time.perf_counter()
    models, device = pipeline.models, pipeline.device
    slots = build_slots(scene, pipeline.package.exp_setting)
    scene_cond, instance_cond = pipeline.conditions(slots)
    count = len(slots.label_ids)
    settings = pipeline.package.sampler("sparse_structure_sampler", steps=request.steps)
    denoiser = models.get("denoiser")
    noise = slot_noise(request.seed, 2, 8, denoiser.resolution)[None].repeat(count, 1, 1, 1, 1, 1).to(device)
    cond = torch.stack([instance_cond[:, 0], scene_cond[None].expand(count, -1, -1)], 1).to(device)
    latents = FlowEulerSampler().sample(denoiser, noise, cond, torch.zeros_like(cond), steps=settings.steps,
                                        rescale_t=settings.rescale_t, guidance=settings.guidance).samples
    stage1 = Stage1(denoiser, models.get("sparse_structure_decoder"), settings, device)
    coords = stage1.decode(latents.flatten(0, 1).cpu())  # every slot, as the reference does
    times["stage1"] = time.perf_counter() - clock

    clock = time.perf_counter()
    slat = pipeline.package.sampler("slat_sampler", steps=request.slat_steps)
    stage2 = Stage2(models.get("slat_flow_model"), models.get("slat_decoder_mesh"), slat,
                    pipeline.package.base.args["slat_normalization"], device, mesh_grid=request.mesh_grid)
    sampled = stage2.sample(coords, cond.flatten(0, 1), [request.seed] * len(coords), 2)
    times["stage2"] = time.perf_counter() - clock

    times.update(mesh_decoder=0.0, extraction=0.0, export=0.0)
    for k, label in enumerate(slots.label_ids):
        clock = time.perf_counter()
        head = stage2.mesh_head(sampled, 2 * k)  # the reference skips scene slots when decoding
        times["mesh_decoder"] += time.perf_counter() - clock
        clock = time.perf_counter()
        raw = stage2.extract(head, dense=True)
        times["extraction"] += time.perf_counter() - clock
        clock = time.perf_counter()
        mesh = postprocess(ColoredMesh(raw.vertices.numpy(), raw.faces.numpy(), raw.vertex_attrs[:, :3].numpy()),
                           min_fraction=request.min_floater_fraction, target_faces=request.target_faces)
        write_instance_glb(out / f"instance_{label}.glb", mesh, label=label, seed=request.seed, model_ids={})
        times["export"] += time.perf_counter() - clock
    return times


def worker(args) -> dict:
    from iscene_server.engine.pipeline import GenerationRequest, ScenePipeline
    from iscene_server.engine.preprocess import load_scene

    pipeline = ScenePipeline.from_pretrained(args.model, args.device, args.dtype)
    for role in ("image_conditioner", "denoiser", "sparse_structure_decoder", "slat_flow_model", "slat_decoder_mesh"):
        pipeline.models.get(role)  # load before timing
    with tempfile.TemporaryDirectory() as tmp:
        scene = load_scene(*synthetic_scene(args.instances, Path(tmp)))
        request = GenerationRequest(steps=args.steps, slat_steps=args.steps, target_faces=args.target_faces)
        if pipeline.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pipeline.device)
        run = run_reference if args.mode == "reference" else run_ours
        times = run(pipeline, scene, request, Path(tmp))
    return {"instances": args.instances, "mode": args.mode, **{k: round(v, 3) for k, v in times.items()},
            "total": round(sum(times.values()), 3), "peak_mb": round(peak_memory_mb(pipeline.device)),
            "device": torch.cuda.get_device_name() if pipeline.device.type == "cuda" else "CPU",
            "threads": torch.get_num_threads()}


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
            from iscene_server.engine.packages.tiny import write_tiny_package
            args.model = str(write_tiny_package(Path(tmp) / "tiny"))
        rows = []
        for count in args.counts:
            for mode in ("ours", "reference"):
                cmd = [sys.executable, __file__, "--instances", str(count), "--mode", mode, "--model", args.model,
                       "--steps", str(args.steps), "--target-faces", str(args.target_faces),
                       "--device", args.device, "--dtype", args.dtype]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
    print(f"device: {rows[0]['device']} ({rows[0]['threads']} threads), {args.steps} steps per stage, "
          f"times in s, peak memory in MB ({'GPU' if rows[0]['device'] != 'CPU' else 'process RSS'})")
    header = f"{'N':>2} {'mode':<9}" + "".join(f"{c:>13}" for c in COLUMNS + ("total", "peak_mb"))
    print(header)
    for row in rows:
        print(f"{row['instances']:>2} {row['mode']:<9}" + "".join(f"{row[c]:>13}" for c in COLUMNS + ("total", "peak_mb")))
    print("reference / ours:")
    for count in args.counts:
        ours, ref = (next(r for r in rows if r["instances"] == count and r["mode"] == m) for m in ("ours", "reference"))
        ratios = "".join(f"{(ref[c] / ours[c] if ours[c] else float('nan')):>12.2f}x" for c in COLUMNS + ("total", "peak_mb"))
        print(f"{count:>2} {'':<9}{ratios}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
