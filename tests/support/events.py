"""Build API Gateway WebSocket events shaped like the real ones in ../shared/aws-events/."""

from __future__ import annotations

import base64
import itertools
import json
import time
from typing import Any

_counter = itertools.count(1)


def new_connection_id() -> str:
    """An AWS-looking connection id (12 bytes, base64, like ``BFaT_fALIAMCKug=``)."""
    raw = f"c{next(_counter):011d}".encode()
    return base64.b64encode(raw).decode().replace("+", "_").replace("/", "-")


def _request_context(
    connection_id: str, route_key: str, event_type: str, connected_at_ms: int, stage: str
) -> dict[str, Any]:
    now_ms = int(time.time() * 1000)
    request_id = base64.b64encode(f"r{next(_counter):011d}".encode()).decode()
    return {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": request_id,
        "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now_ms / 1000)),
        "messageDirection": "IN",
        "stage": stage,
        "connectedAt": connected_at_ms,
        "requestTimeEpoch": now_ms,
        "identity": {"sourceIp": "166.90.225.1"},
        "requestId": request_id,
        "domainName": "asasasas.execute-api.us-east-1.amazonaws.com",
        "connectionId": connection_id,
        "apiId": "asasasas",
    }


def connect_event(
    connection_id: str,
    *,
    headers: dict[str, str] | None = None,
    query: dict[str, str] | None = None,
    stage: str = "api",
) -> dict[str, Any]:
    all_headers = {
        "Host": "asasasas.execute-api.us-east-1.amazonaws.com",
        "Sec-WebSocket-Key": "+W5xw47OHh3OTFsWKjGu9Q==",
        "Sec-WebSocket-Version": "13",
        "X-Forwarded-For": "166.90.225.1",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        **(headers or {}),
    }
    event: dict[str, Any] = {
        "headers": all_headers,
        "multiValueHeaders": {k: [v] for k, v in all_headers.items()},
        "requestContext": _request_context(
            connection_id, "$connect", "CONNECT", int(time.time() * 1000), stage
        ),
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = dict(query)
        event["multiValueQueryStringParameters"] = {k: [v] for k, v in query.items()}
    return event


def message_event(
    connection_id: str,
    body: str | bytes | dict[str, Any],
    *,
    binary: bool = False,
    stage: str = "api",
) -> dict[str, Any]:
    """A ``$default`` message; a dict body is JSON-encoded, bytes with ``binary`` base64'd."""
    if isinstance(body, dict):
        text: str = json.dumps(body)
    elif isinstance(body, bytes):
        text = base64.b64encode(body).decode() if binary else body.decode()
    else:
        text = body
    ctx = _request_context(connection_id, "$default", "MESSAGE", int(time.time() * 1000), stage)
    ctx["messageId"] = base64.b64encode(f"m{next(_counter):011d}".encode()).decode()
    return {"requestContext": ctx, "body": text, "isBase64Encoded": binary}


def disconnect_event(connection_id: str, *, stage: str = "api") -> dict[str, Any]:
    ctx = _request_context(
        connection_id, "$disconnect", "DISCONNECT", int(time.time() * 1000), stage
    )
    ctx["disconnectStatusCode"] = 1005
    ctx["disconnectReason"] = "Client-side close frame status not set"
    return {
        "headers": {"Host": "asasasas.execute-api.us-east-1.amazonaws.com"},
        "multiValueHeaders": {"Host": ["asasasas.execute-api.us-east-1.amazonaws.com"]},
        "requestContext": ctx,
        "isBase64Encoded": False,
    }


def sqs_event(*bodies: str, queue: str = "ws-rooms-welcome") -> dict[str, Any]:
    """An SQS event as Lambda delivers it to an ``on_sqs_message`` handler."""
    records = []
    for body in bodies:
        n = next(_counter)
        records.append({
            "messageId": f"00000000-0000-0000-0000-{n:012d}",
            "receiptHandle": f"handle-{n}",
            "body": body,
            "attributes": {
                "ApproximateReceiveCount": "1",
                "SentTimestamp": str(int(time.time() * 1000)),
                "SenderId": "AIDAEXAMPLE",
                "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000)),
            },
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
            "awsRegion": "us-east-1",
        })
    return {"Records": records}
