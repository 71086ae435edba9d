"""One-command GPU check: speed, memory, attention kernel and half-precision parity, as one markdown block.

    python bench/gpu_check.py                      # CUDA: release-size networks, random weights, ~2-3 min
    python bench/gpu_check.py --device cpu --tiny  # the same code paths at tiny sizes (CI, under a minute)

No model package is needed: the networks are built at the release's sizes with seeded random weights directly on
the device (bench/random_models.py). In one process it then runs

1. warm-up scenes (compile, allocator, cuDNN autotuning; a second one at another seed so that shape-dynamic
   compiled graphs exist before the timed run);
2. the timed scene: 6 objects at the release settings (25 + 25 steps, CFG 3, guidance interval), per-stage
   times from the pipeline (the `Timer` waits for the device at every stage boundary), the export, the wall
   time and ``tail_s`` (end of export - end of the last GPU decode), and per-stage peak allocated/reserved
   VRAM from a progress listener, and the time to first look (issue 15: when the layout and the first object
   were announced, against the whole scene);
3. 8 objects (fewer steps: peak memory does not depend on the step count once guided and unguided steps have
   both run) under ``sdpa_kernel([FLASH_ATTENTION, EFFICIENT_ATTENTION])``, so the SDPA math path would raise,
   and under the profiler, which names the attention kernels that ran;
4. the same stage 1 in the reference layout (a scene slot per instance, every slot decoded) for the ratio;
5. ``iscene-server parity --device cuda --dtype float16|bfloat16`` on every parity vector;
6. the texture bake of one object (issue 17: 50k faces, 1024², from a ~1.3M-face mesh; on the host CPU, where
   the clean-up workers run it while the GPU decodes the next objects), median of a few.

It prints the block for bench/RESULTS.md and exits 1 if a check failed (the figures are printed either way).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from device_clock import StagePeaks, device_name, stamp, synchronize
from progressive_bench import TARGET_RATIO, FirstLook, Look
from random_models import build_generation_networks, random_pipeline
from reference_layout import decode_every_slot, reference_stage1
from scenes import synthetic_scene
from texture_bench import bumpy_sphere

from iscene_server.devices import DTYPES
from iscene_server.engine.pipeline import GENERATE_PLAN, STAGE2_BATCH, GenerationRequest
from iscene_server.engine.preprocess import build_slots, load_scene
from iscene_server.engine.progress import ProgressTracker
from iscene_server.engine.results import SceneWriter
from iscene_server.engine.stage1 import Stage1
from iscene_server.geometry.postprocess import decimate
from iscene_server.geometry.texture.bake import bake_texture
from iscene_server.nn.attention import resolve_backend, xformers_available
from iscene_server.parity.precision import NETWORK_ROUNDOFFS, SAMPLER_ROUNDOFFS, UNIT_ROUNDOFF

PARITY_DIR = Path(__file__).parents[1] / "tests" / "fixtures" / "parity"
TINY_PARITY_CASES = ("ss_flow", "slat_flow")  # one dense, one sparse network: enough to prove the plumbing
CHECK_PLAN = {**GENERATE_PLAN, "export": 1.0}
# Rows of the timing table: (label, timings key or derived figure)
TIME_ROWS = (("preprocess (slot images)", "preprocess"), ("condition (DINOv2)", "condition"), ("stage 1", "stage1"),
             ("SS decode", "decode"), ("camera solve (worker, overlaps stage 2)", "camera"),
             ("stage 2", "stage2"), ("mesh decoder", "mesh_decoder"), ("FlexiCubes", "extraction"),
             ("clean-up (workers, overlaps decoding)", "mesh_cleanup"), ("export (GLB files, manifest)", "export"))
GPU_SERIAL = ("preprocess", "condition", "stage1", "decode", "stage2", "mesh_decoder", "extraction", "export")
ATTENTION_OPS = {
    "aten::_scaled_dot_product_flash_attention": "SDPA flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "SDPA flash (CPU)",
    "aten::_scaled_dot_product_efficient_attention": "SDPA memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "SDPA cuDNN",
    "aten::_scaled_dot_product_attention_math": "SDPA math",
    "aten::_flash_attention_forward": "flash (varlen)",
    "aten::_efficient_attention_forward": "memory-efficient (varlen)",
}
MATH = "SDPA math"
BAKE_REPEATS = 3


@dataclass(frozen=True)
class BakeSize:
    """The object the bake is timed on: an icosphere of ``dense_subdivisions`` decimated to ``faces``."""

    dense_subdivisions: int
    faces: int
    texture_size: int


RELEASE_BAKE = BakeSize(dense_subdivisions=8, faces=50_000, texture_size=1024)  # ~1.3M faces, as at 256³
TINY_BAKE = BakeSize(dense_subdivisions=5, faces=2_000, texture_size=512)


@dataclass
class Settings:
    """What one check runs (release or tiny)."""

    device: torch.device
    dtype: torch.dtype
    tiny: bool
    objects: int
    peak_objects: int
    steps: int
    slat_steps: int
    warmups: list[int]  # steps of each warm-up run (both stages)
    peak_steps: int
    parity_dtypes: list[str]
    parity_files: list[Path]
    compile: bool
    memory_cap_gb: float
    bake: BakeSize = RELEASE_BAKE


@dataclass
class SceneRun:
    """One generated and exported scene: the pipeline's timings plus the export, wall time and tail."""

    objects: int
    timings: dict[str, float]
    wall_s: float
    tail_s: float
    peaks: StagePeaks
    voxels: list[int]
    extracted_faces: list[int]
    faces: list[int]
    settings: dict
    attention: Counter = field(default_factory=Counter)
    kernels: list[str] = field(default_factory=list)
    look: Look | None = None  # time to first look: the layout and the first object announced, the whole scene

    def serial_s(self) -> float:
        """The stages that run one after another on the main thread (the camera solve and clean-up overlap)."""
        return sum(self.timings.get(k, 0.0) for k in GPU_SERIAL)


@dataclass
class ParityRun:
    dtype: str
    rc: int
    lines: dict[str, str]  # case -> "PASS 1.2e-03" / "FAIL ..."
    seconds: float
    error: str = ""


def require_device(name: str) -> torch.device:
    """The device, or one line saying why there is none and what to run instead (exit 2)."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda or "no CUDA (CPU-only build)"
        print(f"gpu_check: no CUDA device is visible to PyTorch {torch.__version__} ({built}); run it on a GPU "
              f"machine, or check the script here with: python bench/gpu_check.py --device cpu --tiny",
              file=sys.stderr)
        sys.exit(2)
    return device


def settings_from(args: argparse.Namespace) -> Settings:
    device = require_device(args.device)
    half = device.type == "cuda"
    dtype = DTYPES[args.dtype] if half else torch.float32
    if args.tiny:
        files = [PARITY_DIR / f"{case}.safetensors" for case in TINY_PARITY_CASES]
        return Settings(device, dtype, True, objects=2, peak_objects=3, steps=2, slat_steps=2, warmups=[1],
                        peak_steps=1, parity_dtypes=["float16", "bfloat16"] if half else ["float32"],
                        parity_files=files, compile=not args.no_compile, memory_cap_gb=args.memory_cap_gb,
                        bake=TINY_BAKE)
    return Settings(device, dtype, False, objects=6, peak_objects=8, steps=25, slat_steps=25, warmups=[5, 1],
                    peak_steps=5, parity_dtypes=["float16", "bfloat16"] if half else ["float32"],
                    parity_files=sorted(PARITY_DIR.glob("*.safetensors")), compile=not args.no_compile,
                    memory_cap_gb=args.memory_cap_gb)


def log(message: str, started: float) -> None:
    print(f"gpu_check [{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def run_scene(pipeline, scene, request: GenerationRequest, out: Path) -> SceneRun:
    """Generate and export one scene, with per-stage peak memory from the progress listener."""
    peaks = StagePeaks(pipeline.device)
    tracker = ProgressTracker(CHECK_PLAN, peaks)
    start = stamp(pipeline.device)
    first_look = FirstLook()
    result = pipeline.generate(scene, request, tracker, first_look)
    tracker.begin("export")
    export_start = time.perf_counter()
    SceneWriter(out, {"models": pipeline.package.model_ids(), "inputs": {}}).write_scene(result)
    end = time.perf_counter()
    tracker.finish()
    if result.gpu_finished_at is None:
        raise RuntimeError("the pipeline did not record when its GPU work finished (SceneResult.gpu_finished_at)")
    return SceneRun(len(result.instances), {**result.timings, "export": end - export_start}, end - start,
                    end - result.gpu_finished_at, peaks, [len(i.structure.coords) for i in result.instances],
                    [i.extracted_faces for i in result.instances],
                    [len(i.mesh.faces) if i.mesh is not None else 0 for i in result.instances], result.settings,
                    look=first_look.look(end))


def fused_attention_only():
    """Inside it, SDPA may use only its flash or memory-efficient kernels; the math path raises."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


def attention_ops(prof, device: torch.device) -> tuple[Counter, list[str]]:
    """Attention ops by kind (:data:`ATTENTION_OPS`, xformers) and the device's attention kernel names."""
    kinds, kernels = Counter(), []
    for event in prof.key_averages():
        kind = ATTENTION_OPS.get(event.key) or ("xformers" if event.key.startswith("xformers") else None)
        if kind is not None:
            kinds[kind] += event.count
        named_like = any(w in event.key.lower() for w in ("flash", "fmha", "attention"))
        if device.type == "cuda" and named_like and not event.key.startswith(("aten::", "xformers")):
            kernels.append(event.key[:80])
    return kinds, kernels


def profiled_scene(pipeline, scene, request: GenerationRequest, out: Path) -> SceneRun:
    """:func:`run_scene` with SDPA restricted to fused kernels, recording which attention ops ran."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if pipeline.device.type == "cuda" else [])
    with fused_attention_only(), profile(activities=activities) as prof:
        run = run_scene(pipeline, scene, request, out)
    run.attention, run.kernels = attention_ops(prof, pipeline.device)
    return run


def reference_layout_stage1(pipeline, scene, steps: int, warmup_steps: int) -> dict[str, float]:
    """Sampling and decoding time of stage 1 in the reference layout (after its own warm-up)."""
    slots = build_slots(scene, pipeline.package.exp_setting)
    scene_cond, instance_cond = pipeline.conditions(slots)
    seeds = [42] * len(slots.label_ids)
    denoiser, decoder = pipeline.models.get("denoiser"), pipeline.models.get("sparse_structure_decoder")
    figures = {}
    for run_steps in (warmup_steps, steps):
        stage1 = Stage1(denoiser, decoder, pipeline.package.sampler("sparse_structure_sampler", steps=run_steps),
                        pipeline.device)
        start = stamp(pipeline.device)
        latents = reference_stage1(stage1, scene_cond, instance_cond, seeds)
        sampled = stamp(pipeline.device)
        decode_every_slot(stage1, latents)
        figures = {"stage1": sampled - start, "decode": stamp(pipeline.device) - sampled}
    return figures


def run_parity(settings: Settings, dtype: str) -> ParityRun:
    cmd = [sys.executable, "-m", "iscene_server.cli", "parity", "--device", str(settings.device), "--dtype", dtype,
           *map(str, settings.parity_files)] + ([] if settings.compile else ["--no-compile"])
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    lines = {}
    for line in proc.stdout.splitlines():
        if not line.startswith(("PASS ", "FAIL ")):
            continue
        status, case, *_ = line.split()
        rel = line.split("max_rel=")[1].split()[0] if "max_rel=" in line else ""
        lines[case] = f"{status} {rel}".strip() + (" (" + line.split(" failed: ")[1] + ")" if " failed: " in line
                                                   else "")
    error = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
    return ParityRun(dtype, proc.returncode, lines, time.perf_counter() - start, error)


def bake_seconds(size: BakeSize) -> float:
    """Median wall time of ``bake_texture`` for one object of ``size`` (atlas, raster, closest points, fill)."""
    dense = bumpy_sphere(size.dense_subdivisions)
    mesh = decimate(dense, size.faces)
    times = []
    for _ in range(BAKE_REPEATS):
        begun = time.perf_counter()
        bake_texture(mesh, dense, size.texture_size)
        times.append(time.perf_counter() - begun)
    return sorted(times)[len(times) // 2]


def machine_lines(settings: Settings, parameters: int) -> list[str]:
    device = settings.device
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        gpu = f"{props.name}, {props.total_memory / 2 ** 30:.0f} GiB, compute capability {props.major}.{props.minor}"
        versions = (f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
                    f"driver-visible devices {torch.cuda.device_count()}")
    else:
        gpu, versions = device_name(device), f"torch {torch.__version__} (CPU)"
    xformers = "installed" if xformers_available() else "not installed"
    return [f"- machine: {gpu}; host CPU {cpu}, {torch.get_num_threads()} torch threads",
            f"- software: {versions}; xformers {xformers}; attention backend {resolve_backend(device)}; "
            f"torch.compile {'on' if settings.compile and device.type == 'cuda' else 'off'}",
            f"- networks: {'tiny' if settings.tiny else 'release'} sizes, seeded random weights "
            f"({parameters / 1e6:.0f} M parameters), torso {str(settings.dtype).removeprefix('torch.')}"]


def memory_cell(peaks: StagePeaks, stage: str) -> str:
    if stage not in peaks.allocated_mb:
        return "n/a (CPU)" if peaks.device.type != "cuda" else "-"
    return f"{peaks.allocated_mb[stage]:.0f} / {peaks.reserved_mb[stage]:.0f}"


def markdown_block(settings: Settings, machine: list[str], warmup_s: list[float], main: SceneRun,
                   peak: SceneRun, reference: dict[str, float], parity: list[ParityRun], failures: list[str],
                   total_s: float, bake_s: float) -> str:
    s1, s2 = main.settings["stage1"], main.settings["stage2"]
    batches = math.ceil(main.objects / STAGE2_BATCH)
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    out = [f"### GPU check, {date}: {machine[0].removeprefix('- machine: ').split(';')[0]}", "", *machine,
           f"- scene: {main.objects} objects, {s1['steps']} + {s2['steps']} steps, CFG {s1['cfg_strength']:g} / "
           f"{s2['cfg_strength']:g}, guidance interval {s1['cfg_interval']} / {s2['cfg_interval']}, rescale_t "
           f"{s1['rescale_t']:g}; per object {sum(main.voxels) / len(main.voxels):.0f} voxels (64^3), "
           f"{sum(main.extracted_faces) / len(main.extracted_faces):.0f} extracted faces, "
           f"{sum(main.faces) / len(main.faces):.0f} exported faces",
           f"- warm-up: {len(warmup_s)} scene(s) at {settings.warmups} steps, "
           + ", ".join(f"{w:.1f} s" for w in warmup_s) + f"; whole check {total_s:.0f} s", "",
           f"| stage ({main.objects} objects) | s |", "|---|---:|"]
    for label, key in TIME_ROWS:
        out.append(f"| {label} | {main.timings.get(key, 0.0):.3f} |")
    out += [f"| stage 1 s/step | {main.timings['stage1'] / s1['steps']:.4f} |",
            f"| stage 2 s/step ({batches} batch{'es' if batches > 1 else ''} of <= {STAGE2_BATCH}) | "
            f"{main.timings['stage2'] / (s2['steps'] * batches):.4f} |",
            f"| main-thread stages (sum) | {main.serial_s():.3f} |",
            f"| wall (generate + export) | {main.wall_s:.3f} |",
            f"| tail_s (last GPU decode -> export written) | {main.tail_s:.3f} |",
            f"| texture bake per object ({settings.bake.faces} faces, {settings.bake.texture_size}², host CPU, "
            f"median of {BAKE_REPEATS}) | {bake_s:.3f} |", "",
            f"| time to first look ({main.objects} objects) | s |", "|---|---:|",
            f"| layout ready (stage 1 + camera) | {main.look.layout_s:.3f} |",
            f"| first object finished | {main.look.first_s:.3f} |",
            f"| whole scene (+ export) | {main.look.done_s:.3f} |",
            f"| layout / whole scene (target <= {TARGET_RATIO:.2f}) | {main.look.ratio:.3f} |", "",
            f"| peak VRAM, MB allocated / reserved | {main.objects} objects | {peak.objects} objects "
            f"({settings.peak_steps} + {settings.peak_steps} steps) |", "|---|---:|---:|"]
    for stage in dict.fromkeys(main.peaks.stages + peak.peaks.stages):
        out.append(f"| {stage} | {memory_cell(main.peaks, stage)} | {memory_cell(peak.peaks, stage)} |")
    peaks = [p.peaks.peak_mb() for p in (main, peak)]
    out.append("| whole scene | " + " | ".join("n/a (CPU)" if p is None else f"{p[0]:.0f} / {p[1]:.0f}"
                                               for p in peaks) + " |")
    ours_total = main.timings["stage1"] + main.timings["decode"]
    ref_total = reference["stage1"] + reference["decode"]
    out += ["", f"| stage 1, {main.objects} objects | ours (shared scene slot) | reference layout | reference / ours |",
            "|---|---:|---:|---:|",
            f"| sampling s | {main.timings['stage1']:.3f} | {reference['stage1']:.3f} | "
            f"{reference['stage1'] / main.timings['stage1']:.2f}x |",
            f"| s/step | {main.timings['stage1'] / s1['steps']:.4f} | {reference['stage1'] / s1['steps']:.4f} | "
            f"{reference['stage1'] / main.timings['stage1']:.2f}x |",
            f"| SS decode s | {main.timings['decode']:.3f} | {reference['decode']:.3f} | "
            f"{reference['decode'] / max(main.timings['decode'], 1e-9):.2f}x |",
            f"| stage 1 + decode s | {ours_total:.3f} | {ref_total:.3f} | {ref_total / ours_total:.2f}x |", ""]
    kinds = ", ".join(f"{k} x{n}" for k, n in sorted(peak.attention.items())) or "none recorded"
    out.append(f"- attention ({peak.objects}-object run, SDPA restricted to flash / memory-efficient): {kinds}")
    if peak.kernels:
        out.append(f"- attention kernels on the device: {', '.join(sorted(set(peak.kernels))[:6])}")
    tolerances = ", ".join(f"{str(dt).removeprefix('torch.')} {NETWORK_ROUNDOFFS * u:.1e} (samplers "
                           f"{SAMPLER_ROUNDOFFS * u:.1e})" for dt, u in UNIT_ROUNDOFF.items())
    out += [f"- parity on {settings.device.type}: max |ours - ref| / max |ref| per vector; half-precision "
            f"tolerances {tolerances}; float32 as on the CPU", "",
            "| vector | " + " | ".join(p.dtype for p in parity) + " |", "|---|" + "---|" * len(parity)]
    cases = list(dict.fromkeys(case for p in parity for case in p.lines))
    for case in cases:
        out.append(f"| {case} | " + " | ".join(p.lines.get(case, "missing") for p in parity) + " |")
    out += ["", "- result: " + ("every check passed" if not failures else "FAILED: " + "; ".join(failures))]
    return "\n".join(out)


def check_failures(main: SceneRun, peak: SceneRun, parity: list[ParityRun], settings: Settings) -> list[str]:
    failures = []
    fused = sum(n for kind, n in peak.attention.items() if kind != MATH)
    if peak.attention.get(MATH) or not fused:
        failures.append(f"attention did not run on a fused kernel only ({dict(peak.attention)})")
    for run in parity:
        if run.rc != 0:
            failing = [case for case, line in run.lines.items() if not line.startswith("PASS")]
            failures.append(f"parity {run.dtype}: " + (", ".join(failing) or run.error))
        elif len(run.lines) != len(settings.parity_files):
            failures.append(f"parity {run.dtype}: {len(run.lines)} of {len(settings.parity_files)} vectors reported")
    if main.wall_s + 1e-3 < main.serial_s():
        failures.append(f"wall {main.wall_s:.3f} s < main-thread stages {main.serial_s():.3f} s")
    if not all(main.voxels):
        failures.append(f"an object has no voxels ({main.voxels})")
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, or cpu")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"],
                        help="torso precision of the scene runs on CUDA (the CPU runs float32)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks, 2 objects, 2 + 2 steps (CI)")
    parser.add_argument("--no-compile", action="store_true", help="run the transformer blocks eagerly")
    parser.add_argument("--memory-cap-gb", type=float, default=64.0,
                        help="fail (out of memory) rather than use more GPU memory than this (default 64)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    settings = settings_from(args)
    started = time.perf_counter()
    device = settings.device
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, settings.memory_cap_gb * 2 ** 30 / total), device)

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        compile_mode = "auto" if settings.compile else False
        with random_pipeline(tmp / "package", device, settings.dtype, settings.tiny, compile_mode) as pipeline:
            build_generation_networks(pipeline)
            synchronize(device)
            parameters = sum(p.numel() for net in pipeline.models.built.values() for p in net.parameters())
            log(f"networks built ({parameters / 1e6:.0f} M parameters)", started)
            scenes = {n: load_scene(*synthetic_scene(n, tmp)) for n in {settings.objects, settings.peak_objects}}
            warmup_s = []
            for index, steps in enumerate(settings.warmups):
                request = GenerationRequest(seed=1000 + index, steps=steps, slat_steps=steps)
                warmup_s.append(run_scene(pipeline, scenes[settings.objects], request, tmp / f"warmup{index}").wall_s)
                log(f"warm-up {index + 1}/{len(settings.warmups)}: {warmup_s[-1]:.1f} s", started)
            main_run = run_scene(pipeline, scenes[settings.objects],
                                 GenerationRequest(steps=settings.steps, slat_steps=settings.slat_steps), tmp / "main")
            log(f"timed scene: {main_run.wall_s:.1f} s wall", started)
            peak_request = GenerationRequest(steps=settings.peak_steps, slat_steps=settings.peak_steps)
            peak_run = profiled_scene(pipeline, scenes[settings.peak_objects], peak_request, tmp / "peak")
            log(f"{settings.peak_objects} objects (profiled): {peak_run.wall_s:.1f} s wall", started)
            reference = reference_layout_stage1(pipeline, scenes[settings.objects], settings.steps,
                                                settings.warmups[0])
            log(f"reference layout stage 1: {reference['stage1']:.1f} s", started)
        machine = machine_lines(settings, parameters)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    parity = []
    for dtype in settings.parity_dtypes:
        parity.append(run_parity(settings, dtype))
        log(f"parity {dtype}: rc {parity[-1].rc}, {parity[-1].seconds:.1f} s", started)
    bake_s = bake_seconds(settings.bake)
    log(f"texture bake: {bake_s:.2f} s per object", started)
    failures = check_failures(main_run, peak_run, parity, settings)
    print(markdown_block(settings, machine, warmup_s, main_run, peak_run, reference, parity, failures,
                         time.perf_counter() - started, bake_s))
    if args.json:
        args.json.write_text(json.dumps({
            "timings": main_run.timings, "wall_s": main_run.wall_s, "tail_s": main_run.tail_s,
            "first_look": {"layout_s": main_run.look.layout_s, "first_s": main_run.look.first_s,
                           "done_s": main_run.look.done_s, "ratio": main_run.look.ratio},
            "serial_s": main_run.serial_s(), "settings": main_run.settings, "voxels": main_run.voxels,
            "peak_mb": {"allocated": main_run.peaks.allocated_mb, "reserved": main_run.peaks.reserved_mb},
            "peak_8_mb": {"allocated": peak_run.peaks.allocated_mb, "reserved": peak_run.peaks.reserved_mb},
            "attention": dict(peak_run.attention), "reference": reference,
            "parity": {p.dtype: p.lines for p in parity}, "bake_s": bake_s, "failures": failures}, indent=2))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
