"""Issue 14: JSON logs with correlation keys, EMF metrics, redaction on the JSON output.

Everything goes through the real handlers (AppHarness: chalice.test.Client, the app's middleware,
FakeManagementApi over HTTP) and reads what the process printed, as CloudWatch Logs would.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from chalicelib import metrics
from chalicelib.delivery import Deliverer, RetryPolicy
from chalicelib.errors import ConfigError
from chalicelib.metrics import Tally
from chalicelib.observability import Config, scrub
from chalicelib.runtime import management_client
from chalicelib.settings import Settings
from tests.conftest import AppHarness
from tests.support.events import message_event, new_connection_id, sqs_event

#: Shaped like a signed JWT (header.payload.signature, base64url).
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.c2lnbmF0dXJlLWJ5dGVzLW9m"
SCHEMA = json.loads((Path(__file__).parent / "data" / "emf.schema.json").read_text())


class Printed:
    """What the process printed to stdout during one step, split into EMF documents and logs."""

    def __init__(self, text: str) -> None:
        self.lines = [line for line in text.splitlines() if line.strip()]
        self.objects = [json.loads(line) for line in self.lines]  # every line is JSON
        self.emf = [o for o in self.objects if "_aws" in o]
        self.logs = [o for o in self.objects if "_aws" not in o]

    def only_emf(self) -> dict[str, Any]:
        assert len(self.emf) == 1, self.emf  # one document per invocation
        return self.emf[0]


def printed(capsys: pytest.CaptureFixture[str]) -> Printed:
    return Printed(capsys.readouterr().out)


def counts(document: dict[str, Any]) -> dict[str, float]:
    """Metric name -> the sum of its values in one EMF document."""
    [directive] = document["_aws"]["CloudWatchMetrics"]
    return {m["Name"]: sum(document[m["Name"]]) for m in directive["Metrics"]}


def assert_valid_emf(document: dict[str, Any]) -> None:
    jsonschema.validate(document, SCHEMA)
    for directive in document["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:  # target members: dimension values are strings
                assert isinstance(document[key], str) and 1 <= len(document[key]) <= 1024, key
        for metric in directive["Metrics"]:
            value = document[metric["Name"]]  # target member: a number or up to 100 numbers
            values = value if isinstance(value, list) else [value]
            assert 1 <= len(values) <= 100, metric
            assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def room_of_three(harness: AppHarness, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """Sender A and members B (closed: 410) and C (its next call answers 403), presence off."""
    monkeypatch.setenv("PRESENCE", "off")
    a, b, c = harness.connect(), harness.connect(), harness.connect()
    for cid in (a, b, c):
        harness.join(cid, "ops")
    harness.api.close(b)
    harness.api.script(c, 403)
    return a, b, c


def schedule_event(event_id: str = "1") -> dict[str, Any]:
    return {"id": event_id, "detail-type": "Scheduled Event", "source": "aws.events",
            "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
            "version": "0", "detail": {},
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/sweep"]}


# ------------------------------------------------------------------------------- metrics


def test_a_send_with_a_gone_and_a_forbidden_recipient_counts_each_outcome(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("METRICS_NAMESPACE", "WsRoomsTest")
    monkeypatch.setenv("STAGE", "ci")
    a, b, c = room_of_three(harness, monkeypatch)
    capsys.readouterr()
    reply = harness.send(a, {"action": "send", "room": "ops", "data": "hi", "id": "1"})
    assert reply["data"]["delivered"] == 0 and reply["data"]["gone"] == 1
    out = printed(capsys)
    document = out.only_emf()
    assert_valid_emf(document)
    assert counts(document) == {
        "MessagesIn": 1,
        "Deliveries": 1,  # the "sent" reply to the sender
        "Gone": 1,
        "Forbidden": 1,
        "FanOutMs": document["FanOutMs"][0],
    }
    assert len(document["FanOutMs"]) == 1 and document["FanOutMs"][0] >= 0
    [directive] = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "WsRoomsTest"
    # service and stage only: never a room or a connection id.
    assert [sorted(d) for d in directive["Dimensions"]] == [["service", "stage"]]
    assert (document["service"], document["stage"]) == ("ws-rooms", "ci")
    units = {m["Name"]: m["Unit"] for m in directive["Metrics"]}
    assert units["FanOutMs"] == "Milliseconds" and units["Gone"] == "Count"
    assert a not in json.dumps(document) and "ops" not in json.dumps(directive)
    # The refusal is a WARNING naming the target and the outcome; the 410 is not a warning.
    [warning] = [line for line in out.logs if line["level"] == "WARNING"]
    assert warning["target_connection_id"] == c and warning["outcome"] == "forbidden"
    assert "403" in warning["message"] and b not in json.dumps(warning)


def test_every_metric_name_is_known_and_unique() -> None:
    assert len(set(metrics.NAMES)) == len(metrics.NAMES) == 12
    assert set(metrics.NAMES) == {
        "MessagesIn", "Deliveries", "Gone", "Forbidden", "Throttled", "DeliveryFailures",
        "RateLimited", "AuthRefused", "WelcomesFirstMessage", "WelcomesFollowUp", "FanOutMs",
        "FanOutQueued"}
    with pytest.raises(ValueError, match="unknown counter"):
        Tally().count("Delivery")


def test_first_message_welcome_and_follow_up_welcome_are_counted(
    harness: AppHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    first = harness.connect()
    capsys.readouterr()
    harness.send(first, {"action": "ping"})
    assert counts(printed(capsys).only_emf()) == {
        "MessagesIn": 1, "WelcomesFirstMessage": 1, "Deliveries": 2}
    second = harness.connect()
    capsys.readouterr()
    body = json.dumps({"connectionId": second, "endpoint": harness.api.endpoint})
    harness.invoke("welcome_follow_up", sqs_event(body))
    assert counts(printed(capsys).only_emf()) == {"WelcomesFollowUp": 1, "Deliveries": 1}


def test_throttling_is_counted_per_429_before_retries_and_the_give_up_once(
    harness: AppHarness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DELIVERY_MAX_ATTEMPTS", "3")
    cid = harness.connect()
    harness.send(cid, {"action": "ping"})
    harness.api.script(cid, 429, 429, 429)
    capsys.readouterr()
    harness.invoke("message", message_event(cid, {"action": "ping"}))
    out = printed(capsys)
    assert counts(out.only_emf()) == {"MessagesIn": 1, "Throttled": 3, "DeliveryFailures": 1}
    [warning] = [line for line in out.logs if line["level"] == "WARNING"]
    assert warning["target_connection_id"] == cid and warning["outcome"] == "failed"
    assert warning["attempts"] == 3 and "still failing after 3 attempts" in warning["message"]


def test_rate_limited_and_auth_refused_are_counted(
    harness: AppHarness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WS_RATE_LIMIT", "1")
    cid = harness.connect()
    harness.send(cid, {"action": "ping"})
    capsys.readouterr()
    harness.send(cid, {"action": "ping"})
    assert counts(printed(capsys).only_emf())["RateLimited"] == 1
    monkeypatch.setenv("WS_AUTH_SECRET", "s" * 40)
    from tests.support.events import connect_event

    response = harness.invoke("connect", connect_event(new_connection_id(),
                                                       query={"token": "not-a-jwt"}))
    assert response["statusCode"] == 401 or response["statusCode"] == 403
    assert counts(printed(capsys).only_emf()) == {"AuthRefused": 1}


def test_an_invocation_that_records_nothing_prints_no_document(
    harness: AppHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    cid = harness.connect()
    out = printed(capsys)
    assert out.emf == []  # $connect posts nothing and counts nothing
    harness.disconnect(cid)
    assert printed(capsys).emf == []


def test_deliverer_counts_on_an_injected_recorder(harness: AppHarness) -> None:
    """The decision code only knows the Recorder protocol: a Tally here, no Powertools."""
    tally = Tally()
    settings = Settings.from_env({"CONNECTIONS_STORE": "memory://"})
    deliverer = Deliverer(management_client(harness.api.endpoint, settings),
                          retry=RetryPolicy(max_attempts=2), sleep=lambda _s: None,
                          recorder=tally)
    ok, gone = "b2s=", "Z29uZQ=="
    harness.api.open(ok)
    harness.api.script(ok, 429)
    deliverer.post(ok, b"{}")
    deliverer.post(gone, b"{}")
    deliverer.verify(gone)
    assert tally.counts() == {"Throttled": 1, "Deliveries": 1, "Gone": 2}


# ---------------------------------------------------------------------------------- logs


def test_log_lines_are_json_and_carry_the_websocket_correlation_keys(
    harness: AppHarness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    cid = new_connection_id()
    harness.api.open(cid)
    # The container's first invocation (a frame from a connection whose record was lost).
    harness.invoke("message", message_event(cid, {"action": "ping"}))
    first = printed(capsys).logs
    assert first and all(line["cold_start"] is True for line in first)
    event = message_event(cid, {"action": "ping"})
    harness.invoke("message", event)
    lines = printed(capsys).logs
    assert lines
    for line in lines:
        assert line["connection_id"] == cid and line["route"] == "$default"
        assert line["request_id"] == event["requestContext"]["requestId"]
        assert line["service"] == "ws-rooms" and line["function_name"] == "message"
        assert line["cold_start"] is False and isinstance(line["function_request_id"], str)
    # DEBUG holds the per-message detail, from the library's loggers too.
    assert any(line["message"].startswith("frame from") for line in lines)
    assert any(line["message"].startswith("post to") for line in lines)


def test_sqs_and_schedule_invocations_carry_their_own_keys(
    harness: AppHarness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.connect()
    capsys.readouterr()
    event = sqs_event("not json", json.dumps({"connectionId": "x"}))
    harness.invoke("welcome_follow_up", event)
    logs = printed(capsys).logs
    ids = [record["messageId"] for record in event["Records"]]
    assert [line["message_id"] for line in logs] == ids  # one "dropping" line per record
    assert all(line["message_ids"] == ids and line["queue"] == "ws-rooms-welcome"
               for line in logs)
    harness.invoke("sweep", schedule_event("53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa"))
    [sweep_line] = printed(capsys).logs
    assert sweep_line["event_id"] == "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa"
    assert sweep_line["rule"] == "sweep" and sweep_line["message"].startswith("sweep:")


def test_no_per_message_info_line_by_default(
    harness: AppHarness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = harness.connect(), harness.connect(), harness.connect()
    for cid in (a, b, c):
        harness.join(cid, "ops")
    capsys.readouterr()
    for n in range(3):
        harness.send(a, {"action": "send", "room": "ops", "data": n})
    out = printed(capsys)
    assert out.logs == [] and len(out.emf) == 3


def test_log_level_warning_silences_info(
    harness: AppHarness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = harness.connect()
    harness.invoke("sweep", schedule_event())
    assert [line["level"] for line in printed(capsys).logs] == ["INFO"]
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    harness.invoke("sweep", schedule_event())
    assert printed(capsys).logs == []
    assert cid


def test_debug_sampling_turns_an_invocation_to_debug(
    harness: AppHarness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_LOGGER_SAMPLE_RATE", "1")  # every invocation sampled
    cid = harness.connect()
    capsys.readouterr()
    harness.send(cid, {"action": "ping"})
    debug = [line for line in printed(capsys).logs if line["level"] == "DEBUG"]
    assert any(line["message"].startswith("frame from") for line in debug)


def test_tokens_are_redacted_on_the_json_output(
    harness: AppHarness, capsys: pytest.CaptureFixture[str]
) -> None:
    from app import app

    harness.connect()  # installs the JSON logging, as the first invocation does in Lambda
    capsys.readouterr()
    token = TOKEN
    app.log.warning("connect event: %s", {"queryStringParameters": {"token": token}})
    library = logging.getLogger("chalicelib.anything")
    try:
        raise ValueError(f"bad token {token} in wss://x/api?token={token}")
    except ValueError:
        library.exception("failed", extra={"token": token, "url": f"/api?token={token}",
                                           "authorization": f"Bearer {token}", "count": 3})
    out = printed(capsys)
    assert len(out.logs) == 2  # valid JSON, one object per line
    text = "\n".join(out.lines)
    assert token not in text and token.split(".")[2] not in text
    failed = out.logs[1]
    assert failed["exception_name"] == "ValueError" and "Traceback" in failed["exception"]
    assert failed["token"] == "[REDACTED]" and failed["count"] == 3
    assert failed["url"] == "/api?token=[REDACTED]"


def test_scrub_keeps_structure_and_numbers() -> None:
    assert scrub({"a": [1, "x?token=abc"], "password": "p", "n": None, "ok": True}) == {
        "a": [1, "x?token=[REDACTED]"], "password": "[REDACTED]", "n": None, "ok": True}


def test_configuration_is_validated() -> None:
    assert Config.from_env({}) == Config(namespace="WsRooms", stage="local", level="INFO")
    for env, name in (({"METRICS_NAMESPACE": "a:b"}, "METRICS_NAMESPACE"),
                      ({"STAGE": "pr od"}, "STAGE"), ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL")):
        with pytest.raises(ConfigError, match=name):
            Config.from_env(env)


def test_a_large_room_counts_queued_recipients_then_the_workers_deliveries(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import boto3
    from moto import mock_aws

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="ws-rooms-fanout")["QueueUrl"]
        monkeypatch.setenv("FANOUT_QUEUE_URL", url)
        monkeypatch.setenv("FANOUT_INLINE_MAX", "3")
        monkeypatch.setenv("PRESENCE", "off")
        sender, *others = [harness.connect() for _ in range(6)]
        for cid in (sender, *others):
            harness.join(cid, "big")
        capsys.readouterr()
        reply = harness.send(sender, {"action": "send", "room": "big", "data": 1})
        assert reply["data"]["queued"] == 5
        sent = counts(printed(capsys).only_emf())
        assert sent["FanOutQueued"] == 5 and sent["MessagesIn"] == 1
        bodies = [m["Body"] for m in sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
        harness.invoke("fan_out_worker", sqs_event(*bodies, queue="ws-rooms-fanout"))
        document = printed(capsys).only_emf()  # one document for the whole batch of records
        assert_valid_emf(document)
        assert counts(document) == {"Deliveries": 5}
