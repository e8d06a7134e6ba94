"""Pure builders of the events AWS delivers to Lambda.

Modelled key for key on real API Gateway WebSocket events (see ../shared/aws-events/, vendored
in tests/data/aws-events/). Nothing here does I/O: time comes from an injected :class:`Clock`,
ids from an injected :class:`IdSource`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

ACCOUNT_ID = "123456789012"
DEFAULT_REGION = "us-east-1"
DEFAULT_API_ID = "localgw001"

#: Bytes of randomness behind an id. Real ids look like ``BFaT_fALIAMCKug=``: 16 characters of
#: URL-safe base64 ending in one ``=``, which is what 11 bytes encode to.
ID_BYTES = 11


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()


class IdSource(Protocol):
    def new_id(self) -> str:
        """A fresh AWS-looking id (connection ids, request ids, message ids)."""
        ...

    def new_uuid(self) -> str:
        """A fresh UUID string (SQS message ids, EventBridge event ids)."""
        ...


class RandomIdSource:
    """Ids from ``os.urandom`` (or any injected ``randbytes(n)`` function)."""

    def __init__(self, randbytes: Any = None) -> None:
        self._randbytes = randbytes or os.urandom

    def new_id(self) -> str:
        return base64.urlsafe_b64encode(self._randbytes(ID_BYTES)).decode("ascii")

    def new_uuid(self) -> str:
        return str(uuid.UUID(bytes=self._randbytes(16), version=4))


def epoch_ms(clock: Clock) -> int:
    return int(clock.time() * 1000)


def format_request_time(ms: int) -> str:
    """API Gateway's ``requestTime``: ``11/Nov/2024:13:45:46 +0000``."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    # %b is locale dependent; API Gateway always uses English month abbreviations.
    months = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
    return f"{dt.day:02d}/{months[dt.month - 1]}/{dt.year}:{dt:%H:%M:%S} +0000"


def format_iso8601(ms: int) -> str:
    """``2024-11-11T13:45:46.514Z`` (the @connections GET format)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def format_iso8601_seconds(ms: int) -> str:
    """``2024-11-11T13:45:46Z`` (the EventBridge ``time`` format)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ApiInfo:
    """What every WebSocket event says about the API it came through."""

    api_id: str
    stage: str
    domain_name: str


@dataclass(frozen=True)
class ConnectionFacts:
    connection_id: str
    connected_at_ms: int
    source_ip: str


def multi_value_headers(headers: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for name, value in headers:
        result.setdefault(name, []).append(value)
    return result


def single_value_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Like API Gateway: for a repeated header the last value wins."""
    result: dict[str, str] = {}
    for name, value in headers:
        result[name] = value
    return result


class EventFactory:
    """Builds API Gateway WebSocket events for one API (clock and id source injected)."""

    def __init__(self, api: ApiInfo, clock: Clock, ids: IdSource) -> None:
        self.api = api
        self.clock = clock
        self.ids = ids

    def new_connection_id(self) -> str:
        return self.ids.new_id()

    def _request_context(
        self, route_key: str, event_type: str, conn: ConnectionFacts
    ) -> dict[str, Any]:
        now = epoch_ms(self.clock)
        request_id = self.ids.new_id()
        return {
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id,
            "requestTime": format_request_time(now),
            "messageDirection": "IN",
            "stage": self.api.stage,
            "connectedAt": conn.connected_at_ms,
            "requestTimeEpoch": now,
            "identity": {"sourceIp": conn.source_ip},
            "requestId": request_id,
            "domainName": self.api.domain_name,
            "connectionId": conn.connection_id,
            "apiId": self.api.api_id,
        }

    def connect(
        self,
        conn: ConnectionFacts,
        headers: Iterable[tuple[str, str]],
        query: Iterable[tuple[str, str]] = (),
    ) -> dict[str, Any]:
        """The ``$connect`` event: the upgrade request's headers and query string."""
        header_list = list(headers)
        event: dict[str, Any] = {
            "headers": single_value_headers(header_list),
            "multiValueHeaders": multi_value_headers(header_list),
            "requestContext": self._request_context("$connect", "CONNECT", conn),
            "isBase64Encoded": False,
        }
        query_list = list(query)
        if query_list:
            # Present only when the request had a query string, as in AWS.
            event["queryStringParameters"] = single_value_headers(query_list)
            event["multiValueQueryStringParameters"] = multi_value_headers(query_list)
        return event

    def message(
        self, conn: ConnectionFacts, data: str | bytes, route_key: str = "$default"
    ) -> dict[str, Any]:
        """A message event; binary frames arrive base64-encoded with ``isBase64Encoded``."""
        context = self._request_context(route_key, "MESSAGE", conn)
        context = {"routeKey": route_key, "messageId": self.ids.new_id(), **context}
        if isinstance(data, bytes):
            body = base64.b64encode(data).decode("ascii")
            is_b64 = True
        else:
            body, is_b64 = data, False
        return {"requestContext": context, "body": body, "isBase64Encoded": is_b64}

    def disconnect(self, conn: ConnectionFacts, status_code: int, reason: str) -> dict[str, Any]:
        """The ``$disconnect`` event (AWS sends these placeholder headers too)."""
        headers = [
            ("Host", self.api.domain_name),
            ("x-api-key", ""),
            ("X-Forwarded-For", ""),
            ("x-restapi", ""),
        ]
        context = self._request_context("$disconnect", "DISCONNECT", conn)
        context = {
            "routeKey": "$disconnect",
            "disconnectStatusCode": status_code,
            **context,
            "disconnectReason": reason,
        }
        return {
            "headers": single_value_headers(headers),
            "multiValueHeaders": multi_value_headers(headers),
            "requestContext": context,
            "isBase64Encoded": False,
        }


def queue_arn(queue_name: str, region: str = DEFAULT_REGION) -> str:
    return f"arn:aws:sqs:{region}:{ACCOUNT_ID}:{queue_name}"


def sqs_record(
    message: Mapping[str, Any], queue_name: str, region: str = DEFAULT_REGION
) -> dict[str, Any]:
    """One Lambda SQS record from an SQS ``ReceiveMessage`` message."""
    body = str(message.get("Body", ""))
    attributes = dict(message.get("Attributes") or {})
    attrs = {
        "ApproximateReceiveCount": str(attributes.get("ApproximateReceiveCount", "1")),
        "SentTimestamp": str(attributes.get("SentTimestamp", "0")),
        "SenderId": str(attributes.get("SenderId", "AIDAIENQZJOLO23YVJ4VO")),
        "ApproximateFirstReceiveTimestamp": str(
            attributes.get("ApproximateFirstReceiveTimestamp", "0")
        ),
    }
    for key in ("MessageGroupId", "MessageDeduplicationId", "SequenceNumber"):
        if key in attributes:
            attrs[key] = str(attributes[key])
    message_attributes: dict[str, Any] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        converted = {
            "stringValue": value.get("StringValue"),
            "binaryValue": (
                base64.b64encode(value["BinaryValue"]).decode("ascii")
                if isinstance(value.get("BinaryValue"), bytes)
                else value.get("BinaryValue")
            ),
            "stringListValues": value.get("StringListValues", []),
            "binaryListValues": value.get("BinaryListValues", []),
            "dataType": value.get("DataType", "String"),
        }
        message_attributes[name] = {k: v for k, v in converted.items() if v is not None}
    return {
        "messageId": str(message.get("MessageId", "")),
        "receiptHandle": str(message.get("ReceiptHandle", "")),
        "body": body,
        "attributes": attrs,
        "messageAttributes": message_attributes,
        "md5OfBody": str(message.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest()),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn(queue_name, region),
        "awsRegion": region,
    }


def sqs_event(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {"Records": list(records)}


def scheduled_event(
    rule_name: str, clock: Clock, ids: IdSource, region: str = DEFAULT_REGION
) -> dict[str, Any]:
    """A CloudWatch Events / EventBridge ``Scheduled Event``."""
    return {
        "version": "0",
        "id": ids.new_uuid(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": format_iso8601_seconds(epoch_ms(clock)),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{ACCOUNT_ID}:rule/{rule_name}"],
        "detail": {},
    }


def internal_server_error_frame(connection_id: str, request_id: str) -> str:
    """What API Gateway sends the client when the route's integration fails."""
    return json.dumps(
        {"message": "Internal server error", "connectionId": connection_id, "requestId": request_id}
    )
