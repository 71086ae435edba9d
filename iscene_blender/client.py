"""The HTTP client for ``iscene-server`` (``/v1``), stdlib only. It never touches ``bpy``: it runs on worker
threads. Every failure becomes a :class:`ClientError` whose ``message`` and ``hint`` can be shown as they are."""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
import uuid
from urllib.parse import quote, urlsplit

API = "/v1"
LOCALHOST = "localhost"


class ClientError(Exception):
    """``kind``: unreachable | timeout | wrong_service | unauthorized | server (an error the server reported)."""

    def __init__(self, kind: str, message: str, hint: str = "", status: int | None = None, code: str = ""):
        super().__init__(message)
        self.kind, self.message, self.hint, self.status, self.code = kind, message, hint, status, code

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


def normalise_url(text: str) -> str:
    """The server's base URL from what the artist typed: ``http://`` added when no scheme is given, trailing
    slashes and a trailing ``/v1`` (the API prefix, which the client adds itself) removed. Raises ``ValueError``
    with a message that names the fix."""
    url = text.strip()
    if not url:
        raise ValueError("no server URL is set: enter one such as http://127.0.0.1:8712 in the add-on preferences")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the server URL {text.strip()!r} must start with http:// or https://")
    try:
        parts.port  # noqa: B018  (raises on a non-numeric port)
    except ValueError:
        raise ValueError(f"the server URL {text.strip()!r} has an invalid port: use a number, e.g. :8712") from None
    if not parts.hostname:
        raise ValueError(f"the server URL {text.strip()!r} has no host: use e.g. http://127.0.0.1:8712")
    if parts.query or parts.fragment:
        raise ValueError(f"the server URL {text.strip()!r} must not hold '?' or '#': use e.g. http://127.0.0.1:8712")
    path = parts.path.rstrip("/")
    if path.endswith(API):
        path = path[:-len(API)].rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}"


def url_port(url: str) -> int:
    """The port of a normalised URL (the scheme's default when it names none)."""
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is this computer only.

    A deliberate copy of the server's rule (``iscene_server.api.security.is_loopback``; the add-on imports
    nothing from the server) for IP literals: an IPv4-mapped IPv6 address counts by its IPv4 part, a zone
    index is ignored. Of host names only ``localhost`` counts: the add-on never resolves names here (this runs
    while Blender draws its panels), so any other name, even ``127.example.com``, is another computer.
    ``tests/test_addon_copies.py`` checks that both give the same answers.
    """
    if host.lower() == LOCALHOST:
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def is_loopback(url: str) -> bool:
    """Whether the server at ``url`` runs on this computer."""
    return is_loopback_host(urlsplit(url).hostname or "")


def multipart(files: dict[str, tuple[str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode() + b"\r\n")
    for name, (filename, data) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _parse(data: bytes):
    """The JSON in a response body ({} when empty), or None when it is not JSON."""
    try:
        return json.loads(data) if data else {}
    except ValueError:
        return None


class Client:
    def __init__(self, base_url: str, token: str = "", timeout: float = 10.0, download_timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.download_timeout = download_timeout

    # --- transport --------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                 timeout: float | None = None) -> tuple[int, bytes, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base_url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as err:
            return err.code, err.read(), err.headers.get("Content-Type", "") if err.headers else ""
        except TimeoutError as err:
            raise ClientError("timeout", f"the server at {self.base_url} did not answer in time",
                              "it may be busy loading the model; raise the timeout in the add-on preferences") from err
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise ClientError("unreachable", f"cannot reach the I-Scene server at {self.base_url} ({reason})",
                              "start it with `iscene-server serve` (or Start Local Server in the preferences) "
                              "and check the server URL") from err

    def _json(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
              require: tuple[str, ...] = ()) -> dict:
        """The JSON object the server answered, which must hold the ``require`` keys."""
        status, data, _ = self._request(method, path, body, content_type)
        payload = _parse(data)
        if status >= 400:
            raise self._error(status, payload)
        if not isinstance(payload, dict) or any(key not in payload for key in require):
            raise ClientError("wrong_service", f"{self.base_url} answered, but not like an I-Scene server",
                              "check the server URL and port in the add-on preferences")
        return payload

    def _error(self, status: int, payload) -> ClientError:
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict) or "message" not in error:
            return ClientError("wrong_service", f"{self.base_url} answered HTTP {status} but is not an I-Scene server",
                               "check the server URL and port in the add-on preferences", status)
        kind = "unauthorized" if status == 401 else "server"
        return ClientError(kind, error["message"], error.get("hint", ""), status, error.get("code", ""))

    # --- the API --------------------------------------------------------------------------------------------
    def health(self) -> dict:
        health = self._json("GET", f"{API}/health", require=("service", "state"))
        if health.get("service") != "iscene":
            raise ClientError("wrong_service", f"{self.base_url} is a different service, not an I-Scene server",
                              "check the server URL and port in the add-on preferences")
        return health

    def check_token(self) -> None:
        self._json("GET", f"{API}/jobs")

    def list_jobs(self) -> list[dict]:
        return self._json("GET", f"{API}/jobs", require=("jobs",))["jobs"]

    def submit(self, image: bytes, labels: bytes, params: dict) -> dict:
        body, content_type = multipart({"image": ("image", image), "labels": ("labels", labels)},
                                       {"params": json.dumps(params)})
        return self._json("POST", f"{API}/jobs", body, content_type, require=("job_id",))

    def segment(self, image: bytes, prompts: dict) -> dict:
        body, content_type = multipart({"image": ("image", image)}, {"prompts": json.dumps(prompts)})
        return self._json("POST", f"{API}/segment", body, content_type, require=("job_id",))

    def segments(self, job_id: str) -> dict:
        return self._json("GET", f"{API}/jobs/{quote(job_id)}/segments", require=("segments",))

    def status(self, job_id: str) -> dict:
        return self._json("GET", f"{API}/jobs/{quote(job_id)}", require=("state",))

    def cancel(self, job_id: str) -> dict:
        return self._json("DELETE", f"{API}/jobs/{quote(job_id)}")

    def scene(self, job_id: str) -> dict:
        return self._json("GET", f"{API}/jobs/{quote(job_id)}/scene", require=("instances",))

    def file(self, job_id: str, name: str) -> bytes:
        status, data, _ = self._request("GET", f"{API}/jobs/{quote(job_id)}/files/{quote(name)}",
                                        timeout=self.download_timeout)
        if status >= 400:
            raise self._error(status, _parse(data))
        return data

    def _post_json(self, path: str, payload: dict) -> dict:
        return self._json("POST", path, json.dumps(payload).encode(), "application/json", require=("job_id",))

    def regenerate(self, job_id: str, labels: list[int], seeds: dict[int, int] | None = None) -> dict:
        payload = {"labels": labels, **({"seeds": {str(k): v for k, v in seeds.items()}} if seeds else {})}
        return self._post_json(f"{API}/jobs/{quote(job_id)}/regenerate", payload)

    def refine(self, job_id: str, transforms: dict[int, list], locked: list[int], strength: float,
               context: list[dict] | None = None) -> dict:
        """``context``: the artist's meshes kept as fixed parts of the scene, ``{"name", "transform", "glb"}``."""
        payload = {"transforms": {str(k): v for k, v in transforms.items()}, "locked": locked, "strength": strength,
                   **({"context": context} if context else {})}
        return self._post_json(f"{API}/jobs/{quote(job_id)}/refine", payload)

    def build(self, job_id: str) -> dict:
        """Build Meshes: stage 2 on a layout job's stored layout (a child job)."""
        return self._post_json(f"{API}/jobs/{quote(job_id)}/build", {})

    def variants(self, job_id: str, label: int, count: int, seeds: list[int] | None = None) -> dict:
        payload = {"label": label, "count": count, **({"seeds": seeds} if seeds else {})}
        return self._post_json(f"{API}/jobs/{quote(job_id)}/variants", payload)
