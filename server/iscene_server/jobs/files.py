"""Which files of a finished job may be sent to a client: the results a job writes, by name, and only as
regular files directly inside the job's folder (never a link, even to a file)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ..errors import NotFoundError

RESULT_FILE = re.compile(r"^(instance_\d{1,10}(_v\d)?\.(glb|ply)|proxy_\d{1,10}\.glb|scene\.glb|scene\.json|"
                         r"structure\.npz|labels\.png|segments\.json)$")


def is_served_file(folder: Path, path: Path) -> bool:
    """Whether ``path`` may be sent: a regular file (not a link, even to a file) directly inside ``folder``."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) and path.resolve().parent == folder.resolve()


def result_file(folder: Path, job_id: str, name: str) -> Path:
    """The result file ``name`` of the job in ``folder``, else :class:`NotFoundError`."""
    path = folder / name
    if not RESULT_FILE.match(name) or not is_served_file(folder, path):
        raise NotFoundError(f"job {job_id} has no file {name!r}",
                            "the scene manifest (GET /v1/jobs/{id}/scene) lists the files")
    return path
