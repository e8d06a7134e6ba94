"""Fan-out of large rooms through SQS, so that many Lambda workers deliver instead of one.

One Lambda posting to every member of a room is CPU-bound (each PostToConnection is a signed
HTTPS request): at 512 MB and a 30 s timeout it stops near 5,800 members.  Rooms with more than
``FANOUT_INLINE_MAX`` recipients are therefore paged by the sender and handed to the fan-out queue
as :class:`FanOutBatch` messages (a batch of recipient ids plus the frame); the worker function
(``fan_out_worker`` in app.py) delivers each batch with the same :class:`~chalicelib.delivery.
Deliverer` semantics and prunes 410s.  SQS and Lambda's event source mapping are the distributed
engine: concurrency, redelivery and the dead-letter queue are theirs.

Delivery guarantees: a recipient whose post failed after the Deliverer's bounded retries (429, 5xx,
network) is put back on the queue alone, in a new batch with ``attempt + 1`` and a delay, so a
retry never reaches members who already got the message.  Only when that re-enqueue fails, or the
worker dies mid-batch (timeout, crash), does SQS redeliver the whole batch: those members may get
the message twice (at-least-once).  After :data:`MAX_ATTEMPTS` a recipient is given up on and
logged.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from chalicelib.errors import BadEventError, WsAppError
from chalicelib.queues import QueueAddress

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import SendMessageBatchRequestEntryTypeDef

#: SQS's limit for one message body, and for the sum of the bodies in one SendMessageBatch.
SQS_MAX_MESSAGE_BYTES = 256 * 1024
#: SendMessageBatch takes at most 10 entries.
SQS_MAX_BATCH_ENTRIES = 10
#: Delivery rounds per recipient: the first, then re-enqueues of its failures alone.
MAX_ATTEMPTS = 3
#: Delay before a re-enqueued recipient is tried again (seconds, times the attempt number).
RETRY_DELAY_SECONDS = 5
#: Failed entries of one SendMessageBatch are resent at most this many more times.
_SEND_ROUNDS = 3
_FORMAT_VERSION = 1


class FanOutQueueError(WsAppError):
    """Batches could not be put on the fan-out queue (SQS refused or failed, after retries)."""


@dataclass(frozen=True)
class FanOutBatch:
    """One queue message: deliver ``payload`` (a complete frame) to ``recipients``."""

    room: str
    endpoint: str
    payload: bytes
    recipients: tuple[str, ...]
    attempt: int = 0

    def to_json(self) -> str:
        """The message body (compact JSON; the frame as text, or base64 when escaping would
        make it too large)."""
        return _body(self.room, self.endpoint, self.payload, self.recipients, self.attempt)

    @classmethod
    def from_json(cls, body: str) -> FanOutBatch:
        """Parse a message body; raises :class:`BadEventError` when malformed."""
        try:
            obj = json.loads(body)
        except (TypeError, ValueError) as exc:
            raise BadEventError(f"fan-out batch is not JSON: {exc}") from exc
        if not isinstance(obj, dict) or obj.get("v") != _FORMAT_VERSION:
            raise BadEventError(f"fan-out batch must be a JSON object with v={_FORMAT_VERSION}")
        room, endpoint, recipients = obj.get("room"), obj.get("endpoint"), obj.get("recipients")
        attempt = obj.get("attempt", 0)
        if not isinstance(room, str) or not room:
            raise BadEventError("fan-out batch has no 'room' string")
        if not isinstance(endpoint, str) or not endpoint:
            raise BadEventError("fan-out batch has no 'endpoint' string")
        if not isinstance(recipients, list) or not all(
            isinstance(r, str) and r for r in recipients
        ):
            raise BadEventError("fan-out batch 'recipients' must be a list of connection ids")
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
            raise BadEventError("fan-out batch 'attempt' must be a non-negative integer")
        return cls(room, endpoint, _payload_of(obj), tuple(recipients), attempt)


def pack(
    room: str,
    endpoint: str,
    payload: bytes,
    recipients: Iterable[str],
    *,
    max_recipients: int,
    attempt: int = 0,
) -> Iterator[FanOutBatch]:
    """Split ``recipients`` into batches of at most ``max_recipients`` whose bodies fit in SQS.

    Sizes are computed exactly (the body is JSON, so each id adds its quoted length and a comma).
    """
    if max_recipients < 1:
        raise ValueError("max_recipients must be at least 1")
    base = len(_body(room, endpoint, payload, (), attempt).encode("utf-8"))
    if base + 64 > SQS_MAX_MESSAGE_BYTES:
        raise ValueError("payload leaves no room for recipients in one SQS message")
    batch: list[str] = []
    size = base
    for recipient in recipients:
        cost = len(json.dumps(recipient).encode("utf-8")) + 1
        if batch and (len(batch) >= max_recipients or size + cost > SQS_MAX_MESSAGE_BYTES):
            yield FanOutBatch(room, endpoint, payload, tuple(batch), attempt)
            batch, size = [], base
        batch.append(recipient)
        size += cost
    if batch:
        yield FanOutBatch(room, endpoint, payload, tuple(batch), attempt)


class FanOutQueue:
    """Puts :class:`FanOutBatch` messages on the queue named by ``FANOUT_QUEUE_URL``.

    ``queue`` is a queue URL or a bare queue name (resolved once).  Thread-safe (boto3 clients
    are).
    """

    def __init__(self, client: SQSClient, queue: str, *, max_recipients: int = 250) -> None:
        self.client = client
        self.address = QueueAddress(client, queue)
        self.max_recipients = max_recipients

    def enqueue(
        self,
        room: str,
        endpoint: str,
        payload: bytes,
        recipients: Iterable[str],
        *,
        attempt: int = 0,
        delay_seconds: int = 0,
    ) -> int:
        """Pack ``recipients`` into batches and send them; return how many recipients went out.

        SendMessageBatch calls carry at most 10 entries and 256 KB; entries SQS reports as failed
        are resent a bounded number of times.  Raises :class:`FanOutQueueError` when some are
        still refused (the caller cannot know which members were reached then: it reports the
        error; nothing is delivered twice by this call).
        """
        sent = 0
        group: list[FanOutBatch] = []
        group_bytes = 0
        for batch in pack(room, endpoint, payload, recipients,
                          max_recipients=self.max_recipients, attempt=attempt):
            size = len(batch.to_json().encode("utf-8"))
            if group and (len(group) >= SQS_MAX_BATCH_ENTRIES
                          or group_bytes + size > SQS_MAX_MESSAGE_BYTES):
                sent += self._send(group, delay_seconds)
                group, group_bytes = [], 0
            group.append(batch)
            group_bytes += size
        if group:
            sent += self._send(group, delay_seconds)
        return sent

    def _send(self, batches: list[FanOutBatch], delay_seconds: int) -> int:
        entries: dict[str, SendMessageBatchRequestEntryTypeDef] = {
            str(index): {"Id": str(index), "MessageBody": batch.to_json(),
                         "DelaySeconds": delay_seconds}
            for index, batch in enumerate(batches)
        }
        pending = list(entries)
        for _round in range(_SEND_ROUNDS):
            try:
                response = self.client.send_message_batch(
                    QueueUrl=self.address.url, Entries=[entries[key] for key in pending]
                )
            except (ClientError, BotoCoreError) as exc:  # refused, or the network failed
                raise FanOutQueueError(f"fan-out queue refused a batch: {exc}") from exc
            failed = response.get("Failed", [])
            # Sender faults (a malformed entry) never get better; only resend the others.
            if any(entry.get("SenderFault") for entry in failed):
                raise FanOutQueueError(f"fan-out queue refused entries: {failed}")
            pending = [entry["Id"] for entry in failed]
            if not pending:
                return sum(len(batch.recipients) for batch in batches)
        raise FanOutQueueError(f"{len(pending)} fan-out batches still failing after retries")


def _body(
    room: str, endpoint: str, payload: bytes, recipients: Iterable[str], attempt: int
) -> str:
    obj: dict[str, Any] = {"v": _FORMAT_VERSION, "room": room, "endpoint": endpoint,
                           "attempt": attempt}
    text = payload.decode("utf-8")
    as_text = json.dumps(text, ensure_ascii=False)
    # Frames full of quotes or control characters double in size when escaped; base64 is 4/3.
    if len(as_text.encode("utf-8")) <= len(payload) * 4 // 3 + 4:
        obj["payload"] = text
    else:
        obj["payload64"] = base64.b64encode(payload).decode("ascii")
    obj["recipients"] = list(recipients)
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _payload_of(obj: dict[str, Any]) -> bytes:
    if isinstance(obj.get("payload"), str):
        return str(obj["payload"]).encode("utf-8")
    if isinstance(obj.get("payload64"), str):
        try:
            return base64.b64decode(obj["payload64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadEventError(f"fan-out batch 'payload64' is not base64: {exc}") from exc
    raise BadEventError("fan-out batch has no 'payload' string")
