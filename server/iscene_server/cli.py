"""``iscene-server``: generate scenes, check parity, make the tiny package, download models."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import __version__
from .errors import ISceneError

DEFAULT_MODEL = "LuLing/IScene"


class ProgressBar:
    """One self-updating stderr line: stage, step i/n, bar, ETA."""

    def __init__(self, stream=sys.stderr, width: int = 24):
        self.stream = stream
        self.width = width
        self.last = 0.0
        self.open_line = False

    def close(self) -> None:
        """End an unfinished bar line so that what is printed next starts on its own line."""
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False

    def __call__(self, update) -> None:
        now = time.monotonic()
        final = update.stage == "done"
        if not final and update.step not in (0, update.total) and now - self.last < 0.1:
            return
        self.last = now
        filled = int(self.width * update.fraction)
        eta = "" if update.eta_s is None else f" ETA {_clock(update.eta_s)}"
        label = "done" if final else f"{update.stage} {update.step}/{update.total}"
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {update.fraction:4.0%} {label:<18}{eta}"
        self.stream.write(line.ljust(72) + ("\n" if final else ""))
        self.stream.flush()
        self.open_line = not final


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="torso precision on CUDA (auto = float16); the CPU always uses float32")
    p.add_argument("--attention", default=None, choices=["auto", "sdpa", "xformers", "naive"],
                   help="attention backend (default: $ISCENE_ATTN_BACKEND or auto)")


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine.packages.loader import resolve_device, resolve_dtype
    from .engine.pipeline import STAGE1_PLAN, ScenePipeline, Stage1Request
    from .engine.preprocess import load_scene
    from .engine.progress import ProgressTracker
    from .engine.results import stage1_summary, write_stage1

    scene = load_scene(args.image, args.labels, max_pixels=args.max_pixels)
    pipeline = ScenePipeline.from_pretrained(args.model, args.device, args.dtype)
    request = Stage1Request(seed=args.seed, labels=args.only, steps=args.steps, cfg_strength=args.cfg)
    bar = ProgressBar()
    try:
        result = pipeline.stage1(scene, request, ProgressTracker(STAGE1_PLAN, bar))
    finally:
        bar.close()
    summary = stage1_summary(result, pipeline.package.model_ids(), str(pipeline.device),
                             str(pipeline.models.dtype).removeprefix("torch."))
    for path in write_stage1(args.out, result, summary):
        print(path)
    for inst in summary["instances"]:
        print(f"instance {inst['label']}: seed {inst['seed']}, {inst['voxels']} voxels")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from .parity import run_files

    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    results = run_files(args.files)
    for result in results:
        print(result.line(), flush=True)
    return 0 if results and all(r.passed for r in results) else 1


def cmd_make_tiny_package(args: argparse.Namespace) -> int:
    from .engine.packages.tiny import write_tiny_package

    print(write_tiny_package(args.directory, seed=args.seed))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .engine.packages.layouts import IScenePackage

    package = IScenePackage.open(args.model)
    roles = ["denoiser", "image_conditioner", "sparse_structure_decoder", "sparse_structure_encoder"]
    for role in roles:
        spec = package.network(role)
        print(f"{role}: {spec.weights_path()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iscene-server", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a scene from an image and its instance label map")
    gen.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"I-Scene package: Hugging Face repo id or local folder (default {DEFAULT_MODEL})")
    gen.add_argument("--image", required=True, help="scene image (PNG, JPEG, ...)")
    gen.add_argument("--labels", required=True, help="instance label map (one id per object, 0 = background)")
    gen.add_argument("--out", required=True, help="output folder")
    gen.add_argument("--stage", type=int, choices=[1], default=1,
                     help="last stage to run: 1 = sparse structure (occupancy per instance)")
    gen.add_argument("--seed", type=int, default=42)
    gen.add_argument("--only", type=int, nargs="+", metavar="LABEL", help="generate only these instances")
    gen.add_argument("--steps", type=int, help="stage-1 sampling steps (package default 25)")
    gen.add_argument("--cfg", type=float, help="stage-1 guidance strength (package default 3.0)")
    gen.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted image (pixels)")
    _add_runtime_options(gen)
    gen.set_defaults(func=cmd_generate)

    par = sub.add_parser("parity", help="check our networks against reference golden vectors")
    par.add_argument("files", nargs="+", type=Path, help="vector files (X.safetensors with an X.json sidecar)")
    par.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    par.set_defaults(func=cmd_parity)

    tiny = sub.add_parser("make-tiny-package", help="write a tiny seeded model package (tests, offline demo)")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=20260101)
    tiny.set_defaults(func=cmd_make_tiny_package)

    dl = sub.add_parser("download", help="fetch a model package into the Hugging Face cache")
    dl.add_argument("--model", default=DEFAULT_MODEL)
    dl.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "attention", None):
        from .nn.attention import set_attention_backend
        try:
            set_attention_backend(args.attention)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except ISceneError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
