"""I-Scene inference server: pure-PyTorch I-Scene / TRELLIS networks, pipeline, CLI."""

__version__ = "0.1.0"
