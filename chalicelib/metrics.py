"""Operational metrics, recorded by the decision code through a small injected interface.

:class:`Recorder` is all :mod:`chalicelib.service` and :mod:`chalicelib.delivery` know about
metrics: ``count(name, value)`` and ``timing(name, milliseconds)``.  Nothing here imports
Powertools, so the decision code stays testable with :class:`Tally` (in memory) or
:data:`NULL_RECORDER`.  In Lambda, :mod:`chalicelib.runtime` injects one process-wide
:class:`Tally`, and :mod:`chalicelib.observability` drains it into **one** CloudWatch Embedded
Metric Format blob at the end of each invocation (Powertools ``Metrics``): counters are summed
per invocation, never one blob (or one value) per delivery.

The names are a contract: the alarms and the dashboard of the deployed stack (deploy/monitoring.py)
and docs/operations.md use them.
"""

from __future__ import annotations

import threading
from typing import Protocol

#: The ``service`` dimension (and Powertools' service name): Chalice's app name.
SERVICE = "ws-rooms"
#: ``METRICS_NAMESPACE`` when unset.
DEFAULT_NAMESPACE = "WsRooms"

#: Client frames received (``$default`` invocations that reached the service).
MESSAGES_IN = "MessagesIn"
#: Frames API Gateway accepted (PostToConnection answered 200): replies, welcomes, room messages.
DELIVERIES = "Deliveries"
#: 410 answers from ``@connections`` (posts and GetConnection): the connection was closed.
GONE = "Gone"
#: 403 answers from ``@connections``: the function's IAM policy or the endpoint is wrong.
FORBIDDEN = "Forbidden"
#: 429 answers seen, each one, before any retry.
THROTTLED = "Throttled"
#: Frames given up on: still throttled/failing after the bounded retries, or over 128 KB.
DELIVERY_FAILURES = "DeliveryFailures"
#: Client frames refused by the per-connection rate limit.
RATE_LIMITED = "RateLimited"
#: ``$connect`` refused by authentication (401/403; the reason is in the log, not a dimension).
AUTH_REFUSED = "AuthRefused"
#: Welcomes delivered with the reply to the client's first message.
WELCOMES_FIRST_MESSAGE = "WelcomesFirstMessage"
#: Welcomes delivered by the delayed SQS follow-up.
WELCOMES_FOLLOW_UP = "WelcomesFollowUp"
#: Time to deliver one room message inline, or to hand it to the fan-out queue (milliseconds).
FANOUT_MS = "FanOutMs"
#: Recipients handed to the fan-out queue (large rooms, and re-enqueued failures).
FANOUT_QUEUED = "FanOutQueued"

COUNTERS = (
    MESSAGES_IN, DELIVERIES, GONE, FORBIDDEN, THROTTLED, DELIVERY_FAILURES, RATE_LIMITED,
    AUTH_REFUSED, WELCOMES_FIRST_MESSAGE, WELCOMES_FOLLOW_UP, FANOUT_QUEUED,
)
TIMINGS = (FANOUT_MS,)
#: Every metric name the app emits.
NAMES = (*COUNTERS, *TIMINGS)
#: EMF allows at most 100 values per metric in one document (and Powertools prints a document as
#: soon as one metric holds 100): later timings of one invocation
#: are dropped (an invocation rarely fans out more than a few messages).
MAX_TIMINGS = 99


class Recorder(Protocol):
    """Where the decision code reports what happened.  Implementations are thread-safe."""

    def count(self, name: str, value: int = 1) -> None: ...

    def timing(self, name: str, milliseconds: float) -> None: ...


class NullRecorder:
    """Records nothing (the default of :class:`Messaging` and :class:`Deliverer`)."""

    def count(self, name: str, value: int = 1) -> None:
        return None

    def timing(self, name: str, milliseconds: float) -> None:
        return None


NULL_RECORDER = NullRecorder()


class Tally:
    """Counters and timings in memory, thread-safe; :meth:`drain` takes and resets them.

    Unknown names are refused (a typo would silently create a metric nobody alarms on).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._timings: dict[str, list[float]] = {}

    def count(self, name: str, value: int = 1) -> None:
        if name not in COUNTERS:
            raise ValueError(f"unknown counter {name!r}")
        if value:
            with self._lock:
                self._counts[name] = self._counts.get(name, 0) + value

    def timing(self, name: str, milliseconds: float) -> None:
        if name not in TIMINGS:
            raise ValueError(f"unknown timing {name!r}")
        with self._lock:
            values = self._timings.setdefault(name, [])
            if len(values) < MAX_TIMINGS:
                values.append(round(milliseconds, 3))

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def timings(self) -> dict[str, list[float]]:
        with self._lock:
            return {name: list(values) for name, values in self._timings.items()}

    def drain(self) -> tuple[dict[str, int], dict[str, list[float]]]:
        """Everything recorded since the last drain, and start afresh."""
        with self._lock:
            counts, timings = self._counts, self._timings
            self._counts, self._timings = {}, {}
        return counts, timings
