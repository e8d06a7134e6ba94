"""aiohttp I/O: the WebSocket API, the ``@connections`` management API and helper endpoints.

One aiohttp application on the WebSocket port serves:

* ``GET /{stage}`` (upgrade) - the WebSocket API;
* ``POST|GET|DELETE /{stage}/@connections/{id}`` (also ``%40connections``) - management API;
* ``POST /_gateway/schedule/{function}`` - run an ``@app.schedule`` handler now;
* ``GET /_gateway/health`` - readiness probe;
* ``GET /_gateway/`` - the live view page, fed by ``GET /_gateway/stats`` (JSON), read-only;
* ``GET /`` and ``GET /static/{file}`` - files of the ``--static`` directory, if given.

Every request passes :class:`localgateway.core.RequestGuard` first (``Host``, ``Origin``,
SigV4-shaped ``Authorization`` on ``@connections``, JSON-only control endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from localgateway.core import (
    CLOSE_ABNORMAL,
    CLOSE_MESSAGE_TOO_BIG,
    CONNECT_FAILED,
    Chaos,
    CloseConnection,
    CloseDecision,
    ConnectionRegistry,
    Limits,
    ManagementApi,
    RequestGuard,
    SendFrame,
    State,
    client_close_decision,
    connect_decision,
    connect_headers,
    gone,
)
from localgateway.events import (
    Clock,
    ConnectionFacts,
    EventFactory,
    IdSource,
    epoch_ms,
    internal_server_error_frame,
    scheduled_event,
)
from localgateway.invoker import InvocationError, Invoker, UnknownFunctionError
from localgateway.page import PAGE
from localgateway.project import Functions
from localgateway.view import LiveStats

LOG = logging.getLogger("localgateway")

STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "application/javascript; charset=utf-8",
    ".mjs": "application/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
#: Bound of the queue-depth look-up behind ``/_gateway/stats``, seconds.
QUEUE_DEPTH_TIMEOUT = 3.0
#: How long a server-initiated close waits for the client's close frame.
CLOSE_TIMEOUT = 2.0


@dataclass
class ServerSettings:
    stage: str
    max_workers: int = 8
    queue_length: int = 64
    schedule_interval: float = 0.0
    #: ``--static DIR``: served at ``/`` (``index.html``) and ``/static/FILE``; None = 404.
    static_dir: str | None = None
    #: ``--host`` and ``--allowed-origin``: who may drive the gateway (see RequestGuard).
    guard: RequestGuard = field(default_factory=RequestGuard)


@dataclass(frozen=True)
class Message:
    """Inbox: a client frame for ``$default``."""

    data: str | bytes


@dataclass(frozen=True)
class Disconnect:
    """Inbox: the connection closed; run ``$disconnect`` with this status, then stop."""

    decision: CloseDecision


@dataclass(frozen=True)
class Stop:
    """Inbox: the connection closed and ``$disconnect`` is skipped (chaos); stop."""


InboxItem = Message | Disconnect | Stop


@dataclass
class Session:
    """The live side of one connection: its socket, its ordered inbox, its tasks."""

    facts: ConnectionFacts
    ws: web.WebSocketResponse
    inbox: asyncio.Queue[InboxItem]
    close_decision: CloseDecision | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def connection_id(self) -> str:
        return self.facts.connection_id


class GatewayServer:
    """Owns the connection sessions and turns socket/HTTP I/O into core calls and invocations."""

    def __init__(
        self,
        invoker: Invoker,
        functions: Callable[[], Functions],
        events: EventFactory,
        limits: Limits,
        chaos: Chaos,
        clock: Clock,
        ids: IdSource,
        settings: ServerSettings,
        stats: LiveStats | None = None,
        queue_depths: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.invoker = invoker
        self.stats = stats or LiveStats()
        #: Blocking; the queues and their depths for the live view (None: no queues).
        self.queue_depths = queue_depths
        self.functions = functions
        self.events = events
        self.limits = limits
        self.chaos = chaos
        self.clock = clock
        self.ids = ids
        self.settings = settings
        self.registry: ConnectionRegistry[Session] = ConnectionRegistry()
        self.management = ManagementApi(self.registry, limits, chaos, clock)
        self.pool = ThreadPoolExecutor(
            max_workers=settings.max_workers, thread_name_prefix="lambda"
        )
        self._background: set[asyncio.Task[Any]] = set()

    # ----- application ------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        # Large enough that the 413 for >128 KB posts comes from the core, not from aiohttp.
        app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=[self._guard])
        stage = self.settings.stage
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name:.+}", self.static)
        app.router.add_get("/_gateway/health", self.health)
        app.router.add_get("/_gateway/", self.view_page)
        app.router.add_get("/_gateway/stats", self.view_stats)
        app.router.add_post("/_gateway/schedule/{function}", self.schedule)
        app.router.add_route("*", f"/{stage}/@connections/{{connection_id}}", self.connections)
        app.router.add_get(f"/{stage}", self.websocket)
        app.router.add_get(f"/{stage}/", self.websocket)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path
        stage = self.settings.stage
        if "/@connections/" in path or "/%40connections/" in path.lower():
            kind = "connections"
        elif path.startswith("/_gateway/"):
            kind = "control" if request.method not in ("GET", "HEAD") else "read"
        elif path.rstrip("/") == f"/{stage}":
            kind = "websocket"
        else:
            kind = "read"
        refusal = self.settings.guard.check(kind, request.method, request.headers)
        if refusal is not None:
            LOG.warning("refused %s %s with %d: %s", request.method, path, refusal.status,
                        refusal.message)
            if kind == "connections":
                self.stats.record_management(request.method, refusal.status)
            return web.json_response({"message": refusal.message}, status=refusal.status,
                                     headers={"x-amzn-ErrorType": refusal.error_type})
        response: web.StreamResponse = await handler(request)
        return response

    async def _on_startup(self, app: web.Application) -> None:
        if self.settings.schedule_interval > 0:
            self._spawn(self._schedule_loop(self.settings.schedule_interval))

    async def _on_shutdown(self, app: web.Application) -> None:
        going_away = CloseDecision(int(WSCloseCode.GOING_AWAY), "Going away")
        await asyncio.gather(
            *(self._close(session, going_away) for session in self.registry.handles()),
            return_exceptions=True,
        )
        for task in list(self._background):
            task.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def run(self, function: str, event: dict[str, Any]) -> dict[str, Any]:
        """Invoke a handler off the event loop, in the bounded thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, self.invoker.invoke, function, event)

    # ----- WebSocket --------------------------------------------------------------------------

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        peer = request.remote or "127.0.0.1"
        facts = ConnectionFacts(self.events.new_connection_id(), epoch_ms(self.clock), peer)
        self.registry.add(facts, request.headers.get("User-Agent", ""))
        cid = facts.connection_id
        refusal = await self._run_connect(request, facts)
        if refusal is not None:
            return refusal
        if not upgrade:
            # A plain GET runs $connect like an upgrade so that its refusal status (401, 403...)
            # can be read by clients that cannot see it, such as browsers after a failed
            # upgrade. Accepted, it is undone with $disconnect and answered 426.
            self.registry.remove(cid)
            disconnect = self.functions().disconnect
            if disconnect:
                event = self.events.disconnect(facts, CLOSE_ABNORMAL, "Upgrade Required")
                try:
                    await self.run(disconnect, event)
                except (InvocationError, UnknownFunctionError) as exc:
                    LOG.error("$disconnect %s failed: %s", cid, getattr(exc, "details", exc))
            return web.json_response({"message": "Upgrade Required"}, status=426)
        ws = web.WebSocketResponse(
            max_msg_size=self.limits.message_bytes, autoping=True, timeout=CLOSE_TIMEOUT
        )
        await ws.prepare(request)
        session = Session(facts, ws, asyncio.Queue(maxsize=self.settings.queue_length))
        self.registry.mark_open(cid, session)
        LOG.info("connected %s from %s", cid, peer)
        session.tasks.append(self._spawn(self._worker(session)))
        session.tasks.append(self._spawn(self._watchdog(session)))
        decision = await self._read_loop(session)
        await self._finish(session, decision)
        return ws

    async def _run_connect(
        self, request: web.Request, facts: ConnectionFacts
    ) -> web.Response | None:
        """Run ``$connect`` for a request; the refusal response, or None when accepted."""
        cid = facts.connection_id
        functions = self.functions()
        if not functions.connect:
            return None
        headers = connect_headers(request.headers.items(), facts.source_ip, request.url.port,
                                  request.scheme)
        event = self.events.connect(facts, headers, list(request.query.items()))
        try:
            decision = connect_decision(await self.run(functions.connect, event))
        except InvocationError as exc:
            LOG.error("$connect %s failed; refusing with 502: %s", cid, exc.details or exc)
            decision = CONNECT_FAILED
        except UnknownFunctionError:
            decision = connect_decision(None)
        if decision.accept:
            return None
        LOG.info("$connect %s refused with %d", cid, decision.status)
        self.registry.remove(cid)
        return web.Response(status=decision.status, text=decision.body,
                            headers=dict(decision.headers) if decision.headers else None)

    async def _read_loop(self, session: Session) -> CloseDecision:
        ws = session.ws
        while True:
            msg = await ws.receive()
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                data: str | bytes = msg.data
                size = len(data.encode("utf-8")) if isinstance(data, str) else len(data)
                too_big = self.limits.check_incoming(size)
                if too_big is not None:
                    LOG.info("%s: %d-byte message over the limit; closing with 1009",
                             session.connection_id, size)
                    await self._close(session, too_big)
                    continue
                self.registry.touch(session.connection_id, epoch_ms(self.clock))
                self.stats.record_frame(session.connection_id, "in", data)
                await session.inbox.put(Message(data))
            elif msg.type == WSMsgType.CLOSE:
                return session.close_decision or client_close_decision(
                    int(msg.data) if msg.data else None, msg.extra or "")
            elif msg.type == WSMsgType.ERROR:
                code = int(getattr(msg.data, "code", CLOSE_ABNORMAL) or CLOSE_ABNORMAL)
                if code == CLOSE_MESSAGE_TOO_BIG:
                    return session.close_decision or CloseDecision(code, "Message too big")
                return session.close_decision or CloseDecision(CLOSE_ABNORMAL, str(msg.data))
            elif msg.type in (WSMsgType.CLOSED, WSMsgType.CLOSING):
                return session.close_decision or CloseDecision(
                    int(ws.close_code or CLOSE_ABNORMAL), "Connection closed"
                )

    async def _close(self, session: Session, decision: CloseDecision) -> None:
        """Server-side close (DELETE, limits, timeouts, shutdown)."""
        if session.close_decision is None:
            session.close_decision = decision
        self.registry.mark_closed(session.connection_id)
        if not session.ws.closed:
            await session.ws.close(code=decision.code, message=decision.reason.encode())

    async def _finish(self, session: Session, decision: CloseDecision) -> None:
        cid = session.connection_id
        self.registry.mark_closed(cid)
        LOG.info("closed %s (%d %s)", cid, decision.code, decision.reason)
        if self.chaos.should_drop_disconnect():
            LOG.info("chaos: dropping $disconnect for %s", cid)
            await session.inbox.put(Stop())
        else:
            await session.inbox.put(Disconnect(decision))

    async def _worker(self, session: Session) -> None:
        """Runs one connection's events in order."""
        cid = session.connection_id
        try:
            while True:
                item = await session.inbox.get()
                functions = self.functions()
                if isinstance(item, Message):
                    if functions.message:
                        await self._message(session, functions.message, item.data)
                    continue
                if isinstance(item, Disconnect) and functions.disconnect:
                    event = self.events.disconnect(session.facts, item.decision.code,
                                                   item.decision.reason)
                    try:
                        await self.run(functions.disconnect, event)
                    except (InvocationError, UnknownFunctionError) as exc:
                        LOG.error("$disconnect %s failed: %s", cid, getattr(exc, "details", exc))
                return
        finally:
            self.registry.remove(cid)
            self.stats.forget_connection(cid)
            for task in session.tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    async def _message(self, session: Session, function: str, data: str | bytes) -> None:
        event = self.events.message(session.facts, data)
        try:
            await self.run(function, event)
        except InvocationError as exc:
            request_id = event["requestContext"]["requestId"]
            LOG.error("$default %s raised (requestId %s):\n%s",
                      session.connection_id, request_id, exc.details)
            if not session.ws.closed:
                with contextlib.suppress(Exception):
                    await session.ws.send_str(
                        internal_server_error_frame(session.connection_id, request_id)
                    )
        except UnknownFunctionError:
            LOG.warning("no handler %s for %s", function, session.connection_id)

    async def _watchdog(self, session: Session) -> None:
        """Idle timeout and maximum connection duration."""
        while True:
            conn = self.registry.get(session.connection_id)
            if conn is None or conn.state is State.CLOSED:
                return
            now = self.clock.time()
            decision = self.limits.check_timeouts(conn, now)
            if decision is not None:
                LOG.info("%s timed out; closing with %d", session.connection_id, decision.code)
                await self._close(session, decision)
                return
            wait = self.limits.next_deadline(conn) - now
            await asyncio.sleep(min(max(wait, 0.02), 1.0))

    # ----- management API ---------------------------------------------------------------------

    async def connections(self, request: web.Request) -> web.Response:
        if self.chaos.latency_seconds > 0:
            await asyncio.sleep(self.chaos.latency_seconds)
        cid = request.match_info["connection_id"]
        body = await request.read()
        result = self.management.handle(request.method, cid, body)
        action = result.action
        session = self.registry.handle(cid)
        if action is not None and session is None:
            result = gone(cid)
        elif isinstance(action, SendFrame) and session is not None:
            try:
                try:
                    text = action.data.decode("utf-8")
                except UnicodeDecodeError:
                    await session.ws.send_bytes(action.data)
                else:
                    await session.ws.send_str(text)
            except (ConnectionError, RuntimeError):
                result = gone(cid)
            else:
                self.stats.record_frame(cid, "out", action.data)
        elif isinstance(action, CloseConnection) and session is not None:
            decision = CloseDecision(action.code, action.reason)
            session.close_decision = session.close_decision or decision
            self.registry.mark_closed(cid)
            self._spawn(self._close(session, decision))
        self.stats.record_management(request.method, result.status)
        LOG.info(
            "@connections %s %s -> %d%s",
            request.method,
            cid,
            result.status,
            f" {result.error_type}" if result.error_type else "",
        )
        return web.Response(status=result.status, headers=result.headers, body=result.body)

    # ----- schedules --------------------------------------------------------------------------

    async def fire_schedule(self, function: str) -> dict[str, Any]:
        event = scheduled_event(function, self.clock, self.ids)
        LOG.info("schedule: invoking %s", function)
        result = await self.run(function, event)
        return {"function": function, "event": event, "result": result}

    async def schedule(self, request: web.Request) -> web.Response:
        function = request.match_info["function"]
        if function not in self.functions().schedules:
            return web.json_response(
                {"message": f"no @app.schedule handler named {function!r}",
                 "schedules": self.functions().schedules},
                status=404,
            )
        try:
            payload = await self.fire_schedule(function)
        except InvocationError as exc:
            LOG.error("schedule %s raised:\n%s", function, exc.details)
            return web.json_response({"message": str(exc)}, status=500)
        return web.json_response(payload)

    async def _schedule_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            for function in self.functions().schedules:
                try:
                    await self.fire_schedule(function)
                except Exception:
                    LOG.exception("scheduled %s failed", function)

    # ----- misc -------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "connections": len(self.registry)})

    async def view_page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store",
                                     "Content-Security-Policy": "default-src 'self'; "
                                     "script-src 'unsafe-inline'; style-src 'unsafe-inline'",
                                     "X-Frame-Options": "DENY"})

    async def view_stats(self, request: web.Request) -> web.Response:
        return web.json_response(await self.stats_document(),
                                 headers={"Cache-Control": "no-store"})

    async def stats_document(self) -> dict[str, Any]:
        """What ``/_gateway/stats`` answers: the live view's data (read-only)."""
        now_ms = epoch_ms(self.clock)
        connections = []
        for conn in self.registry.all():
            frames = self.stats.frames(conn.connection_id)
            connections.append({
                "connection_id": conn.connection_id,
                "state": conn.state.value,
                "age_s": round((now_ms - conn.facts.connected_at_ms) / 1000, 1),
                "idle_s": round((now_ms - conn.last_active_ms) / 1000, 1),
                "source_ip": conn.facts.source_ip,
                "user_agent": conn.user_agent[:80],
                "frames_in": frames.frames_in,
                "frames_out": frames.frames_out,
            })
        connections.sort(key=lambda c: c["age_s"])
        queues: list[dict[str, Any]] = []
        queue_error = None
        if self.queue_depths is not None:
            loop = asyncio.get_running_loop()
            try:
                queues = await asyncio.wait_for(
                    loop.run_in_executor(None, self.queue_depths), QUEUE_DEPTH_TIMEOUT)
            except Exception as exc:  # the page still shows the rest
                queue_error = f"{type(exc).__name__}: {exc}"
        return {"stage": self.settings.stage, "connections": connections,
                "queues": queues, "queue_error": queue_error, **self.stats.snapshot()}

    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.StreamResponse:
        if self.settings.static_dir is None:
            return web.Response(status=404, text=f"404: {name} not found (no --static DIR)\n")
        root = os.path.realpath(self.settings.static_dir)
        path = os.path.realpath(os.path.join(root, name))
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            return web.Response(status=404, text=f"404: {name} not found\n")
        headers = {"Cache-Control": "no-cache"}
        content_type = STATIC_TYPES.get(os.path.splitext(path)[1].lower())
        if content_type:
            # Explicit: ES modules must not depend on the host's mimetypes table.
            headers["Content-Type"] = content_type
        return web.FileResponse(path, headers=headers)


def render_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)
