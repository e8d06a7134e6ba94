"""The real app behind the real local gateway (its own process), with real WebSocket clients.

These are the production code paths end to end: the app's boto3 management-API client posts
over HTTP to the gateway's ``@connections``, and 410s come back as ``GoneException``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from localgateway.testing import Gateway, running_gateway, wait_until
from tests.support.frames import without_ids

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 10


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_AUTH")}
    env["CONNECTIONS_STORE"] = f"sqlite:///{tmp_path}/connections.db"
    env.update(extra)
    return env


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """The app on the `test` stage: no welcome queue, so the welcome comes with a first reply."""
    with running_gateway(str(ROOT), extra_args=["--stage", "test", "--static", "web"],
                         env=_env(tmp_path)) as gw:
        yield gw


async def _recv(ws: Any) -> dict[str, Any]:
    """The next frame, skipping v2 presence announcements the way a v1 client ignores them."""
    while True:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        if frame.get("type") != "presence":
            return frame


async def _request(ws: Any, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send(json.dumps(frame))
    return await _recv(ws)


def _connections(tmp_path: Path) -> set[str]:
    with sqlite3.connect(tmp_path / "connections.db") as db:
        return {row[0] for row in db.execute("SELECT connection_id FROM connections")}


def test_welcome_then_pong_on_first_ping(gateway: Gateway) -> None:
    async def scenario() -> None:
        async with websockets.connect(gateway.ws_url) as ws:
            await ws.send(json.dumps({"action": "ping", "id": "p1"}))
            welcome, pong = await _recv(ws), await _recv(ws)
            assert welcome["type"] == "welcome"
            assert isinstance(welcome["data"]["connectionId"], str)
            assert pong == {"type": "pong", "data": {}, "id": "p1"}
            assert await _request(ws, {"action": "ping"}) == {"type": "pong", "data": {}}

    asyncio.run(scenario())


def test_rooms_across_three_clients(gateway: Gateway) -> None:
    async def scenario() -> None:
        async with (
            websockets.connect(gateway.ws_url) as a,
            websockets.connect(gateway.ws_url) as b,
            websockets.connect(gateway.ws_url) as c,
        ):
            ids = {}
            for name, ws in (("a", a), ("b", b), ("c", c)):
                await ws.send(json.dumps({"action": "whoami"}))
                assert (await _recv(ws))["type"] == "welcome"
                ids[name] = (await _recv(ws))["data"]["connectionId"]
            assert (await _request(a, {"action": "join", "room": "lobby"}))["data"]["members"] == 1
            assert (await _request(b, {"action": "join", "room": "lobby"}))["data"]["members"] == 2
            await _request(c, {"action": "join", "room": "other"})

            sent = await _request(a, {"action": "send", "room": "lobby", "data": {"t": "hi"}})
            assert without_ids(sent["data"]) == {
                "room": "lobby", "delivered": 1, "gone": 0, "failed": 0, "queued": 0}
            message = await _recv(b)
            assert message["type"] == "message"
            assert without_ids(message["data"]) == {
                "room": "lobby", "from": ids["a"], "data": {"t": "hi"}}
            # c is in another room: its next frame is the reply to its own ping, nothing else.
            assert (await _request(c, {"action": "ping"}))["type"] == "pong"
            bad = await _request(c, {"action": "send", "room": "lobby", "data": 1})
            assert bad["data"]["code"] == "not_member"

    asyncio.run(scenario())


def test_gone_connection_raises_gone_exception_in_boto3(gateway: Gateway) -> None:
    async def connection_id_then_close() -> str:
        async with websockets.connect(gateway.ws_url) as ws:
            await ws.send(json.dumps({"action": "whoami"}))
            await _recv(ws)
            return str((await _recv(ws))["data"]["connectionId"])

    connection_id = asyncio.run(connection_id_then_close())
    client = gateway.management_client()
    wait_until(lambda: "closed" in gateway.log(), TIMEOUT, "the close")
    with pytest.raises(client.exceptions.GoneException):
        client.post_to_connection(ConnectionId=connection_id, Data=b"{}")
    with pytest.raises(client.exceptions.GoneException):
        client.get_connection(ConnectionId=connection_id)
    with pytest.raises(client.exceptions.GoneException):
        client.delete_connection(ConnectionId=connection_id)


def test_dropped_disconnect_record_is_pruned_by_the_next_room_send(tmp_path: Path) -> None:
    with running_gateway(
        str(ROOT), extra_args=["--stage", "test", "--drop-disconnect-rate", "1", "--seed", "1"],
        env=_env(tmp_path),
    ) as gw:

        async def scenario() -> None:
            async with websockets.connect(gw.ws_url) as sender:
                await _request(sender, {"action": "join", "room": "r"})  # welcome first
                await _recv(sender)
                async with websockets.connect(gw.ws_url) as leaver:
                    await leaver.send(json.dumps({"action": "join", "room": "r"}))
                    await _recv(leaver)
                    await _recv(leaver)
                    await leaver.send(json.dumps({"action": "whoami"}))
                    leaver_id = (await _recv(leaver))["data"]["connectionId"]
                # $disconnect was dropped: the stale record is still in the store.
                assert leaver_id in _connections(tmp_path)
                sent = await _request(sender, {"action": "send", "room": "r", "data": "x"})
                assert without_ids(sent["data"]) == {
                    "room": "r", "delivered": 0, "gone": 1, "failed": 0, "queued": 0}
                assert leaver_id not in _connections(tmp_path)
                again = await _request(sender, {"action": "send", "room": "r", "data": "y"})
                assert again["data"]["gone"] == 0

        asyncio.run(scenario())
        assert "Traceback" not in gw.log()


def test_follow_up_welcomes_a_client_that_never_sends(tmp_path: Path) -> None:
    # The dev stage names the welcome queue; the gateway provides it locally and runs the
    # app's @app.on_sqs_message handler after WELCOME_DELAY_SECONDS.
    with running_gateway(str(ROOT), env=_env(tmp_path)) as gw:

        async def scenario() -> None:
            async with websockets.connect(gw.ws_url) as ws:
                welcome = await _recv(ws)
                assert welcome["type"] == "welcome"
                # Exactly once: the first message now gets only its reply.
                assert await _request(ws, {"action": "ping"}) == {"type": "pong", "data": {}}

        asyncio.run(scenario())


def test_startup_prints_the_urls_and_serves_the_demo_page(gateway: Gateway) -> None:
    import urllib.request

    log = gateway.log()
    for label in ("REST API:", "WebSocket:", "Management API:", "Demo page:"):
        assert label in log, log
    assert gateway.ws_url in log
    with urllib.request.urlopen(gateway.gateway_url + "/", timeout=TIMEOUT) as response:
        assert response.status == 200
        assert "text/html" in response.headers["Content-Type"]
        assert b"<html" in response.read()


def test_a_large_room_is_delivered_by_fan_out_workers_through_the_gateway(
    tmp_path: Path,
) -> None:
    # The gateway provisions the queue of the app's fan_out_worker handler and runs the worker
    # on it, as `make run` does on the dev stage; a tiny FANOUT_INLINE_MAX makes 3 members large.
    env = _env(tmp_path, FANOUT_QUEUE_URL="ws-rooms-fanout", FANOUT_INLINE_MAX="2",
               FANOUT_BATCH_SIZE="2")
    with running_gateway(str(ROOT), extra_args=["--stage", "test"], env=env) as gw:

        async def scenario() -> None:
            async with (
                websockets.connect(gw.ws_url) as sender,
                websockets.connect(gw.ws_url) as b,
                websockets.connect(gw.ws_url) as c,
                websockets.connect(gw.ws_url) as d,
            ):
                for ws in (sender, b, c, d):
                    await ws.send(json.dumps({"action": "join", "room": "big"}))
                    assert (await _recv(ws))["type"] == "welcome"
                    assert (await _recv(ws))["type"] == "joined"
                sent = await _request(sender, {"action": "send", "room": "big", "data": 7})
                assert without_ids(sent["data"]) == {
                    "room": "big", "delivered": 0, "gone": 0, "failed": 0, "queued": 3}
                for ws in (b, c, d):
                    message = await _recv(ws)
                    assert message["type"] == "message" and message["data"]["data"] == 7

        asyncio.run(scenario())
        assert "Traceback" not in gw.log()


def test_a_bad_setting_fails_the_start_naming_the_variable_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    from localgateway.testing import free_port

    env = _env(tmp_path, WS_RATE_LIMIT="abc", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "localgateway", "--project-dir", str(ROOT), "--env-file",
         "local.env", "--no-reload", "--port", str(free_port()), "--ws-port", str(free_port())],
        capture_output=True, text=True, timeout=90, env=env, cwd=str(ROOT))
    assert result.returncode == 1
    assert "Gateway ready" not in result.stdout
    assert result.stderr.count("WS_RATE_LIMIT='abc' is not an integer") == 1, result.stderr
