"""``python -m bench [--quick] [--peer] [--out docs/benchmarks.md] [--plot docs/fanout.png]``."""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time
from collections.abc import Callable

from bench import coldstart, delivery_cost, fanout, fanout_queue, roundtrip, stale
from bench.common import ROOT, Section, app_gateway, log, make_run_gateway
from bench.floor import running_floor
from bench.report import command_line, plot_fanout, render

PEER_SCRIPT = os.path.join(os.path.dirname(ROOT), "shared", "peers", "serverless-offline",
                           "peer.sh")
PEER_TIMEOUT = 240


def _peer_roundtrip(quick: bool) -> tuple[roundtrip.Result | None, str]:
    """Workload 4 against serverless-offline; always stops it."""
    if not os.path.exists(PEER_SCRIPT):
        return None, f"peer script not found at {PEER_SCRIPT}"
    try:
        started = subprocess.run(["bash", PEER_SCRIPT, "start"], capture_output=True, text=True,
                                 timeout=PEER_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, "peer did not start in time"
    if started.returncode != 0:
        return None, f"peer failed to start: {started.stderr.strip()[-200:]}"
    pid, url = started.stdout.split()[-2:]
    try:
        log(f"peer serverless-offline pid {pid} at {url}")
        return roundtrip.run_url(url, quick), "ok"
    except Exception as exc:
        return None, f"peer run failed: {exc!r}"
    finally:
        subprocess.run(["bash", PEER_SCRIPT, "stop", pid], timeout=60, check=False)


def roundtrip_section(quick: bool, peer: bool) -> tuple[Section, list[str]]:
    notes: list[str] = []
    results: dict[str, roundtrip.Result] = {}
    with running_floor() as url:
        log(f"floor: bare websockets at {url}")
        results["floor: bare websockets echo"] = roundtrip.run_url(url, quick)
    headline = "local gateway + app (make run: dev stage, welcome queue, containers)"
    with make_run_gateway() as gateway:
        log(f"round trip: make run configuration at {gateway.ws_url}")
        results[headline] = roundtrip.run_url(gateway.ws_url, quick)
    with make_run_gateway(extra_args=["--in-process"]) as gateway:
        log(f"round trip: make run --in-process at {gateway.ws_url}")
        results["secondary: make run --in-process"] = roundtrip.run_url(gateway.ws_url, quick)
    with app_gateway() as gateway:
        log(f"round trip: test stage at {gateway.ws_url}")
        results["secondary: test stage, no welcome queue"] = roundtrip.run_url(gateway.ws_url,
                                                                              quick)
    peer_name = None
    if peer:
        result, status = _peer_roundtrip(quick)
        if result is not None:
            peer_name = "peer: serverless-offline 13"
            results[peer_name] = result
        else:
            notes.append(f"The peer was requested but not measured: {status}.")
    section = roundtrip.section(results, "floor: bare websockets echo", headline,
                                peer_name, quick)
    section.notes.append(
        "The headline runs the app as `make run` does (`python -m localgateway --env-file "
        "local.env --static web`: dev stage with the welcome queue, one container per function, "
        "INFO log with a REPORT line per invocation), SQLite store, WS_RATE_LIMIT raised; every "
        "ping is one `$default` invocation: welcome claim + rate-limit count in the store, then "
        "a PostToConnection. The secondary row is the `test` stage (no welcome queue).")
    section.notes += notes
    return section, notes


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="reduced sizes, under 60 s")
    parser.add_argument("--peer", action="store_true",
                        help="also run workload 4 against serverless-offline")
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    parser.add_argument("--plot", default=None,
                        help="fan-out plot (default: fanout.png next to --out)")
    parser.add_argument("--only", default="",
                        help="comma-separated subset: fanout,fanoutqueue,stale,cost,roundtrip,"
                             "coldstart")
    args = parser.parse_args(argv)
    plot = args.plot or os.path.join(os.path.dirname(os.path.abspath(args.out)), "fanout.png")
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    started_at = datetime.datetime.now(datetime.UTC)
    started = time.perf_counter()

    def wanted(name: str) -> bool:
        return not only or name in only

    sections: list[Section] = []
    steps: list[tuple[str, Callable[[], Section]]] = [
        ("fanout", lambda: fanout.run(args.quick)),
        ("fanoutqueue", lambda: fanout_queue.run(args.quick)),
        ("stale", lambda: stale.run(args.quick)),
        ("cost", lambda: delivery_cost.run(args.quick)),
        ("roundtrip", lambda: roundtrip_section(args.quick, args.peer)[0]),
        ("coldstart", lambda: coldstart.run(args.quick)),
    ]
    for name, step in steps:
        if wanted(name):
            t0 = time.perf_counter()
            sections.append(step())
            log(f"{name} done in {time.perf_counter() - t0:.1f} s")
    plot_rel = None
    for section in sections:
        if section.title.startswith("1."):
            plot_fanout(section, plot)
            plot_rel = os.path.relpath(plot, os.path.dirname(os.path.abspath(args.out)))
    elapsed = time.perf_counter() - started
    text = render(sections, command_line(argv), started_at, elapsed, plot_rel)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    log(f"wrote {args.out} ({elapsed:.0f} s)")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
