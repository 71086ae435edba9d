"""``iscene-server``: generate scenes, segment images, serve, check parity, make the tiny package, download models."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from . import __version__
from .api.decoding import DEFAULT_DECODE_MEMORY_MB, DEFAULT_MAX_DECODES
from .engine.preprocess.images import DEFAULT_MAX_PIXELS
from .engine.seeds import DEFAULT_SEED, random_seed
from .errors import ISceneError
from .geometry.texture.settings import DEFAULT_TEXTURE_SIZE, MAX_TEXTURE_SIZE, MIN_TEXTURE_SIZE, TEXTURES
from .segment import DEFAULT_SEGMENT_MODEL

DEFAULT_MODEL = "LuLing/IScene"


class ProgressBar:
    """Progress on stderr: on a terminal one self-updating line (stage, step i/n, bar, ETA); into a pipe or a
    log file plain lines instead — one per stage, and one per further tenth of the job — so the log stays
    readable."""

    LOG_EVERY = 0.1  # of the whole job, between two lines of the plain (non-terminal) form

    def __init__(self, stream=sys.stderr, width: int = 24):
        self.stream = stream
        self.width = width
        self.interactive = bool(getattr(stream, "isatty", lambda: False)())
        self.last = 0.0
        self.open_line = False
        self.logged: tuple[str, float] | None = None  # stage and fraction of the last plain line

    def close(self) -> None:
        """End an unfinished bar line so that what is printed next starts on its own line."""
        if self.open_line:
            self.stream.write("\n")
            self.open_line = False

    def __call__(self, update) -> None:
        final = update.stage == "done"
        eta = "" if update.eta_s is None else f" ETA {_clock(update.eta_s)}"
        label = "done" if final else f"{update.stage} {update.step}/{update.total}"
        if self.interactive:
            self._redraw(update, final, label, eta)
        elif self._worth_a_line(update):
            self.stream.write(f"{update.fraction:4.0%} {label}{eta}\n")
            self.stream.flush()

    def _redraw(self, update, final: bool, label: str, eta: str) -> None:
        now = time.monotonic()
        if not final and update.step not in (0, update.total) and now - self.last < 0.1:
            return
        self.last = now
        filled = int(self.width * update.fraction)
        line = f"\r[{'#' * filled}{'.' * (self.width - filled)}] {update.fraction:4.0%} {label:<18}{eta}"
        self.stream.write(line.ljust(72) + ("\n" if final else ""))
        self.stream.flush()
        self.open_line = not final

    def _worth_a_line(self, update) -> bool:
        """A plain line for a new stage, or once the job moved on by LOG_EVERY since the last one; "done" once."""
        if self.logged is not None:
            stage, fraction = self.logged
            if stage == "done" or (stage == update.stage and update.fraction - fraction < self.LOG_EVERY):
                return False
        self.logged = (update.stage, update.fraction)
        return True


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def _add_runtime_options(p: argparse.ArgumentParser, attention: bool = True) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="torso precision on CUDA (auto = float16); the CPU always uses float32")
    if attention:
        p.add_argument("--attention", default=None, choices=["auto", "sdpa", "xformers", "naive"],
                       help="attention backend (default: $ISCENE_ATTN_BACKEND or auto)")
        p.add_argument("--no-compile", action="store_true",
                       help="run the transformer blocks eagerly (default: torch.compile on CUDA)")


def _add_revision_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--revision", help="branch, tag or commit of the --model repo (default: its main branch)")


def _compile_option(args: argparse.Namespace) -> str | bool:
    return False if args.no_compile else "auto"


def _instance_seeds(pairs: list[str]) -> dict[int, int]:
    seeds = {}
    for pair in pairs or []:
        label, _, seed = pair.partition("=")
        if not (label.strip().isdigit() and seed.strip().lstrip("-").isdigit()):
            raise ISceneError(f"--instance-seed {pair!r} is not LABEL=SEED", "for example --instance-seed 3=1234",
                              code="bad_input")
        seeds[int(label)] = int(seed)
    return seeds


def cmd_generate(args: argparse.Namespace) -> int:
    from .engine.pipeline import (
        GENERATE_PLAN,
        LAYOUT_PLAN,
        GenerationRequest,
        ScenePipeline,
    )
    from .engine.preprocess import load_scene
    from .engine.progress import ProgressTracker
    from .engine.results import (
        SceneWriter,
        check_same_inputs,
        file_digest,
        read_manifest,
    )

    image, labels = (_read_input(path, what) for path, what in ((args.image, "image"), (args.labels, "label map")))
    scene = load_scene(image, labels, max_pixels=args.max_pixels)
    inputs = {"image": Path(args.image).name, "labels": Path(args.labels).name,
              "digests": {"image": file_digest(image), "labels": file_digest(labels)}}
    parent = read_manifest(args.out)
    if parent is not None:
        check_same_inputs(parent, inputs)
    regenerating = parent is not None and bool(args.only)
    seeds = _instance_seeds(args.instance_seed)
    if regenerating:  # new seeds for the chosen objects unless given; the parent's frame and scene seed
        seeds = {label: seeds.get(label, random_seed()) for label in args.only}
    request = GenerationRequest(
        seed=parent["scene_seed"] if regenerating else args.seed, seeds=seeds, labels=args.only,
        scene_box=tuple(parent["frame"]["crop_box"]) if regenerating else None, steps=args.steps,
        cfg_strength=args.cfg, slat_steps=args.slat_steps, slat_cfg_strength=args.slat_cfg,
        formats=tuple(args.formats), target_faces=args.target_faces, min_floater_fraction=args.min_floater,
        mesh_grid=args.mesh_grid, texture=args.texture, texture_size=args.texture_size,
        vertex_colors=args.vertex_colors)
    pipeline = ScenePipeline.from_pretrained(args.model, args.device, args.dtype, compile=_compile_option(args))
    header = {"models": pipeline.package.model_ids(), "device": str(pipeline.device),
              "dtype": str(pipeline.models.dtype).removeprefix("torch."), "inputs": inputs}
    writer = SceneWriter(args.out, header, parent if regenerating else None)
    bar = ProgressBar()
    try:
        if args.stage == 1:
            first, camera = pipeline.layout(scene, request, ProgressTracker(LAYOUT_PLAN, bar))
            manifest = writer.write_stage1(first, camera, keep_scene_slot=regenerating)
        else:
            result = pipeline.generate(scene, request, ProgressTracker(GENERATE_PLAN, bar))
            manifest = writer.write_scene(result, keep_scene_slot=regenerating)
    finally:
        bar.close()
    print(Path(args.out) / "scene.json")
    for entry in manifest["instances"]:
        shape = f", {entry['faces']} faces -> {entry['file']}" if entry.get("file") else ""
        proxy = f", proxy {entry['proxy']}" if entry.get("proxy") and not entry.get("file") else ""
        print(f"instance {entry['label']}: seed {entry['seed']}, {entry['voxels']} voxels{shape}{proxy}")
    return 0


def _read_input(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ISceneError(f"the {what} file '{path}' does not exist", f"check the path of the {what}",
                          code="bad_input") from None
    except OSError as exc:
        raise ISceneError(f"the {what} file '{path}' could not be read ({exc.strerror or exc})",
                          f"check the {what}'s file", code="bad_input") from None


def default_data_dir() -> Path:
    root = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(root) / "iscene"


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from .api.app import create_app
    from .api.protocol import JsonErrorH11Protocol
    from .api.security import is_loopback
    from .devices import parse_devices
    from .jobs.service import JobService, ServiceSettings

    token = args.token or os.environ.get("ISCENE_TOKEN") or None
    if not is_loopback(args.host) and not token:
        raise ISceneError(f"refusing to listen on {args.host} without an access token",
                          "pass --token (or set ISCENE_TOKEN), or keep the default --host 127.0.0.1",
                          code="bad_input")
    if args.devices and args.device != "auto":
        raise ISceneError("--device and --devices were both given", "pass one device with --device, or several "
                          "with --devices cuda:0,cuda:1", code="bad_input")
    devices = parse_devices(args.devices) if args.devices else ()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = ServiceSettings(model=args.model, data_dir=Path(args.data_dir), device=args.device, devices=devices,
                               dtype=args.dtype,
                               max_queue=args.max_queue, job_timeout_s=args.job_timeout,
                               max_age_days=args.keep_days or None, max_store_gb=args.keep_gb or None,
                               segment_model=args.segment_model, compile=_compile_option(args))
    workers = _ray_workers(args, settings)
    listener = _listen(args.host, args.port)
    service = JobService(settings, workers=workers)
    app = create_app(service, token=token, max_upload_bytes=int(args.max_upload_mb * 2 ** 20),
                     max_pixels=args.max_pixels, max_decodes=args.max_decodes,
                     decode_memory_mb=args.decode_memory_mb)
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"I-Scene server: http://{host}:{listener.getsockname()[1]}/v1/health  (API docs: /docs; jobs in "
          f"{args.data_dir})", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                                           http=JsonErrorH11Protocol))
    with listener, contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl+C it shut down on
        server.run(sockets=[listener])
    return 0 if server.started else 1


def _ray_workers(args: argparse.Namespace, settings) -> list | None:
    """The Ray pool of ``--ray`` (None without it: the service's own workers on this machine)."""
    if args.ray is None:
        if args.ray_workers is not None:
            raise ISceneError("--ray-workers needs --ray", "add --ray auto (or --ray ray://host:10001, --ray local)",
                              code="bad_input")
        return None
    if settings.devices:
        raise ISceneError("--ray and --devices were both given", "run jobs on this machine's devices with "
                          "--devices, or on the Ray cluster's GPUs with --ray", code="bad_input")
    from .jobs.workers.remote import ray_pool

    return ray_pool(args.ray, args.ray_workers, settings.model_settings(settings.device))


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound first so that a busy port fails at once with a clear error; port 0 lets the
    system choose (the banner line names the port it chose)."""
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise ISceneError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                          "another program (perhaps another iscene-server) holds that port: stop it or pass "
                          "another --port (0 = any free port)", code="bad_input") from None
    return listener  # asyncio starts listening once the app is up: until then connections are refused


def cmd_segment(args: argparse.Namespace) -> int:
    from . import segment

    segment.require()
    from .engine.progress import ProgressTracker
    from .jobs.json_fields import parse_json_field
    from .segment.model import SamSegmenter
    from .segment.pipeline import segment_to_files
    from .segment.prompts import SegmentPrompts

    if args.auto:
        text = json.dumps({"auto": True, "points_per_side": args.points_per_side})
    else:
        text = _read_input(args.prompts, "prompts").decode("utf-8", errors="replace")
    prompts = parse_json_field(text, SegmentPrompts, f"prompts ({args.prompts or '--auto'})",
                               '{"objects": [{"box": [40, 60, 200, 220]}]}')
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bar = ProgressBar()
    try:
        info = segment_to_files(SamSegmenter(args.segment_model, args.device, args.dtype),
                                _read_input(args.image, "image"), prompts.model_dump(), out, out.with_suffix(".json"),
                                ProgressTracker(segment.SEGMENT_PLAN, bar), max_pixels=args.max_pixels)
    finally:
        bar.close()
    print(out)
    print(out.with_suffix(".json"))
    for entry in info["segments"]:
        source = "" if entry["prompt"] is None else f" (prompt {entry['prompt']})"
        print(f"segment {entry['id']}{source}: score {entry['score']:.3f}, {entry['area']} pixels, box {entry['box']}")
    for entry in info["dropped"]:
        print(f"dropped{'' if entry['prompt'] is None else ' prompt ' + str(entry['prompt'])}: {entry['reason']}")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    import torch

    from .devices import DTYPES, resolve_device
    from .nn.compile import should_compile
    from .parity import Precision, run_files

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    precision = Precision(device, DTYPES[args.dtype], should_compile(_compile_option(args), device))
    print(f"parity on {precision.describe()}", file=sys.stderr, flush=True)
    results = run_files(args.files, precision)
    for result in results:
        print(result.line(), flush=True)
    return 0 if results and all(r.passed for r in results) else 1


def cmd_make_tiny_package(args: argparse.Namespace) -> int:
    from . import segment
    from .tiny.package import write_tiny_package

    print(write_tiny_package(args.directory, seed=args.seed, release_sizes=args.release_sizes))
    if not segment.available():
        print(f"note: no sam/ segmentation model was written ({', '.join(segment.missing())} not installed; "
              f"{segment.INSTALL_HINT})")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .engine.packages.layouts import PACKAGE_ROLES, IScenePackage

    package = IScenePackage.open(args.model)
    for role in PACKAGE_ROLES:
        spec = package.network(role)
        print(f"{role}: {spec.weights_path()}")
    if args.segment:
        from .segment.model import resolve_model_folder
        print(f"segmentation model: {resolve_model_folder(args.segment_model)}")
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
    gen.add_argument("--stage", type=int, choices=[1, 2], default=2,
                     help="last stage: 1 = occupancy per instance only, 2 = meshes (default)")
    gen.add_argument("--seed", type=int, default=DEFAULT_SEED,
                     help=f"scene seed (default {DEFAULT_SEED}, as the I-Scene inferencer)")
    gen.add_argument("--only", type=int, nargs="+", metavar="LABEL",
                     help="only these instances; in a folder that already holds this scene: regenerate them "
                          "with new seeds, keeping the frame and every other instance's files")
    gen.add_argument("--instance-seed", nargs="+", metavar="LABEL=SEED", help="seed of particular instances")
    gen.add_argument("--steps", type=int, help="stage-1 sampling steps (package default 25)")
    gen.add_argument("--cfg", type=float, help="stage-1 guidance strength (package default 3.0)")
    gen.add_argument("--slat-steps", type=int, help="stage-2 sampling steps (package default 25)")
    gen.add_argument("--slat-cfg", type=float, help="stage-2 guidance strength (package default 3.0)")
    gen.add_argument("--formats", nargs="+", default=["mesh"], choices=["mesh", "gaussian"],
                     help="outputs per instance: mesh (GLB), gaussian (3DGS PLY)")
    gen.add_argument("--target-faces", type=int, default=50_000, help="decimate each mesh to about this many faces")
    gen.add_argument("--min-floater", type=float, default=0.02,
                     help="drop mesh parts smaller than this fraction of the largest part")
    gen.add_argument("--mesh-grid", default="iscene", choices=["iscene", "trellis"],
                     help="FlexiCubes grid: iscene = the release's (res x5), trellis = res x4")
    gen.add_argument("--texture", default="baked", choices=TEXTURES,
                     help="baked: a UV atlas and a base-colour texture baked from the full-resolution mesh; "
                          "vertex: vertex colours only")
    gen.add_argument("--texture-size", type=int, default=DEFAULT_TEXTURE_SIZE,
                     help=f"texels per side of the baked texture ({MIN_TEXTURE_SIZE} to {MAX_TEXTURE_SIZE})")
    gen.add_argument("--vertex-colors", action=argparse.BooleanOptionalAction, default=None,
                     help="COLOR_0 in the GLBs (default: only with --texture vertex; glTF viewers multiply it with a "
                          "texture, showing it darker)")
    gen.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest accepted image (pixels)")
    _add_revision_option(gen)
    _add_runtime_options(gen)
    gen.set_defaults(func=cmd_generate)

    srv = sub.add_parser("serve", help="run the HTTP job server (loads the model, then serves /v1)")
    srv.add_argument("--model", default=DEFAULT_MODEL,
                     help=f"I-Scene package: Hugging Face repo id or local folder (default {DEFAULT_MODEL})")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    srv.add_argument("--port", type=int, default=8712)
    srv.add_argument("--token", help="access token clients must send (required off loopback; or ISCENE_TOKEN)")
    srv.add_argument("--data-dir", default=str(default_data_dir()), help="where job folders live")
    srv.add_argument("--max-upload-mb", type=float, default=64, help="largest request body")
    srv.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest accepted image (pixels)")
    srv.add_argument("--max-decodes", type=int, default=DEFAULT_MAX_DECODES,
                     help="uploads decoded at once (more wait, then 503)")
    srv.add_argument("--decode-memory-mb", type=int, default=DEFAULT_DECODE_MEMORY_MB,
                     help="memory the uploads being decoded may hold (more wait, then 503)")
    srv.add_argument("--max-queue", type=int, default=32, help="jobs that may wait at once")
    srv.add_argument("--job-timeout", type=float, default=3600, help="seconds after which a running job fails")
    srv.add_argument("--keep-days", type=float, default=14, help="delete finished jobs after this (0 = never)")
    srv.add_argument("--keep-gb", type=float, default=50, help="delete oldest finished jobs above this (0 = never)")
    srv.add_argument("--segment-model", default=None,
                     help=f"SAM for /v1/segment: Hugging Face repo id or folder (default: the --model folder's sam/ "
                          f"if it has one, else {DEFAULT_SEGMENT_MODEL}); loaded on the first segment job")
    srv.add_argument("--ray", metavar="ADDRESS", default=None,
                     help="run jobs on a Ray cluster's workers: auto (the cluster this machine joined), "
                          "ray://host:10001, or local (a Ray on this machine); needs the [cluster] extra")
    srv.add_argument("--ray-workers", type=int, default=None, metavar="N",
                     help="Ray workers to start (default: one per GPU of the cluster)")
    srv.add_argument("--devices", help="several devices, one worker (and one loaded model) each: cuda:0,cuda:1; "
                                       "the next job goes to the first free one (default: the one --device)")
    _add_revision_option(srv)
    _add_runtime_options(srv)
    srv.set_defaults(func=cmd_serve)

    seg = sub.add_parser("segment", help="segment an image with SAM into a palette label map (needs [segment])")
    seg.add_argument("--image", required=True, help="the image (PNG, JPEG, ...)")
    mode = seg.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prompts", help="a JSON file as POST /v1/segment takes: {\"objects\": [{\"box\": [x0, y0, "
                                        "x1, y1], \"points\": [[x, y]], \"negative\": [[x, y]]}], ...}")
    mode.add_argument("--auto", action="store_true", help="find the objects over a grid of points")
    seg.add_argument("--points-per-side", type=int, default=16, help="--auto: grid points per side (4..64)")
    seg.add_argument("--out", required=True, help="the label map to write (PNG); its segments go to <out>.json")
    seg.add_argument("--segment-model", default=DEFAULT_SEGMENT_MODEL,
                     help=f"SAM: Hugging Face repo id or folder (default {DEFAULT_SEGMENT_MODEL})")
    seg.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest accepted image (pixels)")
    _add_runtime_options(seg, attention=False)
    seg.set_defaults(func=cmd_segment)

    par = sub.add_parser("parity", help="check our networks against reference golden vectors")
    par.add_argument("files", nargs="+", type=Path, help="vector files (X.safetensors with an X.json sidecar)")
    par.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    par.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    par.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                     help="torso precision, as the engine runs it on CUDA (default float32: the reference's own "
                          "tolerances; half precision is compared at tolerances scaled to its rounding)")
    par.add_argument("--no-compile", action="store_true",
                     help="on CUDA, run the transformer blocks eagerly instead of through torch.compile")
    par.set_defaults(func=cmd_parity)

    tiny = sub.add_parser("make-tiny-package", help="write a tiny seeded model package (tests, offline demo)")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--seed", type=int, default=20260101)
    tiny.add_argument("--release-sizes", action="store_true",
                      help="random weights at the release's sizes (~4.6 GB; for GPU benchmarks without a download)")
    tiny.set_defaults(func=cmd_make_tiny_package)

    dl = sub.add_parser("download", help="fetch a model package into the Hugging Face cache")
    dl.add_argument("--model", default=DEFAULT_MODEL,
                    help=f"I-Scene package: Hugging Face repo id (default {DEFAULT_MODEL}); its base comes along")
    _add_revision_option(dl)
    dl.add_argument("--segment", action="store_true", help="also fetch the SAM model that /v1/segment uses")
    dl.add_argument("--segment-model", default=DEFAULT_SEGMENT_MODEL,
                    help=f"with --segment: SAM repo id (default {DEFAULT_SEGMENT_MODEL})")
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
        if getattr(args, "revision", None):
            from .engine.packages.source import pinned
            args.model = pinned(args.model, args.revision)
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
