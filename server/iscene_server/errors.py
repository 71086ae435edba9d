"""Errors the user can act on.

Every error raised on purpose by the engine carries a machine-readable ``code``, a ``message`` that names
the problem and a ``hint`` that names the fix. The CLI prints them without a traceback; the HTTP API maps
them to status codes and a ``{code, message, hint}`` body.
"""

from __future__ import annotations


class ISceneError(Exception):
    """Base class: a problem the user (not a programmer) can fix."""

    code = "error"

    def __init__(self, message: str, hint: str = "", *, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if code is not None:
            self.code = code

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(ISceneError):
    """The image, label map or parameters given for a job are unusable."""

    code = "bad_input"


class ModelPackageError(ISceneError):
    """A model package is missing, incomplete, or does not fit the networks it describes."""

    code = "model_package"


class Cancelled(ISceneError):
    """Work was stopped because the user cancelled it."""

    code = "cancelled"

    def __init__(self, message: str = "cancelled by the user", hint: str = ""):
        super().__init__(message, hint)


class NotFoundError(ISceneError):
    """An unknown job, file or endpoint."""

    code = "not_found"


class StateError(ISceneError):
    """The job is not in a state that allows the request (e.g. the scene of an unfinished job)."""

    code = "wrong_state"


class AuthError(ISceneError):
    """A missing or wrong access token."""

    code = "unauthorized"


class TooLargeError(ISceneError):
    """An upload over the size limit."""

    code = "too_large"


class NotInstalledError(ISceneError):
    """An optional feature whose Python dependencies are not installed."""

    code = "not_installed"


class UnavailableError(ISceneError):
    """The server cannot take the request now (model failed to load, queue full)."""

    code = "unavailable"


class StorageError(ISceneError):
    """The server cannot write in its data folder (read-only, no permission, an I/O error)."""

    code = "storage_unwritable"


class DiskFullError(StorageError):
    """The disk holding the data folder is full."""

    code = "disk_full"
