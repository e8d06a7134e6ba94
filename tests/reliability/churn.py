"""Churn driver: many real WebSocket clients against the real local gateway (its own process).

Clients connect at random times, join random rooms, send numbered messages, leave and close;
server pushes go through the REST route alongside; the gateway drops a share of ``$disconnect``
events (``--drop-disconnect-rate``) and may throttle or slow its management API.  Everything a
client receives is recorded with the client-side time it arrived; :class:`ChurnResult` then
checks the promises from what each client actually received.

Membership windows are conservative, so the check is exact rather than statistical:

* a member's window on a room **opens** when its ``joined`` reply arrives;
* it **closes** at the moment the member issued the last request whose reply it received while
  still a member (its ``leave``, or the final ``ping`` before closing).

A message is expected by member M when M's window opened before the sender issued the ``send``
(or the REST push was issued) and closed after the sender's ``sent`` reply (or the push response)
arrived.  Why that is exact: the gateway writes a room message to M's socket before the
management API answers the sender's handler, so before the ``sent`` reply exists; a request M
issues after that is answered on the same socket after the message, so the message is already
in M's record when that reply arrives.

Only 127.0.0.1; every wait is bounded; the whole run is capped by ``time_cap_s``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import sqlite3
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import websockets

from localgateway.testing import SIGV4_SHAPED, Gateway, running_gateway, wait_until

ROOT = Path(__file__).resolve().parents[2]

#: Message key: ("c", sender client index, seq) for client sends, ("server", 0, seq) for pushes.
MsgKey = tuple[str, int, int]


@dataclass(frozen=True)
class ChurnConfig:
    clients: int = 40
    duration_s: float = 8.0
    rooms: int = 4
    drop_rate: float = 0.2
    #: REST pushes per second (sequential, one room each).
    push_rate: float = 2.0
    seed: int = 1
    #: Hard cap on the whole run (clients, drain, sweep); exceeding it fails the run.
    time_cap_s: float = 90.0
    #: ``test`` (welcome with the first reply) or ``dev`` (welcome follow-up through local SQS).
    stage: str = "test"
    throttle_rate: float = 0.0
    latency_ms: float = 0.0
    #: Pause between a client's actions, seconds (uniform).
    think_s: tuple[float, float] = (0.1, 0.6)
    #: A reply that has not arrived after this long is recorded as missing.
    reply_timeout_s: float = 15.0
    #: DELIVERY_MAX_ATTEMPTS of the app under test.
    max_attempts: int = 4
    max_rooms_per_client: int = 2


@dataclass
class Window:
    room: str
    opened: float
    closed: float = float("inf")
    #: True when the join or leave reply was missing: the window's edges are not known.
    uncertain: bool = False


@dataclass
class SendRecord:
    key: MsgKey
    room: str
    issued: float
    replied: float | None = None
    reply: dict[str, Any] | None = None


@dataclass
class ClientLog:
    index: int
    connection_id: str | None = None
    connected: bool = False
    welcomes: int = 0
    windows: list[Window] = field(default_factory=list)
    join_issued: dict[str, float] = field(default_factory=dict)
    #: (arrival time, key, room) of every room message received.
    messages: list[tuple[float, MsgKey, str]] = field(default_factory=list)
    sends: list[SendRecord] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    internal: list[Any] = field(default_factory=list)
    missing_replies: list[str] = field(default_factory=list)
    unexpected_close: str | None = None
    requests: int = 0


@dataclass
class ChurnResult:
    config: ChurnConfig
    clients: list[ClientLog]
    pushes: list[SendRecord]
    gateway_log: str
    store_connections: int
    store_memberships: int
    sweep: dict[str, Any]
    elapsed_s: float
    expected: set[tuple[int, MsgKey]] = field(default_factory=set)
    lost: int = 0
    violations: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ analysis

    def analyse(self) -> ChurnResult:
        """Compute the expected deliveries and every invariant violation (idempotent)."""
        self.violations = []
        v = self.violations
        received: dict[int, list[tuple[float, MsgKey, str]]] = {
            c.index: c.messages for c in self.clients
        }
        # Every room message sent with a successful reply, by its key.
        sends = [s for c in self.clients for s in c.sends] + self.pushes
        failed_by_key: dict[MsgKey, int] = {}
        for s in sends:
            if s.reply is not None and "failed" in s.reply:
                failed_by_key[s.key] = int(s.reply["failed"])
        expected: set[tuple[int, MsgKey]] = set()
        for s in sends:
            if s.replied is None or s.reply is None or "delivered" not in s.reply:
                continue
            for c in self.clients:
                if s.key[0] == "c" and s.key[1] == c.index:
                    continue
                for w in c.windows:
                    if (w.room == s.room and not w.uncertain and w.opened < s.issued
                            and w.closed > s.replied):
                        expected.add((c.index, s.key))
        self.expected = expected
        got = {(c.index, key) for c in self.clients for _, key, _ in c.messages}
        missing = expected - got
        # A delivery the app reported as failed (retries exhausted) is not lost silently.
        unreported = [m for m in missing if failed_by_key.get(m[1], 0) == 0]
        if unreported:
            v.append(f"{len(unreported)} expected deliveries lost without a failed count: "
                     f"{sorted(unreported)[:5]}")
        reported_failed = sum(failed_by_key.values())
        if len(missing) > reported_failed:
            v.append(f"{len(missing)} deliveries missing but only {reported_failed} reported")
        self.lost = len(unreported)
        # Nothing arrives that no reply accounted for (no phantom or duplicated deliveries).
        delivered_claimed = sum(int(s.reply.get("delivered", 0)) for s in sends if s.reply)
        any_missing_reply = any(c.missing_replies for c in self.clients)
        if not any_missing_reply and self.received_room_messages > delivered_claimed:
            v.append(f"clients received {self.received_room_messages} room messages, "
                     f"replies account for {delivered_claimed}")
        chaos = self.config.throttle_rate > 0
        exhausted = len(re.findall(r"still failing after \d+ attempts", self.gateway_log))
        unwelcomed = 0
        for c in self.clients:
            seen: set[MsgKey] = set()
            last: dict[tuple[str, int], int] = {}
            for _, key, room in received[c.index]:
                if key in seen:
                    v.append(f"client {c.index} received {key} twice")
                seen.add(key)
                sender = (key[0], key[1])
                if last.get(sender, -1) >= key[2]:
                    v.append(f"client {c.index}: {key} after seq {last[sender]} (order)")
                last[sender] = key[2]
                if room not in c.join_issued:
                    v.append(f"client {c.index} received {key} from room {room} it never joined")
            if c.welcomes > 1 or (c.connected and c.requests and c.welcomes != 1 and not chaos):
                v.append(f"client {c.index} ({c.connection_id}) got {c.welcomes} welcomes")
            if c.connected and c.requests and c.welcomes == 0:
                unwelcomed += 1
            if c.internal:
                v.append(f"client {c.index} saw internal errors: {c.internal[:3]}")
            if c.unexpected_close:
                v.append(f"client {c.index} closed unexpectedly: {c.unexpected_close}")
            if c.missing_replies and not chaos:
                v.append(f"client {c.index} missing replies: {c.missing_replies[:3]}")
            # Under throttling a join whose reply was lost leaves membership unknown: a later
            # send may then be refused with not_member.  Nothing else is ever acceptable.
            bad = [e for e in c.errors
                   if not chaos or e.get("data", {}).get("code") != "not_member"]
            if bad:
                v.append(f"client {c.index} got errors: {bad[:3]}")
        # A welcome (or reply) is only ever missing when its post exhausted the retry bound.
        missing_posts = unwelcomed + sum(len(c.missing_replies) for c in self.clients)
        if missing_posts > exhausted:
            v.append(f"{unwelcomed} welcomes and some replies missing, but only {exhausted} "
                     "posts exhausted their retries")
        if re.search(r"Traceback|\$default \S+ raised|\$connect \S+ raised", self.gateway_log):
            excerpt = self.gateway_log[self.gateway_log.find("Traceback") - 300:][:3000]
            v.append(f"gateway log shows an unhandled exception:\n{excerpt}")
        if "internal error handling a frame" in self.gateway_log:
            v.append("the app logged an internal error")
        if self.store_connections or self.store_memberships:
            v.append(f"store not empty after the sweep: {self.store_connections} connections, "
                     f"{self.store_memberships} memberships")
        self._check_retry_bound()
        return self

    def _check_retry_bound(self) -> None:
        """No connection got more POST attempts than the bound allows per delivery."""
        attempts = self.config.max_attempts
        statuses: dict[str, Counter[int]] = defaultdict(Counter)
        for cid, status in re.findall(r"@connections POST (\S+) -> (\d+)", self.gateway_log):
            statuses[cid][int(status)] += 1
        exhausted = Counter(re.findall(
            r"management API post on (\S+) still failing after (\d+) attempts", self.gateway_log))
        for (cid, n), _ in exhausted.items():
            if int(n) != attempts:
                self.violations.append(f"post on {cid} gave up after {n} != {attempts} attempts")
        failed_by_cid = Counter(cid for (cid, _), count in exhausted.items()
                                for _ in range(count))
        for cid, counts in statuses.items():
            bound = (attempts - 1) * counts[200] + attempts * failed_by_cid[cid]
            if counts[429] > bound:
                self.violations.append(
                    f"{cid}: {counts[429]} throttled POSTs exceed the retry bound {bound}")

    # ------------------------------------------------------------------ figures

    @property
    def received_room_messages(self) -> int:
        return sum(len(c.messages) for c in self.clients)

    def figures(self) -> dict[str, Any]:
        log = self.gateway_log
        sends = [s for c in self.clients for s in c.sends]
        replies = [s.reply for s in [*sends, *self.pushes] if s.reply and "delivered" in s.reply]
        got = {(c.index, key) for c in self.clients for _, key, _ in c.messages}
        return {
            "clients": len(self.clients),
            "connections": sum(1 for c in self.clients if c.connected),
            "requests": sum(c.requests for c in self.clients),
            "messages_sent": sum(1 for s in sends if s.reply and "delivered" in s.reply),
            "pushes": sum(1 for s in self.pushes if s.reply),
            "deliveries_expected": len(self.expected),
            "deliveries_expected_received": len(self.expected & got),
            "deliveries_received_total": self.received_room_messages,
            "reported_failed": sum(int(r.get("failed", 0)) for r in replies),
            "welcomes": sum(c.welcomes for c in self.clients),
            "dropped_disconnects": log.count("chaos: dropping $disconnect"),
            "stale_pruned_by_sends": sum(int(r.get("gone", 0)) for r in replies),
            "stale_pruned_by_sweep": int(self.sweep.get("pruned", 0)),
            "throttled_429": len(re.findall(r"@connections \S+ \S+ -> 429", log)),
            "management_calls": len(re.findall(r"@connections \S+ \S+ -> \d+", log)),
            "missing_replies": sum(len(c.missing_replies) for c in self.clients),
            "deliveries_missing": len(self.expected - got),
            "lost": self.lost,
            "store_connections_after_sweep": self.store_connections,
            "violations": len(self.violations),
            "elapsed_s": round(self.elapsed_s, 1),
            "config": asdict(self.config),
        }


# ---------------------------------------------------------------------- one client


class Client:
    """One WebSocket client: a reader task records frames; requests wait for their reply."""

    _ids = itertools.count(1)

    def __init__(self, log: ClientLog, ws: Any, reply_timeout: float) -> None:
        self.log = log
        self.ws = ws
        self.reply_timeout = reply_timeout
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.last_confirmed = 0.0
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.monotonic()
                try:
                    frame = json.loads(raw)
                except ValueError:
                    self.log.internal.append(f"non-JSON frame {raw[:200]!r}")
                    continue
                self._record(now, frame)
        except websockets.ConnectionClosed:
            pass

    def _record(self, now: float, frame: Any) -> None:
        if not isinstance(frame, dict) or "type" not in frame:
            # API Gateway's (and the local gateway's) frame for an exception in $default.
            self.log.internal.append(frame)
            return
        ftype, data = frame.get("type"), frame.get("data") or {}
        if ftype == "error" and data.get("code") == "internal":
            self.log.internal.append(frame)
        request_id = frame.get("id")
        if request_id is not None and request_id in self.pending:
            future = self.pending[request_id]
            if not future.done():
                future.set_result(frame)
            return
        if ftype == "welcome":
            self.log.welcomes += 1
            self.log.connection_id = data.get("connectionId")
        elif ftype == "message":
            body = data.get("data")
            if isinstance(body, dict) and "seq" in body:
                sender = "server" if data.get("from") == "server" else "c"
                key: MsgKey = (sender, int(body.get("c", 0)), int(body["seq"]))
                self.log.messages.append((now, key, str(data.get("room"))))
        elif ftype == "error":
            self.log.errors.append(frame)

    async def request(self, frame: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
        """Send ``frame`` with a fresh id; (issue time, reply or None when it never came)."""
        request_id = f"r{next(self._ids)}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[request_id] = future
        issued = time.monotonic()
        self.log.requests += 1
        try:
            await self.ws.send(json.dumps({**frame, "id": request_id}))
            reply = await asyncio.wait_for(future, self.reply_timeout)
        except (TimeoutError, websockets.ConnectionClosed) as exc:
            self.log.missing_replies.append(f"{frame.get('action')}: {type(exc).__name__}")
            return issued, None
        finally:
            self.pending.pop(request_id, None)
        self.last_confirmed = issued
        if reply.get("type") == "error":
            self.log.errors.append(reply)
        return issued, reply

    async def join(self, room: str) -> bool:
        self.log.join_issued.setdefault(room, time.monotonic())
        issued, reply = await self.request({"action": "join", "room": room})
        if reply is None:
            self.log.windows.append(Window(room, issued, uncertain=True))
            return True
        if reply.get("type") != "joined":
            return False
        self.log.windows.append(Window(room, time.monotonic()))
        return True

    def _close_window(self, room: str, at: float, uncertain: bool = False) -> None:
        for w in self.log.windows:
            if w.room == room and w.closed == float("inf"):
                w.closed = at
                w.uncertain = w.uncertain or uncertain

    async def leave(self, room: str) -> None:
        before = self.last_confirmed
        issued, reply = await self.request({"action": "leave", "room": room})
        self._close_window(room, issued if reply is not None else before, reply is None)

    async def send(self, room: str, seq: int) -> None:
        key: MsgKey = ("c", self.log.index, seq)
        record = SendRecord(key, room, issued=time.monotonic())
        self.log.sends.append(record)
        record.issued, reply = await self.request(
            {"action": "send", "room": room, "data": {"c": self.log.index, "seq": seq}})
        if reply is not None:
            record.replied = time.monotonic()
            record.reply = reply.get("data") if reply.get("type") == "sent" else None

    async def finish(self) -> None:
        """Final ping (flushes everything sent to us before it), then a normal close."""
        before = self.last_confirmed
        issued, reply = await self.request({"action": "ping"})
        end = issued if reply is not None else before
        for w in self.log.windows:
            if w.closed == float("inf"):
                w.closed = end
        await self.close()

    async def close(self) -> None:
        await asyncio.wait_for(self.ws.close(), 10)
        await asyncio.wait_for(self.reader, 10)


async def _client_life(cfg: ChurnConfig, gw: Gateway, log: ClientLog, start: float,
                       lifetime: float, rng: random.Random, t0: float) -> None:
    await asyncio.sleep(max(0.0, t0 + start - time.monotonic()))
    rooms = [f"room-{i}" for i in range(cfg.rooms)]
    ws = await websockets.connect(gw.ws_url, open_timeout=20, close_timeout=5,
                                  max_size=2**20)
    log.connected = True
    client = Client(log, ws, cfg.reply_timeout_s)
    joined: list[str] = []
    seq = 0
    deadline = time.monotonic() + lifetime
    try:
        while time.monotonic() < deadline:
            roll = rng.random()
            if not joined or (len(joined) < cfg.max_rooms_per_client and roll < 0.25):
                room = rng.choice([r for r in rooms if r not in joined])
                if await client.join(room):
                    joined.append(room)
            elif roll < 0.75:
                seq += 1
                await client.send(rng.choice(joined), seq)
            elif roll < 0.85:
                room = rng.choice(joined)
                await client.leave(room)
                joined.remove(room)
            elif roll < 0.92:
                await client.request({"action": "whoami"})
            else:
                await client.request({"action": "ping"})
            await asyncio.sleep(rng.uniform(*cfg.think_s))
        await client.finish()
    except websockets.ConnectionClosed as exc:
        log.unexpected_close = repr(exc)
        client.reader.cancel()


async def _pusher(cfg: ChurnConfig, gw: Gateway, pushes: list[SendRecord], stop_at: float,
                  rng: random.Random) -> None:
    if cfg.push_rate <= 0:
        return
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        seq = 0
        while time.monotonic() < stop_at:
            await asyncio.sleep(rng.expovariate(cfg.push_rate))
            seq += 1
            room = f"room-{rng.randrange(cfg.rooms)}"
            record = SendRecord(("server", 0, seq), room, issued=time.monotonic())
            pushes.append(record)
            # The route has IAMAuthorizer: the gateway wants a SigV4-shaped Authorization.
            async with http.post(f"{gw.rest_url}/rooms/{room}/messages",
                                 json={"data": {"seq": seq}},
                                 headers={"Authorization": SIGV4_SHAPED}) as response:
                body = await response.json(content_type=None)
            record.replied = time.monotonic()
            if response.status == 200:
                record.reply = body


async def drive(cfg: ChurnConfig, gw: Gateway) -> tuple[list[ClientLog], list[SendRecord]]:
    """Run every client and the pusher; returns what they recorded."""
    rng = random.Random(cfg.seed)
    t0 = time.monotonic()
    logs = [ClientLog(i) for i in range(cfg.clients)]
    tasks = []
    for log in logs:
        start = rng.uniform(0, cfg.duration_s * 0.75)
        lifetime = min(rng.uniform(0.15, 0.45) * cfg.duration_s, cfg.duration_s - start)
        tasks.append(_client_life(cfg, gw, log, start, max(lifetime, 0.5),
                                  random.Random(rng.random()), t0))
    pushes: list[SendRecord] = []
    tasks.append(_pusher(cfg, gw, pushes, t0 + cfg.duration_s, random.Random(rng.random())))
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for log, outcome in zip(logs, results, strict=False):
        if isinstance(outcome, BaseException):
            log.unexpected_close = f"client raised {outcome!r}"
    if isinstance(results[-1], BaseException):
        raise results[-1]
    return logs, pushes


# ---------------------------------------------------------------------- the run


def gateway_env(store_url: str, **extra: str) -> dict[str, str]:
    """Process environment for the gateway: no auth (the JWT tests own that), our store."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("WS_AUTH", "WS_ALLOWED_ORIGINS", "AWS_LAMBDA"))}
    env["CONNECTIONS_STORE"] = store_url
    env.update(extra)
    return env


def store_counts(db_path: Path) -> tuple[int, int]:
    with sqlite3.connect(db_path, timeout=10) as db:
        connections = db.execute("SELECT COUNT(*) FROM connections").fetchone()[0]
        memberships = db.execute("SELECT COUNT(*) FROM memberships").fetchone()[0]
    return int(connections), int(memberships)


def trigger_sweep(gw: Gateway) -> dict[str, Any]:
    request = urllib.request.Request(f"{gw.gateway_url}/_gateway/schedule/sweep", method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        result: dict[str, Any] = json.loads(response.read())["result"]
    return result


def open_connections(gw: Gateway) -> int:
    with urllib.request.urlopen(f"{gw.gateway_url}/_gateway/health", timeout=10) as response:
        return int(json.loads(response.read())["connections"])


def gateway_args(cfg: ChurnConfig) -> list[str]:
    return ["--stage", cfg.stage, "--drop-disconnect-rate", str(cfg.drop_rate),
            "--throttle-rate", str(cfg.throttle_rate), "--latency-ms", str(cfg.latency_ms),
            "--seed", str(cfg.seed), "--max-workers", "8", "--queue-length", "64"]


@contextmanager
def churn_gateway(cfg: ChurnConfig, workdir: Path) -> Iterator[tuple[Gateway, Path]]:
    db = workdir / "c.db"
    env = gateway_env(f"sqlite:///{db}", SWEEP_IDLE_SECONDS="0", SWEEP_BATCH="10000",
                      DELIVERY_MAX_ATTEMPTS=str(cfg.max_attempts))
    with running_gateway(str(ROOT), extra_args=gateway_args(cfg), env=env) as gw:
        yield gw, db


def run_churn(cfg: ChurnConfig, workdir: Path) -> ChurnResult:
    """Start a gateway, churn, close everything, sweep once, read the store; analysed result."""
    started = time.monotonic()
    with churn_gateway(cfg, workdir) as (gw, db):
        logs, pushes = asyncio.run(asyncio.wait_for(drive(cfg, gw), cfg.time_cap_s))
        remaining = max(5.0, cfg.time_cap_s - (time.monotonic() - started))
        # Every socket closed on the gateway's side, then the handlers it queued ran.
        wait_until(lambda: open_connections(gw) == 0 or None, remaining, "all connections closed")
        closes = sum(1 for c in logs if c.connected)
        wait_until(lambda: gw.log().count("closed ") >= closes or None, remaining,
                   "every close logged")
        time.sleep(0.5)
        sweep = trigger_sweep(gw)
        connections, memberships = store_counts(db)
        log = gw.log()
    result = ChurnResult(cfg, logs, pushes, log, connections, memberships, sweep,
                         time.monotonic() - started)
    return result.analyse()
