"""The job service: loads the model in the background, runs jobs one at a time on one worker thread (the GPU
is never shared), and answers status questions from the HTTP threads without ever waiting on the GPU."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import __version__, segment
from ..atomic import storage_error
from ..devices import resolve_device
from ..engine.eta import COSTS_FILE, StageCosts, device_key
from ..engine.packages.layouts import PACKAGE_ROLES
from ..engine.pipeline import ScenePipeline
from ..engine.progress import ProgressTracker, ProgressUpdate
from ..engine.refine.context import context_to_npz
from ..engine.results import read_manifest
from ..engine.seeds import random_seed
from ..engine.variants import random_variant_seeds
from ..errors import Cancelled, ISceneError, StateError, StorageError, UnavailableError
from ..segment.model import SamSegmenter, default_segment_model
from . import intake
from .files import result_file
from .publishing import Publisher, readiness
from .runner import (
    SEGMENTS_JSON,
    check_stored_params,
    cost_kind,
    default_steps,
    job_units,
    run_build,
    run_generate,
    run_refine,
    run_regenerate,
    run_segment,
    run_variants,
    scene_params,
    typical_units,
)
from .store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord, JobStore

log = logging.getLogger("iscene.jobs")

# jobs that need the I-Scene model and make a scene
SCENE_KINDS = ("generate", "regenerate", "refine", "build", "variants")
# Scene jobs derived from a finished parent job: how each runs (they all take the parent's folder)
CHILD_RUNNERS = {"regenerate": run_regenerate, "refine": run_refine, "build": run_build, "variants": run_variants}
# Jobs that take seconds while an artist waits: they run before every queued scene job (FIFO among themselves),
# and need neither the I-Scene model nor its loading to have finished.
PRIORITY_KINDS = ("segment",)


@dataclass
class ServiceSettings:
    model: str
    data_dir: Path
    device: str = "auto"
    dtype: str = "auto"
    max_queue: int = 32
    job_timeout_s: float = 3600.0
    max_age_days: float | None = 14.0
    max_store_gb: float | None = 50.0
    segment_model: str | None = None  # SAM repo id or folder; None: <model>/sam if there is one, else SAM ViT-B
    compile: str | bool = "auto"  # torch.compile of the transformer blocks: "auto" (CUDA only), True, False
    clock: Callable[[], float] = time.monotonic  # what the job time limit is measured on (tests pass a fake one)


@dataclass
class ModelStatus:
    state: str = "loading"  # loading | ready | error
    message: str = "starting"
    error: dict | None = None
    pipeline: ScenePipeline | None = field(default=None, repr=False)


class JobService:
    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.store = JobStore(settings.data_dir)
        self.model = ModelStatus()
        self._queue: deque[str] = deque()
        self._wake = threading.Condition()
        self._cancel: dict[str, threading.Event] = {}
        self._live: dict[str, tuple[ProgressUpdate, float]] = {}  # the latest update and when it came
        self.costs = StageCosts(settings.data_dir / COSTS_FILE)
        self._units: dict[str, dict[str, float]] = {}  # units of work per stage of each queued or running job
        self._running: str | None = None
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._model_ready = threading.Event()
        self.segment_model = settings.segment_model or default_segment_model(settings.model)
        self._segmenter = None  # built and loaded by the worker on the first segment job

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        for record in self.store.recover():
            self._enqueue(record)
        problem = self.store.check_writable(force=True)
        if problem is not None:  # finished jobs stay readable; new jobs are refused until it is fixed
            log.error("%s: %s (finished jobs can still be read; new jobs are refused)", problem.message, problem.hint)
        self._prune()
        for target, name in ((self._load_model, "iscene-model-loader"), (self._work, "iscene-worker")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for event in list(self._cancel.values()):
            event.set()
        self._model_ready.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        if self.model.pipeline is not None:
            self.model.pipeline.close()  # the clean-up worker processes

    def _load_model(self) -> None:
        try:
            self.model.message = f"opening model package {self.settings.model}"
            pipeline = ScenePipeline.from_pretrained(self.settings.model, self.settings.device, self.settings.dtype,
                                                     compile=self.settings.compile)
            for index, role in enumerate(PACKAGE_ROLES, 1):
                self.model.message = f"loading {role} ({index}/{len(PACKAGE_ROLES)})"
                pipeline.models.get(role)
            self.model.pipeline, self.model.state, self.model.message = pipeline, "ready", "ready"
        except ISceneError as exc:
            self.model.state, self.model.message, self.model.error = "error", exc.message, exc.to_dict()
        except Exception as exc:  # a broken install must still leave a server that explains itself
            log.exception("loading the model failed")
            self.model.state, self.model.message = "error", f"{type(exc).__name__}: {exc}"
            self.model.error = {"code": "model_load_failed", "message": self.model.message,
                                "hint": "see the server log; check --model, --device and the installation"}
        finally:
            self._model_ready.set()

    # --- requests from the API -----------------------------------------------------------------------
    def health(self) -> dict:
        pipeline = self.model.pipeline
        info = {"service": "iscene", "api": "v1", "version": __version__, "state": self.model.state,
                "message": self.model.message, "error": self.model.error, "model": self.settings.model,
                "models": pipeline.package.model_ids() if pipeline else None,
                "device": str(pipeline.device) if pipeline else self.settings.device,
                "dtype": str(pipeline.models.dtype).removeprefix("torch.") if pipeline else self.settings.dtype,
                "queue_length": len(self._queue), "running": self._running,
                "segment": {"available": segment.available(), "model": self.segment_model,
                            "loaded": self._segmenter is not None and self._segmenter.loaded}}
        problem = self.store.check_writable()
        info["storage"] = {"writable": problem is None, "error": problem.to_dict() if problem else None}
        if problem is not None:  # jobs cannot be recorded: that is the server's state, whatever the model's
            info.update(state="error", message=problem.message, error=problem.to_dict())
        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            info["vram"] = {"free_mb": free // 2 ** 20, "total_mb": total // 2 ** 20,
                            "name": torch.cuda.get_device_name()}
        else:
            info["vram"] = None
        return info

    def submit(self, kind: str, params: dict, inputs: dict[str, bytes], parent: str | None = None) -> JobRecord:
        if kind in SCENE_KINDS and self.model.state == "error":
            raise UnavailableError(f"the model could not be loaded: {self.model.message}",
                                   (self.model.error or {}).get("hint", "restart the server with a working --model"))
        if len(self._queue) >= self.settings.max_queue:
            raise UnavailableError(f"the queue is full ({len(self._queue)} jobs waiting)",
                                   "wait for queued jobs to finish, or cancel some")
        record = self.store.create(kind, params, inputs, parent)
        self._enqueue(record)
        return record

    def submit_regenerate(self, job_id: str, labels: list[int], seeds: dict[int, int] | None) -> JobRecord:
        """A child of finished scene job ``job_id`` that re-samples ``labels`` (with ``seeds``, else random ones)."""
        parent = self.require_finished(job_id, SCENE_KINDS)
        intake.check_regenerate(read_manifest(self.store.folder(job_id)), labels, job_id)
        params = {"labels": labels, "seeds": {label: (seeds or {}).get(label, random_seed()) for label in labels},
                  "parent_params": scene_params(parent.kind, parent.params)}
        return self.submit("regenerate", params, self.store.scene_inputs(job_id), parent=job_id)

    def submit_refine(self, job_id: str, transforms: dict[int, list], locked: list[int], strength: float,
                      seed: int | None, context: list[dict] | None = None) -> JobRecord:
        """A child of finished scene job ``job_id``, re-generated coherently with the edit and around the
        ``context`` objects (API entries ``{name, transform, glb}``); a bad edit or context object fails now
        (:func:`intake.check_refine`, :func:`intake.check_context`), not in the queue. The decoded context objects
        are the child's own input (its children do not inherit them)."""
        parent = self.require_finished(job_id, SCENE_KINDS)
        params = {"transforms": {str(label): matrix for label, matrix in transforms.items()}, "locked": locked,
                  "strength": strength, "seed": random_seed() if seed is None else seed,
                  "parent_params": scene_params(parent.kind, parent.params)}
        intake.check_refine(self.store.folder(job_id), params)
        objects = intake.check_context(self.store.folder(job_id), context or [])
        params["context"] = [obj.summary() for obj in objects]
        inputs = self.store.scene_inputs(job_id)
        if objects:
            inputs["context"] = context_to_npz(objects)
        return self.submit("refine", params, inputs, parent=job_id)

    def submit_build(self, job_id: str) -> JobRecord:
        """A child of finished layout job ``job_id`` that makes its meshes (stage 2) without running stage 1."""
        parent = self.require_finished(job_id, SCENE_KINDS)
        intake.check_build(read_manifest(self.store.folder(job_id)), job_id)
        return self.submit("build", {"parent_params": scene_params(parent.kind, parent.params)},
                           self.store.scene_inputs(job_id), parent=job_id)

    def submit_variants(self, job_id: str, label: int, count: int, seeds: list[int] | None) -> JobRecord:
        """A child of finished mesh scene job ``job_id`` making ``count`` candidates of instance ``label`` together,
        one per seed (``seeds``, else distinct random ones)."""
        parent = self.require_finished(job_id, SCENE_KINDS)
        intake.check_variants(read_manifest(self.store.folder(job_id)), label, count, seeds, job_id)
        params = {"label": label, "seeds": list(seeds) if seeds is not None else random_variant_seeds(count),
                  "parent_params": scene_params(parent.kind, parent.params)}
        return self.submit("variants", params, self.store.scene_inputs(job_id), parent=job_id)

    def _enqueue(self, record: JobRecord) -> None:
        self._units[record.id] = self._job_units(record)
        with self._wake:
            self._cancel[record.id] = threading.Event()
            if record.kind in PRIORITY_KINDS:  # behind the queued priority jobs, ahead of everything else
                ahead = sum(1 for job_id in self._queue if self.store.get(job_id).kind in PRIORITY_KINDS)
                self._queue.insert(ahead, record.id)
            else:
                self._queue.append(record.id)
            self._wake.notify_all()

    def status(self, job_id: str) -> dict:
        record = self.store.get(job_id)
        out = {"job_id": record.id, "kind": record.kind, "state": record.state, "parent": record.parent,
               "created": record.created, "started": record.started, "finished": record.finished,
               "error": record.error, "params": record.params, "stage": None, "step": None, "total": None,
               "progress": 1.0 if record.state == SUCCEEDED else 0.0, "eta_s": None, "queue_position": None,
               **readiness(record.events), "events": record.events}
        if record.stopped_at is not None:
            out.update(record.stopped_at)
        live = self._live.get(job_id)
        if record.state == RUNNING and live is not None:
            update = live[0]
            eta = self._running_eta(job_id)
            out.update(stage=update.stage, step=update.step, total=update.total, progress=round(update.fraction, 4),
                       eta_s=None if eta is None else round(eta, 1))
        if record.state == QUEUED:
            with self._wake:
                queue = list(self._queue)
            if job_id in queue:
                position = queue.index(job_id)
                eta = self._queued_eta(queue[:position + 1])
                out.update(queue_position=position + 1, eta_s=None if eta is None else round(eta, 1))
        return out

    # --- the ETA ---------------------------------------------------------------------------------------
    def _job_units(self, record: JobRecord) -> dict[str, float]:
        """The job's units of work per stage; a job whose inputs cannot be read (it will fail with a clear error
        when it runs) counts as one typical object."""
        try:
            parent = read_manifest(self.store.folder(record.parent)) if record.parent else None
            return job_units(record.kind, record.params, self.store.input_bytes(record.id), parent,
                             default_steps(self.model.pipeline))
        except (ISceneError, OSError, KeyError, TypeError, ValueError):
            return typical_units(record.kind)

    def _cost_key(self, kind: str) -> str | None:
        """Whose costs a job of ``kind`` runs at: the model on its device in its dtype (None while not loaded)."""
        if kind in SCENE_KINDS:
            pipeline = self.model.pipeline
            if pipeline is None:
                return None
            device, dtype = pipeline.device, str(pipeline.models.dtype).removeprefix("torch.")
            model = self.settings.model
        else:
            try:
                device = resolve_device(self.settings.device)
            except ISceneError:  # the job itself will say what is wrong with the device
                return None
            dtype, model = self.settings.dtype, self.segment_model
        name = str(device)
        if device.type == "cuda" and torch.cuda.is_available():
            name += f" {torch.cuda.get_device_name(device)}"
        return device_key(model, name, dtype)

    def _prediction(self, job_id: str, kind: str) -> dict[str, float] | None:
        key = self._cost_key(kind)
        if key is None:
            return None
        return self.costs.predict(key, cost_kind(kind, self.store.get(job_id).params), self._units.get(job_id, {}))

    def _running_eta(self, job_id: str) -> float | None:
        """The running job's ETA, counted down since its latest update."""
        live = self._live.get(job_id)
        if live is None or live[0].eta_s is None:
            return None
        return max(0.0, live[0].eta_s - (time.monotonic() - live[1]))

    def _queued_eta(self, jobs: list[str]) -> float | None:
        """Seconds until the last of ``jobs`` (queued in this order) is done: what is left of the running job,
        then the predicted work of each."""
        running = self._running
        left = 0.0 if running is None else self._running_eta(running)
        if left is None:
            return None
        for job_id in jobs:
            plan = self._prediction(job_id, self.store.get(job_id).kind)
            if plan is None:
                return None
            left += sum(plan.values())
        return left

    def cancel(self, job_id: str) -> dict:
        record = self.store.get(job_id)
        if record.done:
            raise StateError(f"job {job_id} has already {record.state}", "only queued or running jobs can be cancelled")
        with self._wake:
            if job_id in self._queue:  # never started: cancelled at once
                self._queue.remove(job_id)
                self._units.pop(job_id, None)
                self._conclude(job_id, CANCELLED)
            self._cancel.setdefault(job_id, threading.Event()).set()
        return self.status(job_id)

    @staticmethod
    def require_segmentation() -> None:
        """Segment jobs can run here, else the error that names the extra to install."""
        segment.require()

    def statuses(self) -> list[dict]:
        """The status of every job, newest first."""
        return [self.status(record.id) for record in self.store.list()]

    def scene(self, job_id: str) -> dict:
        """The scene manifest of scene job ``job_id``: the final one once it succeeded; before, and after it was
        cancelled or failed, the partial one (``"partial": true``) once its layout is ready, with ``"stopped"``
        (the state) for a job that will not go on."""
        record = self.require_kind(job_id, SCENE_KINDS)
        if record.state == SUCCEEDED:
            return read_manifest(self.store.folder(job_id))
        if not readiness(record.events)["layout_ready"]:
            hint = ("it stopped before its layout was ready; submit it again" if record.done
                    else "poll GET /v1/jobs/{id} until layout_ready is true")
            raise StateError(f"job {job_id} is {record.state} and has no layout yet", hint, code="not_ready")
        manifest = read_manifest(self.store.folder(job_id))
        if record.done:
            manifest["stopped"] = record.state
        return manifest

    def segments(self, job_id: str) -> dict:
        """``segments.json`` of finished segment job ``job_id``."""
        self.require_finished(job_id, ("segment",))
        return json.loads((self.store.folder(job_id) / SEGMENTS_JSON).read_text())

    def result_file(self, job_id: str, name: str) -> Path:
        """The path of result file ``name`` of job ``job_id``, else :class:`NotFoundError`. A running, cancelled or
        failed job's files are served too: every result file is written atomically, so one that exists is
        complete (the job's status says which are its own: ``layout_ready``, ``ready_labels``)."""
        return result_file(self.store.folder(job_id), job_id, name)

    def require_kind(self, job_id: str, kinds: tuple[str, ...] | None) -> JobRecord:
        """The record of job ``job_id``, of one of ``kinds`` when given, else :class:`StateError`."""
        record = self.store.get(job_id)
        if kinds is not None and record.kind not in kinds:
            wanted = "a scene job" if kinds == SCENE_KINDS else f"a {' or '.join(kinds)} job"
            where = "GET /v1/jobs/{id}/segments" if record.kind == "segment" else "GET /v1/jobs/{id}/scene"
            raise StateError(f"job {job_id} is a {record.kind} job, not {wanted}", f"its results are at {where}")
        return record

    def require_finished(self, job_id: str, kinds: tuple[str, ...] | None = None) -> JobRecord:
        """The record of a succeeded job (of one of ``kinds``, when given), else :class:`StateError`."""
        record = self.require_kind(job_id, kinds)
        if record.state != SUCCEEDED:
            raise StateError(f"job {job_id} is {record.state}, not succeeded",
                             "poll GET /v1/jobs/{id} until its state is succeeded")
        return record

    # --- the worker -----------------------------------------------------------------------------------
    def _work(self) -> None:
        """The worker loop. It is supervised: nothing a job does (or fails to write) ends it."""
        while not self._stopping:
            with self._wake:
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                job_id = self._queue.popleft()
            try:
                if self.store.get(job_id).kind in SCENE_KINDS:
                    self._model_ready.wait()
                if not self._stopping:
                    self._run(job_id)
            except Exception:  # a bug outside the job's own try: log it, fail the job, keep serving the queue
                log.exception("the worker caught an error around job %s", job_id)
                self._fail_unfinished(job_id)

    def _fail_unfinished(self, job_id: str) -> None:
        try:
            record = self.store.get(job_id)
        except ISceneError:
            return  # deleted meanwhile
        if not record.done:
            self._conclude(job_id, FAILED, {"code": "internal_error", "message": "the worker failed on this job",
                                            "hint": "this is a bug; the server log has the details"})

    def _conclude(self, job_id: str, state: str, error: dict | None = None) -> None:
        """Put the job in its final ``state``. When the disk cannot take the record it still holds in memory
        and is saved by the next write that succeeds; meanwhile the health says why (``store.problem``)."""
        if state != SUCCEEDED:
            self._remove_partial_files(job_id)  # before the job is seen as final
        changes = {"state": state, "finished": time.time()}
        if error is not None:
            changes["error"] = error
        live = self._live.get(job_id)
        if state != SUCCEEDED and live is not None:  # where it stopped, for the client and for the record
            update = live[0]
            changes["stopped_at"] = {"stage": update.stage, "step": update.step, "total": update.total}
        with contextlib.suppress(StorageError):  # logged by the store; saved once the disk takes writes again
            self.store.update(job_id, **changes)

    def _run(self, job_id: str) -> None:
        cancel = self._cancel.setdefault(job_id, threading.Event())
        if cancel.is_set():
            self._conclude(job_id, CANCELLED)
            return
        try:
            record = self.store.update(job_id, state=RUNNING, started=time.time())
        except StorageError as exc:  # a job that cannot be recorded as running is not run
            self._cancel.pop(job_id, None)
            self._units.pop(job_id, None)
            self._conclude(job_id, FAILED, exc.to_dict())
            return
        self._running = job_id
        self._units[job_id] = units = self._job_units(record)  # the model's own default steps are known now
        key = self._cost_key(record.kind)
        tracker = ProgressTracker(self.costs.predict(key or "", cost_kind(record.kind, record.params), units),
                                  lambda update: self._live.__setitem__(job_id, (update, time.monotonic())), cancel,
                                  self.settings.clock, time_limit_s=self.settings.job_timeout_s, predicted=True)
        try:
            if record.kind in SCENE_KINDS and self.model.pipeline is None:
                raise UnavailableError(f"the model could not be loaded: {self.model.message}",
                                       "restart the server with a working --model")
            self._execute(record, tracker, Publisher(self.store, job_id))
            self._conclude(job_id, SUCCEEDED)
        except Cancelled:
            self._conclude(job_id, CANCELLED)
        except ISceneError as exc:
            self._conclude(job_id, FAILED, exc.to_dict())
        except Exception as exc:
            self._conclude(job_id, FAILED, self._unexpected(exc))
        finally:
            self._after_job(job_id, key, cost_kind(record.kind, record.params), units, tracker)

    def _after_job(self, job_id: str, key: str | None, kind: str, units: dict, tracker: ProgressTracker) -> None:
        try:
            if key is not None:  # every stage that ran to its end, whatever became of the job
                self.costs.learn(key, kind, units, tracker.stage_seconds())
        finally:
            self._running = None
            self._live.pop(job_id, None)
            self._units.pop(job_id, None)
            self._cancel.pop(job_id, None)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give the memory of a failed or cancelled job back
            self._prune()

    def _remove_partial_files(self, job_id: str) -> None:
        """A stopped write's ``*.partial`` files are no results: remove them (best effort)."""
        try:
            for path in self.store.folder(job_id).glob("*.partial"):
                path.unlink(missing_ok=True)
        except (OSError, ISceneError):
            pass  # a read-only disk keeps them; the job is failed either way

    def _execute(self, record: JobRecord, tracker: ProgressTracker, publisher: Publisher) -> None:
        check_stored_params(record.kind, record.params)
        folder = self.store.folder(record.id)
        inputs = self.store.input_bytes(record.id)
        pipeline = self.model.pipeline
        if record.kind == "generate":
            run_generate(pipeline, folder, record.params, inputs, tracker, publisher=publisher)
        elif record.kind in CHILD_RUNNERS:
            CHILD_RUNNERS[record.kind](pipeline, folder, self.store.folder(record.parent), record.params, inputs,
                                       tracker, publisher=publisher)
        elif record.kind == "segment":
            run_segment(self._segmentation_model(), folder, record.params, inputs, tracker)
        else:
            raise ValueError(f"unknown job kind {record.kind!r}")

    def _segmentation_model(self) -> SamSegmenter:
        """The SAM segmenter, made on first use (on the worker thread; it loads its weights on its first job)."""
        self.require_segmentation()
        if self._segmenter is None:
            self._segmenter = SamSegmenter(self.segment_model, self.settings.device, self.settings.dtype)
        return self._segmenter

    def _unexpected(self, exc: Exception) -> dict:
        problem = storage_error(exc, self.store.setting) if isinstance(exc, OSError) else None
        if problem is not None:  # a result file the disk could not take
            return problem.to_dict()
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
            return {"code": "out_of_memory", "message": "the GPU ran out of memory",
                    "hint": "generate fewer objects at once (select a subset of labels), lower the detail, "
                            "or free GPU memory used by other programs"}
        log.exception("job failed")
        return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}",
                "hint": "this is a bug or a broken installation; the server log has the details"}

    def _prune(self) -> None:
        s = self.settings
        max_age = s.max_age_days * 86400 if s.max_age_days else None
        max_bytes = int(s.max_store_gb * 2 ** 30) if s.max_store_gb else None
        try:
            for job_id in self.store.prune(max_age, max_bytes):
                log.info("pruned job %s", job_id)
        except OSError as exc:  # pruning is housekeeping: it must never stop the worker or the start
            log.warning("pruning failed: %s", exc.strerror or exc)
