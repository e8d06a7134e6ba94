"""The messaging decisions: what each lifecycle event and each request does.

:class:`Messaging` is transport-free: the store, the deliverers (one per management endpoint),
the fan-out executor, the welcome queue and the clock are injected, so the Chalice handlers in
app.py are a few lines and tests can run this against real parts.

Who receives a room message is decided here (:meth:`Messaging._room_recipients`); delivering it
is :func:`chalicelib.delivery.fan_out`; pruning follows from the fan-out report.  Keeping the
three apart lets a large room be split into batches handled elsewhere later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from chalicelib.delivery import Deliverer, FanOutReport, Liveness, Outcome, fan_out
from chalicelib.events import ConnectionContext
from chalicelib.limits import UNLIMITED, Limits, data_size
from chalicelib.protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ROOM_PATTERN,
    ErrorCode,
    Join,
    Leave,
    Ping,
    ProtocolError,
    Request,
    Send,
    WhoAmI,
    encode_frame,
    error_frame,
    parse_frame,
)
from chalicelib.store import Claim, ConnectionStore
from chalicelib.welcome import FollowUp, WelcomeQueue

logger = logging.getLogger(__name__)

#: ``from`` of messages pushed through the REST route.
SERVER_SENDER = "server"


@dataclass(frozen=True)
class RoomDelivery:
    """Counts of one room fan-out, as reported to the sender or the REST caller."""

    delivered: int
    gone: int
    failed: int

    @classmethod
    def from_report(cls, report: FanOutReport) -> RoomDelivery:
        return cls(
            delivered=len(report.delivered),
            gone=len(report.gone),
            failed=len(report.failed) + len(report.forbidden) + len(report.too_large),
        )


@dataclass(frozen=True)
class SweepReport:
    checked: int
    pruned: int
    unknown: int


class PushError(Exception):
    """A server push was refused before any delivery (bad room or data); ``str`` says why."""


class Messaging:
    """One instance per container and configuration; thread-safe."""

    def __init__(
        self,
        store: ConnectionStore,
        deliverer_for: Callable[[str], Deliverer],
        *,
        executor: Executor | None = None,
        welcome_queue: WelcomeQueue | None = None,
        default_endpoint: str | None = None,
        clock: Callable[[], float] = time.time,
        limits: Limits = UNLIMITED,
        auth_required: bool = False,
    ) -> None:
        self.store = store
        self._deliverer_for = deliverer_for
        self._executor = executor
        self._welcome_queue = welcome_queue
        self._default_endpoint = default_endpoint
        self._clock = clock
        self._limits = limits
        #: With authentication on, every room message carries the sender's user id; a record
        #: without one (lost and healed) cannot send until the client reconnects with a token.
        self._auth_required = auth_required

    # ------------------------------------------------------------------ lifecycle

    def on_connect(
        self, ctx: ConnectionContext, endpoint: str, user: str | None = None
    ) -> None:
        """Register the connection; enqueue the delayed welcome.  Never calls the management API.

        Posting here would fail with 410: API Gateway only establishes the connection after
        ``$connect`` returns.  A failed enqueue is logged and tolerated: the welcome then goes
        out with the reply to the client's first message.
        """
        self.store.register(
            ctx.connection_id,
            connected_at=ctx.connected_at or self._clock(),
            source_ip=ctx.source_ip,
            user=user,
            endpoint=endpoint,
        )
        if self._welcome_queue is not None:
            try:
                self._welcome_queue.enqueue(FollowUp(ctx.connection_id, endpoint))
            except Exception:
                logger.exception("could not enqueue the welcome follow-up for %s",
                                 ctx.connection_id)

    def on_disconnect(self, ctx: ConnectionContext) -> None:
        """Forget the connection and its memberships (idempotent)."""
        self.store.remove(ctx.connection_id)

    def on_message(
        self, ctx: ConnectionContext, endpoint: str, body: str | None, is_base64: bool
    ) -> None:
        """Handle one client frame: welcome first if still owed, then exactly one reply.

        Never raises for bad input: every failure becomes an ``error`` frame to the client, and
        unexpected ones are logged with their traceback (which never reaches the client).
        """
        deliverer = self._deliverer_for(endpoint)
        connection_id = ctx.connection_id
        request: Request | None = None
        request_id: str | None = None
        try:
            request = parse_frame(body, is_base64)
            request_id = request.id
        except ProtocolError as exc:
            reply = error_frame(exc.code, exc.message, exc.request_id)
        try:
            if not self._send_owed_welcome(ctx, endpoint, deliverer):
                return
            if not self._within_rate_limit(connection_id):
                reply = error_frame(
                    ErrorCode.RATE_LIMITED,
                    f"more than {self._limits.rate_limit} messages in"
                    f" {self._limits.rate_window_seconds} s; slow down and retry",
                    request_id,
                )
            elif request is not None:
                reply = self._dispatch(connection_id, request, endpoint)
        except ProtocolError as exc:
            reply = error_frame(exc.code, exc.message, exc.request_id)
        except Exception:
            logger.exception("internal error handling a frame from %s", connection_id)
            reply = error_frame(
                ErrorCode.INTERNAL,
                "internal error; the request may not have been applied, try again",
                request_id,
            )
        if deliverer.post(connection_id, reply) is Outcome.GONE:
            self._prune([connection_id])

    def on_welcome_follow_up(self, follow_up: FollowUp) -> Outcome | None:
        """Deliver the welcome if the connection is open and nobody sent it yet.

        Returns the outcome of the post, or None when nothing was posted.  Raises
        :class:`RuntimeError` when API Gateway could not say whether the connection is open, so
        SQS redelivers the message later (and after its retries, moves it to the DLQ).
        """
        deliverer = self._deliverer_for(follow_up.endpoint)
        liveness = deliverer.verify(follow_up.connection_id)
        if liveness is Liveness.GONE:
            self._prune([follow_up.connection_id])
            return None
        if liveness is Liveness.UNKNOWN:
            raise RuntimeError(f"could not verify connection {follow_up.connection_id}")
        if self.store.claim_welcome(follow_up.connection_id, touch=False) is not Claim.CLAIMED:
            return None
        outcome = deliverer.post(follow_up.connection_id, self._welcome(follow_up.connection_id))
        if outcome is Outcome.GONE:
            self._prune([follow_up.connection_id])
        return outcome

    def sweep(self, idle_for: float, limit: int) -> SweepReport:
        """Verify connections idle for ``idle_for`` seconds; prune those API Gateway calls gone.

        ``$disconnect`` is best-effort on AWS, so records of closed connections do linger.
        """
        checked = pruned = unknown = 0
        for record in self.store.idle_connections(idle_for, limit):
            endpoint = self._default_endpoint or record.endpoint
            if not endpoint:
                unknown += 1
                continue
            checked += 1
            liveness = self._deliverer_for(endpoint).verify(record.connection_id)
            if liveness is Liveness.GONE:
                self.store.remove(record.connection_id)
                pruned += 1
            elif liveness is Liveness.UNKNOWN:
                unknown += 1
        logger.info("sweep: checked %d, pruned %d, undecided %d", checked, pruned, unknown)
        return SweepReport(checked=checked, pruned=pruned, unknown=unknown)

    def push(self, room: str, data: Any) -> RoomDelivery:
        """Deliver ``data`` to every member of ``room`` as a message from the server.

        Raises :class:`PushError` for an invalid room name or a message over 128 KB.
        """
        if not ROOM_PATTERN.fullmatch(room):
            raise PushError("room must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")
        try:
            payload = self._message_frame(room, SERVER_SENDER, data)
        except ProtocolError as exc:
            raise PushError(exc.message) from exc
        recipients = self.store.members(room)
        endpoint = self._endpoint_for_room(recipients)
        if endpoint is None:
            return RoomDelivery(delivered=0, gone=0, failed=len(recipients))
        return self._deliver(endpoint, recipients, payload)

    # ------------------------------------------------------------------ requests

    def _dispatch(self, connection_id: str, request: Request, endpoint: str) -> bytes:
        if isinstance(request, Ping):
            return encode_frame("pong", {}, request.id)
        if isinstance(request, WhoAmI):
            rooms = self.store.rooms_of(connection_id)
            identity: dict[str, Any] = {"connectionId": connection_id, "rooms": rooms}
            user = self._user_of(connection_id)
            if user is not None:
                identity["user"] = user
            return encode_frame("identity", identity, request.id)
        if isinstance(request, Join):
            rooms = self.store.rooms_of(connection_id)
            # Check-then-join: concurrent joins of one connection may overshoot by their count.
            if request.room not in rooms and len(rooms) >= self._limits.max_rooms:
                raise ProtocolError(
                    ErrorCode.TOO_MANY_ROOMS,
                    f"a connection may be in at most {self._limits.max_rooms} rooms;"
                    " leave one first",
                    request.id,
                )
            members = self.store.join(connection_id, request.room)
            return encode_frame("joined", {"room": request.room, "members": members}, request.id)
        if isinstance(request, Leave):
            self.store.leave(connection_id, request.room)
            return encode_frame("left", {"room": request.room}, request.id)
        return self._send(connection_id, request, endpoint)

    def _send(self, connection_id: str, request: Send, endpoint: str) -> bytes:
        size = data_size(request.data)
        if size > self._limits.max_data_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"'data' is {size} bytes; the limit is {self._limits.max_data_bytes}",
                request.id,
            )
        if not self.store.is_member(connection_id, request.room):
            raise ProtocolError(
                ErrorCode.NOT_MEMBER,
                f"join room {request.room!r} before sending to it",
                request.id,
            )
        sender = connection_id
        if self._auth_required:
            user = self._user_of(connection_id)
            if user is None:
                raise ProtocolError(
                    ErrorCode.UNAUTHENTICATED,
                    "this connection's identity was lost; reconnect with a token",
                    request.id,
                )
            sender = user
        payload = self._message_frame(request.room, sender, request.data, request.id)
        recipients = self._room_recipients(request.room, exclude=connection_id)
        counts = self._deliver(endpoint, recipients, payload)
        return encode_frame(
            "sent",
            {
                "room": request.room,
                "delivered": counts.delivered,
                "gone": counts.gone,
                "failed": counts.failed,
            },
            request.id,
        )

    # ------------------------------------------------------------------ building blocks

    def _within_rate_limit(self, connection_id: str) -> bool:
        if self._limits.rate_limit == 0:
            return True
        return self.store.admit_message(
            connection_id,
            limit=self._limits.rate_limit,
            window_seconds=self._limits.rate_window_seconds,
        )

    def _user_of(self, connection_id: str) -> str | None:
        """The authenticated user id stored at ``$connect`` (one strongly consistent read)."""
        record = self.store.get(connection_id)
        return None if record is None else record.user

    def _room_recipients(self, room: str, *, exclude: str) -> list[str]:
        return [member for member in self.store.members(room) if member != exclude]

    def _message_frame(
        self, room: str, sender: str, data: Any, request_id: str | None = None
    ) -> bytes:
        try:
            payload = encode_frame("message", {"room": room, "from": sender, "data": data},
                                   request_id=None)
        except ProtocolError as exc:
            # The message frame carries no id, but the error reply to the sender must.
            raise ProtocolError(exc.code, exc.message, request_id) from exc
        if len(payload) > MAX_MESSAGE_BYTES:
            # Refused before any management-API call: API Gateway would answer 413 for each.
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"message would be {len(payload)} bytes; the limit is {MAX_MESSAGE_BYTES}",
                request_id,
            )
        return payload

    def _deliver(self, endpoint: str, recipients: list[str], payload: bytes) -> RoomDelivery:
        report = fan_out(self._deliverer_for(endpoint), recipients, payload, self._executor)
        self._prune(report.gone)
        return RoomDelivery.from_report(report)

    def _prune(self, connection_ids: list[str]) -> None:
        """Remove connections API Gateway reported gone; a failure here only delays cleanup."""
        for connection_id in connection_ids:
            try:
                self.store.remove(connection_id)
            except Exception:
                logger.exception("could not prune gone connection %s", connection_id)

    def _send_owed_welcome(
        self, ctx: ConnectionContext, endpoint: str, deliverer: Deliverer
    ) -> bool:
        """Claim and send the welcome if this is the first word; False if the client is gone."""
        claim = self.store.claim_welcome(ctx.connection_id, touch=True)
        if claim is Claim.UNKNOWN:
            # API Gateway just delivered a frame from it, so it is connected: the record was
            # lost (expired, swept during an outage, store reset). Heal instead of refusing.
            self.store.register(
                ctx.connection_id,
                connected_at=ctx.connected_at or self._clock(),
                source_ip=ctx.source_ip,
                endpoint=endpoint,
            )
            claim = self.store.claim_welcome(ctx.connection_id, touch=True)
        if claim is not Claim.CLAIMED:
            return True
        if deliverer.post(ctx.connection_id, self._welcome(ctx.connection_id)) is Outcome.GONE:
            self._prune([ctx.connection_id])
            return False
        return True

    @staticmethod
    def _welcome(connection_id: str) -> bytes:
        return encode_frame(
            "welcome", {"connectionId": connection_id, "protocol": PROTOCOL_VERSION}
        )

    def _endpoint_for_room(self, recipients: list[str]) -> str | None:
        if self._default_endpoint:
            return self._default_endpoint
        # Without WS_MANAGEMENT_ENDPOINT, a REST push has no WebSocket event to derive it from;
        # every member of one deployment shares the endpoint its record remembers.
        for connection_id in recipients:
            record = self.store.get(connection_id)
            if record is not None and record.endpoint:
                return record.endpoint
        return None
