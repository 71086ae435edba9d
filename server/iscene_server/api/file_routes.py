"""``GET /v1/jobs/{id}/files/{name}``: the result files of a job, as soon as each is written (while it runs, and
after it was cancelled or failed, too: files are written atomically)."""

from __future__ import annotations

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse

from ..jobs.service import JobService
from .routing import JOB_ID

MEDIA_TYPES = {".glb": "model/gltf-binary", ".ply": "application/octet-stream", ".json": "application/json",
               ".npz": "application/octet-stream", ".png": "image/png"}


def files_router(service: JobService) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/jobs/{job_id}/files/{name}", summary="a result file (GLB, PLY, manifest, structure, labels.png)",
                response_class=FileResponse)
    def get_file(job_id: str = JOB_ID, name: str = Path(..., description="e.g. instance_3.glb, scene.glb")):
        path = service.result_file(job_id, name)
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], filename=name)

    return router
