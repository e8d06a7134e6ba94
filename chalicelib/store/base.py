"""The connection store interface, shared by every backend.

API Gateway runs ``$connect``, each message and the welcome follow-up in different Lambda
containers, so nothing about a connection may live in process memory.  Everything goes through a
:class:`ConnectionStore`:

* connection records (who is connected, since when, last activity, whether the welcome went out);
* room memberships (both directions: members of a room, rooms of a connection).

:class:`ConnectionStore` does the shared work (argument checks, expiry, bounded retries of
transient backend failures); a backend fills in the ``_``-prefixed primitives and raises
:class:`TransientStoreError` for failures worth retrying (throttling) and :class:`StoreError`
for the rest.  Backends translate their own exceptions (botocore, sqlite3) at that boundary:
nothing above the store sees a backend exception type.
"""

from __future__ import annotations

import enum
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypedDict, TypeVar

from chalicelib.errors import StoreError
from chalicelib.retry import RetryPolicy

#: API Gateway closes every WebSocket connection after two hours; records live a little longer
#: so that a late ``$disconnect`` still finds them, then expire (DynamoDB TTL, or filtered on read).
MAX_CONNECTION_SECONDS = 7200
EXPIRY_GRACE_SECONDS = 300

#: How many times the base class tries an operation whose backend reported a transient failure.
DEFAULT_ATTEMPTS = 4

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]


class StoreOptions(TypedDict, total=False):
    """The keyword arguments of :meth:`ConnectionStore.__init__`, for backends to pass through."""

    clock: Clock
    sleep: Sleep
    attempts: int
    base_delay: float


class TransientStoreError(StoreError):
    """A backend failure that may succeed when retried (throttling, a busy database)."""


class Claim(enum.Enum):
    """Result of trying to claim a connection's one welcome."""

    #: This caller won the claim: it must send the welcome now.
    CLAIMED = "claimed"
    #: Someone already claimed it (another container, an earlier message).
    ALREADY_CLAIMED = "already_claimed"
    #: No such connection in the store (never registered, removed, or expired).
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ConnectionRecord:
    """What the store knows about one connection."""

    connection_id: str
    connected_at: float
    last_seen: float
    welcomed: bool
    source_ip: str = ""
    user: str | None = None
    #: The management-API endpoint that reaches this connection (for pushes and sweeps, which
    #: run without a WebSocket event to derive it from).
    endpoint: str = ""

    @property
    def expires_at(self) -> float:
        return expires_at(self.connected_at)


def expires_at(connected_at: float) -> float:
    """When a record of a connection opened at ``connected_at`` stops counting."""
    return connected_at + MAX_CONNECTION_SECONDS + EXPIRY_GRACE_SECONDS


class ConnectionStore(ABC):
    """Connection records and room memberships.

    All times are epoch seconds (floats).  ``clock`` and ``sleep`` are injected so tests control
    expiry and retries without waiting.  Every public method is safe to call from several threads,
    raises ``ValueError`` for an empty connection id or room name (a caller bug, never retried),
    :class:`TransientStoreError` when the backend still fails transiently after the bounded retries,
    and :class:`~chalicelib.errors.StoreError` for any other backend failure.
    """

    def __init__(
        self,
        *,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
        attempts: int = DEFAULT_ATTEMPTS,
        base_delay: float = 0.05,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._retry = RetryPolicy(max_attempts=attempts, base_delay=base_delay)

    # ------------------------------------------------------------------ public API

    def register(
        self,
        connection_id: str,
        *,
        connected_at: float,
        source_ip: str = "",
        user: str | None = None,
        endpoint: str = "",
    ) -> None:
        """Record a new connection (idempotent: registering again keeps the welcome state).

        Call from ``$connect``, or when a message arrives from a connection the store does not
        know (its record was lost), so that it heals.
        """
        _check_id(connection_id)
        record = ConnectionRecord(
            connection_id=connection_id,
            connected_at=connected_at,
            last_seen=max(connected_at, self._clock()),
            welcomed=False,
            source_ip=source_ip,
            user=user,
            endpoint=endpoint,
        )
        self._retrying(lambda: self._register(record))

    def get(self, connection_id: str) -> ConnectionRecord | None:
        """The connection's record, or None when unknown or expired."""
        _check_id(connection_id)
        record = self._retrying(lambda: self._get(connection_id))
        if record is None or record.expires_at <= self._clock():
            return None
        return record

    def claim_welcome(self, connection_id: str, *, touch: bool) -> Claim:
        """Atomically claim the connection's single welcome.

        Exactly one caller across all processes ever gets :attr:`Claim.CLAIMED` for a connection.
        With ``touch`` the call also records activity (``last_seen = now``) in the same write, so a
        message costs one store write whether or not it is the first (DynamoDB: the first message
        of a connection costs two, see :mod:`chalicelib.store.dynamodb`).  An expired record counts
        as :attr:`Claim.UNKNOWN`; backends check expiry inside the atomic write.
        """
        _check_id(connection_id)
        now = self._clock()
        return self._retrying(lambda: self._claim_welcome(connection_id, now, touch))

    def remove(self, connection_id: str) -> list[str]:
        """Delete the connection and all its memberships; return the rooms it was in.

        Idempotent: removing an unknown connection returns ``[]``.
        """
        _check_id(connection_id)
        return self._retrying(lambda: self._remove(connection_id))

    def join(self, connection_id: str, room: str) -> int:
        """Add the connection to ``room`` (idempotent); return the member count after joining."""
        _check_id(connection_id)
        _check_room(room)
        now = self._clock()
        return self._retrying(lambda: self._join(connection_id, room, now))

    def leave(self, connection_id: str, room: str) -> bool:
        """Remove the connection from ``room``; True if it was a member."""
        _check_id(connection_id)
        _check_room(room)
        return self._retrying(lambda: self._leave(connection_id, room))

    def is_member(self, connection_id: str, room: str) -> bool:
        _check_id(connection_id)
        _check_room(room)
        return self._retrying(lambda: self._is_member(connection_id, room))

    def rooms_of(self, connection_id: str) -> list[str]:
        """The rooms the connection is in, sorted."""
        _check_id(connection_id)
        return sorted(self._retrying(lambda: self._rooms_of(connection_id)))

    def members(self, room: str) -> list[str]:
        """Connection ids of the room's members (one paginated query, never a scan)."""
        _check_room(room)
        return self._retrying(lambda: list(self._members(room)))

    def admit_message(self, connection_id: str, *, limit: int, window_seconds: int) -> bool:
        """Count one message of the connection against a fixed-window rate limit, atomically.

        Windows are aligned on the clock (``floor(now / window_seconds)``).  Returns True and
        counts the message while fewer than ``limit`` were counted in the current window; returns
        False (counting nothing) once ``limit`` is reached, until the next window starts.  Exact
        across threads, processes and containers sharing the store: the check and the increment
        are one conditional write.  :meth:`remove` deletes the counter.
        """
        _check_id(connection_id)
        if limit < 1 or window_seconds < 1:
            raise ValueError("limit and window_seconds must be at least 1")
        now = self._clock()
        window = int(now // window_seconds) * window_seconds
        return self._retrying(lambda: self._admit_message(connection_id, window, limit, now))

    def idle_connections(self, idle_for: float, limit: int = 1000) -> list[ConnectionRecord]:
        """Connections with no activity for ``idle_for`` seconds (oldest first), for the sweep."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cutoff = self._clock() - idle_for
        return self._retrying(lambda: list(self._idle_connections(cutoff, limit)))

    # ------------------------------------------------------------------ primitives

    @abstractmethod
    def _register(self, record: ConnectionRecord) -> None: ...

    @abstractmethod
    def _get(self, connection_id: str) -> ConnectionRecord | None: ...

    @abstractmethod
    def _claim_welcome(self, connection_id: str, now: float, touch: bool) -> Claim: ...

    @abstractmethod
    def _remove(self, connection_id: str) -> list[str]: ...

    @abstractmethod
    def _join(self, connection_id: str, room: str, now: float) -> int: ...

    @abstractmethod
    def _leave(self, connection_id: str, room: str) -> bool: ...

    @abstractmethod
    def _is_member(self, connection_id: str, room: str) -> bool: ...

    @abstractmethod
    def _rooms_of(self, connection_id: str) -> list[str]: ...

    @abstractmethod
    def _members(self, room: str) -> Iterator[str]: ...

    @abstractmethod
    def _admit_message(self, connection_id: str, window: int, limit: int, now: float) -> bool:
        """Atomically: if the stored window is older than ``window``, start it at 1 (True);
        else if its count is below ``limit``, increment (True); else False."""

    @abstractmethod
    def _idle_connections(self, cutoff: float, limit: int) -> Iterator[ConnectionRecord]: ...

    # ------------------------------------------------------------------ shared machinery

    def _retrying(self, operation: Callable[[], T]) -> T:
        """Run ``operation``, retrying transient failures with capped exponential backoff."""
        for attempt in range(1, self._retry.max_attempts + 1):
            try:
                return operation()
            except TransientStoreError:
                if attempt == self._retry.max_attempts:
                    raise
                self._sleep(self._retry.delay(attempt, random.random))
        raise AssertionError("unreachable")  # pragma: no cover


def _check_id(connection_id: str) -> None:
    if not connection_id or not isinstance(connection_id, str):
        raise ValueError("connection_id must be a non-empty string")


def _check_room(room: str) -> None:
    if not room or not isinstance(room, str):
        raise ValueError("room must be a non-empty string")
