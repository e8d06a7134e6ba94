"""Workload 4 (and the load client of 5 and the peer): ping-to-pong through a WebSocket URL.

``python -m bench.roundtrip ws://127.0.0.1:8001/api [--quick]`` prints the figures as JSON, so the
same workload can be pointed at any gateway: the local gateway, the bare ``websockets`` floor, or
serverless-offline.  Three measurements:

* sequential: ping, wait for its pong, repeat, on one connection (msgs/s, median and p99);
* concurrent: ``CONCURRENCY`` connections doing the same for a fixed time (aggregate msgs/s);
* cycles: connect + first message (ping -> pong) + close, sequentially (cycles/s), and the same
  with ``CYCLE_CLIENTS`` clients at once (aggregate cycles/s).

A ``welcome`` or any other frame before the pong is skipped (the app welcomes on first message).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass

from websockets.asyncio.client import ClientConnection, connect

from bench.common import Section, fmt, log, median, percentile, ratio

CONCURRENCY = 32
CYCLE_CLIENTS = 8
TIMEOUT = 60.0  # serverless-offline starts a handler process per busy function: slow at first


@dataclass
class Plan:
    warmup: int = 50
    sequential: int = 1000
    concurrent_seconds: float = 5.0
    cycles: int = 300


FULL = Plan()
QUICK = Plan(warmup=20, sequential=200, concurrent_seconds=2.0, cycles=60)


@dataclass
class Result:
    seq_rate: float
    seq_median_ms: float
    seq_p99_ms: float
    conc_rate: float
    conc_median_ms: float
    conc_p99_ms: float
    cycles_rate: float
    cycle_median_ms: float
    concurrent_cycles_rate: float = float("nan")


def _open(url: str) -> asyncio.Future[ClientConnection]:
    return asyncio.ensure_future(connect(url, compression=None, ping_interval=None,
                                         open_timeout=TIMEOUT, close_timeout=2))


async def _ping(ws: ClientConnection, request_id: str) -> float:
    started = time.perf_counter()
    await ws.send(json.dumps({"action": "ping", "id": request_id}))
    async with asyncio.timeout(TIMEOUT):
        while True:
            msg = json.loads(await ws.recv())
            if msg.get("type") == "pong":
                return time.perf_counter() - started
            if msg.get("type") == "error":
                raise RuntimeError(f"error frame: {msg}")


async def _sequential(url: str, warmup: int, count: int) -> list[float]:
    ws = await _open(url)
    try:
        for i in range(warmup):
            await _ping(ws, f"w{i}")
        return [await _ping(ws, str(i)) for i in range(count)]
    finally:
        await ws.close()


async def _concurrent(url: str, connections: int, seconds: float) -> tuple[list[float], float]:
    sockets = await asyncio.gather(*(_open(url) for _ in range(connections)))
    latencies: list[float] = []
    try:
        for i, ws in enumerate(sockets):  # warm: welcome and first-message work out of the way
            await _ping(ws, f"w{i}")
        deadline = time.perf_counter() + seconds

        async def loop(ws: ClientConnection) -> None:
            n = 0
            while time.perf_counter() < deadline:
                latencies.append(await _ping(ws, str(n)))
                n += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop(ws) for ws in sockets))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return latencies, elapsed


async def _cycles(url: str, count: int) -> tuple[list[float], float]:
    times: list[float] = []
    started = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        ws = await _open(url)
        try:
            await _ping(ws, f"c{i}")
        finally:
            await ws.close()
        times.append(time.perf_counter() - t0)
    return times, time.perf_counter() - started


async def _concurrent_cycles(url: str, clients: int, count: int) -> tuple[list[float], float]:
    """``clients`` loops of connect + ping + close sharing ``count`` cycles."""
    times: list[float] = []
    remaining = [count]

    async def client(n: int) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            t0 = time.perf_counter()
            ws = await _open(url)
            try:
                await _ping(ws, f"cc{n}")
            finally:
                await ws.close()
            times.append(time.perf_counter() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return times, time.perf_counter() - started


async def measure(url: str, plan: Plan) -> Result:
    seq = await _sequential(url, plan.warmup, plan.sequential)
    conc, conc_elapsed = await _concurrent(url, CONCURRENCY, plan.concurrent_seconds)
    await _cycles(url, max(5, plan.cycles // 10))  # warm-up of the connect path
    cyc, cyc_elapsed = await _cycles(url, plan.cycles)
    ccyc, ccyc_elapsed = await _concurrent_cycles(url, CYCLE_CLIENTS, plan.cycles)
    return Result(
        seq_rate=len(seq) / sum(seq), seq_median_ms=median(seq) * 1000,
        seq_p99_ms=percentile(seq, 99) * 1000,
        conc_rate=len(conc) / conc_elapsed, conc_median_ms=median(conc) * 1000,
        conc_p99_ms=percentile(conc, 99) * 1000,
        cycles_rate=len(cyc) / cyc_elapsed, cycle_median_ms=median(cyc) * 1000,
        concurrent_cycles_rate=len(ccyc) / ccyc_elapsed,
    )


def run_url(url: str, quick: bool) -> Result:
    return asyncio.run(measure(url, QUICK if quick else FULL))


HEADERS = ["target", "sequential msgs/s", "median ms", "p99 ms",
           f"{CONCURRENCY} connections msgs/s", "median ms", "p99 ms",
           "connect+message+close /s", f"same, {CYCLE_CLIENTS} clients /s"]


def row(name: str, r: Result) -> list[str]:
    return [name, fmt(r.seq_rate, 0), fmt(r.seq_median_ms, 2), fmt(r.seq_p99_ms, 2),
            fmt(r.conc_rate, 0), fmt(r.conc_median_ms, 2), fmt(r.conc_p99_ms, 2),
            fmt(r.cycles_rate, 0), fmt(r.concurrent_cycles_rate, 0)]


def ratio_row(name: str, r: Result, base: Result) -> list[str]:
    """Throughput ratios (higher is better) and latency ratios (lower is better)."""
    return [name, ratio(r.seq_rate, base.seq_rate), ratio(r.seq_median_ms, base.seq_median_ms),
            ratio(r.seq_p99_ms, base.seq_p99_ms), ratio(r.conc_rate, base.conc_rate),
            ratio(r.conc_median_ms, base.conc_median_ms), ratio(r.conc_p99_ms, base.conc_p99_ms),
            ratio(r.cycles_rate, base.cycles_rate),
            ratio(r.concurrent_cycles_rate, base.concurrent_cycles_rate)]


def section(results: dict[str, Result], floor_name: str, gateway_name: str,
            peer_name: str | None, quick: bool) -> Section:
    plan = QUICK if quick else FULL
    sec = Section("4-5. Local round trip (ping -> pong) and the transport floor", HEADERS)
    for name, r in results.items():
        sec.rows.append(row(name, r))
    base = results[floor_name]
    gw = results[gateway_name]
    sec.rows.append(ratio_row(f"ratio: {gateway_name} / {floor_name}", gw, base))
    if peer_name and peer_name in results:
        peer = results[peer_name]
        sec.rows.append(ratio_row(f"ratio: {gateway_name} / {peer_name}", gw, peer))
        goals = [("sequential echo", gw.seq_rate / peer.seq_rate, 1.5),
                 (f"echo over {CONCURRENCY} connections", gw.conc_rate / peer.conc_rate, 5.0),
                 ("connect + ping + close", gw.cycles_rate / peer.cycles_rate, 1.5),
                 (f"same, {CYCLE_CLIENTS} clients",
                  gw.concurrent_cycles_rate / peer.concurrent_cycles_rate, 3.0)]
        sec.notes.append("Goals against the peer, side by side (issue 12): " + "; ".join(
            f"{name} >= {goal:g}x (measured {value:.2f}x: {'met' if value >= goal else 'NOT met'})"
            for name, value, goal in goals) + ".")
    sec.notes.append(
        f"Sequential: {plan.sequential} pings on one connection after {plan.warmup} warm-up "
        f"pings. Concurrent: {CONCURRENCY} connections, each ping-wait-ping for "
        f"{plan.concurrent_seconds:g} s. Cycles: {plan.cycles} sequential connect, ping -> pong, "
        f"close (after a warm-up), then the same cycles shared by {CYCLE_CLIENTS} concurrent "
        "clients. Throughput ratios > 1 and latency ratios < 1 favour the first "
        "named target. Same load client (`python -m bench.roundtrip URL`) for every target.")
    sec.data = {name: asdict(r) for name, r in results.items()}
    return sec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.roundtrip", description=__doc__)
    parser.add_argument("url", help="WebSocket URL, e.g. ws://127.0.0.1:8001/api")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    log(f"round trip against {args.url}")
    print(json.dumps(asdict(run_url(args.url, args.quick)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
