"""Noise seeds as the server takes them: the default a scene starts with, the valid range, a fresh random one.

A deliberate copy of the server's ``iscene_server/engine/seeds.py`` (the add-on imports nothing from the server),
checked against it by ``tests/test_addon_copies.py``.
"""

from __future__ import annotations

import random

DEFAULT_SEED = 42  # the I-Scene inferencer's default
SEED_LIMIT = 2 ** 31  # seeds are in [0, SEED_LIMIT): they fit a signed 32-bit integer (and Blender's IntProperty)


def random_seed() -> int:
    """A fresh seed in [0, SEED_LIMIT), for an object the artist asked to re-generate without naming one."""
    return random.randrange(SEED_LIMIT)
