"""Which function sends to which SQS queue, observed: the truth behind the per-function IAM.

Each handler of app.py runs under chalice.test.Client (SQLite, the fake management API on
127.0.0.1, moto's SQS for both queues) through the path that reaches a queue, and the queues are
drained after each step.  The observed senders must be exactly what deploy/policies.py grants
(``WELCOME_PRODUCERS``, ``FANOUT_PRODUCERS``): ``$connect`` is the only function that sends to
the welcome queue; the functions that deliver a large room's message (send, REST push) and the
worker's re-enqueue send to the fan-out queue.  ``$disconnect``, the sweep and a follow-up
pruning a gone member announce departures, and large rooms get no presence frames, so they
send to no queue.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib.fanout import FanOutBatch
from deploy import policies
from tests.conftest import AppHarness
from tests.support.events import sqs_event

QUEUES = ("welcome", "fanout")


class Queues:
    def __init__(self, sqs: Any, urls: dict[str, str]) -> None:
        self.sqs = sqs
        self.urls = urls

    def drain(self) -> dict[str, list[str]]:
        """Every message on each queue (delayed ones made visible), received and deleted."""
        from moto.sqs.models import sqs_backends

        for queue in sqs_backends["123456789012"]["us-east-1"].queues.values():
            for message in queue._messages:
                message.delayed_until = 0
        taken: dict[str, list[str]] = {}
        for name, url in self.urls.items():
            bodies: list[str] = []
            while batch := self.sqs.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
                for message in batch:
                    self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                bodies += [message["Body"] for message in batch]
            taken[name] = bodies
        return taken


@pytest.fixture
def queues(harness: AppHarness, monkeypatch: pytest.MonkeyPatch) -> Iterator[Queues]:
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        urls = {name: sqs.create_queue(QueueName=f"ws-rooms-test-{name}")["QueueUrl"]
                for name in QUEUES}
        monkeypatch.setenv("WELCOME_QUEUE_URL", urls["welcome"])
        monkeypatch.setenv("WELCOME_DELAY_SECONDS", "0")
        monkeypatch.setenv("FANOUT_QUEUE_URL", urls["fanout"])
        monkeypatch.setenv("FANOUT_INLINE_MAX", "3")  # rooms above 3 recipients: the workers
        monkeypatch.setenv("FANOUT_BATCH_SIZE", "2")
        monkeypatch.setenv("DELIVERY_MAX_ATTEMPTS", "1")
        monkeypatch.setenv("SWEEP_IDLE_SECONDS", "0")
        yield Queues(sqs, urls)


def test_each_function_sends_to_exactly_the_queues_its_role_grants(
    harness: AppHarness, queues: Queues
) -> None:
    observed: dict[str, set[str]] = {name: set() for name, _role in policies.FUNCTIONS.values()}

    def step(function: str, action: Callable[[], Any]) -> dict[str, list[str]]:
        queues.drain()
        action()
        taken = queues.drain()
        observed[function] |= {name for name, bodies in taken.items() if bodies}
        return taken

    # $connect: the welcome follow-up, nothing else (no room yet, so nothing to announce).
    members: list[str] = []
    welcomes: dict[str, str] = {}
    for _ in range(9):  # a large room even after the departures below
        taken = step("websocket_connect", lambda: members.append(harness.connect()))
        [welcomes[members[-1]]] = taken["welcome"]
    # Messages: joining a large room announces it through the workers; so does a send.
    for member in members:
        step("websocket_message", lambda m=member: harness.join(m, "big"))
    step("websocket_message", lambda: harness.send(
        members[0], {"action": "send", "room": "big", "data": 1}))
    # The REST push to a large room.
    step("api_handler", lambda: harness.client.http.post(
        "/rooms/big/messages", headers={"Content-Type": "application/json"},
        body=json.dumps({"data": "all hands"})))
    # $disconnect of a large room's member: no presence frames in a large room, no queue.
    step("websocket_disconnect", lambda: harness.disconnect(members[1]))
    # The sweep finds a gone member (410) and forgets it: nothing queued either.
    harness.api.close(members[2])
    step("sweep", lambda: harness.invoke("sweep", {
        "detail-type": "Scheduled Event", "source": "aws.events",
        "time": "2024-11-11T13:45:46Z", "detail": {}, "resources": [], "id": "1",
        "region": "us-east-1", "account": "123456789012", "version": "0"}))
    # A follow-up for a member that is gone by then prunes it: nothing queued.
    harness.api.close(members[3])
    step("welcome_follow_up", lambda: harness.invoke(
        "welcome_follow_up", sqs_event(welcomes[members[3]], queue="ws-rooms-test-welcome")))
    # The worker puts a failed recipient back on the fan-out queue.
    harness.api.script(members[4], 500)
    batch = FanOutBatch("big", harness.api.endpoint, b'{"type":"message","data":"x"}',
                        (members[4], members[5]))
    taken = step("fan_out_worker", lambda: harness.invoke(
        "fan_out_worker", sqs_event(batch.to_json(), queue="ws-rooms-test-fanout")))
    [requeued] = [FanOutBatch.from_json(body) for body in taken["fanout"]]
    assert requeued.recipients == (members[4],)

    granted = {name: {queue for queue, senders in (("welcome", policies.WELCOME_PRODUCERS),
                                                   ("fanout", policies.FANOUT_PRODUCERS))
                      if name in senders}
               for name in observed}
    assert observed == granted
    assert observed["websocket_connect"] == {"welcome"}
    assert observed["websocket_disconnect"] == observed["sweep"] == set()
