"""``GET /v1/health``: the one route that needs no token (clients check the server before they have one)."""

from __future__ import annotations

from fastapi import APIRouter

from ..jobs.service import JobService
from .schemas import Health


def health_router(service: JobService) -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/health", response_model=Health, summary="server, model and queue state (no token needed)")
    def health():
        return service.health()

    return router
