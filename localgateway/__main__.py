"""``python -m localgateway``: a Chalice project behind a local API Gateway (REST + WebSocket)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from chalice.local import ChaliceRequestHandler, HTTPServerThread, LocalDevServer

from localgateway.core import Chaos, Limits
from localgateway.events import ApiInfo, EventFactory, RandomIdSource, SystemClock
from localgateway.invoker import InProcessInvoker
from localgateway.project import Functions, Project, compute_environment, offline_aws_defaults
from localgateway.redaction import RedactingFilter, redact
from localgateway.redaction import install as install_redaction
from localgateway.server import STATIC_DIR, GatewayServer, ServerSettings
from localgateway.sqs import LocalQueues, SqsPoller

LOG = logging.getLogger("localgateway")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m localgateway", description=__doc__)
    p.add_argument("--project-dir", default=os.getcwd(), help="Chalice project (default: cwd)")
    p.add_argument("--stage", default="dev", help="Chalice stage (default: dev)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="REST API port (default: 8000)")
    p.add_argument("--ws-port", type=int, default=8001, help="WebSocket port (default: 8001)")
    p.add_argument("--idle-timeout", type=float, default=600.0, help="seconds (default: 600)")
    p.add_argument("--hard-timeout", type=float, default=7200.0, help="seconds (default: 7200)")
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="latency added to each management API call")
    p.add_argument("--throttle-rate", type=float, default=0.0,
                   help="fraction of management API calls answered 429")
    p.add_argument("--drop-disconnect-rate", type=float, default=0.0,
                   help="fraction of closed connections whose $disconnect is skipped")
    p.add_argument("--seed", type=int, default=None, help="seed for the chaos random source")
    p.add_argument("--schedule-interval", type=float, default=0.0,
                   help="fire every @app.schedule handler every N seconds (0 = off)")
    p.add_argument("--max-workers", type=int, default=8,
                   help="handler thread pool size (default: 8)")
    p.add_argument("--queue-length", type=int, default=64,
                   help="per-connection inbox length (default: 64)")
    p.add_argument("--no-reload", action="store_true", help="do not reload on code changes")
    p.add_argument("--log-level", default="INFO")
    return p


def exposure_warning(host: str) -> str | None:
    """The loud banner printed when the gateway binds anything but loopback (else None)."""
    if host in LOOPBACK:
        return None
    banner = "!" * 78
    return (
        f"{banner}\nWARNING: bound to {host}: anyone who can reach this machine can use "
        f"the gateway,\nits management API and the app's handlers. Use 127.0.0.1 unless you "
        f"need otherwise.\n{banner}"
    )


def display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


class RedactingRequestHandler(ChaliceRequestHandler):
    """chalice's handler writes request lines (query strings included) straight to stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        line = format % args
        sys.stderr.write(
            redact(f"{self.address_string()} - - [{self.log_date_time_string()}] {line}\n")
        )


def make_rest_server(project: Project, host: str, port: int) -> LocalDevServer:
    """chalice.local's dev server, always dispatching to the current (possibly reloaded) app."""

    def handler(*args: Any, **kwargs: Any) -> ChaliceRequestHandler:
        kwargs["app_object"] = project.app
        kwargs["config"] = project.config
        return RedactingRequestHandler(*args, **kwargs)

    return LocalDevServer(project.app, project.config, host, port, handler_cls=handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    # Tokens (?token=...) and credential headers never reach the gateway's log (nor the app's:
    # it runs in this process, and the record factory covers every logger).
    install_redaction()
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    for noisy in ("aiohttp.access", "botocore", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    project_dir = os.path.abspath(args.project_dir)
    offline_aws_defaults(os.environ)
    project = Project(project_dir, args.stage)
    api_stage = project.api_gateway_stage
    shown = display_host(args.host)
    domain = f"{shown}:{args.ws_port}"
    management_endpoint = f"http://{domain}/{api_stage}"
    process_env = dict(os.environ)
    os.makedirs(os.path.join(project_dir, ".local"), exist_ok=True)

    env = compute_environment(
        project.stage_environment, process_env, project_dir, management_endpoint
    )
    project.load(env, management_endpoint)
    functions = project.functions()
    queues: LocalQueues | None = None
    if functions.sqs:
        queues = LocalQueues(functions.sqs)
        local_urls = queues.start()
        os.environ["AWS_ENDPOINT_URL_SQS"] = queues.endpoint_url
        env = compute_environment(
            project.stage_environment, process_env, project_dir, management_endpoint, local_urls
        )
        env["AWS_ENDPOINT_URL_SQS"] = queues.endpoint_url
        # Import again so module-level clients and settings see the local queues.
        project.load(env, management_endpoint)
        functions = project.functions()

    clock = SystemClock()
    ids = RandomIdSource()
    chaos = Chaos(
        latency_ms=args.latency_ms,
        throttle_rate=args.throttle_rate,
        drop_disconnect_rate=args.drop_disconnect_rate,
        rng=random.Random(args.seed),
    )
    limits = Limits(idle_timeout=args.idle_timeout, hard_timeout=args.hard_timeout)
    invoker = InProcessInvoker(lambda: project.app)
    events = EventFactory(ApiInfo("localgw001", api_stage, domain), clock, ids)
    server = GatewayServer(
        invoker,
        project.functions,
        events,
        limits,
        chaos,
        clock,
        ids,
        ServerSettings(
            stage=api_stage,
            max_workers=args.max_workers,
            queue_length=args.queue_length,
            schedule_interval=args.schedule_interval,
        ),
    )

    pollers: list[SqsPoller] = []
    if queues is not None:
        for queue_name, names in functions.sqs.items():
            for name in names:
                pollers.append(
                    SqsPoller(
                        queues.client,
                        queue_name,
                        queues.queue_urls[queue_name],
                        name,
                        invoker,
                        batch_size=functions.sqs_batch_size.get(name, 1),
                    )
                )

    rest_thread = HTTPServerThread(lambda: make_rest_server(project, args.host, args.port))

    reloader = None
    if not args.no_reload:
        from localgateway.reload import Reloader

        def on_change() -> None:
            LOG.info("change detected; reloading app")
            old = Functions.of(project.app)
            project.reload()
            new = project.functions()
            if new.sqs.keys() != old.sqs.keys():
                LOG.warning("SQS queues changed; restart the gateway to provision them")
            LOG.info("reloaded app (open connections kept)")

        reloader = Reloader(project_dir, on_change)

    print(f"Local gateway for {project_dir} (stage {args.stage})", flush=True)
    print(f"  REST API:        http://{shown}:{args.port}/", flush=True)
    print(f"  WebSocket:       ws://{domain}/{api_stage}", flush=True)
    if os.path.exists(os.path.join(STATIC_DIR, "index.html")):
        print(f"  Demo page:       http://{domain}/  (open it in two tabs and chat)", flush=True)
    print(f"  Management API:  {management_endpoint}  (WS_MANAGEMENT_ENDPOINT)", flush=True)
    print(f"  Connections:     {env['CONNECTIONS_STORE']}", flush=True)
    if queues is not None:
        for name, url in queues.queue_urls.items():
            print(f"  SQS queue:       {name} -> {url}", flush=True)
    for name in functions.schedules:
        print(f"  Schedule:        POST http://{domain}/_gateway/schedule/{name}", flush=True)
    warning = exposure_warning(args.host)
    if warning is not None:
        print(warning, file=sys.stderr, flush=True)

    rest_thread.start()
    for poller in pollers:
        poller.start()
    if reloader is not None:
        reloader.start()
    try:
        asyncio.run(serve(server, args.host, args.ws_port))
    finally:
        if reloader is not None:
            reloader.stop()
        for poller in pollers:
            poller.stop()
        rest_thread.shutdown()
        if queues is not None:
            queues.stop()
    return 0


async def serve(server: GatewayServer, host: str, port: int) -> None:
    runner = web.AppRunner(server.make_app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    print("Gateway ready (Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        LOG.info("shutting down")
        await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
