"""The ``/v1`` app. Handlers only validate, touch the job store and answer: GPU work happens on the job
service's worker thread, so no request ever waits for a model. One router per resource: health (no token),
jobs, result files, segmentation."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from .. import __version__
from ..jobs.intake import DEFAULT_MAX_PIXELS
from ..jobs.service import JobService
from . import errors
from .decoding import DEFAULT_DECODE_MEMORY_MB, DEFAULT_MAX_DECODES, DecodeGate
from .file_routes import files_router
from .health_routes import health_router
from .job_routes import jobs_router
from .schemas import ErrorResponse
from .security import BodyLimit, token_checker
from .segment_routes import segment_router

ERRORS = {status: {"model": ErrorResponse} for status in (400, 401, 404, 409, 413, 503, 507)}


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
    app.include_router(health_router(service))
    guarded = [Depends(token_checker(token))]
    for router in (jobs_router(service, gate, max_pixels), files_router(service),
                   segment_router(service, gate, max_pixels)):
        app.include_router(router, dependencies=guarded)
    return app
