"""Workload 3: CPU time per delivered message, the app's sender against a seed-style sender.

* app: :class:`chalicelib.delivery.Deliverer` over the one cached client that
  :func:`chalicelib.runtime.management_client` builds (pooled, retries handled by Deliverer);
* seed-style (the original write-up's recommendation): a new ``boto3.client(...)`` for every
  send and ``get_connection`` before every ``post_to_connection``.

Both post to the same local management API, which runs in its own process so that only the
sender's CPU is measured (``time.process_time`` of this process).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from bench.common import PYTHON, ROOT, Section, fmt, log, ratio

CONNECTIONS = 16


def seed_send(endpoint: str, connection_id: str, payload: bytes) -> int:
    """The seed's approach; returns the management-API calls it made."""
    import boto3

    client: Any = boto3.client("apigatewaymanagementapi", endpoint_url=endpoint,
                               region_name="us-east-1")
    client.get_connection(ConnectionId=connection_id)
    client.post_to_connection(ConnectionId=connection_id, Data=payload)
    return 2


def _cpu(count: int, send: Callable[[int], None]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) for ``count`` sends."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for i in range(count):
        send(i)
    return time.process_time() - cpu0, time.perf_counter() - wall0


def run(quick: bool) -> Section:
    from chalicelib.delivery import Deliverer, Outcome, RetryPolicy
    from chalicelib.runtime import management_client
    from chalicelib.settings import Settings
    from localgateway.project import offline_aws_defaults

    offline_aws_defaults(os.environ)  # dummy credentials when none are configured, as locally
    app_count, seed_count = (500, 50) if quick else (3000, 300)
    env = dict(os.environ, PYTHONPATH=ROOT)
    server = subprocess.Popen([PYTHON, "-m", "bench.mgmt_server", str(CONNECTIONS)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=ROOT)
    try:
        assert server.stdout is not None
        endpoint = server.stdout.readline().decode().strip()
        if not endpoint.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"management API did not start: {endpoint!r}")
        payload = b'{"type":"message","data":{"room":"r","from":"x","data":{"text":"hi"}}}'
        settings = Settings.from_env({"CONNECTIONS_STORE": "memory://",
                                      "AWS_DEFAULT_REGION": "us-east-1"})
        deliverer = Deliverer(management_client(endpoint, settings),
                              retry=RetryPolicy(max_attempts=settings.delivery_max_attempts))
        outcomes: list[Outcome] = []

        def app_send(i: int) -> None:
            outcomes.append(deliverer.post(f"c{i % CONNECTIONS}", payload))

        seed_calls = 0

        def seed(i: int) -> None:
            nonlocal seed_calls
            seed_calls += seed_send(endpoint, f"c{i % CONNECTIONS}", payload)

        # Warm both paths (imports, first connection, botocore's loaders and caches).
        for i in range(20):
            app_send(i)
        for i in range(3):
            seed(i)
        outcomes.clear()
        deliverer.calls.posts = deliverer.calls.gets = 0
        seed_calls = 0
        log(f"delivery cost: app x{app_count}, seed-style x{seed_count}")
        app_cpu, app_wall = _cpu(app_count, app_send)
        seed_cpu, seed_wall = _cpu(seed_count, seed)
        delivered = sum(1 for o in outcomes if o is Outcome.DELIVERED)
        if delivered != app_count:
            raise RuntimeError(f"app sender delivered {delivered} of {app_count}")
        app_calls = (deliverer.calls.posts + deliverer.calls.gets) / app_count
    finally:
        if server.stdin:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)

    app_ms, seed_ms = app_cpu / app_count * 1000, seed_cpu / seed_count * 1000
    app_wall_ms, seed_wall_ms = app_wall / app_count * 1000, seed_wall / seed_count * 1000
    seed_per = seed_calls / seed_count
    section = Section(
        "3. Delivery cost: CPU per delivered message (same local management API)",
        ["sender", "deliveries", "calls per delivery", "CPU ms per delivery",
         "CPU ratio (to seed-style)", "wall ms per delivery", "wall ratio"],
    )
    section.rows.append(["baseline: seed-style (new client per send + GetConnection)",
                         f"{seed_count:,}", fmt(seed_per, 2), fmt(seed_ms, 3), "1.00x",
                         fmt(seed_wall_ms, 3), "1.00x"])
    section.rows.append(["app: `Deliverer`, one cached client", f"{app_count:,}",
                         fmt(app_calls, 2), fmt(app_ms, 3), ratio(app_ms, seed_ms),
                         fmt(app_wall_ms, 3), ratio(app_wall_ms, seed_wall_ms)])
    section.notes.append(
        "Sequential sends from this process, CPU by `time.process_time()`; the management API "
        "(the tests' `FakeManagementApi`, answering like AWS) runs in its own process.")
    section.data = {"app_ms": app_ms, "seed_ms": seed_ms}
    return section
