"""The CPU tail of a scene job, serial vs pooled, side by side in one run; floaters by csgraph vs union-find.

    python bench/cleanup_bench.py [--objects 4] [--faces 1300000]

1. The tiny CPU package (written to a temporary folder), one scene of N objects generated and exported twice:
   clean-ups inline one after another (``cleanup_workers=0``, the serial path) and in the worker pool.
   ``tail_s`` is the end of export minus ``SceneResult.gpu_finished_at`` (the end of the last decode).
2. Floater components on a ~1.3M-face mesh: ``scipy.sparse.csgraph`` (today's) vs the parallel torch
   union-find it replaced (kept here as the baseline), same components asserted.

Heavy imports live inside the functions: pool workers import this file as their main module.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"


def torch_union_find(faces, vertex_count: int):
    """The floater components before scipy: hook each root onto the smallest neighbouring root, then
    compress paths fully, until no face edge joins two roots."""
    import numpy as np
    import torch

    parent = torch.arange(vertex_count, dtype=torch.int64)
    tri = torch.from_numpy(np.asarray(faces, dtype=np.int64))
    a, b = torch.cat([tri[:, 0], tri[:, 1]]), torch.cat([tri[:, 1], tri[:, 2]])
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not bool(differ.any()):
            return parent.numpy()
        low, high = torch.minimum(ra, rb)[differ], torch.maximum(ra, rb)[differ]
        parent.scatter_reduce_(0, high, low, reduce="amin")
        while True:
            jumped = parent[parent]
            if torch.equal(jumped, parent):
                break
            parent = jumped
        a, b = a[differ], b[differ]


def sphere_with_floaters(faces: int):
    """A closed noisy sphere of about ``faces`` triangles plus 20 small floaters, faces shuffled."""
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
    from test_geometry_export import merge, uv_sphere

    rings = round((faces / 2) ** 0.5 / 1.4)
    body = uv_sphere(rings, int(faces / 2 / rings), noise=0.01)
    floaters = [uv_sphere(3, 4, centre=(0.4, 0.4, 0.1 * k - 0.5), radius=0.01) for k in range(10)]
    vertices, tri = merge(body, *floaters)
    return vertices, tri[np.random.default_rng(1).permutation(len(tri))]


def components_bench(faces: int, repeats: int = 3) -> dict:
    import numpy as np

    from iscene_server.geometry.postprocess import vertex_components

    vertices, tri = sphere_with_floaters(faces)
    timings = {}
    for name, function in (("csgraph", vertex_components), ("union_find", torch_union_find)):
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            result = function(tri, len(vertices))
            best = min(best, time.perf_counter() - started)
        timings[name] = (best, result)
    assert np.array_equal(timings["csgraph"][1], timings["union_find"][1]), "components differ"
    return {"faces": len(tri), "csgraph_s": timings["csgraph"][0], "union_find_s": timings["union_find"][0]}


def scene_bench(objects: int) -> list[dict]:
    from iscene_server.engine.pipeline import GenerationRequest, ScenePipeline
    from iscene_server.engine.preprocess import load_scene
    from iscene_server.engine.results import SceneWriter
    from iscene_server.tiny.package import write_tiny_package

    scene = load_scene(EXAMPLES / "living_room.png", EXAMPLES / "living_room_labels.png")
    labels = scene.label_ids[:objects]
    if len(labels) < objects:
        raise SystemExit(f"the example scene has only {len(labels)} objects")
    request = GenerationRequest(steps=1, slat_steps=1, target_faces=4000, labels=labels)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        package = write_tiny_package(Path(folder) / "tiny")
        first = ScenePipeline.from_pretrained(str(package), device="cpu")
        for name, workers in (("serial (inline)", 0), ("pooled", None)):
            with ScenePipeline(first.models, cleanup_workers=workers) as pipeline:
                started = time.perf_counter()
                result = pipeline.generate(scene, request)
                header = {"models": pipeline.package.model_ids(), "device": "cpu", "dtype": "float32", "inputs": {}}
                SceneWriter(Path(folder) / name.split()[0], header).write_scene(result)
                ended = time.perf_counter()
                rows.append({"path": name, "workers": pipeline.workers.workers, "wall_s": ended - started,
                             "tail_s": ended - result.gpu_finished_at,
                             "cleanup_per_object_s": result.timings["mesh_cleanup"] / objects,
                             "faces": [i.extracted_faces for i in result.instances]})
    return rows


def main() -> None:
    import subprocess

    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--faces", type=int, default=1_300_000)
    args = parser.parse_args()
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")),
                 platform.processor())
    print(f"machine: {model}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")

    rows = scene_bench(args.objects)
    print(f"\n| path ({args.objects} objects, tiny package) | workers | tail_s | wall_s | clean-up per object s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['path']} | {row['workers']} | {row['tail_s']:.2f} | {row['wall_s']:.1f} | "
              f"{row['cleanup_per_object_s']:.2f} |")
    print(f"extracted faces per object: {rows[0]['faces']}")

    comp = components_bench(args.faces)
    print(f"\n| floater components ({comp['faces']} faces) | s |\n|---|---|")
    print(f"| scipy.sparse.csgraph | {comp['csgraph_s']:.3f} |\n| torch union-find (before) | "
          f"{comp['union_find_s']:.3f} |\n| speed-up | {comp['union_find_s'] / comp['csgraph_s']:.1f}x |")


if __name__ == "__main__":
    main()
