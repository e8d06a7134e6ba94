"""The extension point for actions: a name, its fields, a handler.

Built-in actions (``ping``, ``join``, ``send``...) and an app's own are found through one
registry and validated the same way; an unknown action's error lists them all.  docs/extending.md
walks through a ``typing`` indicator end to end::

    from chalicelib.actions import Field, action

    @action("typing", Field("room", "room"), Field("typing", "boolean"))
    def typing(ctx, fields):
        ctx.require_member(fields["room"])
        ctx.send_to_room(fields["room"], "typing", {"room": fields["room"], "user": ctx.sender,
                                                    "typing": fields["typing"]})
        return ctx.reply("typed", {"room": fields["room"]})

Register actions at import time of app.py (every Lambda container imports it).  A handler gets an
:class:`ActionContext` (the connection, the store, and delivery helpers: reply, send to a room,
send to a user) and the validated fields; it returns the reply frame (``ctx.reply(...)``) or None
for ``{"type": "ok", "data": {"action": NAME}}``.  Raising
:class:`~chalicelib.protocol.ProtocolError` answers that error; anything else is logged and
answered ``internal`` (never a traceback to the client).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from chalicelib.protocol import (
    BUILTIN_PARSERS,
    ErrorCode,
    Parser,
    ProtocolError,
    encode_frame,
    room_field,
)

if TYPE_CHECKING:
    from chalicelib.store import ConnectionStore

Kind = Literal["room", "string", "integer", "boolean", "json"]
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass(frozen=True)
class Field:
    """One field of an action's frame: a room name, a string (``max_length`` characters), an
    integer (``minimum``..``maximum``), a boolean, or any JSON value."""

    name: str
    kind: Kind = "string"
    required: bool = True
    max_length: int = 1024
    minimum: int = 0
    maximum: int = 2**53 - 1

    def read(self, obj: Mapping[str, Any], request_id: str | None) -> Any:
        """The field's value from the frame; raises ProtocolError (``bad_request``)."""
        if self.name not in obj:
            if self.required:
                raise ProtocolError(ErrorCode.BAD_REQUEST, f"missing field '{self.name}'",
                                    request_id)
            return None
        value = obj[self.name]
        if self.kind == "room":
            return room_field(dict(obj), request_id, self.name)
        if self.kind == "string" and not (isinstance(value, str)
                                          and len(value) <= self.max_length):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"field '{self.name}' must be a string of"
                                f" at most {self.max_length} characters", request_id)
        if self.kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)
                                       or not self.minimum <= value <= self.maximum):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"field '{self.name}' must be an integer"
                                f" from {self.minimum} to {self.maximum}", request_id)
        if self.kind == "boolean" and not isinstance(value, bool):
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"field '{self.name}' must be true or"
                                " false", request_id)
        return value


@dataclass(frozen=True)
class CustomRequest:
    """A frame of an app's action, its fields validated."""

    action: str
    fields: Mapping[str, Any]
    id: str | None = None


@dataclass
class ActionContext:
    """What a handler gets: who asked, the store, and delivery helpers (bound by the service)."""

    connection_id: str
    #: The token's ``sub`` (None with authentication off).
    user: str | None
    request_id: str | None
    store: ConnectionStore
    _send_to_room: Callable[[str, bytes, str | None], Any] = field(repr=False)
    _send_to_user: Callable[[str, bytes], int] = field(repr=False)

    @property
    def sender(self) -> str:
        """Who the action is from, as room messages say it: the user, else the connection."""
        return self.user or self.connection_id

    def reply(self, type_: str, data: dict[str, Any]) -> bytes:
        """The reply frame (it carries the request's ``id``); return it from the handler."""
        return encode_frame(type_, data, self.request_id)

    def require_member(self, room: str) -> None:
        """Raise ``not_member`` unless the connection is in ``room`` (one read)."""
        if not self.store.is_member(self.connection_id, room):
            raise ProtocolError(ErrorCode.NOT_MEMBER, f"join room {room!r} first",
                                self.request_id)

    def send_to_room(self, room: str, type_: str, data: dict[str, Any], *,
                     include_self: bool = False) -> Any:
        """Deliver ``{type, data}`` to the room's members (large rooms through the fan-out
        workers, gone members pruned); returns the delivery counts."""
        exclude = None if include_self else self.connection_id
        return self._send_to_room(room, encode_frame(type_, data), exclude)

    def send_to_user(self, user: str, type_: str, data: dict[str, Any]) -> int:
        """Deliver ``{type, data}`` to every open connection of ``user``; returns how many."""
        return self._send_to_user(user, encode_frame(type_, data))


Handler = Callable[[ActionContext, Mapping[str, Any]], "bytes | None"]


@dataclass(frozen=True)
class Action:
    name: str
    fields: tuple[Field, ...]
    handler: Handler


class ActionRegistry:
    """Every action the server knows: the built-ins, then the app's."""

    def __init__(self) -> None:
        self._actions: dict[str, Action] = {}
        #: Bumped on every registration (the runtime rebuilds its service when it changes).
        self.version = 0

    def register(self, name: str, fields: tuple[Field, ...], handler: Handler) -> None:
        """Add an action; raises ValueError for a bad or taken name."""
        if not _NAME.fullmatch(name):
            raise ValueError(f"action name {name!r}: 1 to 32 of a-z 0-9 _, starting a-z")
        if name in BUILTIN_PARSERS:
            raise ValueError(f"action {name!r} is built in")
        names = [f.name for f in fields]
        if len(set(names)) != len(names) or {"action", "id"} & set(names):
            raise ValueError(f"action {name!r}: field names must be unique, not 'action'/'id'")
        self._actions[name] = Action(name, fields, handler)
        self.version += 1

    def action(self, name: str, *fields: Field) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def decorate(handler: Handler) -> Handler:
            self.register(name, fields, handler)
            return handler

        return decorate

    def handler(self, name: str) -> Handler:
        return self._actions[name].handler

    def parsers(self) -> dict[str, Parser]:
        """Built-in parsers, then one per registered action (fields validated in order)."""
        parsers = dict(BUILTIN_PARSERS)
        for name, entry in self._actions.items():
            parsers[name] = _parser(entry)
        return parsers

    def clear(self) -> None:
        """Forget the app's actions (tests)."""
        self._actions.clear()
        self.version += 1


def _parser(entry: Action) -> Parser:
    def parse(obj: dict[str, Any], request_id: str | None) -> CustomRequest:
        fields = {f.name: f.read(obj, request_id) for f in entry.fields}
        return CustomRequest(entry.name, fields, request_id)

    return parse


#: The app's registry: app.py (or what it imports) registers here.
registry = ActionRegistry()
action = registry.action
