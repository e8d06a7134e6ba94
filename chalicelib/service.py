"""The messaging decisions: what each lifecycle event and each request does.

:class:`Messaging` is transport-free: the store, the deliverers (one per management endpoint),
the fan-out executor, the welcome queue and the clock are injected, so the Chalice handlers in
app.py are a few lines and tests can run this against real parts.

Who receives a room message is decided here (:meth:`Messaging._deliver_to_room`): small rooms
are delivered inline with :func:`chalicelib.delivery.fan_out`, rooms with more than
``FANOUT_INLINE_MAX`` recipients are paged and handed to the fan-out queue
(:mod:`chalicelib.fanout`), whose workers call :meth:`Messaging.on_fan_out_batch`.  Pruning
follows from each fan-out report.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from chalicelib.delivery import Deliverer, FanOutReport, Liveness, Outcome, fan_out
from chalicelib.errors import PushError, VerificationError
from chalicelib.events import ConnectionContext
from chalicelib.fanout import MAX_ATTEMPTS, RETRY_DELAY_SECONDS, FanOutBatch, FanOutQueue
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
from chalicelib.store import Admission, Claim, ConnectionRecord, ConnectionStore
from chalicelib.welcome import FollowUp, WelcomeQueue

logger = logging.getLogger(__name__)

#: ``from`` of messages pushed through the REST route.
SERVER_SENDER = "server"
#: Rooms with more recipients than this go through the fan-out queue (``FANOUT_INLINE_MAX``).
DEFAULT_INLINE_MAX = 500
#: Members read per page once a room is known to be large (one DynamoDB Query page each).
LARGE_ROOM_PAGE = 5000

__all__ = ["SERVER_SENDER", "Messaging", "PushError", "RoomDelivery", "SweepReport"]


@dataclass(frozen=True)
class RoomDelivery:
    """Counts of one room fan-out, as reported to the sender or the REST caller."""

    delivered: int
    gone: int
    failed: int
    #: Recipients handed to the fan-out workers (their outcome is not known to the sender).
    queued: int = 0

    @classmethod
    def from_report(cls, report: FanOutReport) -> RoomDelivery:
        return cls(
            delivered=len(report.delivered),
            gone=len(report.gone),
            failed=len(report.failed) + len(report.forbidden) + len(report.too_large),
        )

    def as_dict(self) -> dict[str, int]:
        return {"delivered": self.delivered, "gone": self.gone, "failed": self.failed,
                "queued": self.queued}


@dataclass(frozen=True)
class SweepReport:
    #: Connections asked about (GetConnection).
    checked: int
    #: Removed because API Gateway answered 410.
    pruned: int
    #: Left in place: API Gateway could not say (403, throttled), or no endpoint is known.
    unknown: int
    #: Removed without asking: past API Gateway's two-hour limit, so certainly closed.
    expired: int = 0


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
        fanout_queue: FanOutQueue | None = None,
        inline_max: int = DEFAULT_INLINE_MAX,
    ) -> None:
        if inline_max < 1:
            raise ValueError("inline_max must be at least 1")
        self.store = store
        self._fanout_queue = fanout_queue
        self._inline_max = inline_max
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
            admission = self._admit(ctx, endpoint, deliverer)
            if admission is None:
                return
            if not admission.admitted:
                reply = error_frame(
                    ErrorCode.RATE_LIMITED,
                    f"more than {self._limits.rate_limit} messages in"
                    f" {self._limits.rate_window_seconds} s; slow down and retry",
                    request_id,
                )
            elif request is not None:
                reply = self._dispatch(connection_id, admission.record, request, endpoint)
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
        :class:`~chalicelib.errors.VerificationError` when API Gateway could not say whether the
        connection is open, so SQS redelivers the message later (and after its retries, moves it
        to the DLQ).
        """
        deliverer = self._deliverer_for(follow_up.endpoint)
        liveness = deliverer.verify(follow_up.connection_id)
        if liveness is Liveness.GONE:
            self._prune([follow_up.connection_id])
            return None
        if liveness is Liveness.UNKNOWN:
            raise VerificationError(f"could not verify connection {follow_up.connection_id}")
        if self.store.claim_welcome(follow_up.connection_id) is not Claim.CLAIMED:
            return None
        outcome = deliverer.post(follow_up.connection_id, self._welcome(follow_up.connection_id))
        if outcome is Outcome.GONE:
            self._prune([follow_up.connection_id])
        return outcome

    def on_fan_out_batch(self, batch: FanOutBatch) -> RoomDelivery:
        """Deliver one fan-out batch (the worker's job); prune the members API Gateway calls gone.

        Recipients whose post failed past the Deliverer's retries are put back on the queue alone
        (``attempt + 1``, delayed), so a retry never reaches a member twice; after
        :data:`~chalicelib.fanout.MAX_ATTEMPTS` they are given up on and logged.  Raises
        :class:`~chalicelib.fanout.FanOutQueueError` when that re-enqueue fails: the caller
        reports the batch as failed and SQS redelivers all of it (at-least-once).
        """
        report = fan_out(
            self._deliverer_for(batch.endpoint), batch.recipients, batch.payload, self._executor
        )
        self._prune(report.gone)
        counts = RoomDelivery.from_report(report)
        if report.forbidden:
            logger.error("fan-out to %s: %d recipients refused with 403 (not retried)",
                         batch.room, len(report.forbidden))
        if report.failed:
            if batch.attempt + 1 < MAX_ATTEMPTS and self._fanout_queue is not None:
                requeued = self._fanout_queue.enqueue(
                    batch.room, batch.endpoint, batch.payload, report.failed,
                    attempt=batch.attempt + 1,
                    delay_seconds=RETRY_DELAY_SECONDS * (batch.attempt + 1),
                )
                return RoomDelivery(counts.delivered, counts.gone,
                                    counts.failed - requeued, requeued)
            logger.error("fan-out to %s: giving up on %d recipients after %d attempts",
                         batch.room, len(report.failed), batch.attempt + 1)
        return counts

    def sweep(self, idle_for: float, limit: int) -> SweepReport:
        """Check up to ``limit`` connections not seen for ``idle_for`` seconds, oldest first.

        ``$disconnect`` is best-effort on AWS, so records of closed connections do linger.  Each
        candidate past API Gateway's two-hour limit is removed without a call; the others are
        asked about with GetConnection: 410 removes them, any other answer moves them to the
        back of the order (:meth:`ConnectionStore.mark_checked`), so every record is reached
        within ``ceil(records / limit)`` runs.
        """
        checked = pruned = unknown = expired = 0
        for idle in self.store.idle_connections(idle_for, limit):
            if self.store.is_past_limit(idle):
                self.store.remove(idle.connection_id)
                expired += 1
                continue
            endpoint = self._default_endpoint or idle.endpoint
            liveness = Liveness.UNKNOWN
            if endpoint:
                checked += 1
                liveness = self._deliverer_for(endpoint).verify(idle.connection_id)
            if liveness is Liveness.GONE:
                self.store.remove(idle.connection_id)
                pruned += 1
                continue
            if liveness is Liveness.UNKNOWN:
                unknown += 1
            self.store.mark_checked(idle.connection_id)
        logger.info("sweep: checked %d, pruned %d, expired %d, undecided %d",
                    checked, pruned, expired, unknown)
        return SweepReport(checked=checked, pruned=pruned, unknown=unknown, expired=expired)

    def push(self, room: str, data: Any) -> RoomDelivery:
        """Deliver ``data`` to every member of ``room`` as a message from the server.

        Raises :class:`~chalicelib.errors.PushError` for an invalid room name or a message over
        128 KB.
        """
        if not ROOM_PATTERN.fullmatch(room):
            raise PushError("room must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")
        try:
            payload = self._message_frame(room, SERVER_SENDER, data)
        except ProtocolError as exc:
            raise PushError(exc.message) from exc
        return self._deliver_to_room(room, payload, None, sender=None)

    # ------------------------------------------------------------------ requests

    def _dispatch(
        self,
        connection_id: str,
        record: ConnectionRecord | None,
        request: Request,
        endpoint: str,
    ) -> bytes:
        user = None if record is None else record.user
        if isinstance(request, Ping):
            return encode_frame("pong", {}, request.id)
        if isinstance(request, WhoAmI):
            rooms = self.store.rooms_of(connection_id)
            identity: dict[str, Any] = {"connectionId": connection_id, "rooms": rooms}
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
            members = self.store.join(connection_id, request.room, user=user)
            return encode_frame("joined", {"room": request.room, "members": members}, request.id)
        if isinstance(request, Leave):
            self.store.leave(connection_id, request.room)
            return encode_frame("left", {"room": request.room}, request.id)
        return self._send(connection_id, user, request, endpoint)

    def _send(self, connection_id: str, user: str | None, request: Send, endpoint: str) -> bytes:
        size = data_size(request.data)
        if size > self._limits.max_data_bytes:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"'data' is {size} bytes; the limit is {self._limits.max_data_bytes}",
                request.id,
            )
        sender = connection_id
        if self._auth_required:
            if user is None:
                raise ProtocolError(
                    ErrorCode.UNAUTHENTICATED,
                    "this connection's identity was lost; reconnect with a token",
                    request.id,
                )
            sender = user
        payload = self._message_frame(request.room, sender, request.data, request.id)
        counts = self._deliver_to_room(request.room, payload, endpoint, sender=connection_id,
                                       request_id=request.id)
        return encode_frame("sent", {"room": request.room, **counts.as_dict()}, request.id)

    # ------------------------------------------------------------------ building blocks

    def _deliver_to_room(
        self,
        room: str,
        payload: bytes,
        endpoint: str | None,
        *,
        sender: str | None,
        request_id: str | None = None,
    ) -> RoomDelivery:
        """Deliver ``payload`` to the room's members other than ``sender``.

        With a ``sender``, it must be a member (else ``not_member``): the first page of members
        answers that for a small room without another read.  A room that fits in one page of
        ``inline_max`` recipients is delivered here; a larger one is paged and handed to the
        fan-out queue when there is one (else delivered here, page by page).
        """
        pages = self.store.member_pages(room, page_size=self._inline_max + 1)
        first = next(pages, [])
        second = next(pages, None)
        if sender is not None and sender not in first and (
            second is None or not self.store.is_member(sender, room)
        ):
            raise ProtocolError(
                ErrorCode.NOT_MEMBER, f"join room {room!r} before sending to it", request_id
            )
        endpoint = endpoint or self._endpoint_for_room(first)
        if endpoint is None:
            return RoomDelivery(delivered=0, gone=0, failed=len(first))

        def recipients(page: list[str]) -> list[str]:
            return [member for member in page if member != sender]

        if second is None:
            return self._deliver(endpoint, recipients(first), payload)
        # A large room: read the rest in bigger pages (fewer round trips for the sender).
        rest = self.store.member_pages(room, page_size=LARGE_ROOM_PAGE, start_after=second[-1])
        all_pages = itertools.chain([first, second], rest)
        if self._fanout_queue is None:
            totals = [self._deliver(endpoint, recipients(page), payload) for page in all_pages]
            return RoomDelivery(
                delivered=sum(t.delivered for t in totals),
                gone=sum(t.gone for t in totals),
                failed=sum(t.failed for t in totals),
            )
        queued = 0
        for page in all_pages:
            queued += self._fanout_queue.enqueue(room, endpoint, payload, recipients(page))
        return RoomDelivery(delivered=0, gone=0, failed=0, queued=queued)

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

    def _admit(
        self, ctx: ConnectionContext, endpoint: str, deliverer: Deliverer
    ) -> Admission | None:
        """Account for the frame (welcome, rate, activity) and send the welcome if this is the
        first word; None if the client turned out to be gone."""
        admission = self._admission(ctx.connection_id)
        if admission.claim is Claim.UNKNOWN:
            # API Gateway just delivered a frame from it, so it is connected: the record was
            # lost (expired, swept during an outage, store reset). Heal instead of refusing.
            self.store.register(
                ctx.connection_id,
                connected_at=ctx.connected_at or self._clock(),
                source_ip=ctx.source_ip,
                endpoint=endpoint,
            )
            admission = self._admission(ctx.connection_id)
        if admission.claim is Claim.CLAIMED and deliverer.post(
            ctx.connection_id, self._welcome(ctx.connection_id)
        ) is Outcome.GONE:
            self._prune([ctx.connection_id])
            return None
        return admission

    def _admission(self, connection_id: str) -> Admission:
        return self.store.admit(
            connection_id,
            rate_limit=self._limits.rate_limit,
            window_seconds=self._limits.rate_window_seconds,
        )

    @staticmethod
    def _welcome(connection_id: str) -> bytes:
        return encode_frame(
            "welcome", {"connectionId": connection_id, "protocol": PROTOCOL_VERSION}
        )

    def _endpoint_for_room(self, members: list[str]) -> str | None:
        if self._default_endpoint:
            return self._default_endpoint
        # Without WS_MANAGEMENT_ENDPOINT, a REST push has no WebSocket event to derive it from;
        # every member of one deployment shares the endpoint its record remembers.
        for connection_id in members:
            record = self.store.get(connection_id)
            if record is not None and record.endpoint:
                return record.endpoint
        return None
