"""Protocol v2 (a superset of v1), sans I/O: client frames into typed requests; server frames.

Nothing here talks to the network or the store; :func:`parse_frame` either returns one of the
request dataclasses or raises :class:`ProtocolError` carrying the error code the client sees.
The contract is documented in docs/protocol.md.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from chalicelib.errors import WsAppError

#: API Gateway's limit for one message (and for one @connections POST body).
MAX_MESSAGE_BYTES = 128 * 1024
MAX_ID_CHARS = 64
ROOM_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
PROTOCOL_VERSION = 2
#: ``history`` returns at most this many messages per request (``limit``), 50 by default.
MAX_HISTORY_LIMIT = 100
DEFAULT_HISTORY_LIMIT = 50


class ErrorCode(enum.StrEnum):
    BAD_JSON = "bad_json"
    BAD_REQUEST = "bad_request"
    UNKNOWN_ACTION = "unknown_action"
    TOO_LARGE = "too_large"
    NOT_MEMBER = "not_member"
    INTERNAL = "internal"
    # Abuse limits and identity (docs/security.md); added in v1, never renamed.
    RATE_LIMITED = "rate_limited"
    TOO_MANY_ROOMS = "too_many_rooms"
    UNAUTHENTICATED = "unauthenticated"
    # Room access control (docs/security.md): an operation the connection may not do.
    FORBIDDEN = "forbidden"
    ROOM_FULL = "room_full"


class ProtocolError(WsAppError):
    """A frame the server refuses; ``code`` and ``message`` go back to the client verbatim.

    ``request_id`` is the frame's ``id`` when it was readable, so the error can be correlated.
    """

    def __init__(self, code: ErrorCode, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Ping:
    id: str | None = None


@dataclass(frozen=True)
class WhoAmI:
    id: str | None = None


@dataclass(frozen=True)
class Join:
    room: str
    id: str | None = None
    #: v2: replay the room's messages after this sequence number.
    since: int | None = None


@dataclass(frozen=True)
class Leave:
    room: str
    id: str | None = None


@dataclass(frozen=True)
class Send:
    room: str
    data: Any
    id: str | None = None


@dataclass(frozen=True)
class History:
    """v2: the room's retained messages with ``after < seq < before``, newest ``limit``."""

    room: str
    id: str | None = None
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_HISTORY_LIMIT


@dataclass(frozen=True)
class Members:
    """v2: who is in the room (presence)."""

    room: str
    id: str | None = None


Request = Ping | WhoAmI | Join | Leave | Send | History | Members
ACTIONS = ("ping", "join", "leave", "send", "whoami", "history", "members")


def _reject_constant(name: str) -> NoReturn:
    # json.loads accepts NaN and Infinity by default; they are not JSON and other clients choke.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but parses to inf, which json.dumps would relay as `Infinity`.
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


#: Deepest nesting accepted.  json.loads manages a little deeper than json.dumps can re-encode
#: (both use the recursion limit), so without a bound a frame could parse, then fail as
#: ``internal`` when relayed.
MAX_DEPTH = 128


def _too_deep(obj: Any) -> bool:
    stack: list[tuple[Any, int]] = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            if depth > MAX_DEPTH:
                return True
            stack.extend((item, depth + 1) for item in value)
    return False


def decode_body(body: str | None, is_base64: bool) -> str:
    """The frame's text: API Gateway hands binary frames over base64-encoded.

    Raises :class:`ProtocolError` (``bad_json``) when a binary frame is not UTF-8 text.
    """
    if body is None:
        raise ProtocolError(ErrorCode.BAD_JSON, "empty frame: expected a JSON object")
    if not is_base64:
        return body
    try:
        return base64.b64decode(body, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ProtocolError(
            ErrorCode.BAD_JSON, "binary frame is not UTF-8 encoded JSON text"
        ) from exc


#: Turns a frame's JSON object (and its ``id``) into a typed request; raises ProtocolError.
Parser = Callable[[dict[str, Any], "str | None"], Any]


def _parse_history(obj: dict[str, Any], request_id: str | None) -> History:
    limit = _sequence(obj, "limit", request_id)
    if limit is not None and not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"field 'limit' must be an integer from 1 to {MAX_HISTORY_LIMIT}", request_id)
    return History(room=_room(obj, request_id), id=request_id,
                   before=_sequence(obj, "before", request_id),
                   after=_sequence(obj, "after", request_id),
                   limit=DEFAULT_HISTORY_LIMIT if limit is None else limit)


def _parse_send(obj: dict[str, Any], request_id: str | None) -> Send:
    room = _room(obj, request_id)
    if "data" not in obj:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field 'data'", request_id)
    return Send(room=room, data=obj["data"], id=request_id)


#: The built-in actions' parsers: the registry (chalicelib/actions.py) starts from these, so
#: built-in and app actions are found and validated the same way.
BUILTIN_PARSERS: dict[str, Parser] = {
    "ping": lambda obj, request_id: Ping(id=request_id),
    "join": lambda obj, request_id: Join(room=_room(obj, request_id), id=request_id,
                                         since=_sequence(obj, "since", request_id)),
    "leave": lambda obj, request_id: Leave(room=_room(obj, request_id), id=request_id),
    "send": _parse_send,
    "whoami": lambda obj, request_id: WhoAmI(id=request_id),
    "history": _parse_history,
    "members": lambda obj, request_id: Members(room=_room(obj, request_id), id=request_id),
}
assert tuple(BUILTIN_PARSERS) == ACTIONS


def parse_frame(
    body: str | None, is_base64: bool = False, parsers: Mapping[str, Parser] | None = None
) -> Any:
    """Parse one client frame into a request (a built-in dataclass, or what an app action's
    parser returns; ``parsers`` defaults to the built-ins).

    Raises :class:`ProtocolError` with ``too_large`` (over 128 KB), ``bad_json`` (not JSON, or
    not an object), ``bad_request`` (missing or invalid field) or ``unknown_action``.
    """
    parsers = BUILTIN_PARSERS if parsers is None else parsers
    text = decode_body(body, is_base64)
    if len(text) > MAX_MESSAGE_BYTES or len(text.encode("utf-8", "surrogatepass")) > (
        MAX_MESSAGE_BYTES
    ):
        raise ProtocolError(ErrorCode.TOO_LARGE, f"frame exceeds {MAX_MESSAGE_BYTES} bytes")
    try:
        obj = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
        if _too_deep(obj):
            raise RecursionError
    except RecursionError as exc:
        raise ProtocolError(ErrorCode.BAD_JSON, "frame is nested too deeply") from exc
    except ValueError as exc:
        # ValueError covers JSONDecodeError and int-too-long (CPython's digit limit).
        raise ProtocolError(ErrorCode.BAD_JSON, f"frame is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.BAD_JSON, "frame must be a JSON object")

    request_id = _request_id(obj)
    action = obj.get("action")
    if action is None:
        raise ProtocolError(ErrorCode.BAD_REQUEST, "missing field 'action'", request_id)
    if not isinstance(action, str):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'action' must be a string", request_id)
    parser = parsers.get(action)
    if parser is not None:
        return parser(obj, request_id)
    shown = action if len(action) <= 32 else action[:32] + "..."
    raise ProtocolError(
        ErrorCode.UNKNOWN_ACTION,
        f"unknown action {json.dumps(shown)}; expected one of: {', '.join(parsers)}",
        request_id,
    )


def _request_id(obj: dict[str, Any]) -> str | None:
    if "id" not in obj:
        return None
    value = obj["id"]
    if not isinstance(value, str) or len(value) > MAX_ID_CHARS:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"field 'id' must be a string of at most {MAX_ID_CHARS} chars"
        )
    if not _is_encodable(value):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "field 'id' is not valid Unicode")
    return value


#: Sequence numbers are JSON integers a double holds exactly (JavaScript clients).
MAX_SEQUENCE = 2**53 - 1


def _sequence(obj: dict[str, Any], name: str, request_id: str | None) -> int | None:
    """An optional non-negative integer field (``since``, ``before``, ``after``, ``limit``)."""
    if name not in obj or obj[name] is None:
        return None
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQUENCE:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"field '{name}' must be a non-negative integer", request_id)
    return value


def room_field(obj: dict[str, Any], request_id: str | None, name: str = "room") -> str:
    """A required room-name field (``bad_request`` when missing or invalid)."""
    if name not in obj:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"missing field '{name}'", request_id)
    room = obj[name]
    if not isinstance(room, str) or not ROOM_PATTERN.fullmatch(room):
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            f"field '{name}' must be 1 to 64 characters of A-Z a-z 0-9 _ . : -",
            request_id,
        )
    return room


def _room(obj: dict[str, Any], request_id: str | None) -> str:
    return room_field(obj, request_id)


def _is_encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------------- server frames


def encode_frame(type_: str, data: dict[str, Any], request_id: str | None = None) -> bytes:
    """One server frame as UTF-8 JSON bytes: ``{"type", "data"}`` plus ``id`` for replies.

    Raises :class:`ProtocolError` (``bad_request``) when ``data`` holds text that cannot be
    encoded (a lone surrogate from a ``\\ud800`` escape): it could never reach a client intact.
    """
    frame: dict[str, Any] = {"type": type_, "data": data}
    if request_id is not None:
        frame["id"] = request_id
    try:
        text = json.dumps(frame, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        # NaN/Infinity (a REST push body may hold them) would reach clients as invalid JSON.
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "message contains a non-finite number", request_id
        ) from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, "message contains invalid Unicode (lone surrogate)", request_id
        ) from exc


def error_frame(code: ErrorCode, message: str, request_id: str | None = None) -> bytes:
    return encode_frame("error", {"code": str(code), "message": message}, request_id)
