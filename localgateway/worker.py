"""One Lambda "container": a worker process that imports the app once and runs one function.

Started by :mod:`localgateway.containers` as ``python -P .../worker.py --project-dir DIR
--function NAME --response-fd FD`` with the stage environment. ``-P`` keeps this file's folder
off ``sys.path``: the project directory comes first, so the app's own packages (``chalicelib``,
...) are the ones imported, never the gateway's. This module imports only the standard library
at the top, so a container's init time is the app's own import time, as in Lambda.

Protocol (length-prefixed JSON, :func:`write_message` / :class:`MessageReader`):

* worker -> gateway on ``--response-fd``: ``{"type": "ready", "init_ms", "max_rss_mb"}`` or
  ``{"type": "init_error", "errorType", "errorMessage"}`` (then exit 1); after each invocation
  ``{"type": "result", "ok": true, "result", "duration_ms", "max_rss_mb"}`` or ``ok: false`` with
  ``errorType`` and ``errorMessage``.
* gateway -> worker on stdin: ``{"type": "invoke", "request_id", "event", "timeout_ms",
  "memory_mb"}``.

Anything the app prints goes to stderr (stdout is redirected), like CloudWatch Logs; a handler's
exception is logged here, in the container (through the app's own logging setup), in Lambda's
``[ERROR] Type: message`` + traceback form.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import resource
import struct
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

HEADER = struct.Struct(">I")
#: Upper bound of one protocol message (an event is at most 128 KB of body, base64 inflated).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: The Lambda function name of a Chalice app's REST API (all routes are one function).
REST_FUNCTION = "api_handler"


class ProtocolError(Exception):
    """The peer sent something that is not a protocol message, or went away mid-message."""


def encode_message(message: dict[str, Any]) -> bytes:
    """One protocol frame: 4-byte big-endian length, then UTF-8 JSON (non-JSON values as str)."""
    payload = json.dumps(message, default=str).encode("utf-8")
    return HEADER.pack(len(payload)) + payload


def write_message(fd: int, message: dict[str, Any]) -> None:
    """Write one frame to ``fd`` completely (raises ``OSError``, e.g. BrokenPipeError)."""
    data = memoryview(encode_message(message))
    while data:
        written = os.write(fd, data)
        data = data[written:]


class MessageReader:
    """Splits a byte stream into protocol messages. Feed it bytes, then :meth:`next`."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer.extend(data)

    def next(self) -> dict[str, Any] | None:
        """The next complete message, or None when more bytes are needed.

        Raises :class:`ProtocolError` for an oversize or malformed message.
        """
        if len(self._buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self._buffer)
        if size > MAX_MESSAGE_BYTES:
            raise ProtocolError(f"message of {size} bytes is over the limit")
        end = HEADER.size + size
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER.size:end])
        del self._buffer[:end]
        try:
            message = json.loads(payload)
        except ValueError as exc:
            raise ProtocolError(f"malformed message: {exc}") from None
        if not isinstance(message, dict):
            raise ProtocolError("message is not a JSON object")
        return message


def read_message_blocking(fd: int, reader: MessageReader) -> dict[str, Any] | None:
    """Block until one message arrives on ``fd``; None at end of stream."""
    while True:
        message = reader.next()
        if message is not None:
            return message
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        reader.feed(chunk)


def max_rss_mb() -> int:
    """Peak resident set size of this process, in MB (Lambda's "Max Memory Used")."""
    kilobytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return max(1, round(kilobytes / 1024))


class LambdaContext:
    """The context object Lambda passes to handlers (the attributes Chalice and apps read)."""

    def __init__(self, function_name: str, memory_mb: int, timeout_ms: int,
                 request_id: str) -> None:
        self._deadline = time.monotonic() + timeout_ms / 1000
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:{os.environ.get('AWS_DEFAULT_REGION', 'us-east-1')}:"
            f"123456789012:function:{function_name}"
        )
        self.memory_limit_in_mb = memory_mb
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = f"local/{os.getpid()}"
        self.identity = None
        self.client_context = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def load_handler(project_dir: str, function: str) -> Callable[[Any, Any], Any]:
    """Import ``app.py`` of ``project_dir`` and return the handler of ``function``.

    Raises whatever the import raises, or ``LookupError`` when the app has no such function.
    """
    sys.path.insert(0, project_dir)
    vendor = os.path.join(project_dir, "vendor")
    if os.path.isdir(vendor):
        sys.path.insert(1, vendor)
    module = importlib.import_module("app")
    app = module.app
    endpoint = os.environ.get("WS_MANAGEMENT_ENDPOINT")
    ws_api = getattr(app, "websocket_api", None)
    if ws_api is not None and endpoint and hasattr(ws_api, "_endpoint"):
        # Chalice would build an execute-api URL from the event's apiId; use the local API.
        ws_api._endpoint = endpoint
        ws_api._client = None
    if function == REST_FUNCTION:
        handler: Callable[[Any, Any], Any] = app
        return handler
    handler_map = getattr(app, "handler_map", {})
    if function not in handler_map:
        raise LookupError(f"the app has no function named {function!r}")
    found: Callable[[Any, Any], Any] = handler_map[function]
    return found


def _error_fields(exc: BaseException) -> dict[str, str]:
    return {"errorType": type(exc).__name__, "errorMessage": str(exc)}


def serve(project_dir: str, function: str, response_fd: int, log: logging.Logger) -> int:
    """Import the app, report readiness, then run invocations until stdin closes."""
    started = time.perf_counter()
    try:
        handler = load_handler(project_dir, function)
    except BaseException as exc:  # an import error, SystemExit from app code...
        log.error("[ERROR] Runtime.ImportModuleError: %s: %s\n%s", type(exc).__name__, exc,
                  "".join(traceback.format_exception(exc)).rstrip())
        write_message(response_fd, {"type": "init_error", **_error_fields(exc)})
        return 1
    init_ms = (time.perf_counter() - started) * 1000
    write_message(response_fd, {"type": "ready", "init_ms": init_ms, "max_rss_mb": max_rss_mb()})
    reader = MessageReader()
    while True:
        request = read_message_blocking(0, reader)
        if request is None:
            return 0
        if request.get("type") != "invoke":
            continue
        context = LambdaContext(function, int(request.get("memory_mb", 128)),
                                int(request.get("timeout_ms", 60_000)),
                                str(request.get("request_id", "")))
        began = time.perf_counter()
        try:
            result = handler(request.get("event"), context)
        except Exception as exc:
            duration = (time.perf_counter() - began) * 1000
            log.error("[ERROR] %s: %s (RequestId: %s)\n%s", type(exc).__name__, exc,
                      context.aws_request_id, "".join(traceback.format_exception(exc)).rstrip())
            reply: dict[str, Any] = {"type": "result", "ok": False, **_error_fields(exc)}
        else:
            duration = (time.perf_counter() - began) * 1000
            reply = {"type": "result", "ok": True, "result": result}
        reply["duration_ms"] = duration
        reply["max_rss_mb"] = max_rss_mb()
        write_message(response_fd, reply)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localgateway worker")
    parser.add_argument("--project-dir", required=True)
    parser.add_argument("--function", required=True)
    parser.add_argument("--response-fd", type=int, required=True)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    # Prints of the app go to the log (stderr), never into the protocol.
    os.dup2(2, 1)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format=f"%(asctime)s [{args.function}] %(name)s %(levelname)s %(message)s",
    )
    for noisy in ("botocore", "urllib3", "boto3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    log = logging.getLogger(f"lambda.{args.function}")
    os.chdir(args.project_dir)
    return serve(os.path.abspath(args.project_dir), args.function, args.response_fd, log)


if __name__ == "__main__":
    sys.exit(main())
