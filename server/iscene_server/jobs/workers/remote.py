"""Workers on a Ray cluster (``serve --ray``): the head keeps the HTTP API, the queue and the job store; each
:class:`RayWorker` drives one :class:`.actor.JobActor` (one GPU each on a GPU cluster, one CPU otherwise).

A job's inputs (and a child job's parent files) travel to the actor through Ray's object store; the head polls
the actor about four times a second, writes each published result's files into the job's folder (atomically)
before publishing its event, forwards the progress, and sends a cancel on. An actor or node that is lost fails
its job with ``worker_lost`` and is replaced by a fresh actor, so the queue goes on. Ray is imported only here,
and only when a pool is made: a server without ``--ray`` never needs it."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
import time
from pathlib import Path

from ... import __version__
from ...engine.progress import ProgressUpdate
from ...errors import Cancelled, ISceneError, NotInstalledError
from ..runner import default_steps
from .actor import JobActor, write_tree
from .base import JobRun, Worker
from .models import ModelSettings

log = logging.getLogger("iscene.jobs")

POLL_S = 0.25  # how often the head asks a running actor for progress and results
STATUS_POLL_S = 0.5  # how often the head asks a loading actor how far it got
STATUS_REFRESH_S = 5.0  # how often it asks a loaded one (its GPU memory, for /v1/health)
ACTOR_CONCURRENCY = 4  # run + poll + cancel + status at once
INSTALL_HINT = 'install the cluster extra: pip install "iscene-server[cluster]"'


def require_ray():
    """The ``ray`` module, or the error that says how to install it."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise NotInstalledError("--ray needs Ray, which is not installed", INSTALL_HINT) from None


def read_tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): a parent job's files, for a child job's actor."""
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file() and not path.name.endswith(".partial")}


class RayWorker(Worker):
    """The head's side of one actor. ``resources`` are the actor's Ray options (``{"num_gpus": 1}`` or
    ``{"num_cpus": 1}``)."""

    def __init__(self, name: str, settings: ModelSettings, resources: dict):
        self.name = name
        self.settings = settings
        self.resources = dict(resources)
        self._ray = require_ray()
        self._status: dict = {"state": "loading", "message": "not started", "error": None}
        self._loaded = threading.Event()
        self._closed = False
        self._lock = threading.Lock()
        self.actor = None

    # --- life cycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start a fresh actor (it loads the models) and the thread that keeps its status current."""
        with self._lock:
            self._new_actor()

    def _new_actor(self) -> None:
        """Called with :attr:`_lock` held."""
        remote_class = self._ray.remote(JobActor)
        self.actor = actor = remote_class.options(max_concurrency=ACTOR_CONCURRENCY,
                                                  **self.resources).remote(self.settings)
        self._loaded.clear()
        self._status = {"state": "loading", "error": None,
                        "message": f"waiting for the Ray cluster to start the actor ({self._needs()})"}
        threading.Thread(target=self._follow, args=(actor,), name=f"iscene-{self.name}-status", daemon=True).start()

    def _needs(self) -> str:
        return ", ".join(f"{amount} {name.removeprefix('num_').upper()}" for name, amount in self.resources.items())

    def _follow(self, actor) -> None:
        """Keep :attr:`_status` current while ``actor`` is this worker's: often while it loads, then now and then
        (its GPU memory). An actor lost while idle is replaced here (one lost in a job, by :meth:`run`); one that
        never started (its node cannot import the server, say) is an error state, not replaced again and again."""
        reported = False
        while not self._closed and actor is self.actor:
            try:
                status = self._checked(self._ray.get(actor.status.remote()))
            except self._ray.exceptions.RayActorError as exc:
                if reported:
                    self._replace_lost(actor, exc)
                else:
                    self._failed_to_start(actor, exc)
                return
            reported = True
            with self._lock:
                if actor is not self.actor:
                    return
                self._status = status
            if status["state"] != "loading":
                self._loaded.set()
            time.sleep(STATUS_POLL_S if status["state"] == "loading" else STATUS_REFRESH_S)

    def _failed_to_start(self, actor, exc: Exception) -> None:
        log.error("the Ray actor of %s did not start: %s", self.name, exc)
        message = f"the Ray worker {self.name} could not start its actor"
        with self._lock:
            if actor is self.actor:
                self._status = {"state": "error", "message": message, "error": {
                    "code": "worker_lost", "message": message,
                    "hint": "install the same iscene-server (and its dependencies) on every machine of the Ray "
                            "cluster; the Ray logs (ray logs, or /tmp/ray/session_latest/logs) say what failed"}}
        self._loaded.set()

    @staticmethod
    def _checked(status: dict) -> dict:
        """The actor's status, or an error state when it runs another iscene-server version than the head."""
        if status["version"] == __version__:
            return status
        message = (f"the Ray worker runs iscene-server {status['version']}, the head {__version__}: results could "
                   f"differ")
        return {**status, "state": "error", "message": message,
                "error": {"code": "version_mismatch", "message": message,
                          "hint": f"install iscene-server {__version__} on every machine of the Ray cluster"}}

    def wait_loaded(self, timeout: float | None = None) -> bool:
        return self._loaded.wait(timeout)

    def close(self) -> None:
        self._closed = True
        self._loaded.set()
        actor, self.actor = self.actor, None
        if actor is not None:
            self._ray.kill(actor, no_restart=True)

    # --- what the service asks ----------------------------------------------------------------------------
    def model_status(self) -> dict:
        status = self._status
        return {"state": status["state"], "message": status["message"], "error": status["error"]}

    def describe(self) -> dict:
        status = self._status
        return {"name": self.name, "device": status.get("device", self.settings.device),
                "dtype": status.get("dtype", self.settings.dtype), **self.model_status(),
                "vram": status.get("vram"), "models": status.get("models"),
                "segment_loaded": bool(status.get("segment_loaded"))}

    def cost_key(self, scene: bool) -> str | None:
        if self._status["state"] == "error":
            return None
        return self._status.get("cost_keys", {}).get("scene" if scene else "segment")

    def default_steps(self) -> tuple[int, int]:
        steps = self._status.get("default_steps")
        return tuple(steps) if steps else default_steps(None)

    # --- a job ---------------------------------------------------------------------------------------
    def run(self, job: JobRun) -> None:
        ray, actor = self._ray, self.actor
        parent = ray.put(read_tree(job.parent_folder)) if job.parent_folder is not None else None
        try:
            done = actor.run.remote(job.job_id, job.kind, job.params, ray.put(job.inputs), parent, job.plan,
                                    job.time_limit_s)
            while True:
                finished, _ = ray.wait([done], timeout=POLL_S)
                if job.cancel.is_set():
                    actor.cancel.remote(job.job_id)
                self._apply(job, ray.get(actor.poll.remote(job.job_id)))
                if finished:
                    break
            result = ray.get(done)
        except ray.exceptions.RayActorError as exc:
            raise self._replace_lost(actor, exc) from None
        job.stage_seconds = result["stage_seconds"]
        self._apply(job, result)
        write_tree(job.folder, result["files"])
        if result["cancelled"]:
            raise Cancelled()
        if result["error"] is not None:
            error = result["error"]
            raise ISceneError(error["message"], error["hint"], code=error["code"])

    @staticmethod
    def _apply(job: JobRun, polled: dict) -> None:
        """Land what a poll brought: each event's files in the job's folder, then the event; then the progress."""
        for event in polled["events"]:
            write_tree(job.folder, event["files"])
            job.publisher.event(event["name"], **event["fields"])
        if polled["update"] is not None:
            job.on_update(ProgressUpdate(**polled["update"]))

    def _replace_lost(self, lost, exc: Exception) -> ISceneError:
        """A fresh actor in place of ``lost`` (it loads the models again), unless it was replaced already or this
        worker is closing; the error of the job it ran."""
        with self._lock:
            if lost is self.actor and not self._closed:
                log.warning("Ray worker %s was lost (%s); starting a fresh actor", self.name, exc)
                self._new_actor()
        return ISceneError(f"the Ray worker {self.name} stopped while running this job: its actor or node was lost",
                           "submit the job again (Retry); if it happens again, check that worker machine (memory, "
                           "GPU, network) with 'ray status'", code="worker_lost")


def connect(address: str):
    """Connect this process to Ray: ``auto`` (the cluster this machine belongs to), ``ray://host:port`` (Ray
    Client) or ``local`` (a Ray started in this process, for one box and tests). A process already connected
    stays as it is."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    try:
        if address == "local":
            ray.init(include_dashboard=False)
        else:
            ray.init(address=address)
    except ConnectionError as exc:
        raise ISceneError(f"cannot connect to the Ray cluster at {address}: {exc}",
                          "start the head with 'ray start --head' (and the workers with 'ray start --address=...'), "
                          "or pass --ray ray://host:10001 for a remote head", code="bad_input") from None
    return ray


def actor_plan(address: str, gpus: int, workers: int | None, device: str) -> tuple[int, dict, str]:
    """For a Ray cluster with ``gpus`` GPUs: how many actors, the Ray resources each asks for and the device its
    models run on. One GPU per actor where the cluster has GPUs (``--device cpu``: one CPU each), one CPU per actor
    on a cluster without. ``workers`` None means one per GPU."""
    if device.startswith("cuda:"):
        raise ISceneError(f"--device {device} names one GPU of this machine, but with --ray each worker runs on "
                          "the GPU Ray gives its actor",
                          "leave --device at auto (or pass cuda); choose the machines' GPUs with "
                          "'ray start --num-gpus' or CUDA_VISIBLE_DEVICES there", code="bad_input")
    on_gpus = gpus > 0 and device != "cpu"
    if device == "cuda" and not gpus:
        raise ISceneError(f"--device cuda was given but the Ray cluster at {address} has no GPU",
                          "start the GPU machines with 'ray start --address=<head>:6379', or leave --device at auto to "
                          "run the workers on CPUs", code="bad_input")
    if workers is None:
        if not gpus:
            raise ISceneError(f"the Ray cluster at {address} has no GPU to run one worker per GPU on",
                              "start the GPU machines with 'ray start --address=<head>:6379', or pass "
                              "--ray-workers N to run N workers on CPUs", code="bad_input")
        if not on_gpus:
            raise ISceneError("--device cpu runs the Ray workers on CPUs, so 'one worker per GPU' does not apply",
                              "pass --ray-workers N for N workers on CPUs", code="bad_input")
        workers = gpus
    if workers < 1:
        raise ISceneError("--ray-workers must be at least 1", "pass --ray-workers 1 or more", code="bad_input")
    if on_gpus and workers > gpus:
        log.warning("%d Ray workers for %d GPUs: %d wait (shown as loading) until a GPU is free or joins the cluster",
                    workers, gpus, workers - gpus)
    return workers, ({"num_gpus": 1} if on_gpus else {"num_cpus": 1}), (device if on_gpus else "cpu")


def ray_pool(address: str, workers: int | None, settings: ModelSettings) -> list[RayWorker]:
    """Connect to Ray and make the workers (:func:`actor_plan`: how many, on what)."""
    ray = connect(address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    count, resources, device = actor_plan(address, gpus, workers, settings.device)
    settings = dataclasses.replace(settings, device=device)
    return [RayWorker(f"ray-{index}", settings, resources) for index in range(count)]
