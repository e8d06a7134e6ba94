"""Transport-free gateway core: connections, limits, chaos decisions, ``@connections`` semantics.

Nothing here touches sockets or the event loop. The server asks the core what to do and carries
out the returned :class:`Action`.
"""

from __future__ import annotations

import enum
import json
import random
import threading
from dataclasses import dataclass, field
from typing import Protocol

from localgateway.events import Clock, ConnectionFacts, epoch_ms, format_iso8601

#: API Gateway quotas.
FRAME_LIMIT_BYTES = 32 * 1024
MESSAGE_LIMIT_BYTES = 128 * 1024
POST_LIMIT_BYTES = 128 * 1024
DEFAULT_IDLE_TIMEOUT = 600.0
DEFAULT_HARD_TIMEOUT = 7200.0

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_ABNORMAL = 1006
CLOSE_NO_STATUS = 1005
CLOSE_MESSAGE_TOO_BIG = 1009


class State(enum.Enum):
    #: ``$connect`` is running: the id exists but @connections answers 410.
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"


@dataclass
class Connection:
    facts: ConnectionFacts
    user_agent: str
    last_active_ms: int
    state: State = State.CONNECTING

    @property
    def connection_id(self) -> str:
        return self.facts.connection_id


class ConnectionRegistry:
    """Every connection the gateway knows, by id. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[str, Connection] = {}

    def add(self, facts: ConnectionFacts, user_agent: str) -> Connection:
        conn = Connection(facts=facts, user_agent=user_agent, last_active_ms=facts.connected_at_ms)
        with self._lock:
            if facts.connection_id in self._connections:
                raise ValueError(f"duplicate connection id {facts.connection_id}")
            self._connections[facts.connection_id] = conn
        return conn

    def get(self, connection_id: str) -> Connection | None:
        with self._lock:
            return self._connections.get(connection_id)

    def live(self, connection_id: str) -> Connection | None:
        """The connection if it is OPEN (what @connections may act on), else None."""
        conn = self.get(connection_id)
        if conn is None or conn.state is not State.OPEN:
            return None
        return conn

    def mark_open(self, connection_id: str) -> None:
        conn = self.get(connection_id)
        if conn is not None and conn.state is State.CONNECTING:
            conn.state = State.OPEN

    def mark_closed(self, connection_id: str) -> bool:
        """Returns True the first time a connection is closed."""
        with self._lock:
            conn = self._connections.get(connection_id)
            if conn is None or conn.state is State.CLOSED:
                return False
            conn.state = State.CLOSED
            return True

    def remove(self, connection_id: str) -> None:
        with self._lock:
            self._connections.pop(connection_id, None)

    def touch(self, connection_id: str, now_ms: int) -> None:
        conn = self.get(connection_id)
        if conn is not None:
            conn.last_active_ms = now_ms

    def open_ids(self) -> list[str]:
        with self._lock:
            return [c for c, v in self._connections.items() if v.state is State.OPEN]

    def __len__(self) -> int:
        with self._lock:
            return len(self._connections)


@dataclass(frozen=True)
class CloseDecision:
    code: int
    reason: str


@dataclass(frozen=True)
class Limits:
    frame_bytes: int = FRAME_LIMIT_BYTES
    message_bytes: int = MESSAGE_LIMIT_BYTES
    post_bytes: int = POST_LIMIT_BYTES
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    hard_timeout: float = DEFAULT_HARD_TIMEOUT

    def check_incoming(self, size: int, fragmented: bool = False) -> CloseDecision | None:
        """Decide on a client message of ``size`` bytes.

        A message sent in one frame over ``frame_bytes``, or any message over ``message_bytes``,
        closes the connection with 1009, like API Gateway.
        """
        if size > self.message_bytes or (not fragmented and size > self.frame_bytes):
            return CloseDecision(CLOSE_MESSAGE_TOO_BIG, "Message too big")
        return None

    def next_deadline(self, conn: Connection) -> float:
        """Epoch seconds at which the connection times out (idle or maximum duration)."""
        idle = conn.last_active_ms / 1000 + self.idle_timeout
        hard = conn.facts.connected_at_ms / 1000 + self.hard_timeout
        return min(idle, hard)

    def check_timeouts(self, conn: Connection, now: float) -> CloseDecision | None:
        if now >= conn.facts.connected_at_ms / 1000 + self.hard_timeout:
            return CloseDecision(CLOSE_GOING_AWAY, "Going away")
        if now >= conn.last_active_ms / 1000 + self.idle_timeout:
            return CloseDecision(CLOSE_GOING_AWAY, "Going away")
        return None


class RandomSource(Protocol):
    def random(self) -> float: ...


@dataclass
class Chaos:
    """Chaos knobs. ``rng`` is injectable (``random.Random(seed)`` for reproducible runs)."""

    latency_ms: float = 0.0
    throttle_rate: float = 0.0
    drop_disconnect_rate: float = 0.0
    rng: RandomSource = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        for name in ("throttle_rate", "drop_disconnect_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")

    @property
    def latency_seconds(self) -> float:
        return self.latency_ms / 1000.0

    def _roll(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self.rng.random() < rate

    def should_throttle(self) -> bool:
        return self._roll(self.throttle_rate)

    def should_drop_disconnect(self) -> bool:
        return self._roll(self.drop_disconnect_rate)


# ----- @connections -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SendFrame:
    """Deliver ``data`` to the connection as one frame (text when it is valid UTF-8)."""

    connection_id: str
    data: bytes


@dataclass(frozen=True)
class CloseConnection:
    connection_id: str
    code: int = CLOSE_NORMAL
    reason: str = "Connection closed by server"


Action = SendFrame | CloseConnection


@dataclass(frozen=True)
class ManagementResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    action: Action | None = None

    @property
    def error_type(self) -> str | None:
        return self.headers.get("x-amzn-ErrorType")


def error_response(status: int, error_type: str, message: str) -> ManagementResponse:
    return ManagementResponse(
        status=status,
        headers={"x-amzn-ErrorType": error_type, "Content-Type": "application/json"},
        body=json.dumps({"message": message}).encode(),
    )


def gone(connection_id: str) -> ManagementResponse:
    return error_response(410, "GoneException", f"Connection {connection_id} is gone")


class ManagementApi:
    """The ``@connections`` API: POST, GET and DELETE on ``/@connections/{connectionId}``."""

    def __init__(
        self, registry: ConnectionRegistry, limits: Limits, chaos: Chaos, clock: Clock
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.chaos = chaos
        self.clock = clock

    def handle(self, method: str, connection_id: str, body: bytes = b"") -> ManagementResponse:
        method = method.upper()
        if method not in ("POST", "GET", "DELETE"):
            return error_response(405, "MethodNotAllowedException", f"{method} not allowed")
        if self.chaos.should_throttle():
            return error_response(429, "LimitExceededException", "Rate exceeded")
        if method == "POST" and len(body) > self.limits.post_bytes:
            return error_response(
                413,
                "PayloadTooLargeException",
                f"Message too long. Max allowed size: {self.limits.post_bytes} bytes",
            )
        conn = self.registry.live(connection_id)
        if conn is None:
            return gone(connection_id)
        if method == "POST":
            return ManagementResponse(200, {}, b"", SendFrame(connection_id, body))
        if method == "DELETE":
            return ManagementResponse(204, {}, b"", CloseConnection(connection_id))
        info = {
            "connectedAt": format_iso8601(conn.facts.connected_at_ms),
            "identity": {"sourceIp": conn.facts.source_ip, "userAgent": conn.user_agent},
            "lastActiveAt": format_iso8601(conn.last_active_ms),
        }
        return ManagementResponse(
            200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        )

    def now_ms(self) -> int:
        return epoch_ms(self.clock)


def is_success(status: object) -> bool:
    return isinstance(status, int) and 200 <= status < 300


def connect_status(response: object) -> int:
    """The HTTP status a ``$connect`` handler's response asks for (200 if it says nothing)."""
    if isinstance(response, dict):
        status = response.get("statusCode", 200)
        try:
            return int(status)
        except (TypeError, ValueError):
            return 502
    return 200
