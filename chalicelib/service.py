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
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from chalicelib.access import JoinAuthorizer, JoinRequest, decide
from chalicelib.actions import ActionContext, ActionRegistry, CustomRequest
from chalicelib.capabilities import (
    ALL_OPERATIONS,
    EVERYTHING,
    HISTORY,
    PRESENCE,
    PUBLISH,
    SUBSCRIBE,
    Capabilities,
    decode_operations,
    encode_operations,
)
from chalicelib.delivery import Deliverer, FanOutReport, Liveness, Outcome, fan_out
from chalicelib.errors import PushError, TooManyConnections, VerificationError
from chalicelib.events import ConnectionContext
from chalicelib.fanout import MAX_ATTEMPTS, RETRY_DELAY_SECONDS, FanOutBatch, FanOutQueue
from chalicelib.limits import UNLIMITED, Limits, data_size
from chalicelib.metrics import (
    FANOUT_MS,
    FANOUT_QUEUED,
    MESSAGES_IN,
    NULL_RECORDER,
    RATE_LIMITED,
    WELCOMES_FIRST_MESSAGE,
    WELCOMES_FOLLOW_UP,
    Recorder,
)
from chalicelib.protocol import (
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ROOM_PATTERN,
    ErrorCode,
    History,
    Join,
    Leave,
    Members,
    Ping,
    ProtocolError,
    Request,
    Send,
    WhoAmI,
    encode_frame,
    error_frame,
    parse_frame,
)
from chalicelib.rooms import (
    DEFAULT_FEATURES,
    MAX_PRESENCE_USERS,
    RoomFeatures,
    data_json,
    history_frame,
    is_complete,
    message_frame,
    presence_frame,
    replay_frames,
)
from chalicelib.store import Admission, Claim, ConnectionRecord, ConnectionStore
from chalicelib.store.base import SendRecord, StoredMessage
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

    def __add__(self, other: RoomDelivery) -> RoomDelivery:
        return RoomDelivery(self.delivered + other.delivered, self.gone + other.gone,
                            self.failed + other.failed, self.queued + other.queued)


@dataclass(frozen=True)
class Published:
    """A message accepted into a room: its sequence number, id, and what delivering it did."""

    seq: int
    mid: str
    delivery: RoomDelivery
    #: True when the send repeated an ``id`` already accepted (nothing was broadcast again).
    duplicate: bool = False

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {**self.delivery.as_dict(), "seq": self.seq, "mid": self.mid}
        if self.duplicate:
            data["duplicate"] = True
        return data


def _capabilities(record: ConnectionRecord | None) -> Capabilities:
    if record is None or record.capabilities is None:
        return EVERYTHING
    return Capabilities.decode(record.capabilities)


def _forbidden(operation: str, room: str, request_id: str | None) -> ProtocolError:
    return ProtocolError(
        ErrorCode.FORBIDDEN,
        f"operation {operation!r} on room {room!r} is not allowed for this connection",
        request_id,
    )


@dataclass
class Response:
    """The reply to a client frame, and frames that must follow it (a join's replay)."""

    reply: bytes
    then: list[bytes] = field(default_factory=list)


@dataclass
class _Audience:
    """A room's members other than the sender, read a page at a time (see ``_audience``)."""

    room: str
    first: list[str]
    rest: Iterator[list[str]] | None
    exclude: str | None

    @property
    def large(self) -> bool:
        return self.rest is not None

    def pages(self) -> Iterator[list[str]]:
        pages = itertools.chain([self.first], self.rest or iter(()))
        for page in pages:
            yield [member for member in page if member != self.exclude]


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
        features: RoomFeatures = DEFAULT_FEATURES,
        join_authorizer: JoinAuthorizer | None = None,
        actions: ActionRegistry | None = None,
        recorder: Recorder = NULL_RECORDER,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if inline_max < 1:
            raise ValueError("inline_max must be at least 1")
        self.store = store
        #: Built-in and app actions, found and validated through one table.
        self._actions = actions or ActionRegistry()
        self._parsers = self._actions.parsers()
        self._features = features
        self._join_authorizer = join_authorizer
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
        #: Metrics (chalicelib/metrics.py); ``timer`` measures FanOutMs (seconds, monotonic).
        self._recorder = recorder
        self._timer = timer

    # ------------------------------------------------------------------ lifecycle

    def on_connect(
        self,
        ctx: ConnectionContext,
        endpoint: str,
        user: str | None = None,
        *,
        capabilities: Capabilities | None = None,
        claims: Mapping[str, Any] | None = None,
    ) -> None:
        """Register the connection; enqueue the delayed welcome.  Never calls the management API.

        ``capabilities`` (from the token; None: everything) are stored with the connection; the
        token's ``claims`` are kept beside it only when the app registered a join authoriser.
        Posting here would fail with 410: API Gateway only establishes the connection after
        ``$connect`` returns.  A failed enqueue is logged and tolerated: the welcome then goes
        out with the reply to the client's first message.  Raises
        :class:`~chalicelib.errors.TooManyConnections` (answer 429, nothing registered) when the
        user already has ``max_connections_per_user`` connections open.
        """
        cap = self._limits.max_connections_per_user
        if user is not None and cap > 0 and len(self.store.connections_of_user(user)) >= cap:
            # Check-then-register: connects of one user racing in parallel can overshoot by
            # their number (one read per $connect keeps it cheap; docs/security.md).
            raise TooManyConnections(f"user already has {cap} connections open")
        self.store.register(
            ctx.connection_id,
            connected_at=ctx.connected_at or self._clock(),
            source_ip=ctx.source_ip,
            user=user,
            endpoint=endpoint,
            capabilities=None if capabilities is None else capabilities.encode(),
        )
        if self._join_authorizer is not None and claims is not None:
            self.store.remember_claims(ctx.connection_id, json.dumps(dict(claims), default=str))
        if self._welcome_queue is not None:
            try:
                self._welcome_queue.enqueue(FollowUp(ctx.connection_id, endpoint))
            except Exception:
                logger.exception("could not enqueue the welcome follow-up for %s",
                                 ctx.connection_id)

    def on_disconnect(self, ctx: ConnectionContext, endpoint: str | None = None) -> None:
        """Forget the connection and its memberships (idempotent); announce departures.

        ``endpoint`` reaches the rooms' other members for presence ``leave`` frames (without
        one, and without ``WS_MANAGEMENT_ENDPOINT``, nobody is told).
        """
        self._forget(ctx.connection_id, endpoint)

    def on_message(
        self, ctx: ConnectionContext, endpoint: str, body: str | None, is_base64: bool
    ) -> None:
        """Handle one client frame: welcome first if still owed, then exactly one reply.

        Never raises for bad input: every failure becomes an ``error`` frame to the client, and
        unexpected ones are logged with their traceback (which never reaches the client).
        """
        self._recorder.count(MESSAGES_IN)
        deliverer = self._deliverer_for(endpoint)
        connection_id = ctx.connection_id
        request: Request | None = None
        request_id: str | None = None
        then: list[bytes] = []
        try:
            request = parse_frame(body, is_base64, self._parsers)
            request_id = request.id
            logger.debug("frame from %s: %s", connection_id, type(request).__name__.lower())
        except ProtocolError as exc:
            reply = error_frame(exc.code, exc.message, exc.request_id)
        try:
            admission = self._admit(ctx, endpoint, deliverer)
            if admission is None:
                return
            if not admission.admitted:
                self._recorder.count(RATE_LIMITED)
                logger.debug("rate limited %s", connection_id)
                reply = error_frame(
                    ErrorCode.RATE_LIMITED,
                    f"more than {self._limits.rate_limit} messages in"
                    f" {self._limits.rate_window_seconds} s; slow down and retry",
                    request_id,
                )
            elif request is not None:
                response = self._dispatch(connection_id, admission.record, request, endpoint)
                reply, then = response.reply, response.then
        except ProtocolError as exc:
            reply = error_frame(exc.code, exc.message, exc.request_id)
        except Exception:
            logger.exception("internal error handling a frame from %s", connection_id)
            reply = error_frame(
                ErrorCode.INTERNAL,
                "internal error; the request may not have been applied, try again",
                request_id,
            )
        for frame in [reply, *then]:
            if deliverer.post(connection_id, frame) is Outcome.GONE:
                self._prune([connection_id], endpoint)
                return

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
            self._prune([follow_up.connection_id], follow_up.endpoint)
            return None
        if liveness is Liveness.UNKNOWN:
            raise VerificationError(f"could not verify connection {follow_up.connection_id}")
        if self.store.claim_welcome(follow_up.connection_id) is not Claim.CLAIMED:
            return None
        outcome = deliverer.post(follow_up.connection_id, self._welcome(follow_up.connection_id))
        if outcome is Outcome.DELIVERED:
            self._recorder.count(WELCOMES_FOLLOW_UP)
        if outcome is Outcome.GONE:
            self._prune([follow_up.connection_id], follow_up.endpoint)
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
        self._prune(report.gone, batch.endpoint)
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
                self._recorder.count(FANOUT_QUEUED, requeued)
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
            endpoint = self._default_endpoint or idle.endpoint
            if self.store.is_past_limit(idle):
                self._forget(idle.connection_id, endpoint)
                expired += 1
                continue
            liveness = Liveness.UNKNOWN
            if endpoint:
                checked += 1
                liveness = self._deliverer_for(endpoint).verify(idle.connection_id)
            if liveness is Liveness.GONE:
                self._forget(idle.connection_id, endpoint)
                pruned += 1
                continue
            if liveness is Liveness.UNKNOWN:
                unknown += 1
            self.store.mark_checked(idle.connection_id)
        logger.info("sweep: checked %d, pruned %d, expired %d, undecided %d",
                    checked, pruned, expired, unknown)
        return SweepReport(checked=checked, pruned=pruned, unknown=unknown, expired=expired)

    def push(self, room: str, data: Any) -> Published:
        """Deliver ``data`` to every member of ``room`` as a message from the server.

        The message gets a sequence number and is kept in history like a client's.  Raises
        :class:`~chalicelib.errors.PushError` for an invalid room name or a message over 128 KB.
        """
        if not ROOM_PATTERN.fullmatch(room):
            raise PushError("room must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")
        try:
            text = data_json(data)
            self._message_frame(room, SERVER_SENDER, text)  # refuse what could never arrive
        except (ProtocolError, ValueError) as exc:
            raise PushError(getattr(exc, "message", None) or str(exc)) from exc
        audience = self._audience(room, sender=None, request_id=None)
        return self._publish(room, SERVER_SENDER, text, audience, None)

    # ------------------------------------------------------------------ requests

    def _dispatch(
        self,
        connection_id: str,
        record: ConnectionRecord | None,
        request: Request,
        endpoint: str,
    ) -> Response:
        user = None if record is None else record.user
        if isinstance(request, Ping):
            return Response(encode_frame("pong", {}, request.id))
        if isinstance(request, WhoAmI):
            rooms = self.store.rooms_of(connection_id)
            identity: dict[str, Any] = {"connectionId": connection_id, "rooms": rooms}
            if user is not None:
                identity["user"] = user
            return Response(encode_frame("identity", identity, request.id))
        if isinstance(request, Join):
            return self._join(connection_id, record, request, endpoint)
        if isinstance(request, Leave):
            if self.store.leave(connection_id, request.room):
                self._depart(request.room, user or connection_id, endpoint, connection_id)
            return Response(encode_frame("left", {"room": request.room}, request.id))
        if isinstance(request, History):
            return Response(self._history(connection_id, request))
        if isinstance(request, Members):
            return Response(self._members(connection_id, request))
        if isinstance(request, CustomRequest):
            return Response(self._custom(connection_id, user, request, endpoint))
        return Response(self._send(connection_id, record, request, endpoint))

    def _custom(
        self, connection_id: str, user: str | None, request: CustomRequest, endpoint: str
    ) -> bytes:
        """An app action (chalicelib/actions.py): its handler, with the delivery helpers."""

        def to_room(room: str, payload: bytes, exclude: str | None) -> RoomDelivery:
            audience = self._audience(room, sender=None, request_id=request.id)
            audience.exclude = exclude
            return self._deliver_to(audience, payload, endpoint)

        def to_user(target: str, payload: bytes) -> int:
            connections = self.store.connections_of_user(target)
            return self._deliver(endpoint, connections, payload).delivered

        context = ActionContext(connection_id, user, request.id, self.store, to_room, to_user)
        reply = self._actions.handler(request.action)(context, request.fields)
        if reply is None:
            return encode_frame("ok", {"action": request.action}, request.id)
        return reply

    def _join(
        self,
        connection_id: str,
        record: ConnectionRecord | None,
        request: Join,
        endpoint: str,
    ) -> Response:
        user = None if record is None else record.user
        rooms = self.store.rooms_of(connection_id)
        # Check-then-join: concurrent joins of one connection may overshoot by their count.
        if request.room not in rooms and len(rooms) >= self._limits.max_rooms:
            raise ProtocolError(
                ErrorCode.TOO_MANY_ROOMS,
                f"a connection may be in at most {self._limits.max_rooms} rooms;"
                " leave one first",
                request.id,
            )
        ops = self._granted(connection_id, record, request.room)
        if SUBSCRIBE not in ops:
            raise _forbidden(SUBSCRIBE, request.room, request.id)
        presence_user = user or connection_id
        restricted = None if ops == ALL_OPERATIONS else encode_operations(ops)
        joined = self.store.join(connection_id, request.room, user=presence_user, ops=restricted)
        cap = self._limits.max_room_members
        if joined.new and cap > 0 and joined.members > cap:
            # Over the cap: undo this join (the count is exact, so racing joins cannot overshoot;
            # at worst both of two racing the last place are refused).
            self.store.leave(connection_id, request.room)
            raise ProtocolError(ErrorCode.ROOM_FULL,
                                f"room {request.room!r} has its maximum of {cap} members",
                                request.id)
        head = self.store.head(request.room)
        if joined.new and self._features.presence and PRESENCE in ops:
            connections = self.store.presence_enter(request.room, presence_user)
            if connections == 1:
                self._announce(request.room, "join", presence_user, connections, endpoint,
                               exclude=connection_id)
        data: dict[str, Any] = {"room": request.room, "members": joined.members, "seq": head}
        then: list[bytes] = []
        if request.since is not None:
            complete = False  # without the history operation nothing is replayed
            if HISTORY in ops:
                messages = self._retained(request.room, after=request.since, upto=head,
                                          head=head, limit=max(1, self._features.history_max))
                then, whole = replay_frames(request.room, messages)
                complete = whole and is_complete(messages, request.since, head)
            data["replay"] = {"from": request.since + 1, "to": head, "complete": complete}
        return Response(encode_frame("joined", data, request.id), then)

    def _granted(
        self, connection_id: str, record: ConnectionRecord | None, room: str
    ) -> frozenset[str]:
        """What the connection may do in ``room``: its token's capabilities, then the app's
        join authoriser (when one is registered) deciding on them."""
        granted = _capabilities(record).for_room(room)
        if self._join_authorizer is None:
            return granted
        raw = self.store.claims_of(connection_id)
        claims = json.loads(raw) if raw else {}
        request = JoinRequest(user=None if record is None else record.user, room=room,
                              operations=granted, claims=claims, connection_id=connection_id)
        return decide(self._join_authorizer, request)

    def _member_ops(self, connection_id: str, room: str, request_id: str | None) -> frozenset[str]:
        """The operations recorded on the membership; ``not_member`` when there is none."""
        letters = self.store.membership(connection_id, room)
        if letters is None:
            raise ProtocolError(ErrorCode.NOT_MEMBER, f"join room {room!r} first", request_id)
        return decode_operations(letters)

    def _history(self, connection_id: str, request: History) -> bytes:
        if HISTORY not in self._member_ops(connection_id, request.room, request.id):
            raise _forbidden(HISTORY, request.room, request.id)
        head = self.store.head(request.room)
        after = request.after or 0
        upto = head if request.before is None else min(head, request.before - 1)
        messages = self._retained(request.room, after=after, upto=upto, head=head,
                                  limit=request.limit)
        # Complete: the whole range (after, upto] is here.  Truncated by ``limit``, the client
        # pages on with ``before`` = the oldest seq it got; a lost or burnt number shows too.
        complete = is_complete(messages, after, upto)
        return history_frame(request.room, messages, complete, request.id)

    def _members(self, connection_id: str, request: Members) -> bytes:
        if not self._features.presence:
            raise ProtocolError(ErrorCode.BAD_REQUEST,
                                "presence is turned off on this server (PRESENCE=off)",
                                request.id)
        if PRESENCE not in self._member_ops(connection_id, request.room, request.id):
            raise _forbidden(PRESENCE, request.room, request.id)
        presence = self.store.presence(request.room, MAX_PRESENCE_USERS)
        users = [{"user": user, "connections": n} for user, n in sorted(presence.users)]
        return encode_frame("members", {"room": request.room, "count": presence.count,
                                        "users": users, "truncated": presence.truncated},
                            request.id)

    def _send(
        self, connection_id: str, record: ConnectionRecord | None, request: Send, endpoint: str
    ) -> bytes:
        user = None if record is None else record.user
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
        text = data_json(request.data)
        self._message_frame(request.room, sender, text, request.id)  # too_large before anything
        audience = self._audience(request.room, sender=connection_id, request_id=request.id)
        if not self._may_publish(connection_id, record, request.room):
            raise _forbidden(PUBLISH, request.room, request.id)
        dedupe = None
        if request.id is not None and self._features.dedupe_seconds > 0:
            dedupe = (user or connection_id, request.id)
            earlier = self.store.recall_send(dedupe[0], request.room, request.id)
            if earlier is not None:
                return self._sent(request, Published(earlier.seq, earlier.mid,
                                                     RoomDelivery(0, 0, 0), duplicate=True))
        published = self._publish(request.room, sender, text, audience, endpoint, dedupe)
        return self._sent(request, published)

    @staticmethod
    def _sent(request: Send, published: Published) -> bytes:
        return encode_frame("sent", {"room": request.room, **published.as_dict()}, request.id)

    # ------------------------------------------------------------------ building blocks

    def _publish(
        self,
        room: str,
        sender: str,
        text: str,
        audience: _Audience,
        endpoint: str | None,
        dedupe: tuple[str, str] | None = None,
    ) -> Published:
        """Give the message its seq (and keep it), then deliver it to ``audience``.

        With ``dedupe`` (user, request id) the accepted send is remembered first; if another
        send with the same id won a race, this one's number is burnt (a gap), its history entry
        removed, and the earlier seq and mid are reported instead: nothing is broadcast twice.
        """
        features = self._features
        message = StoredMessage(0, uuid.uuid4().hex, sender, text, int(self._clock() * 1000))
        seq = self.store.publish(
            room, mid=message.mid, sender=sender, data_json=text, ts=message.ts,
            keep=features.history_max, ttl_seconds=features.history_ttl,
        )
        if dedupe is not None:
            earlier = self.store.remember_send(dedupe[0], room, dedupe[1],
                                               SendRecord(seq, message.mid),
                                               features.dedupe_seconds)
            if earlier is not None:
                if features.history_max > 0:
                    self.store.forget_message(room, seq)
                return Published(earlier.seq, earlier.mid, RoomDelivery(0, 0, 0), duplicate=True)
        stored = StoredMessage(seq, message.mid, sender, text, message.ts)
        payload = message_frame(room, stored)
        started = self._timer()
        delivery = self._deliver_to(audience, payload, endpoint)
        self._recorder.timing(FANOUT_MS, (self._timer() - started) * 1000)
        return Published(seq, message.mid, delivery)

    def _retained(
        self, room: str, *, after: int, upto: int, head: int, limit: int
    ) -> list[StoredMessage]:
        features = self._features
        return self.store.history(room, after=after, upto=upto, head=head, limit=limit,
                                  keep=features.history_max, ttl_seconds=features.history_ttl)

    def _may_publish(
        self, connection_id: str, record: ConnectionRecord | None, room: str
    ) -> bool:
        """``publish`` from the capabilities read with the message (no extra read); with a join
        authoriser, from what it recorded on the membership (one read)."""
        if self._join_authorizer is None:
            return PUBLISH in _capabilities(record).for_room(room)
        return PUBLISH in decode_operations(self.store.membership(connection_id, room) or "")

    def _audience(
        self, room: str, *, sender: str | None, request_id: str | None
    ) -> _Audience:
        """Read who receives a room message, checking that ``sender`` (if any) is a member.

        The first page answers membership for a small room without another read; a large room
        (more than ``inline_max`` recipients) asks the store once and reads on in big pages.
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
        if second is None:
            return _Audience(room, first, None, sender)
        # A large room: read the rest in bigger pages (fewer round trips for the sender).
        rest = self.store.member_pages(room, page_size=LARGE_ROOM_PAGE, start_after=second[-1])
        return _Audience(room, first, itertools.chain([second], rest), sender)

    def _deliver_to(
        self, audience: _Audience, payload: bytes, endpoint: str | None
    ) -> RoomDelivery:
        """Deliver inline (small room, or no fan-out queue) or hand pages to the workers."""
        endpoint = endpoint or self._endpoint_for_room(audience.first)
        if endpoint is None:
            return RoomDelivery(delivered=0, gone=0, failed=len(audience.first))
        if not audience.large or self._fanout_queue is None:
            total = RoomDelivery(0, 0, 0)
            for page in audience.pages():
                total = total + self._deliver(endpoint, page, payload)
            return total
        # One stream over every page: batches are packed across page boundaries (full batches,
        # not one short batch per page), and the room is never held in one list.
        recipients = itertools.chain.from_iterable(audience.pages())
        queued = self._fanout_queue.enqueue(audience.room, endpoint, payload, recipients)
        self._recorder.count(FANOUT_QUEUED, queued)
        return RoomDelivery(delivered=0, gone=0, failed=0, queued=queued)

    def _announce(
        self, room: str, event: str, user: str, connections: int, endpoint: str | None,
        *, exclude: str | None,
    ) -> None:
        """Tell the room's other members that ``user`` arrived or left (best effort: a failure
        is logged and never fails the request that caused it).

        Rooms above ``inline_max`` recipients get no presence frames: each join or leave would
        cost a post to every member (a join storm of N members, N² posts); their members still
        read the list with ``members`` (docs/protocol.md).
        """
        if endpoint is None and self._default_endpoint is None:
            return
        try:
            audience = self._audience(room, sender=None, request_id=None)
            if audience.large:
                return
            audience.exclude = exclude
            self._deliver_to(audience, presence_frame(room, event, user, connections), endpoint)
        except Exception:
            logger.exception("could not announce %s of %s in %s", event, user, room)

    def _depart(self, room: str, user: str, endpoint: str | None, connection_id: str) -> None:
        """One connection of ``user`` left ``room``: announce ``leave`` if it was the last."""
        if not self._features.presence:
            return
        left = self.store.presence_exit(room, user)
        if left == 0:
            self._announce(room, "leave", user, 0, endpoint, exclude=connection_id)

    def _forget(self, connection_id: str, endpoint: str | None) -> None:
        """Remove the connection and announce the rooms it was a user's last connection in."""
        removal = self.store.remove(connection_id)
        for room in removal.rooms:
            self._depart(room, removal.user or connection_id, endpoint, connection_id)

    def _message_frame(
        self, room: str, sender: str, text: str, request_id: str | None = None
    ) -> None:
        """Refuse (``too_large``) a message whose v2 frame could not reach a client."""
        probe = StoredMessage(2**53 - 1, "0" * 32, sender, text, 2**42)
        try:
            size = len(message_frame(room, probe))
        except ProtocolError as exc:
            raise ProtocolError(exc.code, exc.message, request_id) from exc
        if size > MAX_MESSAGE_BYTES:
            # Refused before any management-API call: API Gateway would answer 413 for each.
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"message would be {size} bytes; the limit is {MAX_MESSAGE_BYTES}",
                request_id,
            )

    def _deliver(self, endpoint: str, recipients: list[str], payload: bytes) -> RoomDelivery:
        report = fan_out(self._deliverer_for(endpoint), recipients, payload, self._executor)
        self._prune(report.gone, endpoint)
        return RoomDelivery.from_report(report)

    def _prune(self, connection_ids: list[str], endpoint: str | None = None) -> None:
        """Remove connections API Gateway reported gone; a failure here only delays cleanup."""
        for connection_id in connection_ids:
            try:
                self._forget(connection_id, endpoint)
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
        if admission.claim is Claim.CLAIMED:
            outcome = deliverer.post(ctx.connection_id, self._welcome(ctx.connection_id))
            if outcome is Outcome.DELIVERED:
                self._recorder.count(WELCOMES_FIRST_MESSAGE)
            elif outcome is Outcome.GONE:
                self._prune([ctx.connection_id], endpoint)
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
