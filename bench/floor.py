"""Workload 5: the transport floor, a bare ``websockets`` server answering ping with pong.

``python -m bench.floor PORT`` serves ``ws://127.0.0.1:PORT/`` with no handler machinery: parse
the JSON, answer ``{"type":"pong","data":{}}`` (with the ``id``).  It runs in its own process, like
the gateway, and stops by itself after ``MAX_LIFETIME`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator

from websockets.asyncio.server import ServerConnection, serve

from bench.common import PYTHON, ROOT
from localgateway.testing import _port_open, free_port, stop_process, wait_until

MAX_LIFETIME = 600.0


async def _handler(ws: ServerConnection) -> None:
    async for raw in ws:
        msg = json.loads(raw)
        reply: dict[str, object] = {"type": "pong", "data": {}}
        if isinstance(msg, dict) and "id" in msg:
            reply["id"] = msg["id"]
        await ws.send(json.dumps(reply))


async def _serve(port: int) -> None:
    async with serve(_handler, "127.0.0.1", port, compression=None, ping_interval=None):
        await asyncio.sleep(MAX_LIFETIME)


@contextlib.contextmanager
def running_floor() -> Iterator[str]:
    """Start the floor server in its own process; yield its URL; stop it."""
    port = free_port()
    process = subprocess.Popen([PYTHON, "-m", "bench.floor", str(port)], cwd=ROOT)
    try:
        wait_until(lambda: process.poll() is None and _port_open(port), 30, "the floor server")
        yield f"ws://127.0.0.1:{port}/"
    finally:
        stop_process(process)


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1])))
