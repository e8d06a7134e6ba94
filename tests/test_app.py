"""The app's handlers end to end: chalice.test.Client, SQLite on disk, a real HTTP mgmt API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from tests.conftest import AppHarness
from tests.support.events import message_event, sqs_event
from tests.support.frames import without_ids


def _follow_up(harness: AppHarness, connection_id: str) -> None:
    body = json.dumps({"connectionId": connection_id, "endpoint": harness.api.endpoint})
    harness.invoke("welcome_follow_up", sqs_event(body))


# ---------------------------------------------------------------- $connect


def test_connect_makes_no_management_call(harness: AppHarness) -> None:
    connection_id = harness.connect()
    assert harness.api.calls == []
    record = harness.store.get(connection_id)
    assert record is not None and not record.welcomed


@pytest.fixture
def welcome_queue(harness: AppHarness) -> Iterator[tuple[Any, str]]:
    """An SQS client and the URL of a `ws-rooms-welcome` queue, in moto."""
    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        yield sqs, sqs.create_queue(QueueName="ws-rooms-welcome")["QueueUrl"]


def test_connect_enqueues_a_delayed_follow_up(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch, welcome_queue: tuple[Any, str]
) -> None:
    sqs, url = welcome_queue
    monkeypatch.setenv("WELCOME_QUEUE_URL", url)
    monkeypatch.setenv("WELCOME_DELAY_SECONDS", "0")
    connection_id = harness.connect()
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]
    assert harness.api.calls == []
    assert [json.loads(m["Body"]) for m in messages] == [
        {"connectionId": connection_id, "endpoint": harness.api.endpoint}
    ]


def test_follow_up_enqueue_uses_the_configured_delay(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch, welcome_queue: tuple[Any, str]
) -> None:
    sqs, url = welcome_queue
    # A bare queue name is resolved to its URL once.
    monkeypatch.setenv("WELCOME_QUEUE_URL", "ws-rooms-welcome")
    monkeypatch.setenv("WELCOME_DELAY_SECONDS", "30")
    harness.connect()
    visible = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10)
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesDelayed"]
    )["Attributes"]
    assert "Messages" not in visible
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "1"


def test_connect_survives_an_unreachable_welcome_queue(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WELCOME_QUEUE_URL", "http://127.0.0.1:9/123456789012/nowhere")
    connection_id = harness.connect()
    assert harness.store.get(connection_id) is not None
    # The welcome then goes out with the first reply instead.
    harness.send(connection_id, {"action": "ping"})
    assert harness.api.types(connection_id) == ["welcome", "pong"]


# ---------------------------------------------------------------- the welcome


def test_welcome_once_on_first_message_path(harness: AppHarness) -> None:
    connection_id = harness.connect()
    harness.send(connection_id, {"action": "ping", "id": "1"})
    harness.send(connection_id, {"action": "ping", "id": "2"})
    frames = harness.api.received(connection_id)
    assert [f["type"] for f in frames] == ["welcome", "pong", "pong"]
    assert frames[0]["data"]["connectionId"] == connection_id
    assert "id" not in frames[0]
    assert [f.get("id") for f in frames[1:]] == ["1", "2"]


def test_welcome_once_on_follow_up_path(harness: AppHarness) -> None:
    connection_id = harness.connect()
    _follow_up(harness, connection_id)
    assert harness.api.types(connection_id) == ["welcome"]
    assert [c.method for c in harness.api.calls_on(connection_id)] == ["GET", "POST"]
    _follow_up(harness, connection_id)  # SQS redelivery: harmless
    harness.send(connection_id, {"action": "ping"})
    assert harness.api.types(connection_id) == ["welcome", "pong"]


def test_follow_up_prunes_a_gone_connection_and_sends_nothing(harness: AppHarness) -> None:
    connection_id = harness.connect()
    harness.join(connection_id, "lobby")
    harness.api.close(connection_id)
    before = len(harness.api.received(connection_id))
    _follow_up(harness, connection_id)
    assert [c.method for c in harness.api.calls_on(connection_id)][-1] == "GET"
    assert len(harness.api.received(connection_id)) == before
    assert harness.store.get(connection_id) is None
    assert harness.store.members("lobby") == []


def test_follow_up_that_cannot_verify_is_reported_for_redelivery_alone(
    harness: AppHarness,
) -> None:
    undecided = harness.connect()
    fine = harness.connect()
    harness.api.script(undecided, 403)
    event = sqs_event(*(
        json.dumps({"connectionId": cid, "endpoint": harness.api.endpoint})
        for cid in (undecided, fine)
    ))
    result = harness.invoke("welcome_follow_up", event)
    # Partial batch failure: only the undecided record goes back to the queue.
    assert result == {"batchItemFailures": [{"itemIdentifier": event["Records"][0]["messageId"]}]}
    assert harness.store.get(undecided) is not None  # 403 never prunes
    assert harness.api.types(undecided) == []
    assert harness.api.types(fine) == ["welcome"]


def test_malformed_follow_up_is_dropped_not_retried(harness: AppHarness) -> None:
    harness.invoke("welcome_follow_up", sqs_event("not json", json.dumps({"endpoint": "x"})))
    assert harness.api.calls == []


def test_welcome_exactly_once_when_follow_up_and_first_message_race(
    harness: AppHarness,
) -> None:
    from app import app

    handlers = app.handler_map
    for _ in range(15):
        connection_id = harness.connect()
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def run(
            fn: Any,
            event: dict[str, Any],
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            try:
                barrier.wait(timeout=10)
                fn(event, None)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        body = json.dumps({"connectionId": connection_id, "endpoint": harness.api.endpoint})
        threads = [
            threading.Thread(target=run, args=(handlers["welcome_follow_up"], sqs_event(body))),
            threading.Thread(
                target=run,
                args=(handlers["message"], message_event(connection_id, {"action": "ping"})),
            ),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert errors == []
        types = harness.api.types(connection_id)
        assert types.count("welcome") == 1, types
        assert types.count("pong") == 1, types


# ---------------------------------------------------------------- rooms


def test_rooms_join_send_leave_whoami(harness: AppHarness) -> None:
    a, b, c = harness.connect(), harness.connect(), harness.connect()
    assert harness.join(a, "lobby")["data"] == {"room": "lobby", "members": 1, "seq": 0}
    assert harness.join(b, "lobby")["data"] == {"room": "lobby", "members": 2, "seq": 0}
    harness.join(c, "elsewhere")
    sent = harness.send(a, {"action": "send", "room": "lobby", "data": {"text": "hi"}, "id": "s1"})
    assert (sent["type"], sent["id"]) == ("sent", "s1")
    assert without_ids(sent["data"]) == {
        "room": "lobby", "delivered": 1, "gone": 0, "failed": 0, "queued": 0}
    message = harness.api.received(b)[-1]
    assert message["type"] == "message" and "id" not in message
    assert without_ids(message["data"]) == {"room": "lobby", "from": a, "data": {"text": "hi"}}
    assert (message["data"]["seq"], message["data"]["mid"]) == (1, sent["data"]["mid"])
    assert "message" not in harness.api.types(a)
    assert "message" not in harness.api.types(c)
    assert harness.send(b, {"action": "whoami"})["data"] == {"connectionId": b, "rooms": ["lobby"]}
    assert harness.send(b, {"action": "leave", "room": "lobby"})["data"] == {"room": "lobby"}
    assert harness.send(b, {"action": "whoami"})["data"]["rooms"] == []
    again = harness.send(a, {"action": "send", "room": "lobby", "data": 1})
    assert again["data"]["delivered"] == 0


def test_gone_member_is_pruned_alone_while_others_receive(harness: AppHarness) -> None:
    sender, stale, live = harness.connect(), harness.connect(), harness.connect()
    for cid in (sender, stale, live):
        harness.join(cid, "lobby")
    harness.api.close(stale)  # gone without $disconnect
    sent = harness.send(sender, {"action": "send", "room": "lobby", "data": "x"})
    assert without_ids(sent["data"]) == {
        "room": "lobby", "delivered": 1, "gone": 1, "failed": 0, "queued": 0}
    assert harness.last(live, "message")["data"]["data"] == "x"
    # Pruned after the 410: the others are told the stale user left (protocol v2 presence).
    assert harness.last(live, "presence")["data"] == {
        "room": "lobby", "event": "leave", "user": stale, "connections": 0}
    assert sorted(harness.store.members("lobby")) == sorted([sender, live])
    assert harness.store.get(stale) is None
    assert harness.store.get(sender) is not None
    # The pruned member costs nothing on the next send.
    calls_before = len(harness.api.calls_on(stale))
    sent = harness.send(sender, {"action": "send", "room": "lobby", "data": "y"})
    assert sent["data"]["gone"] == 0
    assert len(harness.api.calls_on(stale)) == calls_before


def test_forbidden_does_not_prune(harness: AppHarness) -> None:
    sender, member = harness.connect(), harness.connect()
    harness.join(sender, "r")
    harness.join(member, "r")
    harness.api.script(member, 403)
    sent = harness.send(sender, {"action": "send", "room": "r", "data": 1})
    assert without_ids(sent["data"]) == {
        "room": "r", "delivered": 0, "gone": 0, "failed": 1, "queued": 0}
    assert len(harness.api.calls_on(member, "POST")) == 3  # join welcome+reply, then one 403
    assert member in harness.store.members("r")


@pytest.mark.parametrize("statuses", [(429,), (500,), (429, 500, 429)])
def test_throttling_and_server_errors_are_retried_then_succeed(
    harness: AppHarness, statuses: tuple[int, ...]
) -> None:
    sender, member = harness.connect(), harness.connect()
    harness.join(sender, "r")
    harness.join(member, "r")
    posts_before = len(harness.api.calls_on(member, "POST"))
    harness.api.script(member, *statuses)
    sent = harness.send(sender, {"action": "send", "room": "r", "data": "retry"})
    assert sent["data"]["delivered"] == 1
    assert harness.api.received(member)[-1]["data"]["data"] == "retry"
    assert len(harness.api.calls_on(member, "POST")) - posts_before == len(statuses) + 1


def test_retries_stop_at_the_bound(harness: AppHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELIVERY_MAX_ATTEMPTS", "3")
    sender, member = harness.connect(), harness.connect()
    harness.join(sender, "r")
    harness.join(member, "r")
    posts_before = len(harness.api.calls_on(member, "POST"))
    harness.api.script(member, *([500] * 10))
    sent = harness.send(sender, {"action": "send", "room": "r", "data": 1})
    assert without_ids(sent["data"]) == {
        "room": "r", "delivered": 0, "gone": 0, "failed": 1, "queued": 0}
    assert len(harness.api.calls_on(member, "POST")) - posts_before == 3
    assert member in harness.store.members("r")


def test_oversized_room_message_is_refused_before_any_call(harness: AppHarness) -> None:
    sender, member = harness.connect(), harness.connect()
    harness.join(sender, "r")
    harness.join(member, "r")
    calls_before = len(harness.api.calls)
    # The frame itself fits (under 128 KB) but the message to members would not.
    reply = harness.send(
        sender, {"action": "send", "room": "r", "data": "x" * (128 * 1024 - 60), "id": "big"}
    )
    assert reply["type"] == "error" and reply["data"]["code"] == "too_large"
    assert reply["id"] == "big"
    assert len(harness.api.calls) == calls_before + 1  # only the error reply to the sender
    assert harness.api.calls_on(member, "POST")[-1].status == 200
    assert harness.send(sender, {"action": "ping"})["type"] == "pong"


def test_frame_over_128kb_is_refused(harness: AppHarness) -> None:
    connection_id = harness.connect()
    reply = harness.send(connection_id, json.dumps({"action": "ping", "pad": "x" * 140_000}))
    assert reply["data"]["code"] == "too_large"
    assert harness.send(connection_id, {"action": "ping"})["type"] == "pong"


BAD_FRAMES: list[tuple[str | bytes, str, bool]] = [
    ("not json", "bad_json", False),
    ("", "bad_json", False),
    ("[1, 2]", "bad_json", False),
    ('"action"', "bad_json", False),
    ('{"action": NaN}', "bad_json", False),
    ("{}", "bad_request", False),
    ('{"action": 5}', "bad_request", False),
    ('{"action": "fly"}', "unknown_action", False),
    ('{"action": "join"}', "bad_request", False),
    ('{"action": "join", "room": ""}', "bad_request", False),
    ('{"action": "join", "room": "no spaces"}', "bad_request", False),
    ('{"action": "join", "room": 7}', "bad_request", False),
    ('{"action": "join", "room": "' + "r" * 65 + '"}', "bad_request", False),
    ('{"action": "leave"}', "bad_request", False),
    ('{"action": "send", "room": "lobby"}', "bad_request", False),
    ('{"action": "send", "room": "nowhere", "data": 1}', "not_member", False),
    ('{"action": "ping", "id": 7}', "bad_request", False),
    ('{"action": "ping", "id": "' + "i" * 65 + '"}', "bad_request", False),
    ('{"action": "send", "room": "lobby", "data": "\\ud800"}', "bad_request", False),
    ("[" * 100_000, "bad_json", False),
    ('{"action": "ping", "n": ' + "9" * 5000 + "}", "bad_json", False),
    (b"\xff\xfe not utf-8", "bad_json", True),
]


@pytest.mark.parametrize(("body", "code", "binary"), BAD_FRAMES)
def test_bad_input_gets_its_error_and_the_connection_stays_usable(
    harness: AppHarness, body: str | bytes, code: str, binary: bool
) -> None:
    connection_id = harness.connect()
    harness.join(connection_id, "lobby")
    reply = harness.send(connection_id, body, binary=binary)
    assert reply["type"] == "error", reply
    assert reply["data"]["code"] == code, reply
    assert isinstance(reply["data"]["message"], str) and reply["data"]["message"]
    assert "Traceback" not in reply["data"]["message"]
    assert harness.send(connection_id, {"action": "ping", "id": "next"}) == {
        "type": "pong", "data": {}, "id": "next"
    }
    assert harness.store.rooms_of(connection_id) == ["lobby"]


def test_error_reply_echoes_a_readable_id(harness: AppHarness) -> None:
    connection_id = harness.connect()
    reply = harness.send(connection_id, {"action": "fly", "id": "abc"})
    assert reply["id"] == "abc" and reply["data"]["code"] == "unknown_action"


def test_binary_frame_with_json_is_understood(harness: AppHarness) -> None:
    connection_id = harness.connect()
    reply = harness.send(connection_id, b'{"action":"ping","id":"b"}', binary=True)
    assert reply == {"type": "pong", "data": {}, "id": "b"}


# ---------------------------------------------------------------- lifecycle


def test_disconnect_removes_everything_and_is_idempotent(harness: AppHarness) -> None:
    a, b = harness.connect(), harness.connect()
    harness.join(a, "r1")
    harness.join(a, "r2")
    harness.join(b, "r1")
    assert harness.disconnect(a) == {"statusCode": 200}
    assert harness.disconnect(a) == {"statusCode": 200}
    assert harness.store.get(a) is None
    assert harness.store.rooms_of(a) == []
    assert harness.store.members("r1") == [b]
    assert harness.store.members("r2") == []


def test_message_from_an_unregistered_connection_heals_its_record(harness: AppHarness) -> None:
    connection_id = "HEAL_fALIAMCKug="
    harness.api.open(connection_id)
    harness.send(connection_id, {"action": "join", "room": "r"})
    assert harness.api.types(connection_id) == ["welcome", "joined"]
    assert harness.store.get(connection_id) is not None


def test_reply_to_a_client_that_left_prunes_it(harness: AppHarness) -> None:
    connection_id = harness.connect()
    harness.send(connection_id, {"action": "join", "room": "r"})
    harness.api.close(connection_id)
    harness.invoke("message", message_event(connection_id, {"action": "ping"}))
    assert harness.store.get(connection_id) is None
    assert harness.store.members("r") == []


def test_sweep_prunes_only_connections_reported_gone(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_IDLE_SECONDS", "0")
    alive, stale = harness.connect(), harness.connect()
    harness.join(stale, "r")
    harness.api.close(stale)
    report = harness.invoke("sweep", {"detail-type": "Scheduled Event", "source": "aws.events",
                                      "time": "2024-11-11T13:45:46Z", "detail": {},
                                      "resources": [], "id": "1", "region": "us-east-1",
                                      "account": "123456789012", "version": "0"})
    assert report == {"checked": 2, "pruned": 1, "unknown": 0, "expired": 0}
    assert harness.store.get(alive) is not None
    assert harness.store.get(stale) is None
    assert harness.store.members("r") == []
    assert harness.api.types(alive) == []  # the sweep only verifies, it never posts


def test_store_failure_becomes_an_internal_error_frame(
    aws_env: None, management_api: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from chalice.test import Client

    from app import app
    from chalicelib.store.dynamodb import table_definition
    from tests.conftest import ROOT

    with mock_aws():
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb.create_table(**table_definition("conns"))
        monkeypatch.setenv("CONNECTIONS_STORE", "dynamodb://conns")
        monkeypatch.setenv("WS_MANAGEMENT_ENDPOINT", management_api.endpoint)
        with Client(app, stage_name="test", project_dir=str(ROOT)) as client:
            h = AppHarness(client, management_api)
            connection_id = h.connect()
            assert h.send(connection_id, {"action": "ping"})["type"] == "pong"
            dynamodb.delete_table(TableName="conns")
            reply = h.send(connection_id, {"action": "whoami", "id": "w"})
    assert reply["type"] == "error" and reply["id"] == "w"
    assert reply["data"]["code"] == "internal"
    assert "Traceback" not in reply["data"]["message"]


# ---------------------------------------------------------------- server push


def test_server_push_reaches_every_member(harness: AppHarness) -> None:
    a, b, stale = harness.connect(), harness.connect(), harness.connect()
    for cid in (a, b, stale):
        harness.join(cid, "news")
    harness.api.close(stale)
    response = harness.client.http.post(
        "/rooms/news/messages",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"data": {"headline": "up"}}),
    )
    assert response.status_code == 200
    pushed = json.loads(response.body)
    assert without_ids(pushed) == {"delivered": 2, "gone": 1, "failed": 0, "queued": 0}
    for cid in (a, b):
        frame = harness.last(cid, "message")
        assert without_ids(frame["data"]) == {
            "room": "news", "from": "server", "data": {"headline": "up"}}
        assert frame["data"]["seq"] == pushed["seq"] == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/rooms/news/messages", json.dumps({"nodata": 1})),
        ("/rooms/news/messages", "[1]"),
        ("/rooms/bad%20room/messages", json.dumps({"data": 1})),
        ("/rooms/news/messages", json.dumps({"data": "x" * 140_000})),
    ],
)
def test_server_push_rejects_bad_requests(harness: AppHarness, path: str, body: str) -> None:
    response = harness.client.http.post(
        path, headers={"Content-Type": "application/json"}, body=body
    )
    assert response.status_code == 400
    assert harness.api.calls == []


@pytest.mark.parametrize("key", ["apiId", "stage", "domainName", "connectionId"])
@pytest.mark.parametrize("function", ["connect", "message", "disconnect"])
def test_event_with_an_empty_context_key_is_refused_and_registers_nothing(
    harness: AppHarness, key: str, function: str
) -> None:
    from tests.support.events import connect_event

    event = connect_event("EMPTY_fALIAMCKug=")
    event["requestContext"][key] = ""
    assert harness.invoke(function, event) == {"statusCode": 400}
    assert harness.store.get("EMPTY_fALIAMCKug=") is None
    assert harness.api.calls == []
