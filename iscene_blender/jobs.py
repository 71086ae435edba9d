"""Jobs as the add-on sees them, and the worker threads that run them. Nothing here touches ``bpy``.

A worker submits the job, polls its status, downloads the result into the job's folder, and posts
:class:`Event` values to the shared queue; the main-thread pump (:mod:`.pump`) applies them to Blender.

Scene jobs are progressive: while one runs, the worker watches the status's ``layout_ready`` and ``ready_labels``.
A job that makes a new scene posts a ``layout`` event (the partial manifest and the proxy meshes) as soon as the
layout is served; every job that changes a scene posts an ``objects`` event with the final meshes of the labels
that finished since the last poll. ``finished`` brings the final manifest and whatever was not downloaded yet.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .client import Client, ClientError

ACTIVE = ("waiting", "submitting", "queued", "running", "downloading", "importing")
SEGMENT_LABELS = "labels.png"  # the label map a segment job makes
SCENE_JSON = "scene.json"  # the manifest, kept next to the downloaded meshes
SCENE_KINDS = ("generate", "regenerate", "refine", "import", "build", "variants")
NEW_SCENE_KINDS = ("generate", "import")  # jobs that make a new scene: they import the layout as proxies
PROGRESSIVE_KINDS = ("generate", "import", "regenerate", "refine", "build")  # objects land as they finish
CHAINED_KINDS = ("regenerate", "refine", "build")  # landed, they are their scene's latest job (its next parent)
DERIVED_KINDS = CHAINED_KINDS + ("variants",)  # they derive from their scene's latest job
RETRY_LATER = (404, 409)  # a progressive download the server does not serve yet: asked again at the next poll
LOST_CONNECTION_S = 15.0  # a job whose server stays unreachable this long is failed, not waited on forever


@dataclass
class Event:
    kind: str  # update | layout | objects | finished | failed | cancelled | health | server_jobs
    key: str = ""
    data: dict = field(default_factory=dict)


@dataclass
class Job:
    kind: str  # generate | regenerate | refine | build | variants | segment | import (download a server job again)
    title: str
    scene: str  # the Blender scene to import into
    folder: Path
    params: dict = field(default_factory=dict)
    inputs: dict[str, bytes] = field(default_factory=dict, repr=False)  # generate, segment: uploads (for Retry)
    parent: str | None = None  # regenerate / refine / build / variants: the server job they derive from;
    # import: the job to fetch
    root: str | None = None  # the scene id (provenance) whose objects they update (generate: once imported)
    targets: dict[int, list[str]] = field(default_factory=dict)  # label -> the object ids its result lands on
    image: str | None = None  # generate / segment: the image datablock the job is for
    names: dict[int, str] = field(default_factory=dict)  # generate / import: label -> object name
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    server_id: str | None = None
    state: str = "submitting"
    stage: str = ""
    step: int = 0
    total: int = 0
    progress: float = 0.0
    eta_s: float | None = None
    queue_position: int | None = None
    message: str = ""
    hint: str = ""
    created: float = field(default_factory=time.time)
    finished: float | None = None
    landed: bool = False  # its progressive results changed Blender data not yet pushed as an undo step
    after: str = ""  # waiting: the title of the job of its scene it waits for
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE


class Runtime:
    """Everything the add-on knows at run time: jobs, server health, the event queue (never saved)."""

    def __init__(self):
        self.jobs: dict[str, Job] = {}
        self.events: queue.Queue[Event] = queue.Queue()
        self.health: dict | None = None
        self.health_error: ClientError | None = None
        self.health_checked = 0.0
        self._health_thread: threading.Thread | None = None
        self.threads: list[threading.Thread] = []
        self._held: dict[str, tuple[Client, float]] = {}  # waiting jobs: what starts them

    def start(self, job: Job, client: Client, poll_s: float) -> Job:
        """Hand ``job`` to a worker thread; a job that derives from its scene's latest job while another job is
        changing that scene waits (state ``waiting``) until :meth:`release` starts it from that job's result, so
        that neither job's change is lost on the server."""
        self.jobs[job.key] = job
        ahead = self.ahead_of(job)
        if ahead is None:
            self._run(job, client, poll_s)
        else:
            job.state, job.after = "waiting", ahead.title
            self._held[job.key] = (client, poll_s)
        return job

    def ahead_of(self, job: Job) -> Job | None:
        """The last job started before ``job`` that is still changing ``job``'s scene (None for a job that does
        not derive from its scene's latest job)."""
        if job.kind not in DERIVED_KINDS or not job.root:
            return None
        ahead = None
        for other in self.jobs.values():
            if other is job:
                return ahead
            if other.active and other.root == job.root and other.kind in CHAINED_KINDS:
                ahead = other
        return ahead

    def release(self, latest_parent: Callable[[Job], str]) -> list[Job]:
        """Start the waiting jobs nothing is ahead of any more, each from ``latest_parent(job)`` (its scene's
        latest job now; raises ``LookupError`` with the reason when there is none), and end those cancelled
        while waiting. Returns the jobs whose state changed."""
        changed = []
        for key in list(self._held):
            job = self.jobs[key]
            if job.cancel.is_set():
                job.state, job.finished, job.message = "cancelled", time.time(), "cancelled before it was sent"
            elif (ahead := self.ahead_of(job)) is not None:
                job.after = ahead.title
                continue
            else:
                client, poll_s = self._held[key]
                try:
                    job.parent = latest_parent(job)
                except LookupError as err:
                    job.state, job.finished, job.message, job.hint = "failed", time.time(), str(err), ""
                else:
                    job.state, job.after = "submitting", ""
                    self._run(job, client, poll_s)
            del self._held[key]
            changed.append(job)
        return changed

    def _run(self, job: Job, client: Client, poll_s: float) -> None:
        thread = threading.Thread(target=run_job, args=(job, client, self.events, poll_s), daemon=True,
                                  name=f"iscene-job-{job.key}")
        self.threads.append(thread)
        thread.start()

    def list_server_jobs(self, client: Client) -> None:
        """Fetch the server's job list on a thread; it arrives as a ``server_jobs`` event."""
        def ask():
            try:
                self.events.put(Event("server_jobs", data={"jobs": client.list_jobs()}))
            except ClientError as err:
                self.events.put(Event("server_jobs", data={"error": err}))

        thread = threading.Thread(target=ask, daemon=True, name="iscene-job-list")
        self.threads.append(thread)
        thread.start()

    def check_health(self, client: Client) -> None:
        """Ask the server for its health and check the token, on a thread (one at a time); the answer arrives as an
        event."""
        if self._health_thread is not None and self._health_thread.is_alive():
            return
        self.health_checked = time.time()

        def ask():
            try:
                health = client.health()
                client.check_token()  # health is public; the job routes tell whether our token is accepted
                self.events.put(Event("health", data={"health": health}))
            except ClientError as err:
                self.events.put(Event("health", data={"error": err}))

        self._health_thread = threading.Thread(target=ask, daemon=True, name="iscene-health")
        self._health_thread.start()

    def any_active(self) -> bool:
        return any(job.active for job in self.jobs.values())

    def wait(self, timeout: float = 30.0) -> None:
        """Block until every worker (jobs, job lists) has posted its last event (tests, and scripts that need the
        results now)."""
        for thread in list(self.threads):
            thread.join(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        for job in self.jobs.values():
            job.cancel.set()
        self._held.clear()
        for thread in self.threads:
            thread.join(timeout)
        self.threads.clear()


def _post(events: queue.Queue, kind: str, job: Job, **data) -> None:
    events.put(Event(kind, job.key, data))


def _submit(job: Job, client: Client) -> dict:
    if job.kind == "import":
        return {"job_id": job.parent, "state": "downloading"}
    if job.kind == "generate":
        return client.submit(job.inputs["image"], job.inputs["labels"], job.params)
    if job.kind == "regenerate":
        return client.regenerate(job.parent, job.params["labels"], job.params.get("seeds"))
    if job.kind == "refine":
        return client.refine(job.parent, job.params["transforms"], job.params["locked"], job.params["strength"],
                             job.params.get("context"))
    if job.kind == "build":
        return client.build(job.parent)
    if job.kind == "variants":
        return client.variants(job.parent, job.params["label"], job.params["count"], job.params.get("seeds"))
    if job.kind == "segment":
        return client.segment(job.inputs["image"], job.params["prompts"])
    raise ValueError(f"unknown job kind {job.kind!r}")


@dataclass
class Fetched:
    """What a worker has downloaded of its running job."""

    layout: bool = False  # the layout event was posted (or this job's kind shows no layout)
    labels: set[int] = field(default_factory=set)  # labels whose final files were posted
    names: set[str] = field(default_factory=set)  # files downloaded so far


def _download(job: Job, client: Client, names: list[str], fetched: Fetched) -> dict[str, bytes]:
    files = {}
    for name in names:
        files[name] = client.file(job.server_id, name)
        (job.folder / name).write_bytes(files[name])
    fetched.names |= set(files)
    return files


def fetch_progress(job: Job, client: Client, events: queue.Queue, status: dict, fetched: Fetched) -> None:
    """Post what became ready since the last poll: the layout (new scenes), then each finished object."""
    if job.kind not in PROGRESSIVE_KINDS or not status.get("layout_ready"):
        return
    ready = set(status.get("ready_labels") or []) - fetched.labels
    if fetched.layout and not ready:
        return
    try:
        manifest = client.scene(job.server_id)
        job.folder.mkdir(parents=True, exist_ok=True)
        entries = [e for e in manifest["instances"] if e["label"] in ready and e.get("file")]
        if not fetched.layout and job.kind in NEW_SCENE_KINDS:
            layout = as_of(manifest, ready)
            proxies = [e["proxy"] for e in layout["instances"] if e.get("proxy") and not e.get("file")]
            files = _download(job, client, proxies + [e["file"] for e in entries], fetched)
            _post(events, "layout", job, manifest=layout, files=files)
        else:
            files = _download(job, client, [e["file"] for e in entries if wanted(job, manifest, e)], fetched)
            if files:
                _post(events, "objects", job, manifest=manifest, files=files)
    except ClientError as err:
        if err.kind in ("unreachable", "timeout") or err.status in RETRY_LATER:
            return  # asked again at the next poll
        raise
    fetched.layout = True
    fetched.labels |= ready


def as_of(manifest: dict, ready: set[int]) -> dict:
    """``manifest`` as the status that listed ``ready`` saw it: an object that finished between that status and the
    manifest shows its proxy until its own ``objects`` event brings its mesh (so the layout lands every object)."""
    entries = [e if e["label"] in ready else {**e, "file": None} for e in manifest["instances"]]
    return {**manifest, "instances": entries}


def _stop(job: Job, client: Client, events: queue.Queue, fetched: Fetched) -> None:
    """Cancel on the server, take what it finished (a cancelled job keeps it), and say so."""
    with contextlib.suppress(ClientError):  # already finished or unreachable: nothing left to stop or take
        client.cancel(job.server_id)
        if fetched.layout:
            fetch_progress(job, client, events, client.status(job.server_id), fetched)
    _post(events, "cancelled", job)


def _wait(job: Job, client: Client, events: queue.Queue, poll_s: float, fetched: Fetched) -> dict | None:
    """Poll until the server job ends, posting its progress; None if it did not succeed (the reason has been
    posted)."""
    unreachable_since = None
    while True:
        if job.cancel.is_set():
            _stop(job, client, events, fetched)
            return None
        try:
            status = client.status(job.server_id)
            unreachable_since = None
        except ClientError as err:
            if err.kind not in ("unreachable", "timeout"):
                raise
            unreachable_since = unreachable_since or time.monotonic()
            if time.monotonic() - unreachable_since > LOST_CONNECTION_S:
                raise ClientError("unreachable", f"lost the connection to the server while job {job.server_id} ran",
                                  "check that the server is still running; its finished jobs stay on its disk"
                                  ) from err
            job.cancel.wait(poll_s)
            continue
        # the job ends here only once imported (or with the failed / cancelled event below, message included)
        state = {"succeeded": "downloading", "failed": "running", "cancelled": "running"}.get(status["state"],
                                                                                           status["state"])
        _post(events, "update", job, state=state, stage=status.get("stage") or "",
              step=status.get("step") or 0, total=status.get("total") or 0, progress=status.get("progress", 0.0),
              eta_s=status.get("eta_s"), queue_position=status.get("queue_position"))
        if status["state"] == "succeeded":
            return status
        fetch_progress(job, client, events, status, fetched)
        if status["state"] in ("failed", "cancelled"):
            error = status.get("error") or {}
            _post(events, "failed" if status["state"] == "failed" else "cancelled", job,
                  message=error.get("message", f"the job was {status['state']} on the server"),
                  hint=error.get("hint", ""))
            return None
        job.cancel.wait(poll_s)


def result_file(entry: dict) -> str | None:
    """The file that shows an instance: its final mesh, else (a layout) its proxy."""
    return entry.get("file") or entry.get("proxy")


def wanted(job: Job, manifest: dict, entry: dict) -> bool:
    """Whether ``job`` lands this instance's result: generate / import: every one; regenerate / build: the
    labels it targets; refine: the labels it changed."""
    if job.kind in ("regenerate", "build"):
        return entry["label"] in job.targets
    if job.kind == "refine":
        notes = manifest.get("refine") or {}
        return entry["label"] in set(notes.get("resampled", [])) | set(notes.get("moved_only", []))
    return True


def files_to_download(job: Job, manifest: dict) -> list[str]:
    """The files a finished job lands: its instances' (:func:`wanted`) meshes or proxies and the scene GLB;
    variants: the candidates; segment: the map."""
    if job.kind == "segment":
        return [SEGMENT_LABELS]
    if job.kind == "variants":
        return [c["file"] for c in (manifest.get("variants") or {}).get("candidates", []) if c.get("file")]
    names = [result_file(e) for e in manifest["instances"] if result_file(e) and wanted(job, manifest, e)]
    scene_glb = [manifest["files"]["scene"]] if (manifest.get("files") or {}).get("scene") else []
    return names + scene_glb


def run_job(job: Job, client: Client, events: queue.Queue, poll_s: float) -> None:
    try:
        created = _submit(job, client)
        job.server_id = created["job_id"]
        _post(events, "update", job, server_id=created["job_id"], state=created.get("state", "queued"))
        fetched = Fetched()
        if _wait(job, client, events, poll_s, fetched) is None:
            return
        _post(events, "update", job, state="downloading")
        manifest = client.segments(job.server_id) if job.kind == "segment" else client.scene(job.server_id)
        job.folder.mkdir(parents=True, exist_ok=True)
        if job.kind in SCENE_KINDS:
            (job.folder / SCENE_JSON).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        names = [n for n in files_to_download(job, manifest) if n not in fetched.names]
        _post(events, "finished", job, manifest=manifest, files=_download(job, client, names, fetched))
    except ClientError as err:
        _post(events, "failed", job, message=err.message, hint=err.hint)
    except Exception as err:  # a bug must end the job visibly, not leave it "running" forever
        _post(events, "failed", job, message=f"{type(err).__name__}: {err}", hint="this is a bug in the add-on")
