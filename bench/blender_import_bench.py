"""Import speed in Blender: building meshes directly (the add-on's importer) versus the glTF importer.

    python bench/blender_import_bench.py GLB [GLB ...]

Needs the ``bpy`` wheel. Loads the add-on's importer module from ``iscene_blender/`` without installing it.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import bpy

ROOT = Path(__file__).parents[1]


def load_addon_package():
    spec = importlib.util.spec_from_file_location("iscene_blender", ROOT / "iscene_blender" / "__init__.py",
                                                  submodule_search_locations=[str(ROOT / "iscene_blender")])
    package = importlib.util.module_from_spec(spec)
    sys.modules["iscene_blender"] = package
    spec.loader.exec_module(package)
    return importlib.import_module("iscene_blender.importer")


def timed(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        bpy.ops.wm.read_homefile(use_empty=True)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(paths: list[str]) -> None:
    importer = load_addon_package()
    files = [Path(p).read_bytes() for p in paths]
    faces = 0
    for data in files:
        mesh, *_ = importer.build_mesh("probe", data, 1.0)
        faces += len(mesh.polygons)
    direct = timed(lambda: [importer.build_mesh(f"m{i}", data, 1.0) for i, data in enumerate(files)])
    with tempfile.TemporaryDirectory():
        gltf = timed(lambda: [bpy.ops.import_scene.gltf(filepath=p) for p in paths])
    print(f"{len(files)} GLBs, {faces} faces in all; median of 3 on {bpy.app.version_string}:")
    print(f"  direct (numpy + foreach_set): {direct:.3f} s")
    print(f"  glTF importer:                {gltf:.3f} s  ({gltf / direct:.1f}x)")


if __name__ == "__main__":
    main(sys.argv[1:])
