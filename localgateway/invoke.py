"""``python -m localgateway invoke FUNCTION [--event FILE]``: run one function once.

Like ``sam local invoke``: the function runs in a fresh container (or in this process with
``--in-process``) with the stage's environment; its result is printed as JSON on stdout, its logs
and the ``REPORT`` line go to stderr. Without ``--event`` a typical event for the function's
trigger is built (a Scheduled Event, one SQS record with body ``{}``, a WebSocket
``$connect``/message/``$disconnect``); ``--event -`` reads the event from stdin.

Exit status: 0 when the handler returned, 1 when it raised or timed out, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from localgateway.containers import ContainerInvoker
from localgateway.events import (
    ApiInfo,
    ConnectionFacts,
    EventFactory,
    RandomIdSource,
    SystemClock,
    epoch_ms,
    scheduled_event,
    sqs_event,
    sqs_record,
)
from localgateway.invoker import InProcessInvoker, InvocationError, Invoker, UnknownFunctionError
from localgateway.project import (
    MANAGEMENT_ENDPOINT_VARIABLE,
    EnvFileError,
    Functions,
    LocalEnvironment,
    Project,
    offline_aws_defaults,
    read_env_files,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m localgateway invoke", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("function", help="the function's name (Chalice handler name; api_handler "
                                    "for REST routes)")
    p.add_argument("--event", default=None,
                   help="JSON file with the event ('-' for stdin); default: a typical event")
    p.add_argument("--project-dir", default=os.getcwd(), help="Chalice project (default: cwd)")
    p.add_argument("--stage", default="dev", help="Chalice stage (default: dev)")
    p.add_argument("--ws-port", type=int, default=8001,
                   help="port of a running gateway, for WS_MANAGEMENT_ENDPOINT (default: 8001)")
    p.add_argument("--env-file", action="append", default=[], metavar="FILE",
                   help="NAME=VALUE lines over the stage's environment_variables (repeatable)")
    p.add_argument("--in-process", action="store_true", help="run the handler in this process")
    p.add_argument("--log-level", default="INFO")
    return p


def default_event(functions: Functions, function: str, events: EventFactory) -> dict[str, Any]:
    """A typical event for ``function``'s trigger; raises ValueError when there is none."""
    ids = events.ids
    facts = ConnectionFacts(ids.new_id(), epoch_ms(events.clock), "127.0.0.1")
    if function in functions.schedules:
        return scheduled_event(function, events.clock, ids)
    for queue, names in functions.sqs.items():
        if function in names:
            message = {"MessageId": ids.new_uuid(), "ReceiptHandle": ids.new_id(), "Body": "{}"}
            return sqs_event([sqs_record(message, queue)])
    if function == functions.connect:
        return events.connect(facts, [("Host", events.api.domain_name)])
    if function == functions.message:
        return events.message(facts, "{}")
    if function == functions.disconnect:
        return events.disconnect(facts, 1000, "")
    raise ValueError(f"no default event for {function!r}: pass --event FILE")


def read_event(path: str) -> dict[str, Any]:
    """The event in ``path`` ('-' = stdin); raises ValueError when it is not a JSON object."""
    if path == "-":
        text = sys.stdin.read()
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    event = json.loads(text)
    if not isinstance(event, dict):
        raise ValueError("the event must be a JSON object")
    return event


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr,
                        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    project_dir = os.path.abspath(args.project_dir)
    offline_aws_defaults(os.environ)
    project = Project(project_dir, args.stage)
    stage = project.api_gateway_stage
    domain = f"127.0.0.1:{args.ws_port}"
    endpoint = f"http://{domain}/{stage}"
    process_env = dict(os.environ)
    try:
        env_file = read_env_files(args.env_file, project_dir)
    except EnvFileError as exc:
        print(f"error: --env-file {exc}", file=sys.stderr)
        return 2
    provided = {MANAGEMENT_ENDPOINT_VARIABLE: endpoint,
                "AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI": endpoint}
    try:
        project.load(LocalEnvironment(process_env, provided, env_file))
    except Exception as exc:
        print(f"error: the app does not import: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    functions = project.functions()
    if args.function not in functions.all_names():
        print(f"error: no function {args.function!r}; the app has: "
              f"{', '.join(functions.all_names())}", file=sys.stderr)
        return 2
    events = EventFactory(ApiInfo("localgw001", stage, domain), SystemClock(), RandomIdSource())
    try:
        event = (read_event(args.event) if args.event
                 else default_event(functions, args.function, events))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    invoker: Invoker
    containers: ContainerInvoker | None = None
    if args.in_process:
        invoker = InProcessInvoker(lambda: project.app)
    else:
        containers = ContainerInvoker(
            project_dir,
            project.function_settings,
            functions.all_names,
            max_containers=1,
            idle_seconds=0,
            log_level=args.log_level,
        )
        invoker = containers
    try:
        result = invoker.invoke(args.function, event)
    except UnknownFunctionError:
        print(f"error: no function {args.function!r}", file=sys.stderr)
        return 2
    except InvocationError as exc:
        print(f"error: {args.function} failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if containers is not None:
            containers.close()
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0
