"""The server's imports follow the layers the README draws (cli → api → jobs → engine → nn / geometry), with no
package cycle and no private name imported from another module."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "server" / "iscene_server"

# Higher layers may import lower ones, never the other way round. Ranks 0 and 1 are the neutral base any layer
# may use: the version, the errors and the core count, then the file writer and the device names (which raise
# those errors).
LAYERS = {
    "__init__": 0, "errors": 0, "cores": 0,
    "atomic": 1, "devices": 1,
    "geometry": 2,
    "nn": 3,  # networks use the voxel-grid convention from geometry; geometry knows nothing of networks
    "engine": 4,
    "segment": 5,  # segmentation reads images and reports progress through the engine's helpers
    "tiny": 6, "parity": 6, "jobs": 6,
    "api": 7,
    "cli": 8,
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("iscene_server", *path.relative_to(PACKAGE).with_suffix("").parts)
        found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return found


def _imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """``(imported module, names)`` for every import of ``iscene_server`` code in one file."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("iscene_server")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.startswith("iscene_server"):
                found.append((target, [alias.name for alias in node.names]))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = _modules()


def test_every_top_level_package_has_a_layer():
    assert {_layer(module) for module, _ in MODULES} <= LAYERS.keys()


def test_imports_point_down_the_layers():
    upward = [f"{module} imports {target}" for module, path in MODULES for target, _ in _imports(module, path)
              if _layer(target) != _layer(module) and LAYERS[_layer(target)] >= LAYERS[_layer(module)]]
    assert not upward, "imports from a layer at or above the importer's own:\n" + "\n".join(upward)


def test_no_private_names_are_imported_from_other_modules():
    private = [f"{module} imports {target}.{name}" for module, path in MODULES
               for target, names in _imports(module, path) for name in names
               if name.startswith("_") and not name.startswith("__")]
    assert not private, "private names used across modules:\n" + "\n".join(private)


def test_the_checker_sees_a_wrong_way_import(tmp_path):
    """The checks above are only as good as the import reader: it must resolve relative imports."""
    path = tmp_path / "solve.py"
    path.write_text("from ...jobs.store import JobStore\nfrom .model import _private\n")
    found = _imports("iscene_server.engine.camera.solve", path)
    assert found == [("iscene_server.jobs.store", ["JobStore"]), ("iscene_server.engine.camera.model", ["_private"])]
