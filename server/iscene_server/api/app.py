"""The ``/v1`` routes. Handlers only validate, touch the job store and answer: GPU work happens on the job
service's worker thread, so no request ever waits for a model."""

from __future__ import annotations

import json
import os
import re
import secrets
import stat
from contextlib import asynccontextmanager
from pathlib import Path as FilePath

from fastapi import APIRouter, Depends, FastAPI, File, Form, Path, UploadFile
from fastapi.responses import FileResponse

from .. import __version__, segment
from ..engine.preprocess import DEFAULT_MAX_PIXELS, load_scene, open_image
from ..engine.preprocess.images import header_pixels
from ..engine.refine.scene import plan_refine
from ..engine.results import read_manifest
from ..errors import InputError, NotFoundError
from ..jobs.runner import SEGMENTS_JSON, refine_edit
from ..jobs.service import SCENE_KINDS, JobService
from ..segment.prompts import parse_prompts
from . import errors
from .decoding import DEFAULT_DECODE_MEMORY_MB, DEFAULT_MAX_DECODES, DecodeGate
from .schemas import (
    ErrorResponse,
    GenerationParams,
    Health,
    JobCreated,
    JobList,
    JobStatus,
    RefineBody,
    RegenerateBody,
    SegmentPrompts,
    Segments,
    parse_json_field,
)
from .security import BodyLimit, token_checker

FILE_NAME = re.compile(r"^(instance_\d{1,10}\.(glb|ply)|scene\.glb|scene\.json|structure\.npz|labels\.png|"
                       r"segments\.json)$")
MEDIA_TYPES = {".glb": "model/gltf-binary", ".ply": "application/octet-stream", ".json": "application/json",
               ".npz": "application/octet-stream", ".png": "image/png"}
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 503, 507)}
JOB_ID = Path(..., description="a job id as returned by POST /v1/jobs")
PARAMS_EXAMPLE = '{"seed": 7, "detail": "high"}'
PROMPTS_EXAMPLE = '{"objects": [{"box": [40, 60, 200, 220]}, {"points": [[320, 140]]}]} or {"auto": true}'


def create_app(service: JobService, *, token: str | None = None, max_upload_bytes: int = 64 * 2 ** 20,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_decodes: int = DEFAULT_MAX_DECODES,
               decode_memory_mb: int = DEFAULT_DECODE_MEMORY_MB) -> FastAPI:
    """The app; handlers are plain functions, so uploads are decoded in worker threads (never on the event loop),
    at most ``max_decodes`` at once and within ``decode_memory_mb`` of decoded pixels (:class:`DecodeGate`)."""
    gate = DecodeGate(max_decodes, decode_memory_mb * 2 ** 20)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(title="I-Scene server", version=__version__, responses=ERRORS, lifespan=lifespan,
                  description="Image + instance map -> an editable 3D scene, one object per instance. "
                              "All errors are JSON {error: {code, message, hint}}.")
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    public = APIRouter(prefix="/v1")
    api = APIRouter(prefix="/v1", dependencies=[Depends(token_checker(token))])

    @public.get("/health", response_model=Health, summary="server, model and queue state (no token needed)")
    def health():
        return service.health()

    @api.get("/jobs", response_model=JobList, summary="all jobs, newest first")
    def list_jobs():
        return {"jobs": [service.status(r.id) for r in service.store.list()]}

    @api.post("/jobs", status_code=202, response_model=JobCreated, summary="generate a scene")
    def create_job(image: UploadFile = File(..., description="the scene image (PNG, JPEG, ...)"),
                   labels: UploadFile = File(..., description="the instance label map, same framing"),
                   params: str = Form("{}", description="GenerationParams as JSON")):
        parsed = parse_json_field(params, GenerationParams, "params", PARAMS_EXAMPLE)
        inputs = {"image": image.file.read(), "labels": labels.file.read()}
        with gate.admit(header_pixels(inputs["image"]) + header_pixels(inputs["labels"])):
            scene = load_scene(inputs["image"], inputs["labels"], max_pixels=max_pixels)
        _check_labels(parsed.labels or [], scene.label_ids, "the label map")
        record = service.submit("generate", parsed.model_dump(), inputs)
        return {"job_id": record.id, "state": record.state}

    @api.get("/jobs/{job_id}", response_model=JobStatus, summary="state, stage, progress, ETA, error")
    def get_job(job_id: str = JOB_ID):
        return service.status(job_id)

    @api.delete("/jobs/{job_id}", response_model=JobStatus, summary="cancel a queued or running job")
    def cancel_job(job_id: str = JOB_ID):
        return service.cancel(job_id)

    @api.get("/jobs/{job_id}/scene", summary="the scene manifest of a finished job")
    def get_scene(job_id: str = JOB_ID) -> dict:
        service.require_finished(job_id, SCENE_KINDS)
        return read_manifest(service.store.folder(job_id))

    @api.post("/segment", status_code=202, response_model=JobCreated,
              responses={501: {"model": ErrorResponse, "description": "the [segment] extra is not installed"}},
              summary="segment objects with SAM: one mask per box/point prompt, or automatic (a job)")
    def create_segment_job(image: UploadFile = File(..., description="the image (PNG, JPEG, ...)"),
                           prompts: str = Form(..., description="SegmentPrompts as JSON (image pixels, origin "
                                                                "top-left, y down)")):
        segment.require()
        parsed = parse_json_field(prompts, SegmentPrompts, "prompts", PROMPTS_EXAMPLE)
        data = image.file.read()
        with gate.admit(header_pixels(data)):
            size = open_image(data, what="image", max_pixels=max_pixels).size
        parse_prompts(parsed.model_dump(), size)  # bad prompts fail now, not in the queue
        record = service.submit("segment", parsed.model_dump(), {"image": data})
        return {"job_id": record.id, "state": record.state}

    @api.get("/jobs/{job_id}/segments", response_model=Segments,
             summary="segments.json of a finished segment job (the ids of files/labels.png)")
    def get_segments(job_id: str = JOB_ID) -> dict:
        service.require_finished(job_id, ("segment",))
        return json.loads((service.store.folder(job_id) / SEGMENTS_JSON).read_text())

    @api.get("/jobs/{job_id}/files/{name}", summary="a result file (GLB, PLY, manifest, structure, labels.png)",
             response_class=FileResponse)
    def get_file(job_id: str = JOB_ID, name: str = Path(..., description="e.g. instance_3.glb, scene.glb")):
        service.require_finished(job_id)
        folder = service.store.folder(job_id)
        if not FILE_NAME.match(name) or not is_served_file(folder, folder / name):
            raise NotFoundError(f"job {job_id} has no file {name!r}",
                                "the scene manifest (GET /v1/jobs/{id}/scene) lists the files")
        return FileResponse(folder / name, media_type=MEDIA_TYPES[(folder / name).suffix], filename=name)

    @api.post("/jobs/{job_id}/regenerate", status_code=202, response_model=JobCreated,
              summary="re-sample some instances with new seeds (a child job)")
    def regenerate(body: RegenerateBody, job_id: str = JOB_ID):
        parent = service.require_finished(job_id, SCENE_KINDS)
        manifest = read_manifest(service.store.folder(job_id))
        _check_labels(body.labels, [e["label"] for e in manifest["instances"]], f"job {job_id}")
        seeds = {label: (body.seeds or {}).get(label, secrets.randbelow(2 ** 31)) for label in body.labels}
        params = {"labels": body.labels, "seeds": seeds, "parent_params": parent.params}
        record = service.submit("regenerate", params, service.store.input_bytes(job_id), parent=job_id)
        return {"job_id": record.id, "state": record.state, "parent": job_id}

    @api.post("/jobs/{job_id}/refine", status_code=202, response_model=JobCreated,
              summary="re-generate the scene coherently with edited transforms (a child job)")
    def refine(body: RefineBody, job_id: str = JOB_ID):
        parent = service.require_finished(job_id, SCENE_KINDS)
        params = {"transforms": {str(k): v for k, v in body.transforms.items()}, "locked": body.locked,
                  "strength": body.strength, "seed": secrets.randbelow(2 ** 31) if body.seed is None else body.seed,
                  "parent_params": parent.params}
        scene, edit = refine_edit(service.store.folder(job_id), params)  # bad edits fail now, not in the queue
        if edit.strength > 0:
            scene.camera()
        # an object moved out of the volume, or nothing to refine (all locked; strength 0 and nothing moved)
        plan_refine(scene, edit, visible=None if edit.strength == 0 else set(scene.labels))
        record = service.submit("refine", params, service.store.input_bytes(job_id), parent=job_id)
        return {"job_id": record.id, "state": record.state, "parent": job_id}

    app.include_router(public)
    app.include_router(api)
    return app


def is_served_file(folder: FilePath, path: FilePath) -> bool:
    """Whether ``path`` may be sent: a regular file (not a link, even to a file) directly inside ``folder``."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) and path.resolve().parent == folder.resolve()


def _check_labels(wanted: list[int], available: list[int], where: str) -> None:
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise InputError(f"{where} has no instance {', '.join(map(str, unknown))}",
                         f"choose among {', '.join(map(str, sorted(available)))}")
