"""The delayed welcome follow-up: ``$connect`` enqueues it, an SQS handler delivers it.

``$connect`` must not post (the connection is not established yet: AWS answers 410), so it
enqueues a follow-up on SQS with ``DelaySeconds``; by the time the message is handled the
connection is open.  The body carries the management endpoint because an SQS event has no
API Gateway domain in it -- but the body is not trusted with where signed requests go:
:meth:`FollowUp.trusted` uses the configured ``WS_MANAGEMENT_ENDPOINT`` when there is one, and
otherwise accepts only an execute-api endpoint of this region.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chalicelib.errors import BadEventError
from chalicelib.events import execute_api_endpoint
from chalicelib.queues import QueueAddress

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

#: SQS accepts DelaySeconds from 0 to 900.
MAX_DELAY_SECONDS = 900


@dataclass(frozen=True)
class FollowUp:
    connection_id: str
    endpoint: str

    def to_json(self) -> str:
        return json.dumps({"connectionId": self.connection_id, "endpoint": self.endpoint})

    @classmethod
    def from_json(cls, body: str) -> FollowUp:
        """Parse a follow-up message body; raises :class:`BadEventError` when malformed."""
        try:
            obj = json.loads(body)
        except (TypeError, ValueError) as exc:
            raise BadEventError(f"welcome follow-up body is not JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise BadEventError("welcome follow-up body must be a JSON object")
        connection_id, endpoint = obj.get("connectionId"), obj.get("endpoint")
        if not isinstance(connection_id, str) or not connection_id:
            raise BadEventError("welcome follow-up has no 'connectionId' string")
        if not isinstance(endpoint, str) or not endpoint:
            raise BadEventError("welcome follow-up has no 'endpoint' string")
        return cls(connection_id=connection_id, endpoint=endpoint)

    def trusted(self, *, configured: str | None, region: str | None) -> FollowUp:
        """This follow-up aimed at an endpoint we trust; call before delivering it.

        ``configured`` (``WS_MANAGEMENT_ENDPOINT``) wins whatever the body says.  Without it,
        the body's endpoint must have the ``https://{api}.execute-api.{region}.amazonaws.com/
        {stage}`` shape, in ``region`` when known.  Raises :class:`BadEventError` otherwise (the
        message is dropped, never retried: the SigV4-signed calls would go to another host).
        """
        if configured:
            return FollowUp(self.connection_id, configured.rstrip("/"))
        return FollowUp(self.connection_id, execute_api_endpoint(self.endpoint, region=region))


class WelcomeQueue:
    """Enqueues follow-ups on the queue named by ``WELCOME_QUEUE_URL``.

    ``queue`` is a queue URL, or a bare queue name that is resolved once with GetQueueUrl (so a
    stage's configuration need not spell out the account id).
    """

    def __init__(self, client: SQSClient, queue: str, delay_seconds: int) -> None:
        if not 0 <= delay_seconds <= MAX_DELAY_SECONDS:
            raise ValueError(f"delay_seconds must be 0..{MAX_DELAY_SECONDS}")
        self.client = client
        self.address = QueueAddress(client, queue)
        self.delay_seconds = delay_seconds

    @property
    def queue_url(self) -> str:
        return self.address.url

    def enqueue(self, follow_up: FollowUp) -> None:
        """Send one delayed message; raises botocore errors (the caller decides)."""
        self.client.send_message(
            QueueUrl=self.address.url,
            MessageBody=follow_up.to_json(),
            DelaySeconds=self.delay_seconds,
        )
