"""Many real WebSocket members of one room, in one asyncio process, with receipt timestamps."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bench.common import log, median

#: How many handshakes or joins are in flight at once while building a room.
SETUP_PARALLELISM = 128


@dataclass
class Tracker:
    """Receipt times of room messages, by marker; wakes a waiter when all expected arrived."""

    times: dict[str, list[float]] = field(default_factory=dict)
    receivers: dict[str, set[int]] = field(default_factory=dict)
    _waiters: dict[str, tuple[int, asyncio.Future[None]]] = field(default_factory=dict)

    def expect(self, marker: str, count: int) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.times[marker] = []
        self.receivers[marker] = set()
        self._waiters[marker] = (count, future)
        if count <= 0:
            future.set_result(None)
        return future

    def hit(self, marker: str, member: int, when: float) -> None:
        times = self.times.setdefault(marker, [])
        times.append(when)
        self.receivers.setdefault(marker, set()).add(member)
        waiter = self._waiters.get(marker)
        if waiter is not None and len(times) >= waiter[0] and not waiter[1].done():
            waiter[1].set_result(None)


@dataclass
class Member:
    index: int
    ws: ClientConnection
    tracker: Tracker
    cid: str = ""
    replies: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "message":
                    data = msg.get("data", {}).get("data")
                    if isinstance(data, dict) and "k" in data:
                        self.tracker.hit(str(data["k"]), self.index, now)
                elif kind == "welcome":
                    self.cid = str(msg["data"]["connectionId"])
                else:
                    self.replies.put_nowait(msg)
        except Exception:  # closed under us: the reader just ends
            return

    async def request(self, frame: dict[str, Any], reply_type: str, timeout: float = 60.0
                      ) -> dict[str, Any]:
        await self.ws.send(json.dumps(frame))
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.replies.get()
                if msg.get("type") in (reply_type, "error"):
                    return msg


@dataclass
class Room:
    """Members connected to one gateway; ``sender`` is extra and not counted as a recipient."""

    url: str
    tracker: Tracker = field(default_factory=Tracker)
    members: list[Member] = field(default_factory=list)
    sender: Member | None = None
    _markers: itertools.count[int] = field(default_factory=itertools.count)

    async def _open(self, index: int) -> Member:
        ws = await connect(self.url, compression=None, ping_interval=None, open_timeout=60,
                           close_timeout=2, max_size=2**20)
        member = Member(index, ws, self.tracker)
        member.reader = asyncio.get_running_loop().create_task(member.read())
        return member

    async def grow(self, count: int, room: str) -> None:
        """Connect members until there are ``count``, each joined to ``room``."""
        if self.sender is None:
            self.sender = await self._open(-1)
            await self.sender.request({"action": "join", "room": room}, "joined")
        start = len(self.members)
        gate = asyncio.Semaphore(SETUP_PARALLELISM)

        async def one(index: int) -> Member:
            async with gate:
                member = await self._open(index)
                reply = await member.request({"action": "join", "room": room}, "joined")
                if reply.get("type") != "joined":
                    raise RuntimeError(f"join failed: {reply}")
                return member

        self.members.extend(await asyncio.gather(*(one(i) for i in range(start, count))))

    async def join_all(self, room: str, members: Iterable[Member]) -> None:
        gate = asyncio.Semaphore(SETUP_PARALLELISM)

        async def one(member: Member) -> None:
            async with gate:
                await member.request({"action": "join", "room": room}, "joined")

        await asyncio.gather(*(one(m) for m in members))

    async def send(self, room: str, expected: int, timeout: float
                   ) -> tuple[float, dict[str, Any], str]:
        """One ``send``; seconds from send to the ``expected``-th receipt, the reply, the marker.

        Waits for the ``sent`` reply too (it follows the fan-out).  On timeout the time is NaN.
        """
        assert self.sender is not None
        marker = f"m{next(self._markers)}"
        done = self.tracker.expect(marker, expected)
        started = time.perf_counter()
        await self.sender.ws.send(json.dumps(
            {"action": "send", "room": room, "data": {"k": marker}}))
        elapsed = float("nan")
        try:
            async with asyncio.timeout(timeout):
                await done
            elapsed = max(self.tracker.times[marker]) - started
        except TimeoutError:
            pass
        async with asyncio.timeout(timeout):
            while True:
                reply = await self.sender.replies.get()
                if reply.get("type") in ("sent", "error"):
                    break
        return elapsed, reply, marker

    async def median_send(self, room: str, size: int, runs: int, timeout: float,
                          label: str) -> float:
        """Median seconds of ``runs`` sends to ``size`` members; logs a reply that reached fewer.

        "Reached" counts both delivered and queued (handed to fan-out workers) recipients.
        """
        times: list[float] = []
        for _ in range(runs):
            elapsed, reply, _marker = await self.send(room, size, timeout)
            data = reply.get("data", {})
            if data.get("delivered", 0) + data.get("queued", 0) != size:
                log(f"{label} M={size}: sent reply says {data}")
            times.append(elapsed)
        return median(times)

    async def close(self, members: Sequence[Member] | None = None) -> None:
        targets = list(self.members if members is None else members)
        if members is None and self.sender is not None:
            targets.append(self.sender)

        async def one(member: Member) -> None:
            try:
                async with asyncio.timeout(5):
                    await member.ws.close()
            except Exception:
                member.ws.transport.abort()
            if member.reader is not None:
                member.reader.cancel()

        gate = asyncio.Semaphore(SETUP_PARALLELISM)

        async def gated(member: Member) -> None:
            async with gate:
                await one(member)

        await asyncio.gather(*(gated(m) for m in targets), return_exceptions=True)
