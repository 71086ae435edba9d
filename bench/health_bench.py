"""/v1/health latency while big submits arrive and the worker runs (issue 12, finding 9).

A real server with the tiny package; ``--clients`` threads submit a ``--megapixels`` scene (image and label
map) again and again while one client polls /v1/health. Prints health p50/p99/max, how many submits were
accepted (202) or told to retry (503 + Retry-After), and the server's peak memory.

    python bench/health_bench.py --megapixels 12 --clients 3 --seconds 20
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from server_process import ServerProcess

from iscene_server.tiny.package import write_tiny_package

FAST = {"steps": 2, "slat_steps": 2, "detail": "low", "labels": [1]}


def big_scene(megapixels: float) -> tuple[bytes, bytes]:
    width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
    height = width * 3 // 4
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)  # noise: PNG cannot shrink it
    ids = np.zeros((height, width), np.uint8)
    ids[height // 4: height // 2, width // 4: width // 2] = 1
    encoded = []
    for array in (rgb, ids):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
        encoded.append(buffer.getvalue())
    return encoded[0], encoded[1]


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megapixels", type=float, default=12)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--max-decodes", type=int, default=2)
    args = parser.parse_args()
    scene = big_scene(args.megapixels)
    root = Path(tempfile.mkdtemp())
    package = write_tiny_package(root / "tiny")
    server = ServerProcess(package, root / "data", "--max-decodes", str(args.max_decodes), "--max-queue", "1000",
                           "--max-upload-mb", "512").start()
    stop = threading.Event()
    outcomes: list[int] = []

    def submitter():
        while not stop.is_set():
            outcomes.append(server.submit(*scene, FAST)[0])

    try:
        threads = [threading.Thread(target=submitter) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        latencies = []
        deadline = time.time() + args.seconds
        while time.time() < deadline:
            started = time.perf_counter()
            server.get("/v1/health")
            latencies.append((time.perf_counter() - started) * 1000)
            time.sleep(0.02)
        stop.set()
        for thread in threads:
            thread.join(120)
        latencies.sort()
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        print(f"{args.megapixels:g} MP scenes, {args.clients} submitting clients, --max-decodes {args.max_decodes}, "
              f"{args.seconds:g} s")
        print(f"health: n={len(latencies)} p50={statistics.median(latencies):.1f} ms p99={p99:.1f} ms "
              f"max={latencies[-1]:.1f} ms")
        accepted, busy = outcomes.count(202), outcomes.count(503)
        print(f"submits: 202={accepted} 503={busy} other={len(outcomes) - accepted - busy}; "
              f"server peak RSS {peak_rss_mb(server.proc.pid):.0f} MB")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
