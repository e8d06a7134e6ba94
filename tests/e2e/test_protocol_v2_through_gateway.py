"""Protocol v2 end to end: the real app behind the real local gateway, with the project's Python
client (wsrooms_client) and raw websockets clients.

These are the promises of docs/protocol.md's v2 section on real sockets: a client that drops and
reconnects gets what it missed, in order, exactly once; presence follows joins, leaves and
pruned connections whose $disconnect never ran; a resent send is delivered once; history past
retention says so.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from pathlib import Path
from typing import Any

import websockets

from localgateway.testing import Gateway, running_gateway
from wsrooms_client import Reconnect, RoomsClient

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10
_ids = itertools.count()


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WS_AUTH", "HISTORY_"))}
    env["CONNECTIONS_STORE"] = f"sqlite:///{tmp_path}/connections.db"
    env.update(extra)
    return env


def _gateway(tmp_path: Path, *args: str, **env: str) -> Any:
    return running_gateway(str(ROOT), extra_args=["--stage", "test", *args],
                           env=_env(tmp_path, **env))


class Inbox:
    """Everything a RoomsClient emitted, by type, with a way to wait for it."""

    def __init__(self, client: RoomsClient, *types: str) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        for kind in types:
            client.on(kind, self._recorder(kind))

    def _recorder(self, kind: str) -> Any:
        def record(data: dict[str, Any], _frame: dict[str, Any]) -> None:
            self.events.append((kind, data))
            self._changed.set()

        return record

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in self.events if k == kind]

    async def until(self, condition: Any) -> None:
        async with asyncio.timeout(TIMEOUT):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


def test_a_client_that_drops_gets_what_it_missed_in_order_exactly_once(tmp_path: Path) -> None:
    with _gateway(tmp_path) as gw:

        async def scenario() -> None:
            may_reconnect = asyncio.Event()
            may_reconnect.set()

            async def token() -> str:
                await may_reconnect.wait()  # the test holds the reconnect while others send
                return "unused-with-auth-off"

            reader = RoomsClient(gw.ws_url, token=token, reconnect=Reconnect(base=0.05))
            inbox = Inbox(reader, "message", "gap")
            async with reader, RoomsClient(gw.ws_url) as sender:
                await reader.join("r")
                await sender.join("r")
                await sender.send("r", "before")
                await inbox.until(lambda: len(inbox.of("message")) == 1)
                may_reconnect.clear()
                _kill(gw, reader.connection_id)  # the server side drops it (like a network loss)
                await _until(lambda: not reader.is_open)
                sent = [await sender.send("r", f"missed {n}") for n in range(5)]
                may_reconnect.set()
                await inbox.until(lambda: len(inbox.of("message")) == 6)
                await sender.send("r", "after")
                await inbox.until(lambda: len(inbox.of("message")) == 7)
            messages = inbox.of("message")
            assert [m["data"] for m in messages] == [
                "before", *[f"missed {n}" for n in range(5)], "after"]
            assert [m["seq"] for m in messages] == list(range(1, 8))
            assert [m.get("replay", False) for m in messages[1:6]] == [True] * 5
            assert [m["mid"] for m in messages[1:6]] == [s["mid"] for s in sent]
            assert inbox.of("gap") == []

        asyncio.run(scenario())


def test_presence_follows_joins_leaves_and_a_dropped_disconnect(tmp_path: Path) -> None:
    with _gateway(tmp_path, "--drop-disconnect-rate", "1") as gw:

        async def scenario() -> None:
            async with RoomsClient(gw.ws_url) as watcher, RoomsClient(gw.ws_url) as talker:
                inbox = Inbox(watcher, "presence")
                await watcher.join("r")
                await talker.join("r")
                vanished = RoomsClient(gw.ws_url, reconnect=Reconnect(max_attempts=0))
                await vanished.connect()
                await vanished.join("r")
                vanished_id = vanished.connection_id
                await inbox.until(lambda: len(inbox.of("presence")) == 2)
                assert [p["event"] for p in inbox.of("presence")] == ["join", "join"]
                members = await watcher.members("r")
                assert members["count"] == 3 and not members["truncated"]
                await talker.leave("r")
                await inbox.until(lambda: len(inbox.of("presence")) == 3)
                assert inbox.of("presence")[-1]["event"] == "leave"
                # Its $disconnect is dropped: the record stays until a delivery meets the 410.
                await vanished.close()
                await talker.join("r")  # announcing this join reaches the stale member: pruned
                await inbox.until(lambda: any(
                    p["event"] == "leave" and p["user"] == vanished_id
                    for p in inbox.of("presence")))
                assert (await watcher.members("r"))["count"] == 2

        asyncio.run(scenario())


def test_a_resent_send_is_delivered_once(tmp_path: Path) -> None:
    with _gateway(tmp_path) as gw:

        async def scenario() -> None:
            async with RoomsClient(gw.ws_url) as a, RoomsClient(gw.ws_url) as b:
                inbox = Inbox(b, "message")
                await a.join("r")
                await b.join("r")
                first = await a.send("r", "once", id="client-42")
                again = await a.send("r", "once", id="client-42")
                assert again["duplicate"] is True
                assert (again["seq"], again["mid"]) == (first["seq"], first["mid"])
                await a.send("r", "marker")
                await inbox.until(lambda: len(inbox.of("message")) == 2)
                assert [m["data"] for m in inbox.of("message")] == ["once", "marker"]

        asyncio.run(scenario())


def test_history_past_retention_is_incomplete(tmp_path: Path) -> None:
    with _gateway(tmp_path, HISTORY_MAX_MESSAGES="3") as gw:

        async def scenario() -> None:
            async with websockets.connect(gw.ws_url) as ws:
                await _request(ws, {"action": "join", "room": "r"})
                for n in range(5):
                    await _request(ws, {"action": "send", "room": "r", "data": n})
                page = await _request(ws, {"action": "history", "room": "r"})
                assert [m["seq"] for m in page["data"]["messages"]] == [3, 4, 5]
                assert page["data"]["complete"] is False
                recent = await _request(ws, {"action": "history", "room": "r", "after": 2})
                assert recent["data"]["complete"] is True

        asyncio.run(scenario())


async def _request(ws: Any, frame: dict[str, Any]) -> dict[str, Any]:
    """Send with an id; return the reply with that id (skipping welcome and presence)."""
    frame = {**frame, "id": f"r{next(_ids)}"}
    await ws.send(json.dumps(frame))
    while True:
        reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if reply.get("id") == frame["id"]:
            return reply  # type: ignore[no-any-return]


def _kill(gw: Gateway, connection_id: str | None) -> None:
    """DELETE @connections/{id}: API Gateway's own way to drop a client."""
    assert connection_id is not None
    gw.management_client().delete_connection(ConnectionId=connection_id)


async def _until(condition: Any) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():
            await asyncio.sleep(0.01)
