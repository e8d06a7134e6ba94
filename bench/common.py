"""Shared pieces: paths, limits, gateway processes, statistics and the report model."""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from localgateway.testing import Gateway, running_gateway

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def raise_nofile(wanted: int = 65536) -> int:
    """Raise the soft open-file limit towards ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def app_env(store_path: str, **extra: str) -> dict[str, str]:
    """The process environment for a gateway running the app on the ``test`` stage."""
    env = dict(os.environ)
    for name in ("WELCOME_QUEUE_URL", "FANOUT_CONCURRENCY", "FANOUT_QUEUE_URL", "FANOUT_INLINE_MAX",
                 "WS_AUTH_SECRET", "WS_AUTH_JWKS_URL"):
        env.pop(name, None)
    env["CONNECTIONS_STORE"] = f"sqlite:///{store_path}"
    env["LOG_LEVEL"] = "WARNING"
    # The per-connection message rate limit stays on (its store write is per-message cost), but
    # high enough that a load client measures throughput rather than the limit.
    env["WS_RATE_LIMIT"] = "100000"
    env.update(extra)
    return env


@contextlib.contextmanager
def app_gateway(extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                ) -> Iterator[Gateway]:
    """The app behind ``python -m localgateway --stage test`` in its own process.

    The connection store is a fresh SQLite file, deleted afterwards.  The ``test`` stage has no
    environment variables, so ``env`` (FANOUT_CONCURRENCY...) reaches the app.
    """
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        child_env = app_env(os.path.join(tmp, "connections.db"), **dict(env or {}))
        with running_gateway(ROOT, extra_args=["--stage", "test", *extra_args],
                             env=child_env) as gateway:
            yield gateway


@contextlib.contextmanager
def make_run_gateway(env: Mapping[str, str] | None = None, extra_args: Sequence[str] = ()
                     ) -> Iterator[Gateway]:
    """The app as ``make run`` starts it: dev stage (welcome queue on), ``--env-file local.env``,
    ``--static web``, default flags (containers, INFO log). The store is a fresh SQLite file;
    authentication stays off and the message rate limit is raised so a load client measures
    throughput, not the limit."""
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        child_env = dict(os.environ)
        for name in ("WELCOME_QUEUE_URL", "FANOUT_CONCURRENCY", "WS_AUTH_SECRET",
                     "WS_AUTH_JWKS_URL", "LOG_LEVEL"):
            child_env.pop(name, None)
        child_env["CONNECTIONS_STORE"] = f"sqlite:///{os.path.join(tmp, 'connections.db')}"
        child_env["WS_RATE_LIMIT"] = "100000"
        child_env.update(env or {})
        with running_gateway(ROOT, extra_args=["--env-file", "local.env", "--static", "web",
                                               *extra_args], env=child_env) as gateway:
            yield gateway


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


def ratio(value: float, baseline: float) -> str:
    if baseline != baseline or value != value or baseline == 0:  # NaN or zero
        return "n/a"
    return f"{value / baseline:.2f}x"


def fmt(value: float, digits: int = 1) -> str:
    if value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


@dataclass
class Section:
    """One workload's part of the report."""

    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Raw figures for the plot and the summary.
    data: dict[str, object] = field(default_factory=dict)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)
