"""Local SQS: moto's server in-process, plus pollers that feed ``@app.on_sqs_message`` handlers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import boto3

from localgateway.events import sqs_event, sqs_record
from localgateway.invoker import InvocationError, Invoker

LOG = logging.getLogger("localgateway.sqs")


class LocalQueues:
    """SQS-compatible endpoint (``moto.server.ThreadedMotoServer`` on a free 127.0.0.1 port)."""

    def __init__(self, queue_names: Iterable[str], host: str = "127.0.0.1") -> None:
        self.queue_names = sorted(set(queue_names))
        self.host = host
        self.endpoint_url = ""
        self.queue_urls: dict[str, str] = {}
        self._server: Any = None

    def start(self) -> dict[str, str]:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=self.host, port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        client = self.client()
        for name in self.queue_names:
            attributes = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
            self.queue_urls[name] = client.create_queue(QueueName=name, Attributes=attributes)[
                "QueueUrl"
            ]
        return dict(self.queue_urls)

    def client(self) -> Any:
        return boto3.session.Session().client("sqs", endpoint_url=self.endpoint_url)

    def stop(self) -> None:
        if self._server is not None:
            try:
                self._server.stop()
            except Exception:  # pragma: no cover - best effort at shutdown
                LOG.debug("moto server stop failed", exc_info=True)
            self._server = None


class SqsPoller(threading.Thread):
    """Long-polls one queue for one function, like Lambda's SQS event source mapping.

    Delayed messages (DelaySeconds) become visible when SQS says so; a batch is deleted when the
    handler returns, left to reappear after the visibility timeout when it raises.
    """

    def __init__(
        self,
        client_factory: Callable[[], Any],
        queue_name: str,
        queue_url: str,
        function: str,
        invoker: Invoker,
        batch_size: int = 1,
        region: str = "us-east-1",
        wait_seconds: int = 1,
    ) -> None:
        super().__init__(name=f"sqs-poller-{queue_name}-{function}", daemon=True)
        self._client_factory = client_factory
        self.queue_name = queue_name
        self.queue_url = queue_url
        self.function = function
        self.invoker = invoker
        self.batch_size = max(1, min(int(batch_size), 10))
        self.region = region
        self.wait_seconds = wait_seconds
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        client = self._client_factory()
        while not self._stop_event.is_set():
            try:
                self.poll_once(client)
            except Exception:
                LOG.exception("polling %s failed", self.queue_name)
                self._stop_event.wait(1.0)

    def poll_once(self, client: Any) -> int:
        response = client.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=self.wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        )
        messages = response.get("Messages") or []
        if not messages:
            return 0
        event = sqs_event(sqs_record(m, self.queue_name, self.region) for m in messages)
        LOG.info("SQS %s -> %s (%d record(s))", self.queue_name, self.function, len(messages))
        try:
            self.invoker.invoke(self.function, event)
        except InvocationError as exc:
            LOG.error("SQS handler %s failed:\n%s", self.function, exc.details)
            return 0
        client.delete_message_batch(
            QueueUrl=self.queue_url,
            Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)
            ],
        )
        return len(messages)
