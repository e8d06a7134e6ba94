"""Delivery through the API Gateway management API: one call per message, typed outcomes.

:class:`Deliverer` wraps one ``apigatewaymanagementapi`` client (one per endpoint, reused for
every send) and turns each PostToConnection into an :class:`Outcome`:

* ``DELIVERED``: 200.
* ``GONE``: 410. The connection is closed; the caller prunes exactly that connection.
* ``FORBIDDEN``: 403. IAM or endpoint misconfiguration, not the client's fault: logged at
  WARNING with the target and never pruned (pruning would silently drop live clients).
* ``TOO_LARGE``: the frame exceeds 128 KB, refused before any call (or a 413 from the service).
* ``FAILED``: throttling (429), 5xx or a network error that outlasted the bounded retries
  (logged at WARNING with the target).

Each answer is also counted on the injected :class:`~chalicelib.metrics.Recorder`: ``Deliveries``,
``Gone``, ``Forbidden``, ``DeliveryFailures`` per post, and ``Throttled`` for every 429 seen,
before any retry.  Per-delivery detail is logged at DEBUG only.

There is deliberately no verify-before-send: GetConnection doubles the calls and still races
with the close.  :meth:`Deliverer.verify` exists for the welcome follow-up and the sweep, where
nothing is being delivered.

:func:`fan_out` delivers one payload to many connections with bounded concurrency; it does not
decide who receives (the caller does) and does not prune (the caller does, from the report).
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib import metrics
from chalicelib.metrics import NULL_RECORDER, Recorder
from chalicelib.protocol import MAX_MESSAGE_BYTES
from chalicelib.retry import RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient

logger = logging.getLogger(__name__)

__all__ = [
    "CallCounter",
    "Deliverer",
    "FanOutReport",
    "Liveness",
    "Outcome",
    "RetryPolicy",
    "fan_out",
]

Sleep = Callable[[float], None]


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    GONE = "gone"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"
    FAILED = "failed"


class Liveness(enum.Enum):
    """What GetConnection said about a connection."""

    ALIVE = "alive"
    GONE = "gone"
    #: The check itself failed (403, throttled past the bound...): decide nothing from it.
    UNKNOWN = "unknown"


class _Kind(enum.Enum):
    OK = "ok"
    GONE = "gone"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"
    RETRYABLE = "retryable"
    FATAL = "fatal"


_RETRYABLE_CODES = {
    "LimitExceededException",
    "ThrottlingException",
    "TooManyRequestsException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "ServiceUnavailableException",
}


def _throttled(exc: Exception) -> bool:
    if not isinstance(exc, ClientError):
        return False
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status == 429 or code in (
        "LimitExceededException", "ThrottlingException", "TooManyRequestsException")


def _classify(exc: Exception) -> _Kind:
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        # The status is checked too: peers that answer a bare 410 without x-amzn-ErrorType
        # surface as ClientError('410'), and that connection is just as gone.
        if code == "GoneException" or status == 410:
            return _Kind.GONE
        if code == "ForbiddenException" or status == 403:
            return _Kind.FORBIDDEN
        if code == "PayloadTooLargeException" or status == 413:
            return _Kind.TOO_LARGE
        if code in _RETRYABLE_CODES or status == 429 or status >= 500:
            return _Kind.RETRYABLE
        return _Kind.FATAL
    if isinstance(exc, BotoCoreError):
        # Connection refused/reset, read timeouts: the call may not have happened at all.
        return _Kind.RETRYABLE
    return _Kind.FATAL


@dataclass
class CallCounter:
    """Management-API calls made, by operation (thread-safe); benchmarks and tests read it."""

    posts: int = 0
    gets: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, operation: str) -> None:
        with self._lock:
            if operation == "post":
                self.posts += 1
            else:
                self.gets += 1


class Deliverer:
    """Sends frames to connections through one management-API client.

    Create one per endpoint and keep it for the container's life; it is thread-safe (boto3
    clients are).  ``sleep`` and ``rng`` are injected so retry tests do not wait; ``recorder``
    receives the metrics (:mod:`chalicelib.metrics`).
    """

    def __init__(
        self,
        client: ApiGatewayManagementApiClient,
        *,
        retry: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
        rng: Callable[[], float] = random.random,
        recorder: Recorder = NULL_RECORDER,
    ) -> None:
        self.client = client
        self.recorder = recorder
        self.retry = retry or RetryPolicy()
        self.calls = CallCounter()
        self._sleep = sleep
        self._rng = rng

    def post(self, connection_id: str, payload: bytes) -> Outcome:
        """Deliver ``payload`` as one text frame; never raises for AWS errors.

        Call once per recipient per message.  Returns :attr:`Outcome.TOO_LARGE` without any call
        when the payload is over 128 KB.
        """
        if len(payload) > MAX_MESSAGE_BYTES:
            outcome, attempts, error = Outcome.TOO_LARGE, 0, None
        else:
            kind, attempts, error = self._call("post", connection_id, payload)
            outcome = {
                _Kind.OK: Outcome.DELIVERED,
                _Kind.GONE: Outcome.GONE,
                _Kind.FORBIDDEN: Outcome.FORBIDDEN,
                _Kind.TOO_LARGE: Outcome.TOO_LARGE,
            }.get(kind, Outcome.FAILED)
        self.recorder.count(_OUTCOME_METRIC[outcome])
        if outcome in (Outcome.DELIVERED, Outcome.GONE):
            logger.debug("post to %s: %s", connection_id, outcome.value,
                         extra={"target_connection_id": connection_id, "outcome": outcome.value})
        else:
            self._warn("post", connection_id, outcome.value, attempts, error)
        return outcome

    def verify(self, connection_id: str) -> Liveness:
        """Ask API Gateway whether the connection is open (GetConnection)."""
        kind, attempts, error = self._call("get", connection_id, b"")
        if kind is _Kind.OK:
            return Liveness.ALIVE
        if kind is _Kind.GONE:
            self.recorder.count(metrics.GONE)
            return Liveness.GONE
        if kind is _Kind.FORBIDDEN:
            self.recorder.count(metrics.FORBIDDEN)
        self._warn("get", connection_id, Liveness.UNKNOWN.value, attempts, error)
        return Liveness.UNKNOWN

    def _warn(self, operation: str, connection_id: str, outcome: str, attempts: int,
              error: Exception | None) -> None:
        """One WARNING line per refused or given-up call, naming the target and the outcome."""
        if error is not None and _classify(error) is _Kind.FORBIDDEN:
            text = (f"management API refused {operation} on {connection_id} with 403: check the"
                    " function's execute-api:ManageConnections permission and the endpoint"
                    f" ({self.client.meta.endpoint_url})")
        elif error is not None and _classify(error) is _Kind.RETRYABLE:
            text = (f"management API {operation} on {connection_id} still failing after"
                    f" {attempts} attempts: {error}")
        elif error is not None:
            text = f"management API {operation} on {connection_id} failed: {error}"
        else:
            text = (f"management API {operation} on {connection_id} not attempted: the frame is"
                    " over 128 KB")
        logger.warning("%s (outcome %s)", text, outcome,
                       extra={"target_connection_id": connection_id, "outcome": outcome,
                              "operation": operation, "attempts": attempts})

    def _call(
        self, operation: str, connection_id: str, payload: bytes
    ) -> tuple[_Kind, int, Exception | None]:
        """(what the last attempt answered, attempts made, the last error)."""
        kind = _Kind.FATAL
        error: Exception | None = None
        attempt = 0
        for attempt in range(1, self.retry.max_attempts + 1):
            self.calls.count(operation)
            try:
                if operation == "post":
                    self.client.post_to_connection(ConnectionId=connection_id, Data=payload)
                else:
                    self.client.get_connection(ConnectionId=connection_id)
                return _Kind.OK, attempt, None
            except (ClientError, BotoCoreError) as exc:
                error = exc
                kind = _classify(exc)
                if _throttled(exc):
                    self.recorder.count(metrics.THROTTLED)
                if kind is not _Kind.RETRYABLE:
                    return kind, attempt, exc
                if attempt < self.retry.max_attempts:
                    self._sleep(self.retry.delay(attempt, self._rng))
        return kind, attempt, error


_OUTCOME_METRIC = {
    Outcome.DELIVERED: metrics.DELIVERIES,
    Outcome.GONE: metrics.GONE,
    Outcome.FORBIDDEN: metrics.FORBIDDEN,
    Outcome.TOO_LARGE: metrics.DELIVERY_FAILURES,
    Outcome.FAILED: metrics.DELIVERY_FAILURES,
}


@dataclass
class FanOutReport:
    """What happened to each recipient of one fan-out."""

    delivered: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    forbidden: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    too_large: list[str] = field(default_factory=list)

    def add(self, connection_id: str, outcome: Outcome) -> None:
        getattr(self, outcome.value).append(connection_id)


def fan_out(
    deliverer: Deliverer,
    recipients: Sequence[str],
    payload: bytes,
    executor: Executor | None,
) -> FanOutReport:
    """Post ``payload`` to every recipient; concurrency is the executor's (bounded) size.

    With no executor, or one recipient, posts run inline in the caller's thread.
    """
    report = FanOutReport()
    if len(payload) > MAX_MESSAGE_BYTES:
        for connection_id in recipients:
            report.add(connection_id, Outcome.TOO_LARGE)
        return report
    if executor is None or len(recipients) <= 1:
        for connection_id in recipients:
            report.add(connection_id, deliverer.post(connection_id, payload))
        return report
    outcomes = executor.map(lambda cid: deliverer.post(cid, payload), recipients)
    for connection_id, outcome in zip(recipients, outcomes, strict=True):
        report.add(connection_id, outcome)
    return report
