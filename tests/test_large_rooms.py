"""Scale paths through the app's handlers: fan-out through SQS workers, and the sweep's reach.

The app runs under chalice.test.Client against SQLite on disk, a real local management API and
moto's SQS; the fan-out worker is invoked with the messages the sender really put on the queue.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib.fanout import MAX_ATTEMPTS, FanOutBatch
from tests.conftest import AppHarness
from tests.support.events import sqs_event
from tests.support.frames import without_ids


@pytest.fixture
def fanout_queue(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, str]]:
    """A moto fan-out queue wired into the app, with rooms above 3 recipients sent through it."""
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="ws-rooms-fanout")["QueueUrl"]
        monkeypatch.setenv("FANOUT_QUEUE_URL", url)
        monkeypatch.setenv("FANOUT_INLINE_MAX", "3")
        monkeypatch.setenv("FANOUT_BATCH_SIZE", "2")
        yield sqs, url


def take(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Every visible message (received and deleted), as raw SQS messages."""
    taken: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not batch:
            return taken
        for message in batch:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        taken += batch


def run_worker(harness: AppHarness, bodies: list[str]) -> Any:
    return harness.invoke("fan_out_worker", sqs_event(*bodies, queue="ws-rooms-fanout"))


def room_of(harness: AppHarness, size: int, room: str = "big",
            queue: tuple[Any, str] | None = None) -> list[str]:
    """``size`` members of ``room``; with ``queue``, the presence batches their joins queued
    (announcements in a large room go through the workers too) are taken off it."""
    members = [harness.connect() for _ in range(size)]
    for member in members:
        harness.join(member, room)
    if queue is not None:
        take(*queue)
    return members


def test_a_large_room_is_handed_to_the_workers_and_reaches_everyone_once(
    harness: AppHarness, fanout_queue: tuple[Any, str]
) -> None:
    sqs, url = fanout_queue
    sender, *others = room_of(harness, 9, queue=fanout_queue)
    sent = harness.send(sender, {"action": "send", "room": "big", "data": {"n": 1}, "id": "s1"})
    assert without_ids(sent["data"]) == {
        "room": "big", "delivered": 0, "gone": 0, "failed": 0, "queued": 8}
    assert all("message" not in harness.api.types(m) for m in others)  # nothing inline
    messages = take(sqs, url)
    batches = [FanOutBatch.from_json(m["Body"]) for m in messages]
    # Batches are full across the pages the sender read (4, 4, then the rest): never a short
    # batch per page.
    assert [len(batch.recipients) for batch in batches] == [2, 2, 2, 2]
    assert sorted(r for b in batches for r in b.recipients) == sorted(others)  # sender excluded
    assert run_worker(harness, [m["Body"] for m in messages]) == {"batchItemFailures": []}
    for member in others:
        frames = harness.api.received(member)
        [message] = [f["data"] for f in frames if f["type"] == "message"]
        assert without_ids(message) == {"room": "big", "from": sender, "data": {"n": 1}}
        assert (message["seq"], message["mid"]) == (sent["data"]["seq"], sent["data"]["mid"])


def test_a_large_room_gets_no_presence_frames(
    harness: AppHarness, fanout_queue: tuple[Any, str]
) -> None:
    sqs, url = fanout_queue
    members = room_of(harness, 5, queue=fanout_queue)
    newcomer = harness.connect()
    harness.join(newcomer, "big")
    # Above FANOUT_INLINE_MAX a join announces nothing (N posts per join, N² for a join storm),
    # neither inline nor through the workers; the member list still answers.
    assert take(sqs, url) == []
    assert all(harness.api.types(m).count("presence") <= 3 for m in members)
    listed = harness.send(members[0], {"action": "members", "room": "big"})["data"]
    assert listed["count"] == 6


def test_a_small_room_is_still_delivered_inline(
    harness: AppHarness, fanout_queue: tuple[Any, str]
) -> None:
    sqs, url = fanout_queue
    sender, *_others = room_of(harness, 4, queue=fanout_queue)  # 3 recipients: inline
    sent = harness.send(sender, {"action": "send", "room": "big", "data": 1})
    assert sent["data"]["delivered"] == 3 and sent["data"]["queued"] == 0
    assert take(sqs, url) == []


def test_a_non_member_cannot_send_to_a_large_room(
    harness: AppHarness, fanout_queue: tuple[Any, str]
) -> None:
    sqs, url = fanout_queue
    room_of(harness, 6, queue=fanout_queue)
    outsider = harness.connect()
    reply = harness.send(outsider, {"action": "send", "room": "big", "data": 1})
    assert reply["data"]["code"] == "not_member"
    assert take(sqs, url) == []


def test_server_push_to_a_large_room_goes_through_the_queue(
    harness: AppHarness, fanout_queue: tuple[Any, str]
) -> None:
    sqs, url = fanout_queue
    members = room_of(harness, 5, queue=fanout_queue)
    response = harness.client.http.post(
        "/rooms/big/messages", headers={"Content-Type": "application/json"},
        body=json.dumps({"data": "all hands"}))
    assert without_ids(json.loads(response.body)) == {
        "delivered": 0, "gone": 0, "failed": 0, "queued": 5}
    run_worker(harness, [m["Body"] for m in take(sqs, url)])
    assert all(harness.last(m, "message")["data"]["data"] == "all hands" for m in members)


def test_worker_handles_410_403_429_and_5xx_inside_one_batch(
    harness: AppHarness, fanout_queue: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs, url = fanout_queue
    monkeypatch.setenv("DELIVERY_MAX_ATTEMPTS", "2")
    gone, forbidden, throttled, broken, fine = room_of(harness, 5, queue=fanout_queue)
    harness.api.close(gone)
    harness.api.script(forbidden, 403)
    harness.api.script(throttled, 429)  # retried by the Deliverer, then delivered
    harness.api.script(broken, 500, 503)  # fails past the bound
    batch = FanOutBatch("big", harness.api.endpoint, b'{"type":"message","data":"x"}',
                        (gone, forbidden, throttled, broken, fine))
    assert run_worker(harness, [batch.to_json()]) == {"batchItemFailures": []}
    assert "message" in harness.api.types(throttled)
    assert "message" in harness.api.types(fine)
    assert harness.store.get(gone) is None  # 410 prunes exactly that member
    assert "big" not in [m for m in harness.store.members("big") if m == gone]
    assert harness.store.get(forbidden) is not None  # 403 never prunes
    # Only the failed member goes back on the queue, alone, for a later attempt.
    batches = [FanOutBatch.from_json(m["Body"]) for m in take_delayed(sqs, url)]
    [requeued] = [b for b in batches if json.loads(b.payload)["type"] == "message"]
    assert (requeued.recipients, requeued.attempt) == ((broken,), 1)
    assert run_worker(harness, [requeued.to_json()]) == {"batchItemFailures": []}
    assert "message" in harness.api.types(broken)
    assert [t for t in harness.api.types(fine) if t == "message"] == ["message"]  # not twice


def take_delayed(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Messages sent with a delay: moto honours DelaySeconds, so make them visible now."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"])["Attributes"]
    assert int(attributes["ApproximateNumberOfMessagesDelayed"]) >= 1
    from moto.sqs.models import sqs_backends

    for queue in sqs_backends["123456789012"]["us-east-1"].queues.values():
        for message in queue._messages:
            message.delayed_until = 0
    return take(sqs, url)


def test_worker_gives_up_after_the_last_attempt(
    harness: AppHarness, fanout_queue: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sqs, url = fanout_queue
    monkeypatch.setenv("DELIVERY_MAX_ATTEMPTS", "1")
    [broken] = room_of(harness, 1)
    harness.api.script(broken, 500)
    batch = FanOutBatch("big", harness.api.endpoint, b'{"type":"message","data":"x"}',
                        (broken,), attempt=MAX_ATTEMPTS - 1)
    assert run_worker(harness, [batch.to_json()]) == {"batchItemFailures": []}
    assert take(sqs, url) == []


def test_worker_reports_the_batch_when_it_cannot_requeue(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FANOUT_QUEUE_URL", "http://127.0.0.1:9/123456789012/nowhere")
    monkeypatch.setenv("DELIVERY_MAX_ATTEMPTS", "1")
    [broken, fine] = room_of(harness, 2)
    harness.api.script(broken, 500)
    good = FanOutBatch("big", harness.api.endpoint, b'{"type":"message","data":"x"}', (fine,))
    bad = FanOutBatch("big", harness.api.endpoint, b'{"type":"message","data":"x"}', (broken,))
    event = sqs_event(good.to_json(), bad.to_json(), "not json", queue="ws-rooms-fanout")
    result = harness.invoke("fan_out_worker", event)
    # Only the batch whose failures could not be requeued is redelivered; malformed is dropped.
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["messageId"]}]}


# ---------------------------------------------------------------- the sweep's reach


def sweep(harness: AppHarness) -> Any:
    return harness.invoke("sweep", {"detail-type": "Scheduled Event", "source": "aws.events",
                                     "time": "2024-11-11T13:45:46Z", "detail": {},
                                     "resources": [], "id": "1", "region": "us-east-1",
                                     "account": "123456789012", "version": "0"})


def test_sweep_reaches_a_stale_record_behind_live_ones(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_IDLE_SECONDS", "0")
    monkeypatch.setenv("SWEEP_BATCH", "2")
    live = [harness.connect() for _ in range(5)]
    stale = harness.connect()  # the newest record: behind every live one in the sweep's order
    harness.api.close(stale)
    reports = [sweep(harness) for _ in range(3)]  # ceil(6 records / 2 per run)
    assert sum(r["pruned"] for r in reports) == 1
    assert harness.store.get(stale) is None
    assert all(harness.store.get(cid) is not None for cid in live)
    # Every live record was asked about exactly once: checked ones moved to the back.
    assert all(len(harness.api.calls_on(cid, "GET")) == 1 for cid in live)


def test_sweep_removes_records_past_the_two_hour_limit_without_asking(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_IDLE_SECONDS", "0")
    harness.store.register("ANCIENT_fALIAMC=", connected_at=time.time() - 7201)
    harness.api.open("ANCIENT_fALIAMC=")
    report = sweep(harness)
    assert report["expired"] == 1 and report["checked"] == 0
    assert harness.api.calls_on("ANCIENT_fALIAMC=") == []
    assert harness.store.get("ANCIENT_fALIAMC=") is None
