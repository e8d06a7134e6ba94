"""chalicelib/fanout.py: batch packing within SQS limits, the message format, the queue client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib.errors import BadEventError
from chalicelib.fanout import (
    SQS_MAX_MESSAGE_BYTES,
    FanOutBatch,
    FanOutQueue,
    FanOutQueueError,
    pack,
)
from tests.support.aws import offline_aws

ENDPOINT = "https://abc123.execute-api.us-east-1.amazonaws.com/api"
FRAME = b'{"type":"message","data":{"room":"big","from":"alice","data":{"text":"hi"}}}'


def ids(n: int) -> list[str]:
    return [f"conn{i:012d}=" for i in range(n)]


def test_pack_respects_the_recipient_cap() -> None:
    batches = list(pack("big", ENDPOINT, FRAME, ids(1001), max_recipients=250))
    assert [len(b.recipients) for b in batches] == [250, 250, 250, 250, 1]
    assert [r for b in batches for r in b.recipients] == ids(1001)
    assert all(b.payload == FRAME and b.room == "big" and b.attempt == 0 for b in batches)


def test_pack_keeps_every_body_under_the_sqs_limit_for_the_largest_frame() -> None:
    # A 128 KB frame full of quotes: escaped as JSON text it would double; base64 is used.
    frame = ('{"type":"message","data":"' + '\\"' * 65_000 + '"}').encode()
    batches = list(pack("big", ENDPOINT, frame, ids(5000), max_recipients=5000))
    assert len(batches) > 1
    for batch in batches:
        body = batch.to_json()
        assert len(body.encode()) <= SQS_MAX_MESSAGE_BYTES
        assert FanOutBatch.from_json(body) == batch


def test_pack_of_nobody_is_nothing() -> None:
    assert list(pack("r", ENDPOINT, FRAME, [], max_recipients=10)) == []


def test_round_trip_keeps_unicode_and_attempt() -> None:
    frame = '{"type":"message","data":{"text":"héllo ☃"}}'.encode()
    batch = FanOutBatch("r", ENDPOINT, frame, ("a", "b"), attempt=2)
    assert FanOutBatch.from_json(batch.to_json()) == batch


@pytest.mark.parametrize("body", [
    "not json",
    "[]",
    json.dumps({"v": 2, "room": "r", "endpoint": ENDPOINT, "payload": "x", "recipients": []}),
    json.dumps({"v": 1, "endpoint": ENDPOINT, "payload": "x", "recipients": ["a"]}),
    json.dumps({"v": 1, "room": "r", "payload": "x", "recipients": ["a"]}),
    json.dumps({"v": 1, "room": "r", "endpoint": ENDPOINT, "recipients": ["a"]}),
    json.dumps({"v": 1, "room": "r", "endpoint": ENDPOINT, "payload": "x", "recipients": [1]}),
    json.dumps({"v": 1, "room": "r", "endpoint": ENDPOINT, "payload": "x", "recipients": ["a"],
                "attempt": -1}),
    json.dumps({"v": 1, "room": "r", "endpoint": ENDPOINT, "payload64": "!!", "recipients": ["a"]}),
])
def test_malformed_bodies_are_bad_events(body: str) -> None:
    with pytest.raises(BadEventError):
        FanOutBatch.from_json(body)


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Iterator[Any]:
    offline_aws(monkeypatch, tmp_path)
    with mock_aws():
        yield boto3.client("sqs", region_name="us-east-1")


def drain(sqs: Any, url: str) -> list[FanOutBatch]:
    batches = []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return batches
        for message in messages:
            batches.append(FanOutBatch.from_json(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_enqueue_sends_every_recipient_once_in_batched_calls(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="fanout")["QueueUrl"]
    calls: list[int] = []
    sqs.meta.events.register(
        "before-parameter-build.sqs.SendMessageBatch",
        lambda params, **_: calls.append(len(params["Entries"])),
    )
    queue = FanOutQueue(sqs, "fanout", max_recipients=100)  # a bare name is resolved
    assert queue.enqueue("big", ENDPOINT, FRAME, ids(2345)) == 2345
    assert calls == [10, 10, 4]  # 24 batches, at most 10 per SendMessageBatch
    received = drain(sqs, url)
    assert sorted(r for b in received for r in b.recipients) == ids(2345)


def test_enqueue_with_a_delay_hides_the_batches(sqs: Any) -> None:
    url = sqs.create_queue(QueueName="fanout")["QueueUrl"]
    FanOutQueue(sqs, url).enqueue("r", ENDPOINT, FRAME, ["a"], attempt=1, delay_seconds=30)
    assert drain(sqs, url) == []
    delayed = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"])["Attributes"]
    assert delayed["ApproximateNumberOfMessagesDelayed"] == "1"


def test_enqueue_to_a_missing_queue_is_a_queue_error(sqs: Any) -> None:
    queue = FanOutQueue(sqs, "https://sqs.us-east-1.amazonaws.com/123456789012/nowhere")
    with pytest.raises(FanOutQueueError):
        queue.enqueue("r", ENDPOINT, FRAME, ["a"])
