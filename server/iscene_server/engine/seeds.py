"""Noise seeds: the default a request gets, the valid range, and a fresh random one.

One place for these facts: the CLI, the API schemas, the job runner and the pipeline all read them here.
"""

from __future__ import annotations

import secrets

DEFAULT_SEED = 42  # the I-Scene inferencer's default
SEED_LIMIT = 2 ** 31  # seeds are in [0, SEED_LIMIT): they fit a signed 32-bit integer


def random_seed() -> int:
    """A fresh seed in [0, SEED_LIMIT), for objects the user asked to re-generate without naming one."""
    return secrets.randbelow(SEED_LIMIT)
