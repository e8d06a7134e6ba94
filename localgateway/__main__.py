"""``python -m localgateway``: a Chalice project behind a local API Gateway (REST + WebSocket).

``python -m localgateway invoke FUNCTION [--event FILE]`` runs one function once and prints its
result (like ``sam local invoke``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import re
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from chalice.local import ChaliceRequestHandler, HTTPServerThread, LocalDevServer

from localgateway.containers import (
    ContainerInitError,
    ContainerInvoker,
    default_max_containers,
)
from localgateway.core import (
    SIGV4_AUTHORIZATION,
    Chaos,
    Limits,
    RequestGuard,
    normalize_origin,
)
from localgateway.events import ApiInfo, EventFactory, RandomIdSource, SystemClock
from localgateway.invoker import InProcessInvoker, InvocationError, Invoker
from localgateway.project import (
    MANAGEMENT_ENDPOINT_VARIABLE,
    EnvFileError,
    Functions,
    LocalEnvironment,
    Project,
    offline_aws_defaults,
    read_env_files,
)
from localgateway.server import GatewayServer, ServerSettings
from localgateway.sqs import SQS_SERVERS, LocalQueues, QueueSettings, SqsPoller, dlq_name
from localgateway.view import ContainerOutput, LiveStats
from localgateway.worker import REST_FUNCTION

LOG = logging.getLogger("localgateway")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


class StartupError(Exception):
    """The gateway cannot start; the message is the one line to print (exit status 1)."""


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
                   help="concurrent invocations in flight, all functions (default: 8)")
    p.add_argument("--queue-length", type=int, default=64,
                   help="per-connection inbox length (default: 64)")
    p.add_argument("--no-reload", action="store_true", help="do not reload on code changes")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--in-process", action="store_true",
                   help="run every handler in the gateway process (debuggers, breakpoints) "
                        "instead of one container per function")
    p.add_argument("--max-containers", type=int, default=default_max_containers(),
                   help="containers per function; more concurrent invocations queue "
                        f"(default: {default_max_containers()})")
    p.add_argument("--container-idle", type=float, default=300.0,
                   help="stop containers idle this many seconds (default: 300)")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="NAME=VALUE lines applied over the stage's environment_variables "
                        "(repeatable; relative to the project directory)")
    p.add_argument("--static", default=None, metavar="DIR",
                   help="serve DIR/index.html at / and DIR/FILE at /static/FILE "
                        "(relative to the project directory; default: nothing)")
    p.add_argument("--allowed-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (scheme://host[:port]) whose pages may open WebSockets "
                        "and call /_gateway/ control endpoints, besides the gateway's own "
                        "(repeatable; clients that send no Origin are always allowed)")
    p.add_argument("--sqs-server", choices=SQS_SERVERS, default="builtin",
                   help="the local SQS endpoint: the gateway's own (default) or moto")
    p.add_argument("--sqs-visibility-timeout", type=int, default=30,
                   help="VisibilityTimeout of the local queues, seconds (default: 30)")
    p.add_argument("--sqs-max-receive", type=int, default=0,
                   help="give each queue a dead-letter queue NAME-dlq with this "
                        "maxReceiveCount (default: 0 = none)")
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


def check_ports_free(host: str, ports: Sequence[tuple[int, str]]) -> None:
    """Raise :class:`StartupError` naming the port and its flag when one is already in use."""
    for port, flag in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                           socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise StartupError(
                    f"error: port {port} ({flag}) is already in use on {host}: choose another "
                    f"with {flag} PORT ({exc.strerror})"
                ) from None


def describe_import_error(exc: BaseException, project_dir: str) -> str:
    """One short description of why the app failed to import: where (in the project) and what."""
    cause = exc.__cause__ or exc.__context__
    if not isinstance(exc, SyntaxError) and isinstance(cause, SyntaxError):
        exc = cause  # chalice re-raises a SyntaxError of app.py as a RuntimeError
    if isinstance(exc, SyntaxError):
        where = os.path.relpath(exc.filename or "?", project_dir)
        return f"{where}:{exc.lineno}: SyntaxError: {exc.msg}"
    where = ""
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename.startswith(project_dir + os.sep):
            where = f"{os.path.relpath(frame.filename, project_dir)}:{frame.lineno}: "
    return f"{where}{type(exc).__name__}: {exc}"


def without_query_values(request_line: str) -> str:
    """A request line with every query-string value replaced by ``...``: the gateway never logs
    them (tokens travel there), whatever the app is."""

    def hide(match: re.Match[str]) -> str:
        query = "&".join(part.split("=", 1)[0] + ("=..." if "=" in part else "")
                         for part in match.group(2).split("&"))
        return f"{match.group(1)}?{query}"

    return re.sub(r"(\S*?)\?(\S*)", hide, request_line)


class QuietRequestHandler(ChaliceRequestHandler):
    """chalice's handler writes request lines straight to stderr, query strings included.

    Also refuses (403) a ``Host`` that is not loopback, an IP literal or ``--host`` (DNS
    rebinding), like the WebSocket port.
    """

    def __init__(self, *args: Any, guard: RequestGuard | None = None, **kwargs: Any) -> None:
        self.guard = guard or RequestGuard()
        super().__init__(*args, **kwargs)

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        host = self.headers.get("Host")
        if self.guard.host_allowed(host):
            return True
        body = json.dumps({"message": f"Host {host!r} is not allowed"}).encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
        LOG.warning("refused %s %s with 403: Host %r is not allowed", self.command,
                    self.path.split("?", 1)[0], host)
        return False

    def log_message(self, format: str, *args: Any) -> None:
        line = without_query_values(format % args)
        sys.stderr.write(f"{self.address_string()} - - [{self.log_date_time_string()}] {line}\n")


INTERNAL_SERVER_ERROR = {
    "statusCode": 502,
    "headers": {"Content-Type": "application/json"},
    "multiValueHeaders": {},
    "body": '{"message": "Internal server error"}',
}


MISSING_AUTHENTICATION_TOKEN = {
    "statusCode": 403,
    "headers": {"Content-Type": "application/json",
                "x-amzn-ErrorType": "MissingAuthenticationTokenException"},
    "multiValueHeaders": {},
    "body": '{"message": "Missing Authentication Token"}',
}


def needs_sigv4(app: Any, event: Mapping[str, Any]) -> bool:
    """Whether the event's route has ``authorizer=IAMAuthorizer()`` (API Gateway then demands
    a SigV4 signature; chalice local checks nothing)."""
    context = event.get("requestContext", {})
    try:
        route = app.routes[context.get("resourcePath")][context.get("httpMethod")]
    except (KeyError, TypeError, AttributeError):
        return False
    return type(getattr(route, "authorizer", None)).__name__ == "IAMAuthorizer"


def sigv4_shaped(event: Mapping[str, Any]) -> bool:
    headers = event.get("headers") or {}
    value = next((str(v) for k, v in headers.items() if str(k).lower() == "authorization"), "")
    return bool(SIGV4_AUTHORIZATION.match(value.strip()))


class RestFunction:
    """The app as chalice's ``LocalGateway`` sees it, with invocations going to the invoker
    (None: the app in this process).

    Route matching, CORS and local authorizers read the gateway's copy of the app; the
    ``api_handler`` function itself runs in its container. A failure answers 502
    ``{"message": "Internal server error"}`` like API Gateway. A route with
    ``IAMAuthorizer`` answers 403 ``Missing Authentication Token`` without a SigV4-shaped
    ``Authorization`` header (so a browser form cannot push to it; the signature itself is not
    verified).
    """

    def __init__(self, project: Project, invoker: Invoker | None) -> None:
        self._project = project
        self._invoker = invoker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._project.app, name)

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        if needs_sigv4(self._project.app, event) and not sigv4_shaped(event):
            LOG.warning("refused %s %s with 403: Missing Authentication Token (IAMAuthorizer)",
                        event.get("httpMethod"), event.get("path"))
            return dict(MISSING_AUTHENTICATION_TOKEN)
        if self._invoker is None:
            result: dict[str, Any] = self._project.app(event, context)
            return result
        body = event.get("body")
        if isinstance(body, bytes):
            # chalice.local leaves text bodies as bytes; API Gateway sends a string.
            try:
                event = {**event, "body": body.decode("utf-8")}
            except UnicodeDecodeError:
                event = {**event, "body": base64.b64encode(body).decode("ascii"),
                         "isBase64Encoded": True}
        try:
            response = self._invoker.invoke(REST_FUNCTION, event)
        except InvocationError as exc:
            LOG.error("REST %s failed: %s", event.get("path"), exc.details or exc)
            return dict(INTERNAL_SERVER_ERROR)
        response.setdefault("headers", {})
        response.setdefault("multiValueHeaders", {})
        return response


def make_rest_server(project: Project, host: str, port: int,
                     invoker: Invoker | None = None,
                     guard: RequestGuard | None = None) -> LocalDevServer:
    """chalice.local's dev server, dispatching to the current app (in-process when ``invoker``
    is None, else to the ``api_handler`` container)."""

    def handler(*args: Any, **kwargs: Any) -> ChaliceRequestHandler:
        kwargs["app_object"] = RestFunction(project, invoker)
        kwargs["config"] = project.config
        return QuietRequestHandler(*args, guard=guard, **kwargs)

    return LocalDevServer(project.app, project.config, host, port, handler_cls=handler)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    for noisy in ("aiohttp.access", "botocore", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@dataclass
class LocalGateway:
    """Everything ``python -m localgateway`` runs; built by :func:`build_gateway`."""

    args: argparse.Namespace
    project: Project
    server: GatewayServer
    invoker: Invoker
    environment: dict[str, str]
    management_endpoint: str
    domain: str
    queues: LocalQueues | None = None
    containers: ContainerInvoker | None = None
    pollers: list[SqsPoller] = field(default_factory=list)
    rest_thread: HTTPServerThread | None = None
    reloader: Any = None

    def print_banner(self) -> None:
        args, shown = self.args, display_host(self.args.host)
        api_stage = self.project.api_gateway_stage
        mode = "in-process" if self.containers is None else (
            f"containers (up to {self.containers.max_containers} per function)")
        print(f"Local gateway for {self.project.project_dir} (stage {args.stage})", flush=True)
        print(f"  Functions run:   {mode}", flush=True)
        print(f"  REST API:        http://{shown}:{args.port}/", flush=True)
        print(f"  WebSocket:       ws://{self.domain}/{api_stage}", flush=True)
        static = self.server.settings.static_dir
        if static and os.path.exists(os.path.join(static, "index.html")):
            print(f"  Demo page:       http://{self.domain}/  (open it in two tabs and chat)",
                  flush=True)
        print(f"  Management API:  {self.management_endpoint}  (WS_MANAGEMENT_ENDPOINT; "
              "SigV4-signed requests only)", flush=True)
        print(f"  Live view:       http://{self.domain}/_gateway/  (JSON: /_gateway/stats)",
              flush=True)
        if self.queues is not None:
            for name, url in self.queues.queue_urls.items():
                print(f"  SQS queue:       {name} -> {url}", flush=True)
            for name, url in self.queues.dlq_urls.items():
                print(f"  Dead letters:    {dlq_name(name)} -> {url}  (after "
                      f"{self.queues.settings.max_receive_count} receives of {name})", flush=True)
        for name in self.project.functions().schedules:
            print(f"  Schedule:        POST http://{self.domain}/_gateway/schedule/{name}  "
                  "(Content-Type: application/json)", flush=True)
        warning = exposure_warning(args.host)
        if warning is not None:
            print(warning, file=sys.stderr, flush=True)

    def run(self) -> int:
        """Serve until SIGINT/SIGTERM; stops everything it started."""
        self.print_banner()
        self.rest_thread = HTTPServerThread(lambda: make_rest_server(
            self.project, self.args.host, self.args.port,
            None if self.containers is None else self.invoker,
            self.server.settings.guard))
        self.rest_thread.start()
        for poller in self.pollers:
            poller.start()
        if self.reloader is not None:
            self.reloader.start()
        try:
            asyncio.run(serve(self.server, self.args.host, self.args.ws_port))
        finally:
            self.close()
        return 0

    def close(self) -> None:
        if self.reloader is not None:
            self.reloader.stop()
        for poller in self.pollers:
            poller.stop()
        if self.rest_thread is not None:
            self.rest_thread.shutdown()
        # The SQS process and the containers stop concurrently: each waits for processes to exit.
        stopping = None
        if self.queues is not None:
            stopping = threading.Thread(target=self.queues.stop, name="sqs-stop")
            stopping.start()
        if self.containers is not None:
            self.containers.close()
        if stopping is not None:
            stopping.join()

    def on_change(self) -> None:
        """Reload: re-import the app; containers switch once new ones import cleanly."""
        LOG.info("change detected; reloading app")
        old = Functions.of(self.project.app)
        # In-process, handlers must not run while the app's modules are swapped.
        exclusive: contextlib.AbstractContextManager[None] = (
            self.invoker.reload_lock.writing() if isinstance(self.invoker, InProcessInvoker)
            else contextlib.nullcontext()
        )
        try:
            with exclusive:
                self.project.reload()
        except Exception as exc:
            LOG.error("reload failed; the previous code keeps serving: %s",
                      describe_import_error(exc, self.project.project_dir))
            return
        new = self.project.functions()
        if new.sqs.keys() != old.sqs.keys():
            LOG.warning("SQS queues changed; restart the gateway to provision them")
        if self.containers is not None:
            try:
                self.containers.rollover(self.project.function_settings, new.websocket())
            except ContainerInitError as exc:
                LOG.error("reload failed; the previous containers keep serving: %s", exc)
                return
        LOG.info("reloaded app (open connections kept)")


def start_queues(args: argparse.Namespace, functions: Functions, project_dir: str
                 ) -> LocalQueues:
    """The local SQS endpoint with the app's queues; raises :class:`StartupError`."""
    try:
        settings = QueueSettings(args.sqs_visibility_timeout, args.sqs_max_receive)
    except ValueError as exc:
        raise StartupError(f"error: {exc}") from None
    queues = LocalQueues(functions.sqs, settings=settings,
                         log_path=os.path.join(project_dir, ".local", "sqs.log"),
                         server=args.sqs_server)
    try:
        queues.start()
    except Exception as exc:
        queues.stop()
        raise StartupError(f"error: the local SQS endpoint did not start: {exc}") from None
    return queues


def build_gateway(args: argparse.Namespace) -> LocalGateway:
    """Load the project, provision queues and containers; nothing listens yet.

    Raises :class:`StartupError` (one line to print) for a port in use, an app that does not
    import, or a container that fails its cold start.
    """
    check_ports_free(args.host, [(args.port, "--port"), (args.ws_port, "--ws-port")])
    if args.max_containers < 1:
        raise StartupError("error: --max-containers must be at least 1")
    project_dir = os.path.abspath(args.project_dir)
    offline_aws_defaults(os.environ)
    try:
        project = Project(project_dir, args.stage)
    except Exception as exc:
        raise StartupError(f"error: cannot read the Chalice project in {project_dir}: "
                           f"{exc}") from None
    api_stage = project.api_gateway_stage
    domain = f"{display_host(args.host)}:{args.ws_port}"
    management_endpoint = f"http://{domain}/{api_stage}"
    process_env = dict(os.environ)
    os.makedirs(os.path.join(project_dir, ".local"), exist_ok=True)
    try:
        env_file = read_env_files(args.env_file, project_dir)
    except EnvFileError as exc:
        raise StartupError(f"error: --env-file {exc}") from None
    static_dir = None
    if args.static:
        static_dir = os.path.abspath(os.path.join(project_dir, args.static))
        if not os.path.isdir(static_dir):
            raise StartupError(f"error: --static {args.static}: no such directory "
                               f"({static_dir})")
    provided = {MANAGEMENT_ENDPOINT_VARIABLE: management_endpoint,
                "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": management_endpoint}

    def load(local_urls: dict[str, str] | None = None) -> dict[str, str]:
        local_environment = LocalEnvironment(process_env, provided, env_file, local_urls or {})
        try:
            project.load(local_environment)
        except Exception as exc:
            raise StartupError("error: the app does not import: "
                               + describe_import_error(exc, project_dir)) from None
        return project.environment

    env = load()
    functions = project.functions()
    queues = start_queues(args, functions, project_dir) if functions.sqs else None
    containers: ContainerInvoker | None = None
    try:
        if queues is not None:
            provided["AWS_ENDPOINT_URL_SQS"] = queues.endpoint_url
            # Import again so module-level clients and settings see the local queues.
            env = load(queues.queue_urls)
            functions = project.functions()
        chaos = Chaos(
            latency_ms=args.latency_ms,
            throttle_rate=args.throttle_rate,
            drop_disconnect_rate=args.drop_disconnect_rate,
            rng=random.Random(args.seed),
        )
        limits = Limits(idle_timeout=args.idle_timeout, hard_timeout=args.hard_timeout)
        stats = LiveStats()
        guard = RequestGuard(args.host, frozenset(normalize_origin(o)
                                                  for o in args.allowed_origin))
        invoker: Invoker
        if args.in_process:
            invoker = InProcessInvoker(lambda: project.app)
        else:
            containers = ContainerInvoker(
                project_dir,
                project.function_settings,
                lambda: project.functions().all_names(),
                max_containers=args.max_containers,
                idle_seconds=args.container_idle,
                log_level=args.log_level,
                output=ContainerOutput(stats),
                on_report=stats.record_invocation,
            )
            invoker = containers
        clock, ids = SystemClock(), RandomIdSource()
        server = GatewayServer(
            invoker, project.functions,
            EventFactory(ApiInfo("localgw001", api_stage, domain), clock, ids),
            limits, chaos, clock, ids,
            ServerSettings(stage=api_stage, max_workers=args.max_workers,
                           queue_length=args.queue_length,
                           schedule_interval=args.schedule_interval, static_dir=static_dir,
                           guard=guard),
            stats=stats,
            queue_depths=queues.depths if queues is not None else None,
        )
        gateway = LocalGateway(args, project, server, invoker, env, management_endpoint, domain,
                               queues, containers)
        if queues is not None:
            for queue_name, names in functions.sqs.items():
                for name in names:
                    gateway.pollers.append(SqsPoller(
                        queues.client, queue_name, queues.queue_urls[queue_name], name, invoker,
                        batch_size=functions.sqs_batch_size.get(name, 1),
                    ))
        if containers is not None:
            # Fail fast: an import or configuration error shows now, not as 502s on connect.
            try:
                containers.start(functions.websocket())
            except ContainerInitError as exc:
                raise StartupError(
                    f"error: a container of {exc.function} failed to start: {exc.details} "
                    "(its log is above)"
                ) from None
        if not args.no_reload:
            from localgateway.reload import Reloader

            gateway.reloader = Reloader(project_dir, gateway.on_change)
    except BaseException:
        if containers is not None:
            containers.close()
        if queues is not None:
            queues.stop()
        raise
    return gateway


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["invoke"]:
        from localgateway.invoke import main as invoke_main

        return invoke_main(argv[1:])
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        gateway = build_gateway(args)
    except StartupError as exc:
        print(str(exc), file=sys.stderr, flush=True)
        return 1
    return gateway.run()


async def serve(server: GatewayServer, host: str, port: int,
                on_ready: Callable[[], None] | None = None) -> None:
    runner = web.AppRunner(server.make_app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        print(f"error: port {port} (--ws-port) is already in use on {host} ({exc.strerror})",
              file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print("Gateway ready (Ctrl-C to stop)", flush=True)
    if on_ready is not None:
        on_ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if threading.current_thread() is threading.main_thread():
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        LOG.info("shutting down")
        with contextlib.suppress(Exception):
            await runner.cleanup()


if __name__ == "__main__":
    sys.exit(main())
