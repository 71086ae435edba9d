"""A Hugging Face Hub-compatible file endpoint on 127.0.0.1, for tests that take the real download path.

It answers what ``huggingface-hub``'s ``hf_hub_download`` asks (``HEAD``/``GET``
``/<owner>/<name>/resolve/<revision>/<path>``) the way the hub does: ``X-Repo-Commit`` on every answer; small
files served directly with their git-blob ``ETag`` and ``Content-Length``; large (LFS) files answered with a
``302`` to a separate storage origin with ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``, that origin
honouring ``Range`` (resumed downloads); errors carry the hub's ``X-Error-Code`` (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``). ``snapshot_download``'s repo-info and tree listings are answered
too (``/api/models/<repo>/revision/<rev>``, ``/api/models/<repo>/tree/<rev>``). Every request is logged, so a
test can assert what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self
from urllib.parse import unquote

LFS_SUFFIXES = (".safetensors", ".pt", ".bin", ".h5")
API_PREFIX = "api/"  # how API calls are logged: "api/revision", "api/tree"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_tree(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``folder`` by its repo path, leaving out top-level entries named in ``skip``."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).parts[0] not in skip}


@dataclass
class Repo:
    """A model repo: commits (sha -> files) and the branch ``main`` naming the newest."""

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    main: str = ""

    def push(self, files: dict[str, bytes]) -> str:
        """Add a commit holding ``files``; ``main`` moves to it. Returns its sha."""
        sha = hashlib.sha1(repr((len(self.commits), sorted(files))).encode() + b"".join(files.values())).hexdigest()
        self.commits[sha] = dict(files)
        self.main = sha
        return sha


@dataclass(frozen=True)
class Request:
    server: str  # "hub" or "storage"
    method: str
    repo: str
    revision: str
    path: str
    range: str | None


class Hub:
    """The endpoint: ``url`` goes into ``HF_ENDPOINT``; ``log`` lists every request in order.

    ``cut_after[(repo, path)] = n``: the next storage GET of that file sends only ``n`` bytes and drops the
    connection (a dropped connection); later GETs are served in full. Storage answers ``503`` to GETs of the
    files in ``unavailable`` (a download that fails part-way through a package).
    """

    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self.cut_after: dict[tuple[str, str], int] = {}
        self.unavailable: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._servers = [ThreadingHTTPServer(("127.0.0.1", 0), self._handler(name)) for name in ("hub", "storage")]
        self._threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in self._servers]

    def url_of(self, server: str) -> str:
        host, port = self._servers[0 if server == "hub" else 1].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return self.url_of("hub")

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def downloads(self) -> list[tuple[str, str]]:
        """(repo, path) of every file whose content was sent (GETs; not API calls), in order."""
        with self._lock:
            return [(r.repo, r.path) for r in self.log if r.method == "GET" and not r.path.startswith(API_PREFIX) and
                    (r.server == "storage" or not r.path.endswith(LFS_SUFFIXES))]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)

    def _handler(self, server_name: str) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(with_body=False)

            def do_GET(self) -> None:
                self.answer(with_body=True)

            def answer(self, with_body: bool) -> None:
                parts = unquote(self.path.split("?", 1)[0]).lstrip("/").split("/")
                if server_name == "hub" and len(parts) >= 5 and parts[:2] == ["api", "models"]:
                    return self.answer_api("/".join(parts[2:4]), parts[4], parts[5:], with_body)
                if server_name == "storage" and len(parts) >= 5 and parts[0] == "lfs":
                    repo, revision, path = "/".join(parts[1:3]), parts[3], "/".join(parts[4:])
                elif server_name == "hub" and len(parts) >= 5 and parts[2] == "resolve":
                    repo, revision, path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                else:
                    return self.send(404, {"X-Error-Code": "EntryNotFound"}, b"no such route", with_body)
                hub._record(Request(server_name, self.command, repo, revision, path, self.headers.get("Range")))
                commit = self.commit_of(repo, revision, with_body)
                if commit is None:
                    return
                files = hub.repos[repo].commits[commit]
                if path not in files:
                    return self.send(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit,
                                           "X-Error-Message": "Entry not found"}, b"", with_body)
                data = files[path]
                headers = {"X-Repo-Commit": commit}
                if server_name == "hub" and path.endswith(LFS_SUFFIXES):
                    headers.update({"X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"',
                                    "X-Linked-Size": str(len(data)), "ETag": f'"{git_blob_sha1(data)}"',
                                    "Location": f"{hub.url_of('storage')}/lfs/{repo}/{commit}/{path}"})
                    return self.send(302, headers, b"", with_body)
                etag = hashlib.sha256(data).hexdigest() if server_name == "storage" else git_blob_sha1(data)
                headers["ETag"] = f'"{etag}"'
                self.send_file(headers, data, (repo, path), with_body)

            def answer_api(self, repo: str, kind: str, rest: list[str], with_body: bool) -> None:
                """``/api/models/<repo>/revision/<rev>`` (repo info) and ``/api/models/<repo>/tree/<rev>``."""
                revision = rest[0] if rest else "main"
                hub._record(Request("hub", self.command, repo, revision, f"{API_PREFIX}{kind}", None))
                commit = self.commit_of(repo, revision, with_body)
                if commit is None:
                    return
                files = hub.repos[repo].commits[commit]
                if kind == "revision":
                    answer = {"id": repo, "sha": commit, "siblings": [{"rfilename": p} for p in files]}
                elif kind == "tree":
                    answer = [{"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data),
                               **({"lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                           "pointerSize": 134}} if p.endswith(LFS_SUFFIXES) else {})}
                              for p, data in files.items()]
                else:
                    return self.send(404, {}, b"no such route", with_body)
                self.send(200, {"Content-Type": "application/json"}, json.dumps(answer).encode(), with_body)

            def commit_of(self, repo: str, revision: str, with_body: bool) -> str | None:
                """The commit ``revision`` names in ``repo``; None after answering the hub's 404."""
                if repo not in hub.repos:
                    self.send(404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                              b"", with_body)
                    return None
                entry = hub.repos[repo]
                commit = entry.main if revision == "main" else revision
                if commit not in entry.commits:
                    self.send(404, {"X-Error-Code": "RevisionNotFound",
                                    "X-Error-Message": f"Invalid rev id: {revision}"}, b"", with_body)
                    return None
                return commit

            def send_file(self, headers: dict[str, str], data: bytes, key: tuple[str, str], with_body: bool) -> None:
                start, status = 0, 200
                requested = self.headers.get("Range", "")
                if requested.startswith("bytes=") and requested.endswith("-"):
                    start, status = int(requested[len("bytes="):-1]), 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                if with_body and key in hub.unavailable:
                    return self.send(503, {}, b"storage unavailable", with_body)
                with hub._lock:
                    cut = hub.cut_after.pop(key, None) if with_body else None
                if cut is None:
                    return self.send(status, {**headers, "Accept-Ranges": "bytes"}, body, with_body)
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True

            def send(self, status: int, headers: dict[str, str], body: bytes, with_body: bool) -> None:
                self.send_response(status)
                for name, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(name, value)
                self.end_headers()
                if with_body:
                    self.wfile.write(body)

        return Handler
