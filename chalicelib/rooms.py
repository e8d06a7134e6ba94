"""Protocol v2's room features, sans I/O: sequence numbers, history, replay, presence frames.

Nothing here reads the store or the network: :class:`~chalicelib.service.Messaging` reads, these
functions decide and build frames.  The contract is docs/protocol.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from chalicelib.protocol import MAX_MESSAGE_BYTES, encode_frame
from chalicelib.store.base import StoredMessage

#: Users listed in a ``members`` reply (the count is always exact).
MAX_PRESENCE_USERS = 1000


@dataclass(frozen=True)
class RoomFeatures:
    """What protocol v2 keeps per room; from ``HISTORY_*``, ``PRESENCE``, ``DEDUPE_SECONDS``."""

    #: Messages kept per room for replay and ``history`` (0 turns both off).
    history_max: int = 100
    #: How long a kept message stays (seconds).
    history_ttl: int = 86400
    #: Announce joins and leaves, and answer ``members``.
    presence: bool = True
    #: How long a ``send``'s ``id`` is remembered per user and room (0: no idempotency).
    dedupe_seconds: int = 86400

    def __post_init__(self) -> None:
        if self.history_max < 0 or self.history_ttl < 1 or self.dedupe_seconds < 0:
            raise ValueError("history_max and dedupe_seconds must be >= 0, history_ttl >= 1")


#: Everything on: what the app runs with by default.
DEFAULT_FEATURES = RoomFeatures()


def data_json(data: Any) -> str:
    """``data`` as the compact JSON text the store keeps (the same text clients receive)."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def message_data(room: str, message: StoredMessage, *, replay: bool = False) -> dict[str, Any]:
    """The ``data`` object of a v2 ``message`` frame (v1's fields plus seq, mid, ts)."""
    data: dict[str, Any] = {
        "room": room,
        "from": message.sender,
        "data": json.loads(message.data_json),
        "seq": message.seq,
        "mid": message.mid,
        "ts": message.ts,
    }
    if replay:
        data["replay"] = True
    return data


def message_frame(room: str, message: StoredMessage, *, replay: bool = False) -> bytes:
    """A complete ``message`` frame (raises ProtocolError when it cannot be encoded)."""
    return encode_frame("message", message_data(room, message, replay=replay))


def is_complete(messages: Sequence[StoredMessage], after: int, upto: int) -> bool:
    """True when ``messages`` are every seq from ``after + 1`` to ``upto``, in order.

    A missing number (expired, beyond the kept count, or burnt by a crash) makes it False: the
    client knows it did not get everything and can say so (a ``gap``).
    """
    if upto <= after:
        return True
    return [m.seq for m in messages] == list(range(after + 1, upto + 1))


def replay_frames(room: str, messages: Sequence[StoredMessage]) -> tuple[list[bytes], bool]:
    """Replay frames for ``messages`` (``data.replay: true``), and False if any was dropped.

    A frame over API Gateway's 128 KB message limit is dropped rather than sent (it could never
    arrive); the reply then says ``complete: false``.
    """
    frames: list[bytes] = []
    whole = True
    for message in messages:
        frame = message_frame(room, message, replay=True)
        if len(frame) > MAX_MESSAGE_BYTES:
            whole = False
            continue
        frames.append(frame)
    return frames, whole


def history_frame(
    room: str, messages: Sequence[StoredMessage], complete: bool, request_id: str | None
) -> bytes:
    """The ``history`` reply, keeping the newest messages that fit in 128 KB.

    Dropping older ones for size makes ``complete`` false; the client pages on with
    ``before`` set to the oldest seq it got.
    """
    kept = list(messages)
    while True:
        frame = encode_frame(
            "history",
            {"room": room, "messages": [message_data(room, m) for m in kept],
             "complete": complete},
            request_id,
        )
        if len(frame) <= MAX_MESSAGE_BYTES or not kept:
            return frame
        # Drop the oldest share that is over the limit, at least one message.
        over = len(frame) - MAX_MESSAGE_BYTES
        share = max(1, over * len(kept) // max(1, len(frame)))
        kept = kept[share:]
        complete = False


def presence_frame(room: str, event: str, user: str, connections: int) -> bytes:
    """What other members receive when a user arrives in or leaves a room."""
    return encode_frame(
        "presence", {"room": room, "event": event, "user": user, "connections": connections}
    )
