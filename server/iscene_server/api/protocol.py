"""uvicorn's HTTP/1.1 protocol with its own 400 answers in the API's JSON error shape.

Requests that h11 cannot parse (``Content-Length: abc``, a malformed request line or header) never reach the
app: uvicorn answers them itself, by default in plain text. This subclass answers them as
``{"error": {code, message, hint}}`` like every other error of the server.
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

BAD_REQUEST = {"code": "bad_request", "message": "the request is not valid HTTP/1.1 (malformed request line or "
                                                 "header, e.g. a Content-Length that is not a number)",
               "hint": "send a well-formed HTTP request; the add-on and any HTTP library do"}


class JsonErrorH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": BAD_REQUEST}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()
