"""SQS queue addresses: a URL, or a bare queue name resolved once.

Stage configuration names queues by name (``ws-rooms-dev-welcome``) so it need not spell out the
account id; the deployed template passes full URLs.  Both the welcome and the fan-out queue take
either.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient


class QueueAddress:
    """The URL of ``queue`` (a URL, or a name looked up with GetQueueUrl on first use)."""

    def __init__(self, client: SQSClient, queue: str) -> None:
        if not queue:
            raise ValueError("queue must be a URL or a queue name")
        self._client = client
        self.queue = queue
        self._url: str | None = queue if "://" in queue else None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The queue URL; raises botocore errors when a name cannot be resolved."""
        if self._url is None:
            with self._lock:
                if self._url is None:
                    self._url = self._client.get_queue_url(QueueName=self.queue)["QueueUrl"]
        return self._url
