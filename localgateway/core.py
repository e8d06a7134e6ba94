"""Transport-free gateway core: connections, limits, chaos decisions, ``@connections`` semantics.

Nothing here touches sockets or the event loop. The server asks the core what to do and carries
out the returned :class:`Action`.
"""

from __future__ import annotations

import enum
import ipaddress
import json
import random
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

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


H = TypeVar("H")


@dataclass
class Connection(Generic[H]):
    """What the gateway knows about one connection; ``handle`` is the transport's live object
    (the server's session), opaque to the core."""

    facts: ConnectionFacts
    user_agent: str
    last_active_ms: int
    state: State = State.CONNECTING
    handle: H | None = None

    @property
    def connection_id(self) -> str:
        return self.facts.connection_id


class ConnectionRegistry(Generic[H]):
    """Every connection the gateway knows, by id, with its transport handle. Thread-safe.

    The one registry: the server keeps no other table of connections.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[str, Connection[H]] = {}

    def add(self, facts: ConnectionFacts, user_agent: str) -> Connection[H]:
        """Register a connection in CONNECTING (raises ValueError for a duplicate id)."""
        conn: Connection[H] = Connection(facts=facts, user_agent=user_agent,
                                         last_active_ms=facts.connected_at_ms)
        with self._lock:
            if facts.connection_id in self._connections:
                raise ValueError(f"duplicate connection id {facts.connection_id}")
            self._connections[facts.connection_id] = conn
        return conn

    def get(self, connection_id: str) -> Connection[H] | None:
        with self._lock:
            return self._connections.get(connection_id)

    def handle(self, connection_id: str) -> H | None:
        """The transport handle of a known connection (None when unknown or not attached)."""
        conn = self.get(connection_id)
        return conn.handle if conn is not None else None

    def handles(self) -> list[H]:
        """Every attached transport handle (for shutdown)."""
        with self._lock:
            return [c.handle for c in self._connections.values() if c.handle is not None]

    def live(self, connection_id: str) -> Connection[H] | None:
        """The connection if it is OPEN (what @connections may act on), else None."""
        conn = self.get(connection_id)
        if conn is None or conn.state is not State.OPEN:
            return None
        return conn

    def mark_open(self, connection_id: str, handle: H | None = None) -> None:
        """``$connect`` accepted and the upgrade done: @connections may act on it now."""
        with self._lock:
            conn = self._connections.get(connection_id)
            if conn is not None and conn.state is State.CONNECTING:
                conn.state = State.OPEN
                conn.handle = handle

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

    def all(self) -> list[Connection[H]]:
        """Every known connection (a copy of the list, for the live view)."""
        with self._lock:
            return list(self._connections.values())

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

    def next_deadline(self, conn: Connection[Any]) -> float:
        """Epoch seconds at which the connection times out (idle or maximum duration)."""
        idle = conn.last_active_ms / 1000 + self.idle_timeout
        hard = conn.facts.connected_at_ms / 1000 + self.hard_timeout
        return min(idle, hard)

    def check_timeouts(self, conn: Connection[Any], now: float) -> CloseDecision | None:
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
        self, registry: ConnectionRegistry[Any], limits: Limits, chaos: Chaos, clock: Clock
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


# ----- decisions the server carries out -----------------------------------------------------------


def client_close_decision(code: int | None, reason: str) -> CloseDecision:
    """The ``$disconnect`` status/reason for a close the client started (1005 when it sent no
    code, with API Gateway's reason text)."""
    if not code or code == CLOSE_NO_STATUS:
        return CloseDecision(CLOSE_NO_STATUS, "Client-side close frame status not set")
    return CloseDecision(code, reason)


def connect_headers(headers: Iterable[tuple[str, str]], peer: str, port: int | None,
                    scheme: str) -> list[tuple[str, str]]:
    """The ``$connect`` event's headers: the client's, plus the ``X-Forwarded-For/Port/Proto``
    API Gateway adds when the client did not send them."""
    result = list(headers)
    present = {name.lower() for name, _ in result}
    for name, value in (("X-Forwarded-For", peer), ("X-Forwarded-Port", str(port or "")),
                        ("X-Forwarded-Proto", scheme)):
        if name.lower() not in present:
            result.append((name, value))
    return result


@dataclass(frozen=True)
class ConnectDecision:
    """Whether the upgrade goes ahead; when refused, the HTTP answer to give instead."""

    accept: bool
    status: int = 200
    body: str | None = None
    headers: Mapping[str, str] | None = None


#: A ``$connect`` that raised, timed out or could not run: API Gateway answers 502.
CONNECT_FAILED = ConnectDecision(False, 502, json.dumps({"message": "Internal server error"}),
                                 {"Content-Type": "application/json"})


def connect_decision(response: object) -> ConnectDecision:
    """Map a ``$connect`` handler's response to accept/refuse, like API Gateway: no response
    or 2xx accepts; any other ``statusCode`` refuses with it (body and headers passed on)."""
    status = connect_status(response)
    if is_success(status):
        return ConnectDecision(True, status)
    body = response.get("body") if isinstance(response, dict) else None
    headers = response.get("headers") if isinstance(response, dict) else None
    return ConnectDecision(
        False, status, body if isinstance(body, str) else None,
        {str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else None,
    )


# ----- who may drive the gateway (issue 15 item 4) ------------------------------------------------

#: Host names that always reach this machine only (RFC 6761: ``*.localhost`` too).
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
#: What boto3 sends: ``AWS4-HMAC-SHA256 Credential=KEY/DATE/REGION/SERVICE/aws4_request,
#: SignedHeaders=...;..., Signature=HEX``. Only the shape is checked (no signature check).
SIGV4_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=[^/\s]+/\d{8}/[^/\s]+/[^/\s]+/aws4_request,\s*"
    r"SignedHeaders=[a-z0-9;\-]+,\s*Signature=[0-9a-f]{64}$"
)


def host_name(host: str) -> str:
    """The lowercase name of a ``Host`` header or URL authority, without port or brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` lowercased, without a trailing slash."""
    return origin.strip().rstrip("/").lower()


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    error_type: str = "ForbiddenException"


@dataclass(frozen=True)
class RequestGuard:
    """Decides whether a request may reach the gateway at all (transport-free).

    * ``Host`` must be a loopback name (``localhost``, ``*.localhost``), an IP literal (DNS
      rebinding always uses a DNS name) or the configured ``--host``; a request without one
      (HTTP/1.0 tools) is let through.
    * ``Origin``, when sent (browsers always send it on a WebSocket upgrade), must be the
      gateway's own origin (same host and port as ``Host``) or one of ``allowed_origins``.
    * ``@connections`` needs a SigV4-shaped ``Authorization`` and no ``Origin`` (boto3 signs
      every call and sends no ``Origin``; a browser form or cross-site fetch cannot).
    * control endpoints (``POST /_gateway/...``) need ``Content-Type: application/json``, which
      no cross-site form can send and no cross-site ``fetch`` can send without a CORS preflight
      the gateway never approves, plus the ``Origin`` rule above.
    """

    configured_host: str = "127.0.0.1"
    allowed_origins: frozenset[str] = frozenset()

    def host_allowed(self, host: str | None) -> bool:
        if host is None or not host.strip():
            return True
        name = host_name(host)
        return (name in LOOPBACK_HOSTS or name.endswith(".localhost") or is_ip_literal(name)
                or name == host_name(self.configured_host))

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        if origin is None:
            return True
        normalized = normalize_origin(origin)
        if normalized in self.allowed_origins:
            return True
        if host is None or "://" not in normalized:
            return False
        scheme, authority = normalized.split("://", 1)
        return scheme in ("http", "https") and authority == host.strip().lower()

    def check(self, kind: str, method: str, headers: Mapping[str, str]) -> Refusal | None:
        """``kind``: ``websocket``, ``connections``, ``control`` or ``read`` (pages, health)."""
        host = headers.get("Host")
        if not self.host_allowed(host):
            return Refusal(403, f"Host {host!r} is not allowed: use 127.0.0.1 or localhost "
                                "(or the --host the gateway was started with)")
        origin = headers.get("Origin")
        if kind == "connections":
            if origin is not None:
                return Refusal(403, "Forbidden: @connections takes no browser requests")
            if not SIGV4_AUTHORIZATION.match(headers.get("Authorization", "").strip()):
                return Refusal(403, "Missing Authentication Token",
                               "MissingAuthenticationTokenException")
            return None
        if not self.origin_allowed(origin, host):
            return Refusal(403, f"Origin {origin!r} is not allowed: add it with "
                                "--allowed-origin")
        if kind == "control" and method.upper() not in ("GET", "HEAD", "OPTIONS"):
            content_type = headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
            if content_type != "application/json":
                return Refusal(415, "control endpoints take Content-Type: application/json "
                                    "only", "UnsupportedMediaTypeException")
        return None
