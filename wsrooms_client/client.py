"""An asyncio client for the ws-rooms protocol (docs/protocol.md), on ``websockets``.

For backends and tests; the same resume logic as ``web/client.js``::

    async with RoomsClient(url, token=fetch_token) as client:
        client.on("message", lambda data, frame: print(data["from"], data["data"]))
        await client.join("lobby")
        await client.send("lobby", {"text": "hi"})

What it does for you:

* **Reconnects** with full-jitter backoff (bounded attempts), calling ``token`` again on every
  attempt when it is a function, so an expired token is replaced instead of ending the session.
  A refused upgrade (401/403) is final unless a fresh token is refused again... once.
* **Resumes**: it tracks the last ``seq`` of every room, re-joins with ``since`` after a
  reconnect, drops duplicates by ``seq``, fills gaps from ``history`` and emits ``gap`` for what
  retention no longer has (:mod:`wsrooms_client.resume`).
* **Renews** the connection shortly before API Gateway's two-hour limit (``max_session``).
* **Resends** unacknowledged ``send``s after a reconnect with the same ``id``: the server answers
  ``duplicate: true`` if it had them.

Handlers registered with :meth:`RoomsClient.on` get ``(data, frame)`` for any server frame type
(``message``, ``presence``, your own action's frames...) plus the client's own events: ``open``,
``close``, ``reconnecting``, ``gap`` (data: ``{"room", "from", "to"}``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wsrooms_client.resume import Cursor, Gap, Verdict, missing

LOG = logging.getLogger("wsrooms_client")

Token = str | Callable[[], Awaitable[str]] | None
Handler = Callable[[dict[str, Any], dict[str, Any]], Any]

#: API Gateway closes every connection after 2 hours; renew 5 minutes before.
DEFAULT_MAX_SESSION = 7200.0 - 300.0


class RoomsError(Exception):
    """Root of this client's errors."""


class RequestError(RoomsError):
    """A request answered with an ``error`` frame (``code``: the protocol's error code), or one
    that could not be answered (``code`` ``"closed"`` or ``"timeout"``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionRefused(RoomsError):
    """The server refused the WebSocket upgrade for good (``status``: 401, 403...)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"connection refused with HTTP {status}")
        self.status = status


@dataclass(frozen=True)
class Reconnect:
    """Backoff between attempts: a random delay in [0, min(cap, base * 2**attempt))."""

    base: float = 0.25
    cap: float = 5.0
    max_attempts: int = 10

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        ceiling: float = min(self.cap, self.base * 2**attempt)
        return float(rng()) * ceiling


class RoomsClient:
    """One logical connection to a ws-rooms WebSocket API, across reconnects.

    ``token`` is a string, or an async function called before every (re)connect.  Use as an
    async context manager, or call :meth:`connect` and :meth:`close`.  Not thread-safe: use it
    from one event loop.
    """

    def __init__(
        self,
        url: str,
        *,
        token: Token = None,
        reconnect: Reconnect | None = None,
        max_session: float = DEFAULT_MAX_SESSION,
        request_timeout: float = 10.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.url = url
        self._token = token
        self._reconnect = reconnect or Reconnect()
        self._max_session = max_session
        self._timeout = request_timeout
        self._rng = rng
        self.cursor = Cursor()
        self.connection_id: str | None = None
        self._handlers: dict[str, list[Handler]] = {}
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._unacked: dict[str, dict[str, Any]] = {}  # send id -> frame, resent after reconnect
        self._ws: ClientConnection | None = None
        self._opened: asyncio.Event = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        #: Messages of a room held while a gap before them is filled from history.
        self._held: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RoomsClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection (and keep it open in the background).

        Raises :class:`ConnectionRefused` when the upgrade is refused for good, OSError or
        :class:`RoomsError` when the reconnect attempts run out before the first open.
        """
        if self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())
        opened = asyncio.ensure_future(self._opened.wait())
        done, _pending = await asyncio.wait({opened, self._runner},
                                            return_when=asyncio.FIRST_COMPLETED)
        if opened not in done:
            opened.cancel()
            self._runner.result()  # raises why it ended
            raise RoomsError("the connection ended before it opened")

    async def close(self) -> None:
        """Close for good (no reconnect); pending requests fail with ``closed``."""
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError, RoomsError, OSError):
                await self._runner
        self._fail_replies("closed", "the client was closed")

    @property
    def is_open(self) -> bool:
        return self._opened.is_set()

    # ------------------------------------------------------------------ events

    def on(self, type_: str, handler: Handler) -> None:
        """Call ``handler(data, frame)`` for every server frame of ``type_`` (sync or async),
        and for the client's events ``open``, ``close``, ``reconnecting`` and ``gap``."""
        self._handlers.setdefault(type_, []).append(handler)

    async def _emit(self, type_: str, data: dict[str, Any], frame: dict[str, Any]) -> None:
        for handler in list(self._handlers.get(type_, ())):
            try:
                result = handler(data, frame)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                LOG.exception("handler for %r failed", type_)

    # ------------------------------------------------------------------ requests

    async def request(self, action: str, **fields: Any) -> dict[str, Any]:
        """Send ``{"action": action, **fields}`` and return the reply's ``data``.

        Works for any action, including ones an app adds.  Raises :class:`RequestError` for an
        ``error`` reply, a timeout, or a connection that closed before the reply.
        """
        request_id = str(fields.pop("id", None) or uuid.uuid4().hex)
        frame = {"action": action, **fields, "id": request_id}
        reply = await self._exchange(frame)
        return reply["data"] if isinstance(reply.get("data"), dict) else {}

    async def ping(self) -> dict[str, Any]:
        return await self.request("ping")

    async def whoami(self) -> dict[str, Any]:
        return await self.request("whoami")

    async def join(self, room: str, *, since: int | None = None) -> dict[str, Any]:
        """Join ``room``; with ``since``, what was sent after it is replayed (docs/protocol.md).
        The client then tracks the room and resumes it after every reconnect."""
        fields: dict[str, Any] = {"room": room}
        resuming = since is not None
        if resuming:
            fields["since"] = since
        data = await self.request("join", **fields)
        if resuming and since is not None:
            self.cursor.start(room, since, resuming=True)
        self.cursor.start(room, int(data.get("seq", 0)), resuming=resuming)
        return data

    async def leave(self, room: str) -> dict[str, Any]:
        self.cursor.forget(room)
        return await self.request("leave", room=room)

    async def send(self, room: str, data: Any, *, id: str | None = None) -> dict[str, Any]:
        """Send to a room; returns ``sent``'s data (``seq``, ``mid``, counts).

        The frame keeps its ``id`` until acknowledged: after a reconnect it is sent again, and
        the server answers ``duplicate: true`` if the first one had been accepted.
        """
        request_id = id or uuid.uuid4().hex
        frame = {"action": "send", "room": room, "data": data, "id": request_id}
        self._unacked[request_id] = frame
        try:
            reply = await self._exchange(frame, resend=True)
        finally:
            self._unacked.pop(request_id, None)
        return dict(reply["data"])

    async def history(self, room: str, *, before: int | None = None, after: int | None = None,
                      limit: int = 50) -> dict[str, Any]:
        fields: dict[str, Any] = {"room": room, "limit": limit}
        if before is not None:
            fields["before"] = before
        if after is not None:
            fields["after"] = after
        return await self.request("history", **fields)

    async def members(self, room: str) -> dict[str, Any]:
        return await self.request("members", room=room)

    async def _exchange(self, frame: dict[str, Any], *, resend: bool = False) -> dict[str, Any]:
        request_id = str(frame["id"])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            future: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._replies[request_id] = future
            ws = await self._open_socket(deadline - loop.time())
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(frame))
            try:
                reply = await asyncio.wait_for(asyncio.shield(future),
                                               max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise RequestError("timeout", f"no reply to {frame['action']}") from None
            except RequestError as exc:
                if resend and exc.code == "closed" and not self._closing:
                    continue  # the connection dropped: resend after the reconnect, same id
                raise
            finally:
                self._replies.pop(request_id, None)
            if reply.get("type") == "error":
                error = reply.get("data", {})
                raise RequestError(str(error.get("code")), str(error.get("message")))
            return reply

    async def _open_socket(self, timeout: float) -> ClientConnection:
        if self._closing:
            raise RequestError("closed", "the client was closed")
        try:
            await asyncio.wait_for(self._opened.wait(), max(0.0, timeout))
        except TimeoutError:
            raise RequestError("timeout", "not connected") from None
        assert self._ws is not None
        return self._ws

    def _fail_replies(self, code: str, message: str) -> None:
        for future in list(self._replies.values()):
            if not future.done():
                future.set_exception(RequestError(code, message))

    # ------------------------------------------------------------------ the connection loop

    async def _url(self) -> str:
        token = self._token
        if callable(token):
            token = await token()
        if not token:
            return self.url
        parts = urlsplit(self.url)
        query = (parts.query + "&" if parts.query else "") + urlencode({"token": token})
        return urlunsplit(parts._replace(query=query))

    async def _run(self) -> None:
        attempt = 0
        refused_once = False
        while not self._closing:
            try:
                ws = await connect(await self._url(), open_timeout=self._timeout,
                                   close_timeout=2, max_size=2**20, compression=None)
            except InvalidStatus as exc:
                status = exc.response.status_code
                # A fresh token may cure a 401/403 (it expired); the same refusal twice is final.
                if status in (401, 403) and (not callable(self._token) or refused_once):
                    raise ConnectionRefused(status) from None
                refused_once = status in (401, 403)
            except OSError as exc:
                LOG.debug("connect failed: %s", exc)
            else:
                attempt, refused_once = 0, False
                await self._serve(ws)
                continue  # renewed or dropped: reconnect at once; backoff only after a failure
            attempt += 1
            if attempt > self._reconnect.max_attempts:
                raise RoomsError(f"gave up after {self._reconnect.max_attempts} attempts")
            await self._emit("reconnecting", {"attempt": attempt}, {})
            await asyncio.sleep(self._reconnect.delay(attempt - 1, self._rng))

    async def _serve(self, ws: ClientConnection) -> None:
        """One connection: resume every room, resend unacknowledged sends, read until closed
        (or renewed before API Gateway's two-hour limit)."""
        self._ws = ws
        self._opened.set()
        reader = asyncio.get_running_loop().create_task(self._read(ws))
        try:
            await self._emit("open", {}, {})
            await asyncio.gather(*(self._resume(room) for room in self.cursor.rooms()))
            for frame in list(self._unacked.values()):
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps(frame))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), self._max_session)
        except (ConnectionClosed, RequestError):
            pass
        finally:
            self._opened.clear()
            self._ws = None
            await ws.close()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._fail_replies("closed", "the connection closed")
            await self._emit("close", {"code": ws.close_code}, {})

    async def _resume(self, room: str) -> None:
        since = self.cursor.since(room)
        with contextlib.suppress(RequestError):
            data = await self.request("join", room=room, since=since)
            self.cursor.start(room, int(data.get("seq", 0)), resuming=True)

    async def _read(self, ws: ClientConnection) -> None:
        async for raw in ws:
            try:
                frame = json.loads(raw)
            except ValueError:
                LOG.warning("ignoring a frame that is not JSON")
                continue
            if not isinstance(frame, dict):
                continue
            await self._dispatch(frame)

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        data = frame.get("data") if isinstance(frame.get("data"), dict) else {}
        assert isinstance(data, dict)
        kind = str(frame.get("type", ""))
        if kind == "welcome":
            self.connection_id = data.get("connectionId")
        request_id = frame.get("id")
        if isinstance(request_id, str) and request_id in self._replies:
            future = self._replies[request_id]
            if not future.done():
                future.set_result(frame)
        if kind == "message" and isinstance(data.get("seq"), int):
            await self._room_message(data, frame)
            return
        await self._emit(kind, data, frame)

    async def _room_message(self, data: dict[str, Any], frame: dict[str, Any]) -> None:
        room, seq = str(data.get("room")), int(data["seq"])
        if room in self._held:
            # A gap of this room is being filled: keep order, deliver after it.
            self._held[room].append((data, frame))
            return
        verdict, gap = self.cursor.observe(room, seq)
        if verdict is Verdict.DUPLICATE:
            return
        if gap is not None:
            # Filling needs a history reply, which this reader delivers: fill in a task and hold
            # the room's later messages until it is done.
            self._held[room] = [(data, frame)]
            task = asyncio.get_running_loop().create_task(self._fill(gap))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        self.cursor.advance(room, seq)
        await self._emit("message", data, frame)

    async def _fill(self, gap: Gap) -> None:
        """Fetch a gap from history and deliver it in order, emitting ``gap`` for the numbers
        retention no longer has; then the messages held meanwhile."""
        try:
            page = await self.history(gap.room, after=gap.first - 1, before=gap.last + 1,
                                      limit=min(100, gap.last - gap.first + 1))
            found = {m["seq"]: m for m in page.get("messages", []) if isinstance(m.get("seq"), int)}
        except RequestError:
            found = {}
        holes = {hole.first: hole for hole in missing(gap, found)}
        seq = gap.first
        while seq <= gap.last:
            if seq in holes:
                hole = holes[seq]
                await self._emit("gap", {"room": hole.room, "from": hole.first, "to": hole.last},
                                 {})
                self.cursor.advance(gap.room, hole.last)
                seq = hole.last + 1
                continue
            message = found[seq]
            self.cursor.advance(gap.room, seq)
            await self._emit("message", message, {"type": "message", "data": message})
            seq += 1
        held = self._held.pop(gap.room, [])
        for data, frame in held:
            await self._room_message(data, frame)
