"""A small SQS endpoint (the JSON protocol boto3 speaks) for the local gateway, in its own process.

``python -m localgateway.sqs_server --port N`` serves what Lambda-style apps and the gateway's
pollers use: CreateQueue, GetQueueUrl, ListQueues, Get/SetQueueAttributes, SendMessage(Batch),
ReceiveMessage (long polling without busy loops), DeleteMessage(Batch), ChangeMessageVisibility,
PurgeQueue, DeleteQueue. Semantics follow SQS: ``DelaySeconds`` (queue default and per message),
the visibility timeout, ``ApproximateReceiveCount``, and redrive to a dead-letter queue after
``maxReceiveCount`` receives. FIFO ordering/deduplication is not emulated (FIFO queues behave as
standard ones); use ``--sqs-server moto`` for a fuller emulation.

:class:`SqsBackend` is transport-free (clock injected); :func:`make_app` is the aiohttp I/O.
Bounded: message bodies up to 256 KiB, ``MAX_QUEUES`` queues, ``MAX_MESSAGES`` per queue.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import struct
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ACCOUNT_ID = "123456789012"
REGION = "us-east-1"
MAX_BODY_BYTES = 256 * 1024
MAX_QUEUES = 1000
MAX_MESSAGES = 100_000
MAX_WAIT_SECONDS = 20


class SqsError(Exception):
    """An SQS error answer: ``code`` becomes ``__type`` (boto3 raises the modelled exception)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


def md5_of_attributes(attributes: dict[str, Any]) -> str:
    """SQS's ``MD5OfMessageAttributes`` (names sorted; length-prefixed name, type, value)."""
    digest = hashlib.md5()
    for name in sorted(attributes):
        value = attributes[name]
        data_type = str(value.get("DataType", "String"))
        digest.update(struct.pack(">I", len(name.encode())) + name.encode())
        digest.update(struct.pack(">I", len(data_type.encode())) + data_type.encode())
        if "StringValue" in value:
            raw = str(value["StringValue"]).encode()
            digest.update(b"\x01" + struct.pack(">I", len(raw)) + raw)
        else:
            raw = base64.b64decode(value.get("BinaryValue", ""))
            digest.update(b"\x02" + struct.pack(">I", len(raw)) + raw)
    return digest.hexdigest()


@dataclass
class Message:
    message_id: str
    body: str
    sent_ms: int
    visible_at: float
    attributes: dict[str, Any] = field(default_factory=dict)
    receive_count: int = 0
    first_receive_ms: int = 0
    receipt_handle: str = ""


@dataclass
class Queue:
    name: str
    url: str
    attributes: dict[str, str]
    messages: dict[str, Message] = field(default_factory=dict)  # by message id, in send order
    created: float = field(default_factory=time.time)

    @property
    def arn(self) -> str:
        return f"arn:aws:sqs:{REGION}:{ACCOUNT_ID}:{self.name}"

    def int_attribute(self, name: str, default: int) -> int:
        try:
            return int(self.attributes.get(name, default))
        except ValueError:
            return default

    def redrive(self) -> tuple[str, int] | None:
        """(dead-letter queue name, maxReceiveCount) when a redrive policy is set."""
        raw = self.attributes.get("RedrivePolicy")
        if not raw:
            return None
        policy = json.loads(raw)
        return str(policy["deadLetterTargetArn"]).rsplit(":", 1)[-1], int(policy["maxReceiveCount"])


class SqsBackend:
    """Queues and messages; every method is synchronous and never blocks."""

    def __init__(self, base_url: str, clock: Callable[[], float] = time.time) -> None:
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self.queues: dict[str, Queue] = {}

    # ----- queues -------------------------------------------------------------------------------

    def queue_from_url(self, url: str) -> Queue:
        name = str(url).rstrip("/").rsplit("/", 1)[-1]
        queue = self.queues.get(name)
        if queue is None:
            raise SqsError("AWS.SimpleQueueService.NonExistentQueue",
                           "The specified queue does not exist.")
        return queue

    def create_queue(self, name: str, attributes: dict[str, str]) -> Queue:
        if not name or len(name) > 80:
            raise SqsError("InvalidParameterValue", "Queue names must be 1 to 80 characters.")
        existing = self.queues.get(name)
        if existing is not None:
            return existing
        if len(self.queues) >= MAX_QUEUES:
            raise SqsError("OverLimit", f"at most {MAX_QUEUES} queues")
        defaults = {"DelaySeconds": "0", "VisibilityTimeout": "30",
                    "MessageRetentionPeriod": "345600", "MaximumMessageSize": str(MAX_BODY_BYTES),
                    "ReceiveMessageWaitTimeSeconds": "0"}
        queue = Queue(name, f"{self.base_url}/{ACCOUNT_ID}/{name}", {**defaults, **attributes})
        self.queues[name] = queue
        return queue

    def set_attributes(self, queue: Queue, attributes: dict[str, str]) -> None:
        queue.attributes.update({k: str(v) for k, v in attributes.items()})

    def get_attributes(self, queue: Queue, names: list[str]) -> dict[str, str]:
        now = self.clock()
        visible = sum(1 for m in queue.messages.values() if m.visible_at <= now)
        delayed = sum(1 for m in queue.messages.values() if m.receive_count == 0
                      and m.visible_at > now)
        computed = {
            **queue.attributes,
            "QueueArn": queue.arn,
            "ApproximateNumberOfMessages": str(visible),
            "ApproximateNumberOfMessagesNotVisible": str(len(queue.messages) - visible - delayed),
            "ApproximateNumberOfMessagesDelayed": str(delayed),
            "CreatedTimestamp": str(int(queue.created)),
            "LastModifiedTimestamp": str(int(queue.created)),
        }
        if not names or "All" in names:
            return computed
        return {k: v for k, v in computed.items() if k in names}

    # ----- messages -----------------------------------------------------------------------------

    def send(self, queue: Queue, body: str, delay: int | None,
             attributes: dict[str, Any] | None = None) -> Message:
        if len(body.encode("utf-8")) > MAX_BODY_BYTES:
            raise SqsError("InvalidParameterValue",
                           f"One or more parameters are invalid. Reason: Message must be shorter "
                           f"than {MAX_BODY_BYTES} bytes.")
        if len(queue.messages) >= MAX_MESSAGES:
            raise SqsError("OverLimit", f"at most {MAX_MESSAGES} messages per local queue")
        seconds = queue.int_attribute("DelaySeconds", 0) if delay is None else delay
        if not 0 <= seconds <= 900:
            raise SqsError("InvalidParameterValue", "DelaySeconds must be within 0..900.")
        now = self.clock()
        message = Message(str(uuid.uuid4()), body, int(now * 1000), now + seconds,
                          dict(attributes or {}))
        queue.messages[message.message_id] = message
        return message

    def next_visible_at(self, queue: Queue) -> float | None:
        """When the next invisible message becomes visible (None when there is none)."""
        pending = [m.visible_at for m in queue.messages.values()]
        return min(pending) if pending else None

    def receive(self, queue: Queue, count: int, visibility: int | None) -> list[Message]:
        """Up to ``count`` visible messages, made invisible for the visibility timeout; messages
        received ``maxReceiveCount`` times move to the dead-letter queue instead."""
        now = self.clock()
        timeout = queue.int_attribute("VisibilityTimeout", 30) if visibility is None else visibility
        redrive = queue.redrive()
        result: list[Message] = []
        for message in list(queue.messages.values()):
            if len(result) >= count:
                break
            if message.visible_at > now:
                continue
            if redrive is not None and message.receive_count >= redrive[1]:
                dlq = self.queues.get(redrive[0])
                del queue.messages[message.message_id]
                if dlq is not None:
                    message.visible_at = now
                    dlq.messages[message.message_id] = message
                continue
            message.receive_count += 1
            if not message.first_receive_ms:
                message.first_receive_ms = int(now * 1000)
            message.visible_at = now + timeout
            message.receipt_handle = f"{message.message_id}#{uuid.uuid4().hex}"
            result.append(message)
        return result

    def _by_receipt(self, queue: Queue, receipt: str) -> Message | None:
        message = queue.messages.get(str(receipt).split("#", 1)[0])
        if message is None or message.receipt_handle != receipt:
            return None
        return message

    def delete(self, queue: Queue, receipt: str) -> None:
        """Delete by receipt handle (an outdated handle of an existing message is ignored, as a
        deleted message is: SQS answers success)."""
        message = self._by_receipt(queue, receipt)
        if message is not None:
            del queue.messages[message.message_id]
        elif "#" not in str(receipt):
            raise SqsError("ReceiptHandleIsInvalid", f"The receipt handle {receipt!r} is invalid.")

    def change_visibility(self, queue: Queue, receipt: str, timeout: int) -> None:
        message = self._by_receipt(queue, receipt)
        if message is None:
            raise SqsError("MessageNotInflight", "The message is not in flight.")
        message.visible_at = self.clock() + timeout

    def render(self, message: Message, attribute_names: list[str],
               message_attribute_names: list[str]) -> dict[str, Any]:
        """One message of a ReceiveMessage answer."""
        out: dict[str, Any] = {
            "MessageId": message.message_id,
            "ReceiptHandle": message.receipt_handle,
            "MD5OfBody": hashlib.md5(message.body.encode("utf-8")).hexdigest(),
            "Body": message.body,
        }
        if attribute_names:
            system = {
                "SenderId": "AIDAIENQZJOLO23YVJ4VO",
                "SentTimestamp": str(message.sent_ms),
                "ApproximateReceiveCount": str(message.receive_count),
                "ApproximateFirstReceiveTimestamp": str(message.first_receive_ms),
            }
            if "All" not in attribute_names:
                system = {k: v for k, v in system.items() if k in attribute_names}
            out["Attributes"] = system
        if message_attribute_names and message.attributes:
            wanted = message.attributes
            if not ({"All", ".*"} & set(message_attribute_names)):
                wanted = {k: v for k, v in wanted.items() if k in message_attribute_names}
            if wanted:
                out["MessageAttributes"] = wanted
                out["MD5OfMessageAttributes"] = md5_of_attributes(wanted)
        return out


class SqsService:
    """The JSON-protocol operations over a backend, with long polling on asyncio."""

    def __init__(self, backend: SqsBackend) -> None:
        self.backend = backend
        self._changed: dict[str, asyncio.Event] = {}

    def _event(self, queue: Queue) -> asyncio.Event:
        event = self._changed.get(queue.name)
        if event is None:
            event = self._changed[queue.name] = asyncio.Event()
        return event

    def _notify(self, queue: Queue) -> None:
        event = self._event(queue)
        event.set()
        self._changed[queue.name] = asyncio.Event()

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        handler = getattr(self, f"op_{operation}", None)
        if handler is None:
            raise SqsError("UnsupportedOperation", f"{operation} is not supported locally")
        result: dict[str, Any] = await handler(params)
        return result

    async def op_CreateQueue(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.create_queue(str(p.get("QueueName", "")), p.get("Attributes") or {})
        return {"QueueUrl": queue.url}

    async def op_GetQueueUrl(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.queues.get(str(p.get("QueueName", "")))
        if queue is None:
            raise SqsError("AWS.SimpleQueueService.NonExistentQueue",
                           "The specified queue does not exist.")
        return {"QueueUrl": queue.url}

    async def op_ListQueues(self, p: dict[str, Any]) -> dict[str, Any]:
        prefix = str(p.get("QueueNamePrefix", ""))
        return {"QueueUrls": [q.url for q in self.backend.queues.values()
                              if q.name.startswith(prefix)]}

    async def op_DeleteQueue(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.queue_from_url(p.get("QueueUrl", ""))
        del self.backend.queues[queue.name]
        return {}

    async def op_PurgeQueue(self, p: dict[str, Any]) -> dict[str, Any]:
        self.backend.queue_from_url(p.get("QueueUrl", "")).messages.clear()
        return {}

    async def op_GetQueueAttributes(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.queue_from_url(p.get("QueueUrl", ""))
        return {"Attributes": self.backend.get_attributes(queue, p.get("AttributeNames") or [])}

    async def op_SetQueueAttributes(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.queue_from_url(p.get("QueueUrl", ""))
        self.backend.set_attributes(queue, p.get("Attributes") or {})
        self._notify(queue)
        return {}

    def _send_one(self, queue: Queue, entry: dict[str, Any]) -> dict[str, Any]:
        delay = entry.get("DelaySeconds")
        message = self.backend.send(queue, str(entry.get("MessageBody", "")),
                                    None if delay is None else int(delay),
                                    entry.get("MessageAttributes"))
        out = {"MessageId": message.message_id,
               "MD5OfMessageBody": hashlib.md5(message.body.encode("utf-8")).hexdigest()}
        if message.attributes:
            out["MD5OfMessageAttributes"] = md5_of_attributes(message.attributes)
        return out

    async def op_SendMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.queue_from_url(p.get("QueueUrl", ""))
        out = self._send_one(queue, p)
        self._notify(queue)
        return out

    async def op_SendMessageBatch(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.queue_from_url(p.get("QueueUrl", ""))
        ok, failed = [], []
        for entry in p.get("Entries") or []:
            try:
                ok.append({"Id": entry.get("Id"), **self._send_one(queue, entry)})
            except SqsError as exc:
                failed.append({"Id": entry.get("Id"), "SenderFault": True, "Code": exc.code,
                               "Message": str(exc)})
        self._notify(queue)
        return {"Successful": ok, "Failed": failed}

    async def op_ReceiveMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.queue_from_url(p.get("QueueUrl", ""))
        count = max(1, min(int(p.get("MaxNumberOfMessages", 1)), 10))
        visibility = p.get("VisibilityTimeout")
        wait = p.get("WaitTimeSeconds")
        if wait is None:
            wait = queue.int_attribute("ReceiveMessageWaitTimeSeconds", 0)
        deadline = time.monotonic() + max(0, min(int(wait), MAX_WAIT_SECONDS))
        names = list(p.get("AttributeNames") or []) + list(p.get("MessageSystemAttributeNames")
                                                           or [])
        attribute_names = list(p.get("MessageAttributeNames") or [])
        while True:
            changed = self._event(queue)
            messages = self.backend.receive(queue, count,
                                            None if visibility is None else int(visibility))
            remaining = deadline - time.monotonic()
            if messages or remaining <= 0:
                break
            next_visible = self.backend.next_visible_at(queue)
            if next_visible is not None:
                remaining = min(remaining, max(0.001, next_visible - self.backend.clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
        if not messages:
            return {}
        return {"Messages": [self.backend.render(m, names, attribute_names) for m in messages]}

    async def op_DeleteMessage(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.queue_from_url(p.get("QueueUrl", ""))
        self.backend.delete(queue, str(p.get("ReceiptHandle", "")))
        return {}

    async def op_DeleteMessageBatch(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.queue_from_url(p.get("QueueUrl", ""))
        ok, failed = [], []
        for entry in p.get("Entries") or []:
            try:
                self.backend.delete(queue, str(entry.get("ReceiptHandle", "")))
                ok.append({"Id": entry.get("Id")})
            except SqsError as exc:
                failed.append({"Id": entry.get("Id"), "SenderFault": True, "Code": exc.code,
                               "Message": str(exc)})
        return {"Successful": ok, "Failed": failed}

    async def op_ChangeMessageVisibility(self, p: dict[str, Any]) -> dict[str, Any]:
        queue = self.backend.queue_from_url(p.get("QueueUrl", ""))
        self.backend.change_visibility(queue, str(p.get("ReceiptHandle", "")),
                                       int(p.get("VisibilityTimeout", 0)))
        self._notify(queue)
        return {}


def make_app(service: SqsService) -> Any:
    """The aiohttp application: ``POST /`` (or a queue URL) with ``X-Amz-Target``."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        target = request.headers.get("X-Amz-Target", "")
        if not target.startswith("AmazonSQS."):
            return web.json_response(
                {"__type": "com.amazonaws.sqs#InvalidAction",
                 "message": "only the SQS JSON protocol (X-Amz-Target) is supported locally"},
                status=400)
        try:
            params = await request.json() if request.can_read_body else {}
            result = await service.call(target.split(".", 1)[1], params or {})
        except SqsError as exc:
            return web.json_response({"__type": f"com.amazonaws.sqs#{exc.code}",
                                      "message": str(exc)}, status=exc.status,
                                     headers={"x-amzn-query-error": f"{exc.code};Sender"},
                                     content_type="application/x-amz-json-1.0")
        except (ValueError, TypeError, KeyError) as exc:
            return web.json_response({"__type": "com.amazonaws.sqs#InvalidParameterValue",
                                      "message": str(exc)}, status=400,
                                     content_type="application/x-amz-json-1.0")
        return web.json_response(result, content_type="application/x-amz-json-1.0")

    app = web.Application(client_max_size=2 * MAX_BODY_BYTES * 11)
    app.router.add_post("/{tail:.*}", handle)
    return app


#: Seconds a stopping server waits for open requests before cancelling them.
SHUTDOWN_GRACE_SECONDS = 0.1


def main(argv: list[str] | None = None) -> int:
    from aiohttp import web

    parser = argparse.ArgumentParser(prog="python -m localgateway.sqs_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    backend = SqsBackend(f"http://{args.host}:{args.port}")
    # A short shutdown grace: the requests still open at shutdown are the pollers' long polls
    # (up to 20 s each), and the queues live in this process's memory anyway.
    web.run_app(make_app(SqsService(backend)), host=args.host, port=args.port,
                access_log=None, print=None, handle_signals=True,
                shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
