"""Abuse limits: message rate (per user), rooms joined, ``data`` size of a ``send``, connections
per user, members per room.

Each limit, when hit, refuses the one frame with its own error code (``rate_limited``,
``too_many_rooms``, ``too_large``) and leaves the connection usable.  Where the state lives and how
exact each limit is: docs/security.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """``rate_limit`` messages per ``rate_window_seconds`` (fixed window, counted in the store;
    0 disables it), at most ``max_rooms`` rooms per connection, ``send`` ``data`` of at most
    ``max_data_bytes`` bytes of compact UTF-8 JSON.  The defaults disable nothing."""

    rate_limit: int = 100
    rate_window_seconds: int = 10
    max_rooms: int = 20
    max_data_bytes: int = 32768
    #: Open connections per user at ``$connect`` (0: no cap).
    max_connections_per_user: int = 0
    #: Members per room at ``join`` (0: no cap).
    max_room_members: int = 0

    def __post_init__(self) -> None:
        if self.rate_limit < 0 or self.rate_window_seconds < 1:
            raise ValueError("rate_limit must be >= 0 and rate_window_seconds >= 1")
        if self.max_rooms < 1 or self.max_data_bytes < 1:
            raise ValueError("max_rooms and max_data_bytes must be at least 1")
        if self.max_connections_per_user < 0 or self.max_room_members < 0:
            raise ValueError("max_connections_per_user and max_room_members must be >= 0")


#: No practical limits (for tests and tools that construct :class:`Messaging` directly).
UNLIMITED = Limits(rate_limit=0, max_rooms=1_000_000, max_data_bytes=1 << 30)


def data_size(data: Any) -> int:
    """Bytes ``data`` takes in a server frame (compact JSON, UTF-8, as ``encode_frame`` writes)."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8", "surrogatepass"))
