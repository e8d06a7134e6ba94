"""Workload 1b: a large room delivered by fan-out workers (SQS) against one invocation.

Time from the sender's ``send`` to the last member's receipt, for a room of M members through
the local gateway at ``--latency-ms 20``, in two gateway processes of the same run:

* baseline: one invocation posts to every member (``FANOUT_INLINE_MAX`` above M, no queue);
* distributed: the app's default (``FANOUT_INLINE_MAX=500``), the room paged onto the local
  fan-out queue (``FANOUT_QUEUE_URL``) in batches of ``FANOUT_BATCH_SIZE`` (250), delivered by
  ``fan_out_worker`` invocations that the gateway runs as Lambda would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench.common import Section, app_gateway, fmt, log, raise_nofile, ratio
from bench.room import Room

LATENCY_MS = 20
GATEWAY_ARGS = ["--latency-ms", str(LATENCY_MS), "--max-workers", "64", "--queue-length", "64"]
#: The fan-out queue's default name (app.py's FANOUT_QUEUE_NAME); the gateway provisions it.
QUEUE = "ws-rooms-fanout"


@dataclass(frozen=True)
class Plan:
    sizes: tuple[int, ...]
    repeats: int


FULL = Plan((5000,), repeats=2)
QUICK = Plan((1000,), repeats=1)


async def _measure(url: str, sizes: tuple[int, ...], repeats: int) -> dict[int, float]:
    room = Room(url)
    results: dict[int, float] = {}
    try:
        for size in sizes:
            await room.grow(size, "big")
            timeout = 60.0 + size * 0.05
            await room.send("big", size, timeout)  # warm-up: containers, pooled connections
            results[size] = await room.median_send("big", size, repeats, timeout,
                                                   "fan-out queue")
            log(f"fan-out queue M={size}: {fmt(results[size] * 1000, 0)} ms")
    finally:
        await room.close()
    return results


def _run(env: dict[str, str], plan: Plan) -> dict[int, float]:
    with app_gateway(GATEWAY_ARGS, env=env) as gateway:
        return asyncio.run(_measure(gateway.ws_url, plan.sizes, plan.repeats))


def run(quick: bool) -> Section:
    plan = QUICK if quick else FULL
    raise_nofile()
    log(f"fan-out queue: one invocation, sizes {plan.sizes}")
    # Presence off: building the room would otherwise announce every join to the members so
    # far (quadratic), and the measurement is about the message.
    inline = _run({"FANOUT_INLINE_MAX": "100000", "PRESENCE": "off"}, plan)
    log(f"fan-out queue: distributed through {QUEUE}, sizes {plan.sizes}")
    distributed = _run({"FANOUT_QUEUE_URL": QUEUE, "PRESENCE": "off"}, plan)
    section = Section(
        "1b. Large rooms: fan-out workers through SQS against one invocation "
        f"(gateway --latency-ms {LATENCY_MS})",
        ["room size M", "baseline: one invocation (ms)", "default: fan-out workers (ms)",
         "ratio (workers / baseline)"],
    )
    for size in plan.sizes:
        section.rows.append([f"{size:,}", fmt(inline[size] * 1000, 0),
                             fmt(distributed[size] * 1000, 0),
                             ratio(distributed[size], inline[size])])
    section.notes.append(
        "Time from the sender's `send` to the last member's receipt (median of "
        f"{plan.repeats} runs after one warm-up send), both columns in this run, each its own "
        "gateway process (`--stage test`, SQLite store, `PRESENCE=off` so that building the room"
        " does not announce every join). Baseline: `FANOUT_INLINE_MAX=100000`, "
        "so one `$default` invocation posts to every member with `FANOUT_CONCURRENCY` threads. "
        f"Workers: `FANOUT_QUEUE_URL={QUEUE}`, the room paged onto the gateway's local SQS "
        "queue in batches of 250 and delivered by `fan_out_worker` invocations. On AWS each "
        "worker is its own Lambda with its own vCPU; here every worker shares this machine's "
        "2 cores with the members' client and the gateway, so the ratio is a floor on what "
        "the workers gain in production (docs/capacity.md models that).")
    section.data = {"inline": inline, "distributed": distributed}
    return section
