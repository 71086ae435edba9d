"""The ``/v1`` routes. Handlers only validate, touch the job store and answer: GPU work happens on the job
service's worker thread, so no request ever waits for a model."""

from __future__ import annotations

import json
import re
import secrets
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, File, Form, Path, UploadFile
from fastapi.responses import FileResponse
from pydantic import ValidationError

from .. import __version__
from ..engine.preprocess import DEFAULT_MAX_PIXELS, load_scene
from ..engine.results import read_manifest
from ..errors import InputError, NotFoundError
from ..jobs.runner import refine_edit
from ..jobs.service import JobService
from . import errors
from .schemas import ErrorResponse, GenerationParams, Health, JobCreated, JobList, JobStatus, RefineBody, RegenerateBody
from .security import BodyLimit, token_checker

FILE_NAME = re.compile(r"^(instance_\d{1,10}\.(glb|ply)|scene\.glb|scene\.json|structure\.npz)$")
MEDIA_TYPES = {".glb": "model/gltf-binary", ".ply": "application/octet-stream", ".json": "application/json",
               ".npz": "application/octet-stream"}
ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 503)}
JOB_ID = Path(..., description="a job id as returned by POST /v1/jobs")


def create_app(service: JobService, *, token: str | None = None, max_upload_bytes: int = 64 * 2 ** 20,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> FastAPI:
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
        parsed = _parse_params(params)
        inputs = {"image": image.file.read(), "labels": labels.file.read()}
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
        service.require_finished(job_id)
        return read_manifest(service.store.folder(job_id))

    @api.get("/jobs/{job_id}/files/{name}", summary="a result file (GLB, PLY, manifest, structure)",
             response_class=FileResponse)
    def get_file(job_id: str = JOB_ID, name: str = Path(..., description="e.g. instance_3.glb, scene.glb")):
        service.require_finished(job_id)
        path = service.store.folder(job_id) / name
        if not FILE_NAME.match(name) or not path.is_file():
            raise NotFoundError(f"job {job_id} has no file {name!r}",
                                "the scene manifest (GET /v1/jobs/{id}/scene) lists the files")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], filename=name)

    @api.post("/jobs/{job_id}/regenerate", status_code=202, response_model=JobCreated,
              summary="re-sample some instances with new seeds (a child job)")
    def regenerate(body: RegenerateBody, job_id: str = JOB_ID):
        parent = service.require_finished(job_id)
        manifest = read_manifest(service.store.folder(job_id))
        _check_labels(body.labels, [e["label"] for e in manifest["instances"]], f"job {job_id}")
        seeds = {label: (body.seeds or {}).get(label, secrets.randbelow(2 ** 31)) for label in body.labels}
        params = {"labels": body.labels, "seeds": seeds, "parent_params": parent.params}
        record = service.submit("regenerate", params, service.store.input_bytes(job_id), parent=job_id)
        return {"job_id": record.id, "state": record.state, "parent": job_id}

    @api.post("/jobs/{job_id}/refine", status_code=202, response_model=JobCreated,
              summary="re-generate the scene coherently with edited transforms (a child job)")
    def refine(body: RefineBody, job_id: str = JOB_ID):
        parent = service.require_finished(job_id)
        params = {"transforms": {str(k): v for k, v in body.transforms.items()}, "locked": body.locked,
                  "strength": body.strength, "seed": secrets.randbelow(2 ** 31) if body.seed is None else body.seed,
                  "parent_params": parent.params}
        scene, edit = refine_edit(service.store.folder(job_id), params)  # bad edits fail now, not in the queue
        if edit.strength > 0:
            scene.camera()
        record = service.submit("refine", params, service.store.input_bytes(job_id), parent=job_id)
        return {"job_id": record.id, "state": record.state, "parent": job_id}

    app.include_router(public)
    app.include_router(api)
    return app


def _parse_params(text: str) -> GenerationParams:
    try:
        data = json.loads(text or "{}")
    except json.JSONDecodeError as exc:
        raise InputError(f"params is not valid JSON ({exc.msg} at position {exc.pos})",
                         'send params as a JSON object, e.g. {"seed": 7, "detail": "high"}') from None
    if not isinstance(data, dict):
        raise InputError("params must be a JSON object", 'e.g. {"seed": 7}')
    try:
        return GenerationParams(**data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InputError(f"invalid params: {problems}", "see GenerationParams in /docs") from None


def _check_labels(wanted: list[int], available: list[int], where: str) -> None:
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise InputError(f"{where} has no instance {', '.join(map(str, unknown))}",
                         f"choose among {', '.join(map(str, sorted(available)))}")
