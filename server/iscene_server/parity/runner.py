"""Run parity vector files and report one line per file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import ISceneError
from .cases import CASES
from .checks import Check
from .precision import Precision


@dataclass
class FileResult:
    path: Path
    case: str
    checks: list[Check] = field(default_factory=list)
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.error and bool(self.checks) and all(c.passed for c in self.checks)

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        if self.error:
            return f"{status} {self.case} {self.path} error: {self.error}"
        max_abs = max(c.max_abs for c in self.checks)
        max_rel = max(c.max_rel for c in self.checks)
        line = f"{status} {self.case} {self.path} max_abs={max_abs:.3g} max_rel={max_rel:.3g}"
        failed = [c for c in self.checks if not c.passed]
        if failed:
            line += " failed: " + ", ".join(f"{c.name} ({c.error or f'max_abs={c.max_abs:.3g}'})" for c in failed)
        return line


def _case_name(path: Path, sidecar: dict) -> str:
    if "case" in sidecar:
        return sidecar["case"]
    with safe_open(str(path), "pt") as f:
        return (f.metadata() or {}).get("case", path.stem)


def run_file(path: str | Path, precision: Precision | None = None) -> FileResult:
    """One vector file through its case, on ``precision``'s device and dtype (default: CPU float32)."""
    precision = precision or Precision()
    path = Path(path)
    sidecar_path = path.with_suffix(".json")
    try:
        sidecar = json.loads(sidecar_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return FileResult(path, path.stem, error=f"cannot read sidecar {sidecar_path.name}: {exc}")
    case = _case_name(path, sidecar)
    if case not in CASES:
        return FileResult(path, case, error=f"unknown case (known: {', '.join(sorted(CASES))})")
    try:
        tensors = load_file(str(path))
        checks = CASES[case](tensors, sidecar, precision)
    except ISceneError as exc:
        return FileResult(path, case, error=str(exc))
    except Exception as exc:  # report, never crash the whole run on one bad file
        return FileResult(path, case, error=f"{type(exc).__name__}: {exc}")
    return FileResult(path, case, checks)


def run_files(paths: list[str | Path], precision: Precision | None = None) -> list[FileResult]:
    precision = precision or Precision()
    precision.configure()
    return [run_file(p, precision) for p in paths]
