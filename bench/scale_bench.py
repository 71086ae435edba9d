"""Scenes per minute with 1 and 2 workers (issue 18), through the job service, in one run so the ratios compare
like with like:

    python bench/scale_bench.py                    # local workers (--devices cpu / cpu,cpu) and Ray 1 / 2 actors
    python bench/scale_bench.py --jobs 8 --no-ray

Each configuration is a fresh service on a fresh tiny package (or ``--model``): one warm-up job per worker
(worker processes, first torch calls), then ``--jobs`` generate jobs submitted at once; the throughput is those
jobs over the time from the first submit to the last finish. Local workers share this process's torch threads
(torch's default, one per core); a Ray actor has ``num_cpus=1`` and so one torch thread (Ray sets
``OMP_NUM_THREADS``). On a machine with fewer cores than workers need, two workers compete for the same cores:
the ratio shows what a second worker buys there, not what a second GPU buys.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from progressive_bench import wait
from scenes import synthetic_scene


def throughput(service, workers: int, jobs: int, params: dict, inputs: dict) -> float:
    """Scenes per minute of ``jobs`` jobs submitted at once, after one warm-up job per worker."""
    for job in [service.submit("generate", dict(params), inputs).id for _ in range(workers)]:
        wait(service, job)
    started = time.perf_counter()
    for job in [service.submit("generate", {**params, "seed": seed}, inputs).id for seed in range(jobs)]:
        wait(service, job)
    return jobs / (time.perf_counter() - started) * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model package (default: a fresh tiny package)")
    parser.add_argument("--objects", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps of each stage")
    parser.add_argument("--jobs", type=int, default=4, help="timed jobs per configuration")
    parser.add_argument("--no-ray", action="store_true", help="local workers only")
    args = parser.parse_args()

    import torch

    from iscene_server.jobs.service import JobService, ServiceSettings
    from iscene_server.tiny.package import write_tiny_package

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model = args.model or str(write_tiny_package(tmp / "iscene-tiny"))
        image, labels = synthetic_scene(args.objects, tmp)
        inputs = {"image": image.read_bytes(), "labels": labels.read_bytes()}
        params = {"steps": args.steps, "slat_steps": args.steps, "detail": "low"}

        def measure(name: str, count: int, **service_options) -> None:
            settings = ServiceSettings(model=model, data_dir=tmp / name.replace(" ", "-"), device="cpu",
                                       max_age_days=None, max_store_gb=None,
                                       **service_options.pop("settings", {}))
            service = JobService(settings, **service_options)
            service.start()
            try:
                results[name] = throughput(service, count, args.jobs, params, inputs)
            finally:
                service.stop()
            print(f"{name:>8}: {results[name]:6.2f} scenes/min", flush=True)

        measure("local 1", 1, settings={"devices": ("cpu",)})
        measure("local 2", 2, settings={"devices": ("cpu", "cpu")})
        if not args.no_ray:
            import ray

            from iscene_server.jobs.workers.remote import ray_pool

            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            try:
                for count in (1, 2):
                    workers = ray_pool("local", count, ServiceSettings(model, tmp).model_settings("cpu"))
                    measure(f"ray {count}", count, workers=workers)
            finally:
                ray.shutdown()
    print(f"machine: {os.cpu_count()} cores, {torch.get_num_threads()} torch threads here; "
          f"{'tiny package' if not args.model else args.model}, {args.objects} objects, {args.steps} + "
          f"{args.steps} steps, {args.jobs} jobs per configuration")
    for kind in ("local", "ray"):
        if f"{kind} 2" in results:
            print(f"{kind}: 2 workers / 1 worker = {results[f'{kind} 2'] / results[f'{kind} 1']:.2f}x")


if __name__ == "__main__":
    main()
