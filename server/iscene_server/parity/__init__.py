"""``iscene-server parity``: reproduce the reference implementation's golden vectors.

Each vector file ``X.safetensors`` (with its ``X.json`` sidecar) holds a reference module's ``state_dict.*``,
the ``input.*`` it was given and the ``output.*`` it produced. A case builds our module from the sidecar's
``constructor_args``, loads the weights strictly, runs the inputs and compares every output it covers —
on the CPU in float32 by default, or on any device with a half-precision torso (:class:`Precision`).
"""

from .precision import Precision
from .runner import FileResult, run_file, run_files

__all__ = ["FileResult", "Precision", "run_file", "run_files"]
