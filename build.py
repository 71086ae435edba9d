"""Build the I-Scene Blender extension zip: ``python build.py`` writes ``dist/<id>-<version>.zip``.

Blender expects an extension whose root *is* the add-on package: ``blender_manifest.toml`` sits next to
``__init__.py`` at the top of the zip, and Blender imports that root as ``bl_ext.<repo>.<id>``. The repository
keeps the manifest at its root and the code in ``iscene_blender/``, so this script copies both into one staging
folder, checks the code against the extension rules, and has Blender's own ``blender_ext.py`` (shipped inside
the PyPI ``bpy`` wheel) validate the staging folder, build the zip and validate the zip.

Only the standard library is used; ``bpy`` is located on disk and never imported.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent
DEFAULT_MANIFEST = ROOT / "blender_manifest.toml"
DEFAULT_PACKAGE = ROOT / "iscene_blender"
DEFAULT_OUTPUT = ROOT / "dist"
MANIFEST_NAME = "blender_manifest.toml"

REQUIRED_FIELDS = (
    "schema_version", "id", "version", "name", "tagline", "maintainer", "type", "blender_version_min", "license",
)
# Modules that ship with Blender itself (not third-party, so no wheels are needed for them).
BLENDER_MODULES = frozenset({
    "bpy", "bpy_extras", "mathutils", "gpu", "gpu_extras", "bmesh", "blf", "bl_math", "addon_utils", "numpy",
})
EXCLUDED_DIRS = frozenset({"__pycache__", "tests", "test"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
TEST_FILE = re.compile(r"^(test_.*|.*_test|conftest)\.py$")
VALIDATOR_GLOB = "*/scripts/addons_core/bl_pkg/cli/blender_ext.py"
TAGS_GLOB = "*/scripts/modules/_bpy_internal/extensions/tags.py"


class BuildError(Exception):
    """A problem that stops the build; the message names it."""


@dataclass(frozen=True)
class Validator:
    """Blender's extension CLI and the tag list Blender itself validates against."""

    script: Path
    tags: Path | None

    def run(self, *args: str) -> subprocess.CompletedProcess:
        tags = ["--valid-tags", str(self.tags)] if self.tags else []
        command = [sys.executable, str(self.script), args[0], *tags, *args[1:]]
        return subprocess.run(command, capture_output=True, text=True, check=False)


def read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise BuildError(f"manifest not found: {path}")
    try:
        manifest = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as error:
        raise BuildError(f"{path}: not valid TOML: {error}") from error
    missing = [field for field in REQUIRED_FIELDS if field not in manifest]
    if missing:
        raise BuildError(f"{path}: missing required field(s): {', '.join(missing)}")
    if "wheels" in manifest:
        raise BuildError(f"{path}: has a 'wheels' entry; the extension must stay pure Python with no bundled wheels")
    return manifest


def package_files(package: Path) -> list[Path]:
    """Files of the package to ship, relative to it: no caches, compiled files, tests or dot-files."""
    if not (package / "__init__.py").is_file():
        raise BuildError(f"not a Python package (no __init__.py): {package}")
    files = []
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if path.is_dir() or is_excluded(relative):
            continue
        files.append(relative)
    if Path(MANIFEST_NAME) in files:
        raise BuildError(f"{package / MANIFEST_NAME}: the package must not carry its own manifest")
    return files


def is_excluded(relative: Path) -> bool:
    parts = relative.parts
    if any(part.startswith(".") for part in parts) or any(part in EXCLUDED_DIRS for part in parts[:-1]):
        return True
    return relative.suffix in EXCLUDED_SUFFIXES or bool(TEST_FILE.match(relative.name))


def check_sources(package: Path, files: list[Path], own_names: set[str]) -> None:
    """Apply the extension code rules to every shipped ``.py`` file; report all problems at once."""
    siblings = {path.stem for path in files if path.suffix == ".py" and len(path.parts) == 1}
    siblings |= {path.parts[0] for path in files if len(path.parts) > 1}
    problems = []
    for relative in files:
        if relative.suffix == ".py":
            problems += check_source(package / relative, relative, own_names, siblings)
    if problems:
        raise BuildError("the package breaks the extension code rules:\n  " + "\n  ".join(problems))


def check_source(path: Path, relative: Path, own_names: set[str], siblings: set[str]) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as error:
        return [f"{relative}:{error.lineno}: syntax error: {error.msg}"]
    problems = []
    for node in ast.walk(tree):
        where = f"{relative}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Name) and node.id == "bl_info" and isinstance(node.ctx, ast.Store):
            problems.append(f"{where}: defines bl_info; extensions use blender_manifest.toml instead")
        for name in absolute_imports(node):
            if problem := import_problem(name, own_names, siblings):
                problems.append(f"{where}: {problem}")
    return problems


def absolute_imports(node: ast.AST) -> list[str]:
    """Top-level module names of the absolute imports in ``node`` (relative imports are always allowed)."""
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        return [node.module.split(".")[0]]
    return []


def import_problem(name: str, own_names: set[str], siblings: set[str]) -> str | None:
    if name in own_names:
        return f"absolute self-import of {name!r}; use relative imports (from . import x)"
    if name in sys.stdlib_module_names or name in BLENDER_MODULES:
        return None
    if name in siblings:
        return f"'import {name}' refers to the package's own module; use 'from . import {name}'"
    return f"imports {name!r}, which is neither stdlib nor shipped with Blender"


def stage(manifest: Path, package: Path, files: list[Path], folder: Path) -> Path:
    """Lay out the extension root: the manifest next to the package's own files."""
    folder.mkdir(parents=True)
    shutil.copyfile(manifest, folder / MANIFEST_NAME)
    for relative in files:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package / relative, target)
    return folder


def find_validator() -> Validator:
    """Locate ``blender_ext.py`` inside the installed ``bpy`` wheel without importing ``bpy``."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or not spec.origin:
        raise BuildError("bpy (Blender as a Python module) is not installed, so blender_ext.py cannot validate the "
                         "extension; install bpy or pass --no-validate")
    bpy_dir = Path(spec.origin).parent
    scripts = sorted(bpy_dir.glob(VALIDATOR_GLOB))
    if not scripts:
        raise BuildError(f"blender_ext.py not found under {bpy_dir} ({VALIDATOR_GLOB})")
    tags = sorted(bpy_dir.glob(TAGS_GLOB))
    return Validator(scripts[-1], tags[-1] if tags else None)


def validate(validator: Validator, path: Path, what: str) -> None:
    result = validator.run("validate", str(path))
    if result.returncode != 0:
        raise BuildError(f"blender_ext.py validate rejected {what}:\n{indent(result.stdout + result.stderr)}")


def build_with_blender(validator: Validator, root: Path, zip_path: Path) -> None:
    result = validator.run("build", "--source-dir", str(root), "--output-filepath", str(zip_path))
    if result.returncode != 0 or not zip_path.is_file():
        raise BuildError(f"blender_ext.py build failed for {root}:\n{indent(result.stdout + result.stderr)}")


def build_zip(root: Path, zip_path: Path) -> None:
    """Zip the extension root as ``blender_ext.py build`` does: every file at its path relative to the root."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(root).as_posix())


def check_zip(zip_path: Path) -> None:
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
    for required in (MANIFEST_NAME, "__init__.py"):
        if required not in names:
            raise BuildError(f"{zip_path}: {required} is not at the zip root")


def indent(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


def build(manifest_path: Path, package: Path, output_dir: Path, *, run_validator: bool = True) -> Path:
    """Check, stage and zip the extension; returns the zip path or raises :class:`BuildError`."""
    manifest = read_manifest(manifest_path)
    files = package_files(package)
    check_sources(package, files, {package.name, str(manifest["id"]), "bl_ext"})
    validator = find_validator() if run_validator else None
    output_dir.mkdir(parents=True, exist_ok=True)
    zip_path = output_dir / f"{manifest['id']}-{manifest['version']}.zip"
    zip_path.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="iscene-build-") as temp:
        root = stage(manifest_path, package, files, Path(temp) / str(manifest["id"]))
        if validator:
            validate(validator, root, f"{manifest_path} + {package} (staged in {root})")
            build_with_blender(validator, root, zip_path)
        else:
            build_zip(root, zip_path)
    check_zip(zip_path)
    if validator:
        validate(validator, zip_path, str(zip_path))
    return zip_path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST, help="the extension manifest")
    parser.add_argument("--package", type=Path, default=DEFAULT_PACKAGE, help="the add-on package directory")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT, help="where the zip goes")
    parser.add_argument("--no-validate", action="store_true",
                        help="skip Blender's validator (no bpy needed); zip with zipfile instead of blender_ext.py")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        zip_path = build(args.manifest.resolve(), args.package.resolve(), args.output_dir.resolve(),
                         run_validator=not args.no_validate)
    except BuildError as error:
        print(f"build.py: error: {error}", file=sys.stderr)
        return 1
    print(zip_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
