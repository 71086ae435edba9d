"""A real `iscene-server serve` in a subprocess on a loopback port it binds itself, for API and add-on tests."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

BANNER = re.compile(rb"I-Scene server: http://\S+?:(\d+)/v1/health")
_LOG_NUMBERS = itertools.count()


def free_port() -> int:
    """A port that was free a moment ago, for a server started by someone else (the add-on's own launcher).
    Prefer ``ServerProcess()`` without a port: its server binds port 0 itself and nothing can take it first."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def refusing_url() -> Iterator[str]:
    """A loopback URL that refuses connections for as long as the ``with`` block runs: its port is bound (so
    nothing else can take it) but not listening."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


class ServerProcess:
    """``port`` None (the default) lets the server choose a free one; ``port`` and ``url`` are known once
    :meth:`start` returns, and a restart with ``port=first.port`` comes back at the same address."""

    def __init__(self, model: Path, data_dir: Path, *extra: str, token: str | None = None, port: int | None = None,
                 env: dict[str, str] | None = None):
        self.model, self.data_dir, self.extra, self.token, self.env = model, data_dir, extra, token, env or {}
        self.requested_port = port or 0
        self.port: int | None = port
        self.proc: subprocess.Popen | None = None
        self.log = data_dir.parent / f"server-{os.getpid()}-{next(_LOG_NUMBERS)}.log"

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server's port is known once start() has returned")
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 120) -> ServerProcess:
        args = [sys.executable, "-m", "iscene_server.cli", "serve", "--model", str(self.model), "--data-dir",
                str(self.data_dir), "--port", str(self.requested_port), "--device", "cpu", *self.extra]
        if self.token:
            args += ["--token", self.token]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.port = self.requested_port or None
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            banner_from = log.tell()
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            self.port = self.port or self.bound_port(banner_from)
            if self.port and self.answers(wait_ready):
                return self
            time.sleep(0.2)
        raise TimeoutError(f"server not ready: {self.log_tail()}")

    def answers(self, wait_ready: bool) -> bool:
        """Whether the server answers its health check (and is ready, if ``wait_ready``)."""
        try:
            health = self.get("/v1/health")
        except OSError:
            return False
        return not wait_ready or health["state"] == "ready"

    def bound_port(self, banner_from: int = 0) -> int | None:
        """The port in the banner line this server printed after byte ``banner_from`` of its log (None until
        it has printed it)."""
        with open(self.log, "rb") as log:
            log.seek(banner_from)
            match = BANNER.search(log.read())
        return int(match.group(1)) if match else None

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """Die abruptly, as on a crash or power cut."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    # --- minimal HTTP client (stdlib, like the add-on) -------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                token: str | None = None) -> tuple[int, dict, bytes]:
        headers = dict(headers or {})
        token = token if token is not None else self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read()

    def get(self, path: str) -> dict:
        status, _, data = self.request("GET", path)
        if status != 200:
            raise OSError(f"GET {path} -> {status}: {data[:300]!r}")
        return json.loads(data)

    def post_json(self, path: str, payload: dict, **kw) -> tuple[int, dict]:
        status, _, data = self.request("POST", path, json.dumps(payload).encode(),
                                       {"Content-Type": "application/json"}, **kw)
        return status, json.loads(data)

    def submit(self, image: bytes, labels: bytes, params: dict | None = None, **kw) -> tuple[int, dict]:
        body, content_type = multipart({"image": ("image.png", image), "labels": ("labels.png", labels)},
                                       {"params": json.dumps(params or {})})
        status, _, data = self.request("POST", "/v1/jobs", body, {"Content-Type": content_type}, **kw)
        return status, json.loads(data)

    def segment(self, image: bytes, prompts: dict | str, **kw) -> tuple[int, dict]:
        text = prompts if isinstance(prompts, str) else json.dumps(prompts)
        body, content_type = multipart({"image": ("image.png", image)}, {"prompts": text})
        status, _, data = self.request("POST", "/v1/segment", body, {"Content-Type": content_type}, **kw)
        return status, json.loads(data)

    def wait(self, job_id: str, states=("succeeded", "failed", "cancelled"), timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.get(f"/v1/jobs/{job_id}")
            if status["state"] in states:
                return status
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} still {status['state']}")


def multipart(files: dict[str, tuple[str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = "iscene-test-boundary-7d3f"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f'Content-Type: application/octet-stream\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"
