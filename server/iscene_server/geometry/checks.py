"""The cancellation convention of long geometry loops: they call a ``check()`` between pieces of work, which
raises to stop them (a job passes its cancellation check); :func:`no_check` is the default."""

from __future__ import annotations


def no_check() -> None:
    """The default ``check`` of long loops: never stops them."""
