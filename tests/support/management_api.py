"""A real HTTP endpoint that answers like API Gateway's management API (``@connections``).

boto3 talks to it over real HTTP, so the app's production client code runs unchanged.  It
answers the way AWS does, error shapes included: a gone id gets 410 with
``x-amzn-ErrorType: GoneException`` (so boto3 raises ``GoneException``), 403 gets
``ForbiddenException``, 429 ``LimitExceededException``, 413 ``PayloadTooLargeException``.

Tests open connections, script failures per connection, and read what each one received.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from tests.support.http import start_server, stop_server

_ERRORS = {
    403: "ForbiddenException",
    410: "GoneException",
    413: "PayloadTooLargeException",
    429: "LimitExceededException",
    500: "InternalServerError",
}


@dataclass
class Call:
    method: str
    connection_id: str
    status: int


@dataclass
class FakeManagementApi:
    """Start with :meth:`start`; ``endpoint`` is what boto3's ``endpoint_url`` takes."""

    stage: str = "api"
    connections: set[str] = field(default_factory=set)
    frames: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    calls: list[Call] = field(default_factory=list)
    _script: dict[str, deque[int]] = field(default_factory=lambda: defaultdict(deque))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # ---------------------------------------------------------------- control

    def open(self, *connection_ids: str) -> None:
        with self._lock:
            self.connections.update(connection_ids)

    def close(self, *connection_ids: str) -> None:
        with self._lock:
            self.connections.difference_update(connection_ids)

    def script(self, connection_id: str, *statuses: int) -> None:
        """The next calls on ``connection_id`` answer these statuses, in order, then normally."""
        with self._lock:
            self._script[connection_id].extend(statuses)

    def received(self, connection_id: str) -> list[Any]:
        with self._lock:
            return list(self.frames[connection_id])

    def types(self, connection_id: str) -> list[str]:
        return [frame["type"] for frame in self.received(connection_id)]

    def calls_on(self, connection_id: str, method: str | None = None) -> list[Call]:
        with self._lock:
            return [
                c for c in self.calls
                if c.connection_id == connection_id and (method is None or c.method == method)
            ]

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "call start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/{self.stage}"

    def start(self) -> FakeManagementApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, payload = api._answer(method, unquote(self.path), body)
                data = b"" if status in (200, 204) and not payload else json.dumps(
                    payload).encode()
                self.send_response(status)
                if status in _ERRORS:
                    self.send_header("x-amzn-ErrorType", _ERRORS[status])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                self._handle("POST")

            def do_GET(self) -> None:
                self._handle("GET")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

        self._server = start_server(Handler)
        return self

    def stop(self) -> None:
        stop_server(self._server)

    # ---------------------------------------------------------------- semantics

    def _answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        prefix = f"/{self.stage}/@connections/"
        if not path.startswith(prefix):
            return 404, {"message": f"no route for {path}"}
        connection_id = path[len(prefix):]
        with self._lock:
            scripted = self._script[connection_id]
            status = scripted.popleft() if scripted else None
            if status is None:
                status = 200 if connection_id in self.connections else 410
                if status == 200 and method == "POST" and len(body) > 128 * 1024:
                    status = 413
                if status == 200 and method == "DELETE":
                    self.connections.discard(connection_id)
                    status = 204
            self.calls.append(Call(method, connection_id, status))
            if status == 200 and method == "POST":
                self.frames[connection_id].append(json.loads(body))
        if status in _ERRORS:
            return status, {"message": _ERRORS[status]}
        if status >= 400:
            return status, {"message": f"error {status}"}
        if method == "GET":
            return 200, {
                "connectedAt": "2024-11-11T13:45:35.513Z",
                "identity": {"sourceIp": "127.0.0.1", "userAgent": "test"},
                "lastActiveAt": "2024-11-11T13:45:46.514Z",
            }
        return status, None
