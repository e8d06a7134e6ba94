"""API Gateway WebSocket and SQS events for the app's tests, from the gateway's one builder.

Every event comes from :mod:`localgateway.events` (modelled key for key on the captured events in
../shared/aws-events/), with an execute-api domain and a public source IP as in AWS.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

from localgateway.events import (
    ApiInfo,
    ConnectionFacts,
    EventFactory,
    RandomIdSource,
    SystemClock,
    epoch_ms,
    sqs_record,
)
from localgateway.events import sqs_event as _sqs_event

API_ID = "asasasas"
DOMAIN = f"{API_ID}.execute-api.us-east-1.amazonaws.com"
SOURCE_IP = "166.90.225.1"
_counter = itertools.count(1)
_clock = SystemClock()
_ids = RandomIdSource()


def _factory(stage: str) -> EventFactory:
    return EventFactory(ApiInfo(API_ID, stage, DOMAIN), _clock, _ids)


#: The builder for the ``api`` stage (what the app's harness and the plugin client use).
EVENTS = _factory("api")


def _facts(connection_id: str) -> ConnectionFacts:
    return ConnectionFacts(connection_id, epoch_ms(_clock), SOURCE_IP)


def new_connection_id() -> str:
    """An AWS-looking connection id (12 bytes, base64, like ``BFaT_fALIAMCKug=``), unique."""
    raw = f"c{next(_counter):011d}".encode()
    return base64.b64encode(raw).decode().replace("+", "_").replace("/", "-")


def connect_event(
    connection_id: str,
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    stage: str = "api",
) -> dict[str, Any]:
    all_headers = {
        "Host": DOMAIN,
        "Sec-WebSocket-Key": "+W5xw47OHh3OTFsWKjGu9Q==",
        "Sec-WebSocket-Version": "13",
        "X-Forwarded-For": SOURCE_IP,
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **(headers or {}),
    }
    return _factory(stage).connect(_facts(connection_id), list(all_headers.items()),
                                   list((query or {}).items()))


def message_event(
    connection_id: str,
    body: str | bytes | dict[str, Any],
    *,
    binary: bool = False,
    stage: str = "api",
) -> dict[str, Any]:
    """A ``$default`` message; a dict body is JSON-encoded, bytes with ``binary`` base64'd."""
    data: str | bytes
    if isinstance(body, dict):
        data = json.dumps(body)
    elif isinstance(body, bytes) and not binary:
        data = body.decode()
    else:
        data = body
    return _factory(stage).message(_facts(connection_id), data)


def disconnect_event(connection_id: str, *, stage: str = "api") -> dict[str, Any]:
    return _factory(stage).disconnect(_facts(connection_id), 1005,
                                      "Client-side close frame status not set")


def sqs_event(*bodies: str, queue: str = "ws-rooms-welcome") -> dict[str, Any]:
    """An SQS event as Lambda delivers it to an ``on_sqs_message`` handler."""
    now = str(epoch_ms(_clock))
    records = []
    for body in bodies:
        n = next(_counter)
        message = {
            "MessageId": f"00000000-0000-0000-0000-{n:012d}",
            "ReceiptHandle": f"handle-{n}",
            "Body": body,
            "Attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": now,
                           "SenderId": "AIDAEXAMPLE", "ApproximateFirstReceiveTimestamp": now},
        }
        records.append(sqs_record(message, queue))
    return _sqs_event(records)
