"""``python -m wsrooms_client URL``: talk to a ws-rooms server from a terminal.

The token comes from the ``WS_TOKEN`` environment variable (or ``--token-file``), never from the
command line, and is never printed: a token on screen or in shell history is a token leaked.

Lines you type: ``/join ROOM``, ``/leave ROOM``, ``/history ROOM``, ``/members ROOM``, ``/whoami``,
``/raw {JSON}`` (any frame), ``/quit``; anything else is sent to the last room you joined.  Every
frame received is printed as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from wsrooms_client.client import RequestError, RoomsClient


def _print(kind: str, data: dict[str, Any]) -> None:
    print(json.dumps({"type": kind, "data": data}, ensure_ascii=False), flush=True)


def _printer(kind: str) -> Any:
    def handler(data: dict[str, Any], _frame: dict[str, Any]) -> None:
        _print(kind, data)

    return handler


async def _session(url: str, token: str | None, lines: asyncio.Queue[str | None]) -> int:
    client = RoomsClient(url, token=token)
    for kind in ("message", "presence", "gap", "welcome", "close", "reconnecting"):
        client.on(kind, _printer(kind))
    room: str | None = None
    async with client:
        while (line := await lines.get()) is not None:
            line = line.strip()
            if not line:
                continue
            command, _, rest = line.partition(" ")
            try:
                if command == "/quit":
                    break
                if command == "/join":
                    room = rest.strip()
                    _print("joined", await client.join(room))
                elif command == "/leave":
                    _print("left", await client.leave(rest.strip()))
                elif command == "/history":
                    _print("history", await client.history(rest.strip()))
                elif command == "/members":
                    _print("members", await client.members(rest.strip()))
                elif command == "/whoami":
                    _print("identity", await client.whoami())
                elif command == "/raw":
                    frame = json.loads(rest)
                    action = frame.pop("action")
                    _print("reply", await client.request(action, **frame))
                elif room is None:
                    print("join a room first: /join ROOM", file=sys.stderr)
                else:
                    _print("sent", await client.send(room, line))
            except RequestError as exc:
                _print("error", {"code": exc.code, "message": exc.message})
            except (ValueError, KeyError) as exc:
                print(f"bad command: {exc}", file=sys.stderr)
    return 0


async def _main(url: str, token: str | None) -> int:
    lines: asyncio.Queue[str | None] = asyncio.Queue(maxsize=64)
    loop = asyncio.get_running_loop()

    def read() -> None:
        for line in sys.stdin:
            asyncio.run_coroutine_threadsafe(lines.put(line), loop).result()
        asyncio.run_coroutine_threadsafe(lines.put(None), loop).result()

    loop.run_in_executor(None, read)
    return await _session(url, token, lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wsrooms_client", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the WebSocket URL, e.g. ws://127.0.0.1:8001/api")
    parser.add_argument("--token-file", help="read the token from this file (else $WS_TOKEN)")
    args = parser.parse_args(argv)
    token = os.environ.get("WS_TOKEN") or None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip() or None
    try:
        return asyncio.run(_main(args.url, token))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
