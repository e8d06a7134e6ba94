"""Local SQS in its own process, plus pollers feeding ``on_sqs_message`` handlers.

The SQS endpoint runs in its own process on a free 127.0.0.1 port, so its request handling never
competes with the gateway for the GIL: the built-in :mod:`localgateway.sqs_server` (default;
efficient long polling) or ``python -m moto.server`` (``--sqs-server moto``). Queues are
created from the app's ``@app.on_sqs_message`` handlers (:meth:`LocalQueues.start`); the server
implements ``DelaySeconds``, the visibility timeout and redrive to a dead-letter queue. The
pollers behave like Lambda's SQS event source mapping: batches of up to ``batch_size`` records,
deleted when the handler returns, left to reappear when it raises, and partial batch failures
(``{"batchItemFailures": [{"itemIdentifier": messageId}]}``, ReportBatchItemFailures) honoured.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from localgateway.events import queue_arn, sqs_event, sqs_record
from localgateway.invoker import InvocationError, Invoker, UnknownFunctionError

LOG = logging.getLogger("localgateway.sqs")

#: Bound on the server's start (moto imports Flask and its backends: seconds).
SQS_START_TIMEOUT = 60.0
#: Seconds a stopping SQS server gets after SIGTERM before it is killed.
STOP_GRACE_SECONDS = 5.0
DLQ_SUFFIX = "-dlq"
SQS_SERVERS = ("builtin", "moto")
BUILTIN_SERVER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sqs_server.py")


def die_with_parent() -> None:
    """``preexec_fn`` for helper processes: SIGTERM when the gateway dies (Linux; else no-op)."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class QueueSettings:
    """Attributes of every local queue (SQS's own defaults unless set by flags)."""

    visibility_timeout: int = 30
    #: Receives before a message moves to ``NAME-dlq``; 0 = no dead-letter queue.
    max_receive_count: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.visibility_timeout <= 43200:
            raise ValueError("the visibility timeout must be within 0..43200 seconds")
        if not 0 <= self.max_receive_count <= 1000:
            raise ValueError("maxReceiveCount must be within 0..1000 (0 = no DLQ)")


def dlq_name(queue: str) -> str:
    """``NAME-dlq`` (``NAME-dlq.fifo`` for a FIFO queue, which needs a FIFO DLQ)."""
    if queue.endswith(".fifo"):
        return queue[: -len(".fifo")] + DLQ_SUFFIX + ".fifo"
    return queue + DLQ_SUFFIX


class LocalQueues:
    """An SQS endpoint in its own process, with the app's queues (and their DLQs) created.

    Call :meth:`start` once (raises ``RuntimeError`` if the server does not come up), then
    :meth:`stop` at shutdown.
    """

    def __init__(self, queue_names: Iterable[str], host: str = "127.0.0.1",
                 settings: QueueSettings | None = None, log_path: str | None = None,
                 server: str = "builtin") -> None:
        if server not in SQS_SERVERS:
            raise ValueError(f"unknown SQS server {server!r} (one of {', '.join(SQS_SERVERS)})")
        self.server = server
        self.queue_names = sorted(set(queue_names))
        self.host = host
        self.settings = settings or QueueSettings()
        self.log_path = log_path
        self.endpoint_url = ""
        self.queue_urls: dict[str, str] = {}
        self.dlq_urls: dict[str, str] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._depth_client: Any = None

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        log: Any = subprocess.DEVNULL
        if self.log_path:
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            if self.server == "moto":
                cmd = [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)]
            else:
                # -P: this file's folder stays off sys.path (it has a token.py).
                cmd = [sys.executable, "-P", BUILTIN_SERVER_PATH, "--host", self.host,
                       "--port", str(port)]
            return subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()

    def start(self, timeout: float = SQS_START_TIMEOUT) -> dict[str, str]:
        """Start the server, create the queues; returns queue name -> local URL."""
        deadline = time.monotonic() + timeout
        for _attempt in range(3):
            port = _free_port(self.host)
            process = self._spawn(port)
            while time.monotonic() < deadline and process.poll() is None:
                if _port_open(self.host, port):
                    break
                time.sleep(0.05)
            if process.poll() is None and _port_open(self.host, port):
                self._process = process
                self.endpoint_url = f"http://{self.host}:{port}"
                break
            # Lost the port to another process, or too slow: stop it and try another port.
            process.kill()
            process.wait(timeout=5)
            if time.monotonic() >= deadline:
                break
        if self._process is None:
            raise RuntimeError(f"the local SQS server ({self.server}) did not start within "
                               f"{timeout:.0f} s")
        client = self.client()
        for name in self.queue_names:
            fifo = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
            attributes = {**fifo, "VisibilityTimeout": str(self.settings.visibility_timeout)}
            if self.settings.max_receive_count:
                dlq = client.create_queue(QueueName=dlq_name(name), Attributes=dict(fifo))
                self.dlq_urls[name] = dlq["QueueUrl"]
                arn = queue_arn(dlq_name(name))
                attributes["RedrivePolicy"] = (
                    f'{{"deadLetterTargetArn": "{arn}", '
                    f'"maxReceiveCount": "{self.settings.max_receive_count}"}}'
                )
            self.queue_urls[name] = client.create_queue(
                QueueName=name, Attributes=attributes
            )["QueueUrl"]
        return dict(self.queue_urls)

    def client(self) -> Any:
        """A boto3 SQS client for the local endpoint (bounded timeouts, a few retries)."""
        return boto3.session.Session().client(
            "sqs", endpoint_url=self.endpoint_url, region_name="us-east-1",
            config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3}),
        )

    def depths(self) -> list[dict[str, Any]]:
        """Every queue and dead-letter queue with its message counts (for the live view)."""
        if self._depth_client is None:
            self._depth_client = boto3.session.Session().client(
                "sqs", endpoint_url=self.endpoint_url, region_name="us-east-1",
                config=Config(connect_timeout=1, read_timeout=2,
                              retries={"total_max_attempts": 1}),
            )
        client = self._depth_client
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]
        rows: list[dict[str, Any]] = []
        queues = [(name, url, False) for name, url in sorted(self.queue_urls.items())]
        queues += [(dlq_name(name), url, True) for name, url in sorted(self.dlq_urls.items())]
        for name, url, dead in queues:
            attributes = client.get_queue_attributes(QueueUrl=url, AttributeNames=names)
            values = attributes.get("Attributes", {})
            rows.append({"name": name, "dead_letter": dead,
                         "visible": int(values.get(names[0], 0)),
                         "in_flight": int(values.get(names[1], 0)),
                         "delayed": int(values.get(names[2], 0))})
        return rows

    def stop(self) -> int | None:
        """SIGTERM the server (SIGKILL after :data:`STOP_GRACE_SECONDS`); returns its exit
        status (negative: killed by that signal), or None when it was not running."""
        process, self._process = self._process, None
        if process is None:
            return None
        process.terminate()
        try:
            return process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            LOG.warning("the local SQS server did not stop within %.0f s; killing it",
                        STOP_GRACE_SECONDS)
            process.kill()
            return process.wait(timeout=STOP_GRACE_SECONDS)


def failed_message_ids(result: Any, message_ids: Sequence[str]) -> set[str] | None:
    """The ids a handler reported as failed (``batchItemFailures``), like Lambda.

    Returns an empty set for success, the reported ids for a partial failure, and None when the
    whole batch counts as failed: a malformed response or an id that is not in the batch.
    """
    if not isinstance(result, dict) or "batchItemFailures" not in result:
        return set()
    failures = result["batchItemFailures"]
    if failures is None:
        return set()
    if not isinstance(failures, list):
        return None
    ids: set[str] = set()
    for item in failures:
        identifier = item.get("itemIdentifier") if isinstance(item, dict) else None
        if not isinstance(identifier, str) or identifier not in message_ids:
            return None
        ids.add(identifier)
    return ids


class SqsPoller(threading.Thread):
    """Long-polls one queue for one function, like Lambda's SQS event source mapping."""

    def __init__(
        self,
        client_factory: Callable[[], Any],
        queue_name: str,
        queue_url: str,
        function: str,
        invoker: Invoker,
        batch_size: int = 1,
        region: str = "us-east-1",
        wait_seconds: int = 2,
    ) -> None:
        super().__init__(name=f"sqs-poller-{queue_name}-{function}", daemon=True)
        self._client_factory = client_factory
        self.queue_name = queue_name
        self.queue_url = queue_url
        self.function = function
        self.invoker = invoker
        self.batch_size = max(1, min(int(batch_size), 10))
        self.region = region
        self.wait_seconds = wait_seconds
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        client = self._client_factory()
        while not self._stop_event.is_set():
            try:
                self.poll_once(client)
            except Exception as exc:
                if self._stop_event.is_set():
                    return
                LOG.error("polling %s failed: %s", self.queue_name, exc)
                self._stop_event.wait(1.0)

    def poll_once(self, client: Any) -> int:
        """Receive one batch, invoke the function, delete what succeeded; returns the count
        deleted."""
        response = client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = response.get("Messages") or []
        if not messages:
            return 0
        event = sqs_event(sqs_record(m, self.queue_name, self.region) for m in messages)
        LOG.info("SQS %s -> %s (%d record(s))", self.queue_name, self.function, len(messages))
        try:
            result = self.invoker.invoke(self.function, event)
        except (InvocationError, UnknownFunctionError) as exc:
            LOG.error("SQS handler %s failed; %d message(s) reappear after the visibility "
                      "timeout: %s", self.function, len(messages), getattr(exc, "details", exc))
            return 0
        ids = [str(m.get("MessageId", "")) for m in messages]
        failed = failed_message_ids(result, ids)
        if failed is None:
            LOG.error("SQS handler %s returned malformed batchItemFailures; the whole batch "
                      "reappears after the visibility timeout", self.function)
            return 0
        if failed:
            LOG.info("SQS handler %s reported %d of %d record(s) failed", self.function,
                     len(failed), len(messages))
        done = [m for m in messages if str(m.get("MessageId", "")) not in failed]
        if done:
            client.delete_message_batch(
                QueueUrl=self.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                         for i, m in enumerate(done)],
            )
        return len(done)
