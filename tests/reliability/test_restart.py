"""Restart: the gateway is stopped and started mid-run on the same ports and the same store.

The first gateway drops every ``$disconnect`` (shutdown closes every socket with 1001), so the
store is left with a stale record per client, like connections lost in AWS.  Clients
reconnect; the next room sends get 410 for the stale records and prune them; nothing sent after
reconnection is lost; after everything closes, one sweep leaves the store empty.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import websockets

from localgateway.testing import Gateway, free_port, running_gateway, wait_until
from tests.reliability.churn import (
    ROOT,
    ChurnConfig,
    ChurnResult,
    Client,
    ClientLog,
    gateway_env,
    open_connections,
    store_counts,
    trigger_sweep,
)

CLIENTS = 6
ROUNDS = 3
CAP = 60.0


async def _connect(gw: Gateway, log: ClientLog, deadline: float) -> Client:
    """Connect, retrying while the gateway is (re)starting; bounded by ``deadline``."""
    while True:
        try:
            ws = await websockets.connect(gw.ws_url, open_timeout=5)
        except (OSError, websockets.InvalidHandshake, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        log.connected = True
        return Client(log, ws, reply_timeout=10)


async def _phase(gw: Gateway, logs: list[ClientLog], deadline: float) -> list[int]:
    """Every client connects, joins "r", sends ROUNDS messages; returns the `gone` counts."""
    clients = [await _connect(gw, log, deadline) for log in logs]
    for client in clients:
        assert await client.join("r")
    for n in range(ROUNDS):
        for client in clients:
            await client.send("r", n + 1)
    gone = [int(s.reply["gone"]) for log in logs for s in log.sends if s.reply]
    for client in clients:
        await client.finish()
    return gone


def _stop_and_wait(gw: Gateway) -> None:
    wait_until(lambda: open_connections(gw) == 0 or None, 15, "clients closed")


def test_restart_mid_run_loses_nothing_sent_after_reconnecting(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    env = gateway_env(f"sqlite:///{db}", SWEEP_IDLE_SECONDS="0")
    port, ws_port = free_port(), free_port()
    args = ["--stage", "test"]
    deadline = time.monotonic() + CAP

    async def before_restart(gw: Gateway) -> list[Client]:
        clients = [await _connect(gw, ClientLog(i), deadline) for i in range(CLIENTS)]
        for client in clients:
            assert await client.join("r")
            await client.send("r", 0)
        return clients

    # The shutdown closes run $disconnect when the handler pool still takes work (racy); a
    # lost $disconnect is what a restart must survive, so the first gateway drops them all.
    first_args = [*args, "--drop-disconnect-rate", "1"]
    with running_gateway(str(ROOT), extra_args=first_args, env=env, port=port,
                         ws_port=ws_port) as gw:
        loop = asyncio.new_event_loop()
        old = loop.run_until_complete(asyncio.wait_for(before_restart(gw), CAP))
        assert "Traceback" not in gw.log()
    # The gateway is gone: every client sees its socket close; no $disconnect ran.
    loop.run_until_complete(asyncio.wait_for(
        asyncio.gather(*(c.reader for c in old)), 15))
    stale = {c.log.connection_id for c in old}
    assert None not in stale and len(stale) == CLIENTS
    assert store_counts(db)[0] == CLIENTS

    logs = [ClientLog(i) for i in range(CLIENTS)]
    with running_gateway(str(ROOT), extra_args=args, env=env, port=port, ws_port=ws_port) as gw:
        gone = loop.run_until_complete(asyncio.wait_for(_phase(gw, logs, deadline), CAP))
        loop.close()
        _stop_and_wait(gw)
        sweep = trigger_sweep(gw)
        connections, memberships = store_counts(db)
        log = gw.log()
    # The stale records were pruned by the first deliveries after reconnection (the presence
    # announcements of the re-joins, or the first sends), each exactly once.
    assert sum(gone) <= CLIENTS, gone
    with sqlite3.connect(db) as conn:
        left = {row[0] for row in conn.execute("SELECT connection_id FROM connections")}
    assert not left & stale
    result = ChurnResult(ChurnConfig(clients=CLIENTS, drop_rate=0.0, push_rate=0), logs, [],
                         log, connections, memberships, sweep, 0.0).analyse()
    assert not result.violations, "\n".join(result.violations)
    # Every client expected every other client's post-reconnection message, and got it.
    assert len(result.expected) == CLIENTS * (CLIENTS - 1) * ROUNDS
    assert result.lost == 0
