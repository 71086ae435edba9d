"""The job service: the queue, the job store and the status of every job. Its workers (:mod:`.workers`) each
load the model on their own device in the background and run one job at a time (a GPU is never shared); each has
its own thread here, which takes the next job it can run. Status questions from the HTTP threads never wait on a
GPU."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import __version__, segment
from ..engine.eta import COSTS_FILE, StageCosts
from ..engine.progress import ProgressUpdate
from ..engine.refine.context import context_to_npz
from ..engine.results import read_manifest
from ..engine.seeds import random_seed
from ..engine.variants import random_variant_seeds
from ..errors import Cancelled, ISceneError, StateError, StorageError, UnavailableError
from ..segment.model import default_segment_model
from . import intake
from .files import result_file
from .publishing import Publisher, readiness
from .runner import SEGMENTS_JSON, cost_kind, job_units, scene_params, typical_units
from .store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord, JobStore
from .workers.base import JobRun, Worker
from .workers.execute import PRIORITY_KINDS, SCENE_KINDS, unexpected_error
from .workers.local import LocalWorker
from .workers.models import ModelSettings

log = logging.getLogger("iscene.jobs")
RECHECK_S = 1.0  # a waiting worker looks at the queue again this often (a model that finished loading, say)


@dataclass
class ServiceSettings:
    model: str
    data_dir: Path
    device: str = "auto"
    devices: tuple[str, ...] = ()  # one worker per device ("cuda:0", "cuda:1"); empty: one worker on ``device``
    dtype: str = "auto"
    max_queue: int = 32
    job_timeout_s: float = 3600.0
    max_age_days: float | None = 14.0
    max_store_gb: float | None = 50.0
    segment_model: str | None = None  # SAM repo id or folder; None: <model>/sam if there is one, else SAM ViT-B
    compile: str | bool = "auto"  # torch.compile of the transformer blocks: "auto" (CUDA only), True, False
    clock: Callable[[], float] = time.monotonic  # what the job time limit is measured on (tests pass a fake one)

    @property
    def sam_model(self) -> str:
        """The segmentation model workers load: ``segment_model``, else the package's default."""
        return self.segment_model or default_segment_model(self.model)

    def model_settings(self, device: str) -> ModelSettings:
        """What a worker on ``device`` loads."""
        return ModelSettings(self.model, device, self.dtype, self.sam_model, self.compile)


class JobService:
    """``workers``: who runs the jobs (a Ray pool, :mod:`.workers.remote`); by default one :class:`LocalWorker`
    per device of ``settings.devices`` (or the one ``settings.device``)."""

    def __init__(self, settings: ServiceSettings, workers: Sequence[Worker] | None = None):
        self.settings = settings
        self.store = JobStore(settings.data_dir)
        self.segment_model = settings.sam_model
        self.workers = list(workers) if workers is not None else self._local_workers()
        if not self.workers or len({worker.name for worker in self.workers}) != len(self.workers):
            raise ValueError("a job service needs at least one worker, each with its own name")
        self._queue: deque[str] = deque()
        self._wake = threading.Condition()
        self._cancel: dict[str, threading.Event] = {}
        self._live: dict[str, tuple[ProgressUpdate, float]] = {}  # the latest update and when it came
        self.costs = StageCosts(settings.data_dir / COSTS_FILE)
        self._units: dict[str, dict[str, float]] = {}  # units of work per stage of each queued or running job
        self._running: dict[str, str] = {}  # worker name -> the job it runs
        self._stopping = False
        self._threads: list[threading.Thread] = []

    def _local_workers(self) -> list[Worker]:
        s = self.settings
        return [LocalWorker(f"local-{index}", s.model_settings(device))
                for index, device in enumerate(s.devices or (s.device,))]

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        for record in self.store.recover():
            self._enqueue(record)
        problem = self.store.check_writable(force=True)
        if problem is not None:  # finished jobs stay readable; new jobs are refused until it is fixed
            log.error("%s: %s (finished jobs can still be read; new jobs are refused)", problem.message, problem.hint)
        self._prune()
        for worker in self.workers:
            worker.start()
            thread = threading.Thread(target=self._work, args=(worker,), name=f"iscene-worker-{worker.name}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for event in list(self._cancel.values()):
            event.set()
        with self._wake:
            self._wake.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        for worker in self.workers:
            worker.close()

    # --- the model, over all workers -----------------------------------------------------------------
    def _model_states(self) -> list[str]:
        return [worker.model_status()["state"] for worker in self.workers]

    def _primary(self) -> Worker:
        """The worker whose model the health reports: the first ready one, else the first still loading, else
        the first."""
        states = self._model_states()
        for wanted in ("ready", "loading"):
            if wanted in states:
                return self.workers[states.index(wanted)]
        return self.workers[0]  # every model failed: the first one's error

    def model_state(self) -> dict:
        """The model's state over all workers: ready when one is, loading while none is and one loads, else
        error (``{"state", "message", "error"}`` of :meth:`Worker.model_status`)."""
        return self._primary().model_status()

    # --- requests from the API -----------------------------------------------------------------------
    def health(self) -> dict:
        about, running = self._primary().describe(), dict(self._running)
        info = {"service": "iscene", "api": "v1", "version": __version__, **self.model_state(),
                "model": self.settings.model, "models": about["models"], "device": about["device"],
                "dtype": about["dtype"], "vram": about["vram"], "queue_length": len(self._queue),
                "running": next(iter(running.values()), None), "running_jobs": list(running.values()),
                "workers": [{**worker.describe(), "job": running.get(worker.name)} for worker in self.workers],
                "segment": {"available": segment.available(), "model": self.segment_model,
                            "loaded": any(worker.describe()["segment_loaded"] for worker in self.workers)}}
        problem = self.store.check_writable()
        info["storage"] = {"writable": problem is None, "error": problem.to_dict() if problem else None}
        if problem is not None:  # jobs cannot be recorded: that is the server's state, whatever the model's
            info.update(state="error", message=problem.message, error=problem.to_dict())
        return info

    def submit(self, kind: str, params: dict, inputs: dict[str, bytes], parent: str | None = None) -> JobRecord:
        model = self.model_state()
        if kind in SCENE_KINDS and model["state"] == "error":  # on every worker
            raise UnavailableError(f"the model could not be loaded: {model['message']}",
                                   (model["error"] or {}).get("hint", "restart the server with a working --model"))
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
                             self._primary().default_steps())
        except (ISceneError, OSError, KeyError, TypeError, ValueError):
            return typical_units(record.kind)

    def _prediction(self, job_id: str, worker: Worker) -> dict[str, float] | None:
        """Predicted seconds per stage of job ``job_id`` on ``worker`` (None while its costs are not known)."""
        record = self.store.get(job_id)
        key = worker.cost_key(record.kind in SCENE_KINDS)
        if key is None:
            return None
        return self.costs.predict(key, cost_kind(record.kind, record.params), self._units.get(job_id, {}))

    def _running_eta(self, job_id: str) -> float | None:
        """The running job's ETA, counted down since its latest update."""
        live = self._live.get(job_id)
        if live is None or live[0].eta_s is None:
            return None
        return max(0.0, live[0].eta_s - (time.monotonic() - live[1]))

    def _queued_eta(self, jobs: list[str]) -> float | None:
        """Seconds until the last of ``jobs`` (queued in this order) is done: each goes to the worker free first
        (what is left of its running job, then the predicted work of the queued jobs it was given)."""
        free_in, jobs_running = [], dict(self._running)  # seconds until each worker is free
        for worker in self.workers:
            running = jobs_running.get(worker.name)
            left = 0.0 if running is None else self._running_eta(running)
            if left is None:
                return None
            free_in.append(left)
        done_in = 0.0
        for job_id in jobs:
            first = min(range(len(free_in)), key=free_in.__getitem__)
            plan = self._prediction(job_id, self.workers[first])
            if plan is None:
                return None
            free_in[first] += sum(plan.values())
            done_in = free_in[first]
        return done_in

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
            if record.done:
                hint = "it stopped before its layout was ready; submit it again"
            elif record.kind == "variants":  # it publishes candidates, never a layout
                hint = ("its manifest comes when it has succeeded; meanwhile each candidate's file can be "
                        "downloaded once GET /v1/jobs/{id} lists its index in ready_variants")
            else:
                hint = "poll GET /v1/jobs/{id} until layout_ready is true"
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

    # --- the workers ----------------------------------------------------------------------------------
    def _work(self, worker: Worker) -> None:
        """One worker's loop. It is supervised: nothing a job does (or fails to write) ends it."""
        while not self._stopping:
            job_id = self._next_job(worker)
            if job_id is None:
                return
            try:
                self._run(worker, job_id)
            except Exception:  # a bug outside the job's own try: log it, fail the job, keep serving the queue
                log.exception("the worker %s caught an error around job %s", worker.name, job_id)
                self._fail_unfinished(job_id)

    def _next_job(self, worker: Worker) -> str | None:
        """The first queued job ``worker`` can take (waiting for one), taken off the queue; None once stopping."""
        with self._wake:
            while not self._stopping:
                for job_id in self._queue:
                    if self._takes(worker, self.store.get(job_id).kind):
                        self._queue.remove(job_id)
                        self._running[worker.name] = job_id
                        return job_id
                self._wake.wait(RECHECK_S)
            return None

    def _takes(self, worker: Worker, kind: str) -> bool:
        """Whether ``worker`` runs a job of ``kind`` now: a segment job always; a scene job once its model is
        ready, or when its model failed and no other worker's is ready or loading (the job then fails with the
        model's error instead of waiting for ever)."""
        if kind not in SCENE_KINDS:
            return True
        state = worker.model_status()["state"]
        return state == "ready" or (state == "error" and self.model_state()["state"] == "error")

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

    def _run(self, worker: Worker, job_id: str) -> None:
        cancel = self._cancel.setdefault(job_id, threading.Event())
        if cancel.is_set():
            self._running.pop(worker.name, None)
            self._conclude(job_id, CANCELLED)
            return
        try:
            record = self.store.update(job_id, state=RUNNING, started=time.time())
        except StorageError as exc:  # a job that cannot be recorded as running is not run
            self._running.pop(worker.name, None)
            self._cancel.pop(job_id, None)
            self._units.pop(job_id, None)
            self._conclude(job_id, FAILED, exc.to_dict())
            return
        self._units[job_id] = units = self._job_units(record)  # the model's own default steps are known now
        key, kind = worker.cost_key(record.kind in SCENE_KINDS), cost_kind(record.kind, record.params)
        job = None
        try:
            job = JobRun(job_id, record.kind, record.params, self.store.input_bytes(job_id),
                         self.store.folder(job_id), self.store.folder(record.parent) if record.parent else None,
                         self.costs.predict(key or "", kind, units),
                         lambda update: self._live.__setitem__(job_id, (update, time.monotonic())), cancel,
                         Publisher(self.store, job_id), self.settings.job_timeout_s, self.settings.clock)
            worker.run(job)
            self._conclude(job_id, SUCCEEDED)
        except Cancelled:
            self._conclude(job_id, CANCELLED)
        except ISceneError as exc:
            self._conclude(job_id, FAILED, exc.to_dict())
        except Exception as exc:
            self._conclude(job_id, FAILED, unexpected_error(exc, self.store.setting))
        finally:
            self._after_job(worker, job_id, key, kind, units, job.stage_seconds if job else {})

    def _after_job(self, worker: Worker, job_id: str, key: str | None, kind: str, units: dict,
                   stage_seconds: dict[str, float]) -> None:
        try:
            if key is not None:  # every stage that ran to its end, whatever became of the job
                self.costs.learn(key, kind, units, stage_seconds)
        finally:
            self._running.pop(worker.name, None)
            self._live.pop(job_id, None)
            self._units.pop(job_id, None)
            self._cancel.pop(job_id, None)
            self._prune()

    def _remove_partial_files(self, job_id: str) -> None:
        """A stopped write's ``*.partial`` files are no results: remove them (best effort)."""
        try:
            for path in self.store.folder(job_id).glob("*.partial"):
                path.unlink(missing_ok=True)
        except (OSError, ISceneError):
            pass  # a read-only disk keeps them; the job is failed either way

    def _prune(self) -> None:
        s = self.settings
        max_age = s.max_age_days * 86400 if s.max_age_days else None
        max_bytes = int(s.max_store_gb * 2 ** 30) if s.max_store_gb else None
        try:
            for job_id in self.store.prune(max_age, max_bytes):
                log.info("pruned job %s", job_id)
        except OSError as exc:  # pruning is housekeeping: it must never stop the worker or the start
            log.warning("pruning failed: %s", exc.strerror or exc)
