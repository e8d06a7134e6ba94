"""Workload 1: one ``send`` to a room of M members through the gateway (``--latency-ms 20``).

Time from the send to the last member's receipt, for the app's concurrent fan-out (its default
``FANOUT_CONCURRENCY``) against the same code at ``FANOUT_CONCURRENCY=1``.  Each configuration
is its own gateway process; members are real WebSocket clients of this process.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench.common import Section, app_gateway, fmt, log, raise_nofile, ratio
from bench.room import Room

LATENCY_MS = 20
GATEWAY_ARGS = ["--latency-ms", str(LATENCY_MS), "--max-workers", "64", "--queue-length", "64"]
DEFAULT_CONCURRENCY = 32  # the app's default FANOUT_CONCURRENCY (chalicelib/settings.py)


@dataclass(frozen=True)
class Plan:
    concurrent_sizes: tuple[int, ...]
    sequential_sizes: tuple[int, ...]
    repeats: int
    sequential_repeats_over_100: int


FULL = Plan((100, 1000, 5000), (100, 1000), repeats=3, sequential_repeats_over_100=1)
QUICK = Plan((100, 300), (100, 300), repeats=1, sequential_repeats_over_100=1)


async def _measure(url: str, sizes: tuple[int, ...], repeats: int, repeats_over_100: int
                   ) -> dict[int, float]:
    room = Room(url)
    results: dict[int, float] = {}
    try:
        for index, size in enumerate(sizes):
            await room.grow(size, "fanout")
            timeout = 30.0 + size * 0.1
            if index == 0:
                await room.send("fanout", size, timeout)  # warm-up: threads, pooled connections
            runs = repeats if size <= 100 else repeats_over_100
            results[size] = await room.median_send("fanout", size, runs, timeout, "fan-out")
            log(f"fan-out M={size}: {fmt(results[size] * 1000, 0)} ms ({runs} runs)")
    finally:
        await room.close()
    return results


def _run_config(concurrency: int | None, sizes: tuple[int, ...], plan: Plan) -> dict[int, float]:
    # Presence off: building the room would otherwise announce every join to the members so far.
    env = {"PRESENCE": "off", "FANOUT_INLINE_MAX": "100000"}
    if concurrency is not None:
        env["FANOUT_CONCURRENCY"] = str(concurrency)
    with app_gateway(GATEWAY_ARGS, env=env) as gateway:
        return asyncio.run(_measure(gateway.ws_url, sizes, plan.repeats,
                                    plan.sequential_repeats_over_100))


def run(quick: bool) -> Section:
    plan = QUICK if quick else FULL
    raise_nofile()
    log(f"fan-out: concurrency 1, sizes {plan.sequential_sizes}")
    sequential = _run_config(1, plan.sequential_sizes, plan)
    log(f"fan-out: default concurrency ({DEFAULT_CONCURRENCY}), sizes {plan.concurrent_sizes}")
    concurrent = _run_config(None, plan.concurrent_sizes, plan)

    section = Section(
        "1. Fan-out: one send to a room of M members (gateway --latency-ms 20)",
        ["room size M", "baseline: concurrency 1 (ms)",
         f"app default: concurrency {DEFAULT_CONCURRENCY} (ms)", "ratio (concurrent / baseline)",
         "goal"],
    )
    biggest_measured = max(sequential)
    per_member = sequential[biggest_measured] / biggest_measured
    extrapolated: dict[int, float] = {}
    for size in plan.concurrent_sizes:
        if size in sequential:
            base = sequential[size]
            base_text = fmt(base * 1000, 0)
        else:
            base = per_member * size
            extrapolated[size] = base
            base_text = f"{fmt(base * 1000, 0)} (extrapolated)"
        goal = "<= 0.10x" if size == 1000 else ""
        if goal:
            met = concurrent[size] / base <= 0.10
            goal += " met" if met else " NOT met"
        section.rows.append([f"{size:,}", base_text, fmt(concurrent[size] * 1000, 0),
                             ratio(concurrent[size], base), goal])
    section.notes.append(
        "Time from the sender's `send` frame to the last member's receipt of the message, "
        "measured by the load client that holds every member's WebSocket (median of "
        f"{plan.repeats} runs at M <= 100, otherwise {plan.sequential_repeats_over_100}; one "
        "warm-up send first). Each column is its own gateway process (`python -m localgateway "
        f"--stage test {' '.join(GATEWAY_ARGS)}`), SQLite store, the sender is an extra member "
        "not counted in M.")
    if extrapolated:
        section.notes.append(
            "Baselines marked *extrapolated* were not measured: concurrency 1 at 20 ms per call "
            f"takes over {int(per_member * max(extrapolated))} s there; they are the measured "
            f"M={biggest_measured:,} time scaled linearly (per member).")
    section.data = {"sequential": sequential, "concurrent": concurrent,
                    "extrapolated": extrapolated, "concurrency": DEFAULT_CONCURRENCY}
    return section
