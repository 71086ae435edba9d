"""Every error leaves the server as a real status code and ``{"error": {code, message, hint}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    AuthError,
    Cancelled,
    InputError,
    ISceneError,
    ModelPackageError,
    NotFoundError,
    NotInstalledError,
    StateError,
    StorageError,
    TooLargeError,
    UnavailableError,
)
from .decoding import BusyError

log = logging.getLogger("iscene.api")

STATUS = {InputError: 400, AuthError: 401, NotFoundError: 404, StateError: 409, Cancelled: 409,
          TooLargeError: 413, NotInstalledError: 501, UnavailableError: 503, ModelPackageError: 503,
          StorageError: 507}


def error_response(status: int, code: str, message: str, hint: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "hint": hint}}, status_code=status,
                        headers=headers)


def status_of(exc: ISceneError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "invalid request: " + "; ".join(parts)


def install(app: FastAPI) -> None:
    @app.exception_handler(ISceneError)
    async def scene_error(request: Request, exc: ISceneError):
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, AuthError) else None
        if isinstance(exc, BusyError):
            headers = {"Retry-After": str(exc.retry_after)}
        return error_response(status_of(exc), exc.code, exc.message, exc.hint, headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return error_response(400, "bad_request", _validation_message(exc),
                              "see the API schema at /docs (or /openapi.json) for the expected fields")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return error_response(404, "not_found", f"no endpoint {request.method} {request.url.path}",
                                  "this is the I-Scene server: the API lives under /v1 (health: GET /v1/health, "
                                  "schema: /docs)")
        if exc.status_code == 405:
            return error_response(405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}",
                                  "see /docs for the methods of each endpoint")
        return error_response(exc.status_code, "http_error", str(exc.detail), "see /docs")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: {exc}",
                              "this is a bug; the server log has the details")
