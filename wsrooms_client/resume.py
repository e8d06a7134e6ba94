"""Sans-I/O resume logic: what a client does with each room message's ``seq``.

Protocol v2 numbers every room's messages 1, 2, 3... (docs/protocol.md).  A client that tracks the
last ``seq`` it has of each room can resume after a reconnect (``join`` with ``since``), drop
messages it already has (a replay overlapping what arrived live), and notice a gap (a number it
never got) that it then fills from ``history`` or reports.  :class:`Cursor` makes those decisions
and does no I/O, so it is tested on its own and shared by every transport.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field


class Verdict(enum.Enum):
    """What to do with one incoming room message."""

    #: The next one (or the first seen): deliver it.
    DELIVER = "deliver"
    #: Already delivered (a replay overlapping live traffic, a redelivery): drop it.
    DUPLICATE = "duplicate"
    #: Numbers are missing before it: fill them (history) or report a gap, then deliver it.
    GAP = "gap"


@dataclass(frozen=True)
class Gap:
    """Messages ``first`` to ``last`` (inclusive) of ``room`` that the client does not have."""

    room: str
    first: int
    last: int


@dataclass
class Cursor:
    """The last ``seq`` delivered per room.

    Call :meth:`start` when a room is joined (with the ``seq`` of the ``joined`` reply), then
    :meth:`observe` for each ``message`` of the room and :meth:`advance` once it is delivered.
    """

    last: dict[str, int] = field(default_factory=dict)

    def start(self, room: str, head: int, *, resuming: bool) -> None:
        """A ``joined`` reply: a fresh join starts at the room's head (what came before is
        history); a resumed join keeps the cursor, the replay then moves it."""
        if room not in self.last:
            self.last[room] = head
        elif not resuming:
            # Never backwards: a live message may have been delivered before the reply arrived.
            self.last[room] = max(head, self.last[room])

    def since(self, room: str) -> int | None:
        """The ``since`` to rejoin ``room`` with (None: never joined)."""
        return self.last.get(room)

    def rooms(self) -> list[str]:
        return sorted(self.last)

    def forget(self, room: str) -> None:
        self.last.pop(room, None)

    def observe(self, room: str, seq: int) -> tuple[Verdict, Gap | None]:
        """Judge a message of ``room`` numbered ``seq`` (does not move the cursor)."""
        last = self.last.get(room)
        if last is None:
            return Verdict.DELIVER, None
        if seq <= last:
            return Verdict.DUPLICATE, None
        if seq == last + 1:
            return Verdict.DELIVER, None
        return Verdict.GAP, Gap(room, last + 1, seq - 1)

    def advance(self, room: str, seq: int) -> None:
        """``seq`` of ``room`` was delivered (never moves backwards)."""
        self.last[room] = max(seq, self.last.get(room, 0))


def missing(gap: Gap, found: Iterable[int]) -> list[Gap]:
    """The parts of ``gap`` not covered by the ``found`` sequence numbers (history's answer)."""
    have = set(found)
    holes: list[Gap] = []
    start: int | None = None
    for seq in range(gap.first, gap.last + 1):
        if seq in have:
            if start is not None:
                holes.append(Gap(gap.room, start, seq - 1))
                start = None
        elif start is None:
            start = seq
    if start is not None:
        holes.append(Gap(gap.room, start, gap.last))
    return holes
