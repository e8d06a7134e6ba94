"""A real HTTP ``@connections`` endpoint for in-process tests, answering like API Gateway.

boto3 talks to it over real HTTP (``endpoint_url=api.endpoint``), so an app's production
management-API code runs unchanged, and every call is recorded. It answers the way AWS does,
error shapes included (``x-amzn-ErrorType``, so boto3 raises the modelled exceptions): an id
that is not open gets 410 ``GoneException``; a POST over 128 KB 413
``PayloadTooLargeException``; scripted statuses (:meth:`RecordingManagementApi.script`) give 403
``ForbiddenException``, 429 ``LimitExceededException``, 500 ``InternalServerError``...

Bounded: loopback only, one daemon thread per request (``ThreadingHTTPServer``), bodies read up to
their ``Content-Length`` (at most 1 MB).
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from localgateway.core import POST_LIMIT_BYTES

ERROR_TYPES = {
    400: "BadRequestException",
    403: "ForbiddenException",
    410: "GoneException",
    413: "PayloadTooLargeException",
    429: "LimitExceededException",
    500: "InternalServerError",
}
MAX_BODY_BYTES = 1024 * 1024
#: Seconds between the serve loop's shutdown checks (``stop`` waits up to one).
SHUTDOWN_POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Call:
    """One recorded ``@connections`` call and the status it got."""

    method: str
    connection_id: str
    status: int
    body: bytes = b""


def decode_frame(data: bytes) -> Any:
    """A posted frame as the client would read it: JSON when it parses, else text, else bytes."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    try:
        return json.loads(text)
    except ValueError:
        return text


class RecordingManagementApi:
    """Call :meth:`start` (returns self), use :attr:`endpoint`, then :meth:`stop`."""

    def __init__(self, stage: str = "api") -> None:
        self.stage = stage
        self.connections: set[str] = set()
        self.calls: list[Call] = []
        self._frames: dict[str, list[bytes]] = defaultdict(list)
        self._script: dict[str, deque[int]] = defaultdict(deque)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ----- control ------------------------------------------------------------------------------

    def open(self, *connection_ids: str) -> None:
        """Mark connections as established (posts to them succeed)."""
        with self._lock:
            self.connections.update(connection_ids)

    def close(self, *connection_ids: str) -> None:
        """Mark connections as gone (posts to them get 410)."""
        with self._lock:
            self.connections.difference_update(connection_ids)

    def script(self, connection_id: str, *statuses: int) -> None:
        """The next calls on ``connection_id`` answer these statuses, in order, then normally."""
        with self._lock:
            self._script[connection_id].extend(statuses)

    def raw_frames(self, connection_id: str) -> list[bytes]:
        with self._lock:
            return list(self._frames[connection_id])

    def received(self, connection_id: str) -> list[Any]:
        """Every frame posted to the connection, decoded (:func:`decode_frame`)."""
        return [decode_frame(data) for data in self.raw_frames(connection_id)]

    def calls_on(self, connection_id: str, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self.calls
                    if c.connection_id == connection_id and (method is None or c.method == method)]

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT/STAGE``: what boto3's ``endpoint_url`` takes."""
        if self._server is None:
            raise RuntimeError("call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/{self.stage}"

    # ----- lifecycle ----------------------------------------------------------------------------

    def start(self) -> RecordingManagementApi:
        """Serve on a free 127.0.0.1 port from a daemon thread."""
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                length = min(int(self.headers.get("Content-Length") or 0), MAX_BODY_BYTES)
                body = self.rfile.read(length) if length else b""
                status, payload = api.answer(method, unquote(self.path), body)
                data = b"" if payload is None else json.dumps(payload).encode()
                self.send_response(status)
                if status in ERROR_TYPES:
                    self.send_header("x-amzn-ErrorType", ERROR_TYPES[status])
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

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        # shutdown() waits up to one poll interval (0.5 s by default) for the loop to notice.
        threading.Thread(target=server.serve_forever, args=(SHUTDOWN_POLL_SECONDS,),
                         name="management-api",
                         daemon=True).start()
        self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> RecordingManagementApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ----- semantics ----------------------------------------------------------------------------

    def answer(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        """Status and JSON body for one request (records the call)."""
        prefix = f"/{self.stage}/@connections/"
        if not path.startswith(prefix):
            return 404, {"message": f"no route for {path}"}
        connection_id = path[len(prefix):]
        with self._lock:
            scripted = self._script[connection_id]
            status = scripted.popleft() if scripted else None
            if status is None:
                status = 200 if connection_id in self.connections else 410
                if status == 200 and method == "POST" and len(body) > POST_LIMIT_BYTES:
                    status = 413
                if status == 200 and method == "DELETE":
                    self.connections.discard(connection_id)
                    status = 204
            self.calls.append(Call(method, connection_id, status, body))
            if status == 200 and method == "POST":
                self._frames[connection_id].append(body)
        if status in ERROR_TYPES:
            return status, {"message": ERROR_TYPES[status]}
        if status >= 400:
            # Any other scripted failure (503...) still has API Gateway's JSON error body.
            return status, {"message": f"error {status}"}
        if method == "GET" and status == 200:
            return 200, {
                "connectedAt": "2024-11-11T13:45:35.513Z",
                "identity": {"sourceIp": "127.0.0.1", "userAgent": "test"},
                "lastActiveAt": "2024-11-11T13:45:46.514Z",
            }
        return status, None
