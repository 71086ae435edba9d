"""Time to first look: seconds from submitting a scene job to its layout, to its first finished object and to
the whole job, through the job service (a real submit, the job's own published events).

    python bench/progressive_bench.py                      # tiny package, CPU, 4 objects, 25 + 25 steps
    python bench/progressive_bench.py --objects 2 --repeats 5

The job service runs in this process on a fresh tiny package (or ``--model``); one warm-up job first starts the
worker processes and the first torch calls, as a running server has them. Each timed job is one generate of the
example render with N rectangular objects. The figures come from the job record: ``created`` (submit),
``started`` and ``finished``, and the ``t`` of the ``layout`` and first ``instance`` events (seconds since the job
started). The target (issue 15) is a layout within the first 40 % of the job's time. "stage-1 work" (preprocess,
conditioning, stage 1, occupancy decoding) and "camera" (the solve, in a worker while stage 2 samples) are the
job's own stage timings: what the layout waits for.

:class:`FirstLook` is the same measurement for a pipeline run directly (bench/gpu_check.py uses it).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from scenes import synthetic_scene

from iscene_server.engine.listener import ResultListener

TARGET_RATIO = 0.40  # layout ready within this share of the whole job
STAGE1_WORK = ("preprocess", "condition", "stage1", "decode")  # what the layout waits for, with the camera solve


@dataclass
class Look:
    """Seconds from the start (submit, or the call) to the layout, the first finished object and the end."""

    layout_s: float
    first_s: float
    done_s: float

    @property
    def ratio(self) -> float:
        return self.layout_s / self.done_s


class FirstLook(ResultListener):
    """A pipeline listener stamping when the layout and the first object were announced (``time.perf_counter``);
    made just before the pipeline call, so its start is that call's."""

    def __init__(self):
        self.started = time.perf_counter()
        self.layout_at: float | None = None
        self.first_at: float | None = None

    def layout(self, first, camera) -> None:
        self.layout_at = time.perf_counter()

    def instance(self, result) -> None:
        if self.first_at is None:
            self.first_at = time.perf_counter()

    def look(self, done_at: float) -> Look:
        if self.layout_at is None or self.first_at is None:
            raise RuntimeError("the pipeline announced no layout or no object")
        return Look(self.layout_at - self.started, self.first_at - self.started, done_at - self.started)


def job_look(status: dict, record) -> Look:
    """The figures of one finished job, from its status (events) and record (times)."""
    events = status["events"]
    layout = next(e["t"] for e in events if e["event"] == "layout")
    first = next(e["t"] for e in events if e["event"] == "instance")
    queued = record.started - record.created
    return Look(queued + layout, queued + first, record.finished - record.created)


def wait(service, job_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = service.status(job_id)
        if status["state"] in ("succeeded", "failed", "cancelled"):
            if status["state"] != "succeeded":
                raise RuntimeError(f"job {job_id} {status['state']}: {status['error']}")
            return status
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not finish in {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model package (default: a fresh tiny package)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25, help="sampling steps of each stage")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from iscene_server.jobs.service import JobService, ServiceSettings
    from iscene_server.tiny.package import write_tiny_package

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        model = args.model or str(write_tiny_package(tmp / "iscene-tiny"))
        image, labels = synthetic_scene(args.objects, tmp)
        inputs = {"image": image.read_bytes(), "labels": labels.read_bytes()}
        params = {"steps": args.steps, "slat_steps": args.steps}  # the default detail (medium, 50k faces)
        service = JobService(ServiceSettings(model=model, data_dir=tmp / "data", device=args.device,
                                             max_age_days=None, max_store_gb=None))
        service.start()
        try:
            wait(service, service.submit("generate", dict(params), inputs).id)  # warm-up
            looks, stages = [], []
            for _ in range(args.repeats):
                job = service.submit("generate", dict(params), inputs)
                looks.append(job_look(wait(service, job.id), service.store.get(job.id)))
                timings = service.scene(job.id)["timings_s"]
                stages.append((sum(timings.get(k, 0.0) for k in STAGE1_WORK), timings.get("camera", 0.0)))
        finally:
            service.stop()
    print(f"device: {args.device} ({torch.get_num_threads()} torch threads), "
          f"{'tiny package' if not args.model else args.model}, {args.objects} objects, {args.steps} + {args.steps} "
          f"steps, {args.repeats} jobs after one warm-up")
    print(f"{'job':>4} {'layout s':>9} {'first s':>8} {'done s':>7} {'layout/done':>12} {'stage-1 work s':>15} "
          f"{'camera s':>9}")
    for index, (look, (stage1, camera)) in enumerate(zip(looks, stages, strict=True), 1):
        print(f"{index:>4} {look.layout_s:9.2f} {look.first_s:8.2f} {look.done_s:7.2f} {look.ratio:12.2f} "
              f"{stage1:15.2f} {camera:9.2f}")
    ratio = statistics.median(look.ratio for look in looks)
    print(f"median layout/done {ratio:.2f} (target <= {TARGET_RATIO:.2f}): "
          f"{'met' if ratio <= TARGET_RATIO else 'NOT met'}")
    sys.exit(0 if ratio <= TARGET_RATIO else 1)


if __name__ == "__main__":
    main()
