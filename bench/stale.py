"""Workload 2: the fan-out room with 20% of its members' records stale.

Members are closed with ``--drop-disconnect-rate 1`` on the gateway, so their ``$disconnect``
never runs and their records stay in the store (as happens in AWS, where it is best-effort).
Management-API calls are counted from the gateway's own log of every ``@connections`` request,
so they are what the management API saw, not what the app believes it did.
"""

from __future__ import annotations

import asyncio
import re

from bench.common import Section, app_gateway, fmt, log, raise_nofile
from bench.fanout import LATENCY_MS
from bench.room import Room
from localgateway.testing import Gateway, wait_until

STALE_FRACTION = 0.2
CALL_LINE = re.compile(r"@connections (POST|GET|DELETE) (\S+) -> (\d+)")


def _calls(log_text: str, exclude: str) -> tuple[int, int]:
    """(POST 200s, POST 410s) in ``log_text``, not counting those to ``exclude``."""
    ok = gone = 0
    for method, cid, status in CALL_LINE.findall(log_text):
        if method != "POST" or cid == exclude:
            continue
        if status == "200":
            ok += 1
        elif status == "410":
            gone += 1
    return ok, gone


async def _measure(gateway: Gateway, size: int) -> list[dict[str, float]]:
    room = Room(gateway.ws_url)
    results: list[dict[str, float]] = []
    try:
        await room.grow(size, "stale")
        await room.send("stale", size, 30 + size * 0.1)  # warm-up, all members live
        stale = [m for m in room.members if m.index % round(1 / STALE_FRACTION) == 0]
        live = [m for m in room.members if m.index % round(1 / STALE_FRACTION) != 0]
        before = gateway.log().count("chaos: dropping $disconnect")
        await room.close(stale)
        wait_until(lambda: gateway.log().count("chaos: dropping $disconnect")
                   >= before + len(stale), 30, "the stale members' closes")
        assert room.sender is not None
        live_indexes = {m.index for m in live}
        for attempt in (1, 2):
            offset = len(gateway.log())
            _elapsed, reply, marker = await room.send("stale", len(live), 30 + size * 0.1)
            await asyncio.sleep(0.2)  # let the gateway flush its log lines
            ok, gone = _calls(gateway.log()[offset:], room.sender.cid)
            data = reply.get("data", {})
            missed = len(live_indexes - room.tracker.receivers.get(marker, set()))
            results.append({
                "send": attempt, "delivered": float(data.get("delivered", 0)),
                "gone": float(data.get("gone", 0)), "failed": float(data.get("failed", 0)),
                "posts_ok": float(ok), "posts_gone": float(gone), "missed": float(missed),
                "stale": float(len(stale)) if attempt == 1 else 0.0,
            })
            log(f"stale send {attempt}: {results[-1]}")
    finally:
        await room.close([m for m in room.members if not m.ws.close_code]
                         + ([room.sender] if room.sender else []))
    return results


def run(quick: bool) -> Section:
    size = 300 if quick else 1000
    raise_nofile()
    args = ["--latency-ms", str(LATENCY_MS), "--max-workers", "64",
            "--drop-disconnect-rate", "1", "--seed", "1"]
    log(f"stale members: M={size}, {int(STALE_FRACTION * 100)}% stale")
    # As in workload 1: presence off (building the room would announce every join to the
    # members so far, N^2 posts) and the whole room fanned out inline by the sending function.
    env = {"PRESENCE": "off", "FANOUT_INLINE_MAX": "100000"}
    with app_gateway(args, env=env) as gateway:
        results = asyncio.run(_measure(gateway, size))
    section = Section(
        f"2. Stale members: room of M={size:,}, {int(STALE_FRACTION * 100)}% of the records "
        "stale",
        ["send", "delivered", "gone (pruned)", "failed", "management calls",
         "calls per delivered message", "goal (baseline): 1 + stale/delivered", "ratio",
         "live members that missed it"],
    )
    for r in results:
        calls = r["posts_ok"] + r["posts_gone"]
        delivered = r["delivered"]
        per = calls / delivered if delivered else float("nan")
        goal = (delivered + r["stale"]) / delivered if delivered else float("nan")
        section.rows.append([
            "first" if r["send"] == 1 else "second", fmt(delivered, 0), fmt(r["gone"], 0),
            fmt(r["failed"], 0), f"{fmt(r['posts_ok'], 0)} x 200 + {fmt(r['posts_gone'], 0)} x 410",
            fmt(per, 3), fmt(goal, 3), f"{per / goal:.2f}x" if goal == goal else "n/a",
            f"{fmt(r['missed'], 0)} (must be 0)",
        ])
    section.notes.append(
        "Stale members are closed by the client while the gateway runs with "
        "`--drop-disconnect-rate 1`: their `$disconnect` never runs, so their records (and "
        "room memberships) stay. Calls are counted from the gateway's log of every `@connections` "
        "request (the sender's own `sent` reply excluded). The first send prunes every stale "
        "member (one 410 each); the second costs exactly one call per delivery.")
    section.data = {"results": results, "size": size}
    return section
