"""Room capabilities from the token, sans I/O: which operations a connection may do in a room.

A claim (``WS_CAPABILITY_CLAIM``, default ``rooms``) maps room patterns to operations::

    {"team-a:*": ["subscribe", "publish", "history"], "news": ["subscribe"]}

* a pattern is an exact room name, a prefix ending in ``*`` (``team-a:*``), or ``*``;
* the operations of a room are the union over every pattern that matches it;
* ``subscribe``: join and receive; ``publish``: send; ``history``: the ``history`` action and
  replay with ``since``; ``presence``: appear in presence and read ``members``.

A token without the claim gets ``WS_DEFAULT_CAPABILITY`` (default: everything everywhere, which is
v1's behaviour).  Capabilities are decided once, at ``$connect``, and stored with the connection in
:meth:`Capabilities.encode`'s compact form (it rides in the connection record, which must stay
under 1 KB so a message stays one write unit).  docs/security.md shows how to issue such claims.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.errors import WsAppError

SUBSCRIBE = "subscribe"
PUBLISH = "publish"
HISTORY = "history"
PRESENCE = "presence"
OPERATIONS = (SUBSCRIBE, PUBLISH, HISTORY, PRESENCE)
ALL_OPERATIONS = frozenset(OPERATIONS)

#: One letter per operation in the stored form.
_LETTERS = {SUBSCRIBE: "s", PUBLISH: "p", HISTORY: "h", PRESENCE: "r"}
_OPERATION_OF = {letter: op for op, letter in _LETTERS.items()}
#: A pattern: a room name (protocol.ROOM_PATTERN's characters), optionally ending in ``*``.
_PATTERN = re.compile(r"\*|[A-Za-z0-9_.:-]{1,64}\*?")
#: Bounds that keep the stored form small (the connection record stays under 1 KB).
MAX_PATTERNS = 32
MAX_ENCODED_CHARS = 600


class CapabilityError(WsAppError):
    """A capability claim (or ``WS_DEFAULT_CAPABILITY``) of the wrong shape; ``str`` says why."""


@dataclass(frozen=True)
class Capabilities:
    """Room patterns and the operations each grants."""

    grants: tuple[tuple[str, frozenset[str]], ...]

    @classmethod
    def parse(cls, value: Any) -> Capabilities:
        """Validate a claim value; raises :class:`CapabilityError` naming what is wrong."""
        if not isinstance(value, Mapping):
            raise CapabilityError("must be a JSON object of room patterns to lists of operations")
        if len(value) > MAX_PATTERNS:
            raise CapabilityError(f"has {len(value)} patterns; at most {MAX_PATTERNS}")
        grants = []
        for pattern, operations in value.items():
            if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
                raise CapabilityError(
                    f"pattern {str(pattern)[:70]!r} is not a room name, a prefix ending in '*',"
                    " or '*'")
            if not isinstance(operations, list) or not all(
                    isinstance(op, str) for op in operations):
                raise CapabilityError(f"operations of {pattern!r} must be a list of strings")
            unknown = sorted(set(operations) - ALL_OPERATIONS)
            if unknown:
                raise CapabilityError(
                    f"unknown operation(s) {unknown[:4]} for {pattern!r}; expected some of"
                    f" {', '.join(OPERATIONS)}")
            grants.append((pattern, frozenset(operations)))
        capabilities = cls(tuple(sorted(grants)))
        if len(capabilities.encode()) > MAX_ENCODED_CHARS:
            raise CapabilityError(f"is too large (over {MAX_ENCODED_CHARS} characters stored)")
        return capabilities

    @classmethod
    def parse_json(cls, text: str) -> Capabilities:
        """``WS_DEFAULT_CAPABILITY``'s value; raises :class:`CapabilityError`."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise CapabilityError(f"is not JSON: {exc}") from None
        return cls.parse(value)

    def for_room(self, room: str) -> frozenset[str]:
        """The operations granted in ``room``: the union over every matching pattern."""
        granted: set[str] = set()
        for pattern, operations in self.grants:
            if matches(pattern, room):
                granted |= operations
        return frozenset(granted)

    def encode(self) -> str:
        """The stored form: ``pattern=letters`` joined by ``;`` (``*=sphr``)."""
        return ";".join(f"{pattern}={encode_operations(ops)}" for pattern, ops in self.grants)

    @classmethod
    def decode(cls, text: str) -> Capabilities:
        """Read :meth:`encode`'s form back (written by this module, so trusted)."""
        grants = []
        for part in filter(None, text.split(";")):
            pattern, _, letters = part.rpartition("=")
            grants.append((pattern, decode_operations(letters)))
        return cls(tuple(grants))


#: What a connection may do when authentication is off, and the default default.
EVERYTHING = Capabilities((("*", ALL_OPERATIONS),))


def matches(pattern: str, room: str) -> bool:
    """Whether ``pattern`` covers ``room`` (exact, ``prefix*``, or ``*``)."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return room.startswith(pattern[:-1])
    return pattern == room


def encode_operations(operations: Iterable[str]) -> str:
    """Operations as letters, in a fixed order (``sphr``)."""
    chosen = set(operations)
    return "".join(_LETTERS[op] for op in OPERATIONS if op in chosen)


def decode_operations(letters: str) -> frozenset[str]:
    return frozenset(_OPERATION_OF[letter] for letter in letters if letter in _OPERATION_OF)
