"""What the pipeline tells a caller as results become final, before the whole scene is done.

:class:`ResultListener` is a plain base class with no-op methods: a caller overrides what it publishes. The
pipeline calls :meth:`ResultListener.layout` once, when stage 1 (and, for a new frame, the camera solve) is
done, and :meth:`ResultListener.instance` once per instance as soon as that instance's mesh (cleaned up) and
Gaussians are final — possibly out of label order, since clean-ups finish in any order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the pipeline imports this module: its types are named for the reader only
    from .camera.solve import CameraFit
    from .pipeline import InstanceResult, Stage1Result


class ResultListener:
    """Receives a job's results as they become final; every method does nothing unless overridden."""

    def layout(self, first: Stage1Result, camera: CameraFit | None) -> None:
        """Stage 1 is done: every instance's occupancy, and the solved camera (None: the parent's is kept)."""

    def instance(self, result: InstanceResult) -> None:
        """``result`` (one instance) is final: its mesh is cleaned up, its Gaussians decoded."""
