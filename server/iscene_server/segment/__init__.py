"""Segment Anything on the server: box/point prompts or a point grid → one mask per object → a palette label map.

SAM runs through ``transformers`` and the label clean-up uses ``scipy``; both are the optional ``[segment]``
extra. The server starts (and answers 501) without them: this ``__init__``, :mod:`.prompts`, :mod:`.model`
and :mod:`.auto` import neither (``transformers`` is imported when a model is loaded or written), while
:mod:`.labels` and :mod:`.pipeline` need ``scipy`` and are imported only once :func:`require` has passed.
"""

from __future__ import annotations

import functools
import importlib.util

from ..errors import NotInstalledError

DEFAULT_SEGMENT_MODEL = "facebook/sam-vit-base"
REQUIREMENTS = ("transformers", "scipy")
INSTALL_HINT = "pip install iscene-server[segment]"
# Progress stages of a segment job (relative cost), as :mod:`.pipeline` reports them.
SEGMENT_PLAN = {"loading segmentation model": 1.0, "embedding image": 2.0, "segmenting": 4.0,
                "assembling labels": 2.0, "writing files": 0.5}


@functools.cache
def missing() -> tuple[str, ...]:
    """The optional dependencies that are not importable (checked once per process)."""
    return tuple(name for name in REQUIREMENTS if importlib.util.find_spec(name) is None)


def available() -> bool:
    return not missing()


def require() -> None:
    """Raise :class:`NotInstalledError` (HTTP 501) unless segmentation can run."""
    if missing():
        raise NotInstalledError(f"segmentation needs {' and '.join(missing())}, which "
                                f"{'is' if len(missing()) == 1 else 'are'} not installed on the server",
                                INSTALL_HINT)
