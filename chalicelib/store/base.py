"""The connection store interface, shared by every backend.

API Gateway runs ``$connect``, each message and the welcome follow-up in different Lambda
containers, so nothing about a connection may live in process memory.  Everything goes through a
:class:`ConnectionStore`:

* connection records (who is connected, since when, when last seen alive, whether the welcome went
  out, the message-rate counter);
* room memberships (both directions: members of a room, rooms of a connection) and each room's
  member count.

:class:`ConnectionStore` does the work that is the same everywhere: argument checks, expiry,
bounded retries of transient backend failures, and every *decision* (is a welcome owed, is the
message within the rate limit, is the activity time stale).  A backend fills in the ``_``-prefixed
primitives, each a single read or a single conditional write, and translates its own exceptions
where it makes the call: :class:`TransientStoreError` for failures worth retrying (throttling),
:class:`~chalicelib.errors.StoreError` for the rest.  Nothing above the store sees a backend
exception type.

Costs, the reason for this shape (see docs/capacity.md for the measured figures):

* a steady message (:meth:`ConnectionStore.admit`) is one read (the connection's record) and one
  write: the rate counter, an atomic conditional increment on an item of the current window,
  counted per user (per connection with authentication off); the record itself is written only
  to claim the welcome and to move the activity time (at most once a minute);
* the activity time (``last_seen``, the sweep's index key) moves at most once per
  :data:`ACTIVITY_RESOLUTION_SECONDS`, so steady traffic rarely writes an index entry;
* joining reads and writes a per-room counter, never the whole room.
"""

from __future__ import annotations

import enum
import functools
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

#: ``last_seen`` moves at most this often on message traffic: it is the sweep index's sort key,
#: and every move is an index write.  The sweep's idle threshold is minutes, so a minute is exact
#: enough.
ACTIVITY_RESOLUTION_SECONDS = 60

#: How many times the base class tries an operation whose backend reported a transient failure.
DEFAULT_ATTEMPTS = 4
#: How many read-decide-write rounds :meth:`ConnectionStore.admit` makes when other writers keep
#: changing the record between its read and its write (concurrent frames of one connection).
ADMIT_ROUNDS = 10

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
    #: When the connection was last known to be alive: registration, message activity (moved at
    #: most once per :data:`ACTIVITY_RESOLUTION_SECONDS`) or a sweep's verification.
    last_seen: float
    welcomed: bool
    source_ip: str = ""
    user: str | None = None
    #: The management-API endpoint that reaches this connection (for pushes and sweeps, which
    #: run without a WebSocket event to derive it from).
    endpoint: str = ""
    #: The connection's room capabilities in chalicelib.capabilities' stored form (None: all).
    capabilities: str | None = None

    @property
    def expires_at(self) -> float:
        return expires_at(self.connected_at)


@dataclass(frozen=True)
class IdleConnection:
    """A sweep candidate: what the sweep needs, and all that the sweep index holds."""

    connection_id: str
    connected_at: float
    last_seen: float
    endpoint: str = ""


@dataclass(frozen=True)
class Admission:
    """What :meth:`ConnectionStore.admit` decided about one client message."""

    #: CLAIMED: this message must be preceded by the welcome; UNKNOWN: no live record.
    claim: Claim
    #: False when the message is over the rate limit (it was not counted).
    admitted: bool
    #: The record as the decision saw it (its ``user`` serves the send without another read);
    #: None when the claim is UNKNOWN.
    record: ConnectionRecord | None


@dataclass(frozen=True)
class RecordChange:
    """One conditional write to a connection record, computed by :meth:`ConnectionStore.admit`.

    Backends apply it only if the record still has the ``welcomed`` and ``connected_at`` values
    of the record the decision was made on.
    """

    #: Set the welcome as sent (the claim).
    claim_welcome: bool = False
    #: New ``last_seen`` (moves the sweep index entry), or None to leave it.
    last_seen: float | None = None

    @property
    def empty(self) -> bool:
        return not self.claim_welcome and self.last_seen is None


@dataclass(frozen=True)
class JoinResult:
    """What :meth:`ConnectionStore.join` did."""

    #: The room's member count (connections) after the join.
    members: int
    #: False when the connection was already a member (nothing changed).
    new: bool


@dataclass(frozen=True)
class Removal:
    """What :meth:`ConnectionStore.remove` deleted."""

    #: The user stored with the connection (None when unknown or never authenticated).
    user: str | None
    #: The rooms the connection was in, sorted.
    rooms: list[str]


@dataclass(frozen=True)
class StoredMessage:
    """One message of a room's history (protocol v2)."""

    seq: int
    mid: str
    sender: str
    #: The message's ``data``, as compact JSON text (stored as sent, re-embedded on replay).
    data_json: str
    #: Epoch milliseconds when it was accepted.
    ts: int


@dataclass(frozen=True)
class SendRecord:
    """An accepted ``send``, remembered for idempotency: its ``seq`` and ``mid``."""

    seq: int
    mid: str


@dataclass(frozen=True)
class Presence:
    """Who is in a room: users and their connection counts (at most the requested number)."""

    users: list[tuple[str, int]]
    #: The exact number of distinct users present.
    count: int

    @property
    def truncated(self) -> bool:
        return len(self.users) < self.count


#: The ops letters of a membership that recorded none (every operation).
ALL_OPS = "sphr"


def expires_at(connected_at: float) -> float:
    """When a record of a connection opened at ``connected_at`` stops counting."""
    return connected_at + MAX_CONNECTION_SECONDS + EXPIRY_GRACE_SECONDS


def plan_admission(record: ConnectionRecord, now: float) -> tuple[Claim, RecordChange]:
    """Decide what one message changes on ``record``: the welcome claim and the activity time.

    Pure (no I/O), so every backend shares one decision.  The change is empty for a welcomed
    connection whose activity time is fresh: then the record is not written at all.
    """
    claim = Claim.ALREADY_CLAIMED if record.welcomed else Claim.CLAIMED
    stale = now - record.last_seen >= ACTIVITY_RESOLUTION_SECONDS
    return claim, RecordChange(claim_welcome=claim is Claim.CLAIMED,
                               last_seen=now if stale else None)


def rate_key(record: ConnectionRecord) -> str:
    """Whose message budget a message spends: the user's (every connection of it together),
    or the connection's when it has no user (authentication off)."""
    return f"u:{record.user}" if record.user else f"c:{record.connection_id}"


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
        capabilities: str | None = None,
    ) -> None:
        """Record a new connection (idempotent: registering again keeps the welcome state).

        Call from ``$connect``, or when a message arrives from a connection the store does not
        know (its record was lost), so that it heals.  One write.
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
            capabilities=capabilities,
        )
        self._retrying(lambda: self._register(record))

    def get(self, connection_id: str) -> ConnectionRecord | None:
        """The connection's record, or None when unknown or expired.  One read."""
        _check_id(connection_id)
        record = self._retrying(lambda: self._get(connection_id))
        if record is None or record.expires_at <= self._clock():
            return None
        return record

    def admit(self, connection_id: str, *, rate_limit: int, window_seconds: int) -> Admission:
        """Account for one client message: welcome claim, activity, and the rate limit.

        Call once per frame a client sends, before acting on it.  One read of the record; a
        conditional write of it only to claim the welcome if still owed or to move ``last_seen``
        when older than :data:`ACTIVITY_RESOLUTION_SECONDS`; then one atomic conditional
        increment of the rate counter of the current fixed window (``rate_limit`` messages per
        ``window_seconds``, windows aligned on the clock; 0 turns it off), shared by every
        connection of the record's user (:func:`rate_key`).  A message over the limit is not
        counted.  Exactly one caller across all processes ever sees :attr:`Claim.CLAIMED` for a
        connection (this and :meth:`claim_welcome` share the claim).  When another writer
        changes the record between the read and the write, the round is repeated (at most
        :data:`ADMIT_ROUNDS` times, then TransientStoreError).
        """
        _check_id(connection_id)
        if rate_limit < 0 or window_seconds < 1:
            raise ValueError("rate_limit must be >= 0 and window_seconds >= 1")
        for round_ in range(ADMIT_ROUNDS):
            if round_:
                # Lost a race with another frame of the same connection: back off a little.
                self._sleep(self._retry.delay(round_, random.random))
            now = self._clock()
            record = self._retrying(lambda: self._get(connection_id))
            if record is None or record.expires_at <= now:
                return Admission(Claim.UNKNOWN, True, None)
            claim, change = plan_admission(record, now)
            if not change.empty and not self._retrying(
                functools.partial(self._apply_change, connection_id, record, change)
            ):
                continue
            admitted = True
            if rate_limit > 0:
                window = int(now // window_seconds) * window_seconds
                key = rate_key(record)
                # The counter's item outlives its window a little (late, skewed clocks).
                expires = window + window_seconds + ACTIVITY_RESOLUTION_SECONDS
                admitted = self._retrying(functools.partial(
                    self._count_message, key, window, rate_limit, expires))
            return Admission(claim, admitted, record)
        raise TransientStoreError(
            f"admit {connection_id}: the record kept changing ({ADMIT_ROUNDS} rounds)"
        )

    def claim_welcome(self, connection_id: str) -> Claim:
        """Atomically claim the connection's single welcome (the follow-up's path).  One write.

        Exactly one caller across all processes ever gets :attr:`Claim.CLAIMED` for a connection,
        whether it comes through here or through :meth:`admit`.  An expired record counts as
        :attr:`Claim.UNKNOWN`; backends check expiry inside the atomic write.
        """
        _check_id(connection_id)
        now = self._clock()
        return self._retrying(lambda: self._claim_welcome(connection_id, now))

    def mark_checked(self, connection_id: str) -> bool:
        """Record that the sweep checked the connection now: it moves to the back of the sweep.

        Call from the sweep after GetConnection answered, so the next run reaches the records
        behind this one.  One write; False when the record is gone (nothing is created).
        """
        _check_id(connection_id)
        now = self._clock()
        return self._retrying(lambda: self._mark_checked(connection_id, now))

    def remove(self, connection_id: str) -> Removal:
        """Delete the connection and all its memberships; return its user and rooms.

        Idempotent: removing an unknown connection returns no rooms.  Each room's member count
        drops by one for every membership actually removed.  Presence is the caller's to update
        (:meth:`presence_exit` per room), with the returned user.
        """
        _check_id(connection_id)
        return self._retrying(lambda: self._remove(connection_id))

    def join(
        self, connection_id: str, room: str, *, user: str | None = None, ops: str | None = None
    ) -> JoinResult:
        """Add the connection to ``room`` (idempotent); return the member count after joining.

        Costs O(1) in the room's size: the count is a counter, moved only when the membership is
        new (``JoinResult.new``).  ``user`` and ``ops`` (the operations granted in the room, as
        chalicelib.capabilities letters; None: all) are kept on the membership; joining again
        updates ``ops``.
        """
        _check_id(connection_id)
        _check_room(room)
        now = self._clock()
        return self._retrying(lambda: self._join(connection_id, room, user, ops, now))

    def membership(self, connection_id: str, room: str) -> str | None:
        """The operations recorded on the membership (letters; ``"sphr"`` when none were
        recorded), or None when the connection is not in ``room``.  One read."""
        _check_id(connection_id)
        _check_room(room)
        return self._retrying(lambda: self._membership(connection_id, room))

    def connections_of_user(self, user: str) -> list[str]:
        """The live connections registered with ``user`` (for sending to a user).  One read."""
        if not user:
            raise ValueError("user must be a non-empty string")
        now = self._clock()
        return sorted(self._retrying(lambda: self._user_connections(user, now)))

    def remember_claims(self, connection_id: str, claims_json: str) -> None:
        """Keep the token's claims beside the connection (for the app's join authoriser; a
        separate item, so the record a message rewrites stays small).  One write."""
        _check_id(connection_id)
        self._retrying(lambda: self._put_claims(connection_id, claims_json))

    def claims_of(self, connection_id: str) -> str | None:
        """The claims :meth:`remember_claims` kept (None when none).  One read."""
        _check_id(connection_id)
        return self._retrying(lambda: self._claims(connection_id))

    def leave(self, connection_id: str, room: str) -> bool:
        """Remove the connection from ``room``; True if it was a member."""
        _check_id(connection_id)
        _check_room(room)
        return self._retrying(lambda: self._leave(connection_id, room))

    def is_member(self, connection_id: str, room: str) -> bool:
        """Whether the connection is in ``room``.  One read."""
        _check_id(connection_id)
        _check_room(room)
        return self._retrying(lambda: self._is_member(connection_id, room))

    def member_count(self, room: str) -> int:
        """The room's member count (the counter :meth:`join` maintains).  One read."""
        _check_room(room)
        return max(0, self._retrying(lambda: self._member_count(room)))

    def rooms_of(self, connection_id: str) -> list[str]:
        """The rooms the connection is in, sorted."""
        _check_id(connection_id)
        return sorted(self._retrying(lambda: self._rooms_of(connection_id)))

    def member_pages(
        self, room: str, page_size: int = 1000, *, start_after: str | None = None
    ) -> Iterator[list[str]]:
        """The room's member connection ids, in pages of at most ``page_size``, sorted.

        Each page is one read (a Query page in DynamoDB); a large room is never held in one list
        unless the caller does so.  ``start_after`` resumes after that id (the last one of a
        page already read).  Yields nothing for an empty room.
        """
        _check_room(room)
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        after = start_after
        while True:
            page, after = self._retrying(
                functools.partial(self._members_page, room, after, page_size)
            )
            if page:
                yield page
            if after is None:
                return

    def members(self, room: str) -> list[str]:
        """Every member connection id of the room, sorted (all pages)."""
        return [member for page in self.member_pages(room) for member in page]

    # ------------------------------------------------------------------ protocol v2

    def publish(
        self, room: str, *, mid: str, sender: str, data_json: str, ts: int, keep: int,
        ttl_seconds: int,
    ) -> int:
        """Accept a message into ``room``: allocate its sequence number; keep it in history.

        The room's head rises by exactly one (one write); with ``keep > 0`` the message is also
        stored for ``ttl_seconds`` (one more write), and readers only see the last ``keep``.  A
        failure after the first write burns that number: readers see a gap.  Returns the seq.
        """
        _check_room(room)
        seq = self._retrying(lambda: self._next_seq(room))
        if keep > 0:
            message = StoredMessage(seq, mid, sender, data_json, ts)
            expiry = int(ts // 1000) + ttl_seconds
            self._retrying(lambda: self._put_message(room, message, expiry))
        return seq

    def head(self, room: str) -> int:
        """The room's last sequence number (0 before its first message).  One read."""
        _check_room(room)
        return self._retrying(lambda: self._head(room))

    def history(
        self, room: str, *, after: int, upto: int, head: int, limit: int, keep: int,
        ttl_seconds: int,
    ) -> list[StoredMessage]:
        """Retained messages with ``after < seq <= upto``: the newest ``limit``, ascending.

        Retained: among the room's last ``keep`` (``seq > head - keep``) and younger than
        ``ttl_seconds`` (filtered on read; DynamoDB's TTL deletes them later).  Bounded reads:
        one Query page per 1 MB, never one read per message.
        """
        _check_room(room)
        upto = min(upto, head)
        low = max(after, head - keep)
        if keep <= 0 or limit < 1 or low >= upto:
            return []
        oldest_ms = int((self._clock() - ttl_seconds) * 1000)
        found = self._retrying(lambda: self._messages(room, low, upto, limit))
        return [m for m in found if m.ts > oldest_ms]

    def forget_message(self, room: str, seq: int) -> None:
        """Delete one message from the room's history (a duplicate that lost a race)."""
        _check_room(room)
        self._retrying(lambda: self._delete_message(room, seq))

    def recall_send(self, user: str, room: str, request_id: str) -> SendRecord | None:
        """The accepted send ``request_id`` of ``user`` in ``room``, if remembered.  One read."""
        _check_room(room)
        now = self._clock()
        return self._retrying(lambda: self._recall_send(user, room, request_id, now))

    def remember_send(
        self, user: str, room: str, request_id: str, record: SendRecord, ttl_seconds: int,
    ) -> SendRecord | None:
        """Remember an accepted send for ``ttl_seconds``; one conditional write.

        Returns None when this call remembered it, or the record already there (another send
        with the same id won a race): the caller's message is then the duplicate.
        """
        _check_room(room)
        now = self._clock()
        return self._retrying(
            lambda: self._remember_send(user, room, request_id, record, now + ttl_seconds, now))

    def presence_enter(self, room: str, user: str) -> int:
        """One more connection of ``user`` in ``room``; returns the user's connections there.

        1 means the user just arrived (announce ``join``).  One write.
        """
        _check_room(room)
        now = self._clock()
        count = self._retrying(lambda: self._presence_add(room, user, 1, now))
        return 1 if count is None else count

    def presence_exit(self, room: str, user: str) -> int | None:
        """One connection of ``user`` fewer in ``room``; returns the user's connections left.

        0 means the user just left (announce ``leave``); None means the user was not present
        (nothing to announce).  One or two writes.
        """
        _check_room(room)
        now = self._clock()
        return self._retrying(lambda: self._presence_add(room, user, -1, now))

    def presence(self, room: str, limit: int = 1000) -> Presence:
        """The room's users with their connection counts (at most ``limit``), and the exact
        number of users (a count over the presence items: O(users / 4 KB) reads)."""
        _check_room(room)
        return self._retrying(lambda: self._presence(room, limit))

    def idle_connections(self, idle_for: float, limit: int = 1000) -> list[IdleConnection]:
        """At most ``limit`` connections not seen alive for ``idle_for`` seconds, oldest first.

        The sweep's work list.  Checked records are moved with :meth:`mark_checked` and removed
        ones disappear, so successive calls reach every record.
        """
        if limit < 1:
            raise ValueError("limit must be at least 1")
        cutoff = self._clock() - idle_for
        found = self._retrying(lambda: self._idle_connections(cutoff, limit))
        return sorted(found, key=lambda idle: idle.last_seen)[:limit]

    def is_past_limit(self, idle: IdleConnection | ConnectionRecord) -> bool:
        """True when API Gateway's two-hour limit has closed the connection for certain."""
        return idle.connected_at + MAX_CONNECTION_SECONDS <= self._clock()

    # ------------------------------------------------------------------ primitives
    # Each is one read or one (conditional) write, unless its docstring says otherwise; none
    # retries, none checks expiry unless it says so.

    @abstractmethod
    def _register(self, record: ConnectionRecord) -> None:
        """Create or overwrite the record, keeping ``welcomed`` if present.
        Returns nothing; raises StoreError/TransientStoreError."""

    @abstractmethod
    def _get(self, connection_id: str) -> ConnectionRecord | None:
        """The stored record (expired or not), or None.  A strongly consistent read."""

    @abstractmethod
    def _apply_change(
        self, connection_id: str, expected: ConnectionRecord, change: RecordChange
    ) -> bool:
        """Apply ``change`` if the record still exists with ``expected``'s ``connected_at`` and
        ``welcomed``; True if applied, False if not."""

    @abstractmethod
    def _count_message(self, key: str, window: int, limit: int, expires: int) -> bool:
        """Atomically count one message of ``key`` in ``window`` if fewer than ``limit`` were
        counted there (True), else count nothing (False).  A newer window starts from zero;
        ``expires`` (epoch seconds) is when the window's count may be forgotten."""

    @abstractmethod
    def _claim_welcome(self, connection_id: str, now: float) -> Claim:
        """Set the welcome as sent if the record is live at ``now`` and not yet welcomed:
        CLAIMED if this call set it, ALREADY_CLAIMED if it was set, UNKNOWN if no live record."""

    @abstractmethod
    def _mark_checked(self, connection_id: str, now: float) -> bool:
        """Set ``last_seen = now`` on an existing record; True if there was one."""

    @abstractmethod
    def _remove(self, connection_id: str) -> Removal:
        """Delete the record and every membership (both sides), decrementing each room's counter
        once per membership removed; return the record's user and the rooms, sorted.  Must stay
        correct when retried after a partial failure."""

    @abstractmethod
    def _join(
        self, connection_id: str, room: str, user: str | None, ops: str | None, now: float
    ) -> JoinResult:
        """Add both sides of the membership (``ops`` overwritten when it exists); increment the
        counter only if it is new; return the counter and whether it was new."""

    @abstractmethod
    def _membership(self, connection_id: str, room: str) -> str | None:
        """The membership's recorded ops (``"sphr"`` if none recorded), None if no membership."""

    @abstractmethod
    def _user_connections(self, user: str, now: float) -> list[str]:
        """Connections registered with ``user`` whose records have not expired at ``now``."""

    @abstractmethod
    def _put_claims(self, connection_id: str, claims_json: str) -> None:
        """Store the claims item (replacing one)."""

    @abstractmethod
    def _claims(self, connection_id: str) -> str | None:
        """The claims item, or None."""

    @abstractmethod
    def _leave(self, connection_id: str, room: str) -> bool:
        """Delete both sides of the membership; decrement the counter only if one was deleted;
        True if it existed."""

    @abstractmethod
    def _is_member(self, connection_id: str, room: str) -> bool:
        """Whether the room side of the membership exists."""

    @abstractmethod
    def _member_count(self, room: str) -> int:
        """The room's counter (0 when none)."""

    @abstractmethod
    def _rooms_of(self, connection_id: str) -> list[str]:
        """The rooms of the connection (any order)."""

    @abstractmethod
    def _members_page(
        self, room: str, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        """Up to ``limit`` member ids greater than ``after``, ascending, and the cursor to pass
        next (None when this page is the last)."""

    @abstractmethod
    def _next_seq(self, room: str) -> int:
        """Increment the room's head atomically; return the new value (1 for the first)."""

    @abstractmethod
    def _head(self, room: str) -> int:
        """The room's head (0 when none)."""

    @abstractmethod
    def _put_message(self, room: str, message: StoredMessage, expires: int) -> None:
        """Store one history message (expiring at epoch second ``expires``)."""

    @abstractmethod
    def _messages(self, room: str, low: int, high: int, limit: int) -> list[StoredMessage]:
        """Stored messages with ``low < seq <= high``: the newest ``limit``, ascending."""

    @abstractmethod
    def _delete_message(self, room: str, seq: int) -> None:
        """Delete one stored message (idempotent)."""

    @abstractmethod
    def _recall_send(
        self, user: str, room: str, request_id: str, now: float
    ) -> SendRecord | None:
        """The unexpired send record, or None."""

    @abstractmethod
    def _remember_send(
        self, user: str, room: str, request_id: str, record: SendRecord, expires: float,
        now: float,
    ) -> SendRecord | None:
        """Store the record unless an unexpired one exists: None if stored, else that one."""

    @abstractmethod
    def _presence_add(self, room: str, user: str, delta: int, now: float) -> int | None:
        """Add ``delta`` (+1/-1) to the user's connection count in the room; delete the item at
        0.  Returns the new count; None for -1 on a user not present (nothing changes)."""

    @abstractmethod
    def _presence(self, room: str, limit: int) -> Presence:
        """Up to ``limit`` present users (any order) and the exact user count."""

    @abstractmethod
    def _idle_connections(self, cutoff: float, limit: int) -> list[IdleConnection]:
        """Records with ``last_seen <= cutoff``: at least the ``limit`` oldest of them, in any
        order (the base class sorts and trims)."""

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
