"""The long versions: ``python -m tests.reliability.soak`` (``make soak``).

1. churn soak: 300 clients over ~60 s on the dev stage (welcome follow-up through local SQS),
   20% of ``$disconnect`` dropped, REST pushes alongside;
2. fault soak: the same churn with ``--throttle-rate 0.1 --latency-ms 20`` on the test stage.

Prints the figures of each run as JSON (``--json PATH`` also writes them) and exits 1 when any
invariant is violated.  Only 127.0.0.1; each run is capped (``--time-cap``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.reliability.churn import ChurnConfig, run_churn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.soak")
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--push-rate", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--fault-clients", type=int, default=100)
    parser.add_argument("--fault-duration", type=float, default=30.0)
    parser.add_argument("--time-cap", type=float, default=300.0)
    parser.add_argument("--skip-faults", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    runs = {
        "churn": ChurnConfig(clients=args.clients, duration_s=args.duration, rooms=args.rooms,
                             drop_rate=0.2, push_rate=args.push_rate, seed=args.seed,
                             time_cap_s=args.time_cap, stage=args.stage, think_s=(0.3, 1.2)),
    }
    if not args.skip_faults:
        runs["faults"] = ChurnConfig(
            clients=args.fault_clients, duration_s=args.fault_duration,
            rooms=max(3, args.rooms // 2),
            drop_rate=0.2, push_rate=args.push_rate / 2, seed=args.seed + 1,
            time_cap_s=args.time_cap, stage="test", throttle_rate=0.1, latency_ms=20,
            think_s=(0.3, 1.2))
    report: dict[str, Any] = {}
    failed = False
    for name, cfg in runs.items():
        with tempfile.TemporaryDirectory(prefix=f"soak-{name}-") as tmp:
            result = run_churn(cfg, Path(tmp))
        report[name] = result.figures()
        report[name]["violation_details"] = result.violations[:20]
        print(f"== {name}\n{json.dumps(report[name], indent=2)}", flush=True)
        failed = failed or bool(result.violations) or result.lost != 0
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print("SOAK FAILED" if failed else "SOAK OK: every promise kept, messages lost: 0")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
