"""Access token and request-size limits."""

from __future__ import annotations

import ipaddress
import json
import secrets
import socket

from fastapi import Request

from ..errors import AuthError


def _address_is_loopback(text: str) -> bool | None:
    """Whether ``text`` is a loopback IP address (an IPv4-mapped IPv6 one counts by its IPv4 part); None when
    it is not an IP address at all."""
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` only accepts connections from this machine.

    An IP address is parsed; a name counts only if it resolves, and only to loopback addresses (so a name
    such as ``127.example.com`` pointing anywhere else, or not resolving at all, is not loopback).
    """
    literal = _address_is_loopback(host)
    if literal is not None:
        return literal
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(_address_is_loopback(a) for a in addresses)


def token_checker(token: str | None):
    """A FastAPI dependency requiring ``Authorization: Bearer <token>`` when a token is configured."""

    async def check(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise AuthError("missing or wrong access token",
                            "set the server's token in the add-on preferences, or send 'Authorization: Bearer "
                            "<token>' (the token is the server's --token or ISCENE_TOKEN)")

    return check


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 before the app reads them.

    A declared Content-Length is checked up front; a body without one (chunked) is read up to the limit
    first and replayed to the app.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = self.max_bytes + 1
            if declared > self.max_bytes:
                return await self._refuse(send, declared)
            return await self.app(scope, receive, send)
        body, more = [], True
        size = 0
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._refuse(send, size)
            body.append(chunk)
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(body), "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps({"error": {
            "code": "too_large",
            "message": f"the request is {size / 2 ** 20:.1f} MB, over the server's limit of "
                       f"{self.max_bytes / 2 ** 20:.0f} MB",
            "hint": "send smaller images (a few megapixels are plenty) or fewer and lighter context meshes, or raise "
                    "--max-upload-mb"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
