"""Unit tests: event builders and the transport-free core (no sockets, no subprocesses)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
from chalice import Chalice, Rate

from localgateway.core import (
    CONNECT_FAILED,
    Chaos,
    CloseConnection,
    CloseDecision,
    ConnectionRegistry,
    Limits,
    ManagementApi,
    SendFrame,
    client_close_decision,
    connect_decision,
    connect_headers,
    connect_status,
)
from localgateway.events import (
    ApiInfo,
    ConnectionFacts,
    EventFactory,
    RandomIdSource,
    format_iso8601,
    format_request_time,
    scheduled_event,
    sqs_event,
    sqs_record,
)
from localgateway.invoker import InProcessInvoker, InvocationError, UnknownFunctionError
from localgateway.project import (
    EnvFileError,
    Functions,
    compute_environment,
    is_project_module,
    parse_env_file,
    queue_name_of,
)

AWS_EVENTS = Path(__file__).resolve().parents[1] / "data" / "aws-events"
REAL_ID = re.compile(r"^[A-Za-z0-9_-]{15}=$")


class FakeClock:
    def __init__(self, now: float = 1731332746.514) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


class SequenceRandom:
    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def aws_event(name: str) -> dict[str, Any]:
    path = AWS_EVENTS / f"{name}.json"
    return dict(json.loads(path.read_text()))


def shape(value: Any) -> Any:
    """Key structure and leaf types of a JSON value."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


@pytest.fixture
def factory() -> EventFactory:
    return EventFactory(ApiInfo("localgw001", "api", "127.0.0.1:8001"), FakeClock(),
                        RandomIdSource())


@pytest.fixture
def facts() -> ConnectionFacts:
    return ConnectionFacts("BFaT_fALIAMCKug=", 1731332735513, "127.0.0.1")


def test_connect_event_matches_real_event(factory: EventFactory, facts: ConnectionFacts) -> None:
    real = aws_event("connect")
    headers = [(k, v) for k, v in real["headers"].items()]
    event = factory.connect(facts, headers)
    assert shape(event) == shape(real)
    assert event["requestContext"]["routeKey"] == "$connect"
    assert event["requestContext"]["eventType"] == "CONNECT"
    assert event["headers"] == real["headers"]
    assert event["multiValueHeaders"] == real["multiValueHeaders"]


def test_connect_event_carries_query_string(factory: EventFactory,
                                            facts: ConnectionFacts) -> None:
    event = factory.connect(facts, [("Host", "h")], [("room", "a"), ("tag", "x"), ("tag", "y")])
    assert event["queryStringParameters"] == {"room": "a", "tag": "y"}
    assert event["multiValueQueryStringParameters"] == {"room": ["a"], "tag": ["x", "y"]}


def test_message_event_matches_real_event(factory: EventFactory, facts: ConnectionFacts) -> None:
    real = aws_event("message")
    event = factory.message(facts, "hello")
    assert shape(event) == shape(real)
    ctx = event["requestContext"]
    assert ctx["routeKey"] == "$default"
    assert ctx["eventType"] == "MESSAGE"
    assert ctx["connectedAt"] == facts.connected_at_ms
    assert ctx["requestTimeEpoch"] == 1731332746514
    assert ctx["requestTime"] == "11/Nov/2024:13:45:46 +0000"
    assert ctx["messageId"] != ctx["requestId"]
    assert event["body"] == "hello" and event["isBase64Encoded"] is False


def test_binary_message_is_base64(factory: EventFactory, facts: ConnectionFacts) -> None:
    event = factory.message(facts, b"\x00\xffbin")
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"\x00\xffbin"


def test_disconnect_event_matches_real_event(factory: EventFactory,
                                             facts: ConnectionFacts) -> None:
    real = aws_event("disconnect")
    event = factory.disconnect(facts, 1005, "Client-side close frame status not set")
    assert shape(event) == shape(real)
    assert event["requestContext"]["disconnectStatusCode"] == 1005
    assert event["requestContext"]["eventType"] == "DISCONNECT"


def test_ids_look_like_aws_and_are_unique() -> None:
    ids = RandomIdSource()
    made = {ids.new_id() for _ in range(2000)}
    assert len(made) == 2000
    assert all(REAL_ID.match(i) for i in made)
    for name in ("connect", "disconnect", "message"):
        real = aws_event(name)["requestContext"]
        assert REAL_ID.match(real["connectionId"])


def test_time_formats() -> None:
    assert format_request_time(1731332746514) == "11/Nov/2024:13:45:46 +0000"
    assert format_iso8601(1731332746514) == "2024-11-11T13:45:46.514Z"
    assert format_iso8601(1731332746000) == "2024-11-11T13:45:46.000Z"


def test_sqs_record_shape() -> None:
    message = {"MessageId": "m-1", "ReceiptHandle": "rh", "Body": "{}", "MD5OfBody": "x",
               "Attributes": {"SentTimestamp": "1", "ApproximateReceiveCount": "1"},
               "MessageAttributes": {"k": {"StringValue": "v", "DataType": "String"}}}
    record = sqs_record(message, "echo-followup")
    assert set(record) == {"messageId", "receiptHandle", "body", "attributes",
                           "messageAttributes", "md5OfBody", "eventSource", "eventSourceARN",
                           "awsRegion"}
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:echo-followup"
    assert record["messageAttributes"]["k"]["stringValue"] == "v"
    assert sqs_event([record]) == {"Records": [record]}


def test_scheduled_event_shape() -> None:
    event = scheduled_event("tick", FakeClock(), RandomIdSource())
    assert event["detail-type"] == "Scheduled Event"
    assert event["source"] == "aws.events"
    assert event["time"] == "2024-11-11T13:45:46Z"
    assert event["resources"] == ["arn:aws:events:us-east-1:123456789012:rule/tick"]


# ----- core -------------------------------------------------------------------------------------


def make_api(chaos: Chaos | None = None, clock: FakeClock | None = None
             ) -> tuple[ManagementApi, ConnectionRegistry]:
    registry = ConnectionRegistry()
    api = ManagementApi(registry, Limits(), chaos or Chaos(), clock or FakeClock())
    return api, registry


def test_connecting_connection_is_gone(facts: ConnectionFacts) -> None:
    api, registry = make_api()
    registry.add(facts, "ua")
    for method in ("POST", "GET", "DELETE"):
        response = api.handle(method, facts.connection_id, b"x")
        assert response.status == 410
        assert response.headers["x-amzn-ErrorType"] == "GoneException"
        assert "message" in json.loads(response.body)
        assert response.action is None


def test_open_connection_actions(facts: ConnectionFacts) -> None:
    api, registry = make_api()
    registry.add(facts, "ua")
    registry.mark_open(facts.connection_id)
    post = api.handle("POST", facts.connection_id, b"hi")
    assert post.status == 200 and post.action == SendFrame(facts.connection_id, b"hi")
    get = api.handle("GET", facts.connection_id)
    assert get.status == 200
    info = json.loads(get.body)
    assert info == {"connectedAt": "2024-11-11T13:45:35.513Z",
                    "identity": {"sourceIp": "127.0.0.1", "userAgent": "ua"},
                    "lastActiveAt": "2024-11-11T13:45:35.513Z"}
    delete = api.handle("DELETE", facts.connection_id)
    assert delete.status == 204 and isinstance(delete.action, CloseConnection)


def test_closed_and_unknown_connections_are_gone(facts: ConnectionFacts) -> None:
    api, registry = make_api()
    registry.add(facts, "ua")
    registry.mark_open(facts.connection_id)
    assert registry.mark_closed(facts.connection_id) is True
    assert registry.mark_closed(facts.connection_id) is False
    assert api.handle("POST", facts.connection_id, b"x").status == 410
    assert api.handle("GET", "nope").status == 410


def test_post_over_128_kb_is_413(facts: ConnectionFacts) -> None:
    api, registry = make_api()
    registry.add(facts, "ua")
    registry.mark_open(facts.connection_id)
    assert api.handle("POST", facts.connection_id, b"x" * 131072).status == 200
    too_big = api.handle("POST", facts.connection_id, b"x" * 131073)
    assert too_big.status == 413 and too_big.error_type == "PayloadTooLargeException"


def test_throttling_uses_injected_random(facts: ConnectionFacts) -> None:
    api, registry = make_api(Chaos(throttle_rate=0.5, rng=SequenceRandom(0.1, 0.9)))
    registry.add(facts, "ua")
    registry.mark_open(facts.connection_id)
    first = api.handle("GET", facts.connection_id)
    assert first.status == 429 and first.error_type == "LimitExceededException"
    assert api.handle("GET", facts.connection_id).status == 200


def test_chaos_drop_disconnect_and_validation() -> None:
    chaos = Chaos(drop_disconnect_rate=0.25, rng=SequenceRandom(0.2, 0.3))
    assert chaos.should_drop_disconnect() is True
    assert chaos.should_drop_disconnect() is False
    assert Chaos(drop_disconnect_rate=1.0).should_drop_disconnect() is True
    assert Chaos().should_throttle() is False
    with pytest.raises(ValueError):
        Chaos(throttle_rate=1.5)


def test_limits_incoming_sizes() -> None:
    limits = Limits()
    assert limits.check_incoming(32768) is None
    frame = limits.check_incoming(32769)
    assert frame is not None and frame.code == 1009
    assert limits.check_incoming(100_000, fragmented=True) is None
    message = limits.check_incoming(131073, fragmented=True)
    assert message is not None and message.code == 1009


def test_limits_timeouts(facts: ConnectionFacts) -> None:
    registry = ConnectionRegistry()
    conn = registry.add(facts, "ua")
    limits = Limits(idle_timeout=10, hard_timeout=100)
    start = facts.connected_at_ms / 1000
    assert limits.check_timeouts(conn, start + 5) is None
    idle = limits.check_timeouts(conn, start + 10)
    assert idle is not None and idle.code == 1001
    registry.touch(facts.connection_id, int((start + 95) * 1000))
    assert limits.check_timeouts(conn, start + 99) is None
    hard = limits.check_timeouts(conn, start + 100)
    assert hard is not None and hard.code == 1001
    assert limits.next_deadline(conn) == start + 100


def test_connect_decision_maps_responses_like_api_gateway() -> None:
    assert connect_decision(None).accept and connect_decision({"statusCode": 204}).accept
    refused = connect_decision({"statusCode": 403, "body": "no", "headers": {"X-A": 1}})
    assert (refused.accept, refused.status, refused.body) == (False, 403, "no")
    assert refused.headers == {"X-A": "1"}
    assert connect_decision({"statusCode": "oops"}).status == 502
    assert (CONNECT_FAILED.accept, CONNECT_FAILED.status) == (False, 502)
    assert json.loads(CONNECT_FAILED.body or "") == {"message": "Internal server error"}


def test_client_close_and_connect_headers() -> None:
    assert client_close_decision(None, "") == CloseDecision(
        1005, "Client-side close frame status not set")
    assert client_close_decision(4000, "bye") == CloseDecision(4000, "bye")
    headers = connect_headers([("Host", "h"), ("x-forwarded-for", "1.2.3.4")], "127.0.0.1",
                              8001, "http")
    assert headers == [("Host", "h"), ("x-forwarded-for", "1.2.3.4"),
                       ("X-Forwarded-Port", "8001"), ("X-Forwarded-Proto", "http")]


def test_registry_holds_the_transport_handle(facts: ConnectionFacts) -> None:
    registry: ConnectionRegistry[str] = ConnectionRegistry()
    registry.add(facts, "ua")
    assert registry.handle(facts.connection_id) is None  # CONNECTING: nothing attached yet
    registry.mark_open(facts.connection_id, "session")
    assert registry.handle(facts.connection_id) == "session"
    assert registry.handles() == ["session"]
    registry.remove(facts.connection_id)
    assert registry.handle(facts.connection_id) is None and registry.handles() == []


def test_connect_status() -> None:
    assert connect_status({"statusCode": 401}) == 401
    assert connect_status({}) == 200
    assert connect_status(None) == 200
    assert connect_status({"statusCode": "oops"}) == 502


# ----- project / invoker ------------------------------------------------------------------------


def test_compute_environment_precedence() -> None:
    stage = {"A_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/welcome",
             "B_QUEUE_URL": "welcome", "C_QUEUE_URL": "other", "D": "welcome",
             "STORE": "dynamodb://table", "LEVEL": "INFO", "FILE_ONLY": "stage"}
    local = {"welcome": "http://127.0.0.1:5/123456789012/welcome"}
    provided = {"WS_MANAGEMENT_ENDPOINT": "http://127.0.0.1:8001/api"}
    env_file = {"STORE": "sqlite:///x.db", "FILE_ONLY": "file"}
    env = compute_environment(stage, {"LEVEL": "DEBUG", "UNRELATED": "u"}, provided, env_file,
                              local)
    assert env["A_QUEUE_URL"] == env["B_QUEUE_URL"] == local["welcome"]
    assert env["C_QUEUE_URL"] == "other" and env["D"] == "welcome"
    assert env["STORE"] == "sqlite:///x.db" and env["FILE_ONLY"] == "file"  # file > stage
    assert env["LEVEL"] == "DEBUG"  # the gateway's own environment > files
    assert "UNRELATED" not in env  # inherited, not set on top
    assert env["WS_MANAGEMENT_ENDPOINT"] == "http://127.0.0.1:8001/api"
    # What the gateway provides always wins.
    env = compute_environment({"WS_MANAGEMENT_ENDPOINT": "x"}, {"WS_MANAGEMENT_ENDPOINT": "y"},
                              provided)
    assert env["WS_MANAGEMENT_ENDPOINT"] == "http://127.0.0.1:8001/api"
    assert queue_name_of("https://sqs.x/1/q.fifo") == "q.fifo"


def test_env_file_syntax() -> None:
    text = "# comment\n\nA=1\nexport B = two words \nC=\"quoted = x\"\nD='s'\nE=\n"
    assert parse_env_file(text) == {"A": "1", "B": "two words", "C": "quoted = x", "D": "s",
                                    "E": ""}
    for bad in ("no-equals", "1A=x", "A-B=x", "=x"):
        with pytest.raises(EnvFileError, match=":1: expected NAME=VALUE"):
            parse_env_file(bad, "f.env")


def make_app() -> Chalice:
    app = Chalice(app_name="unit")
    app.experimental_feature_flags.update(["WEBSOCKETS"])

    @app.on_ws_connect()
    def connect(event: Any) -> dict[str, Any]:
        return {"statusCode": 200}

    @app.on_ws_message()
    def message(event: Any) -> None:
        if event.body == "boom":
            raise RuntimeError("boom")

    @app.on_sqs_message(queue="jobs", batch_size=5)
    def jobs(event: Any) -> None:
        return None

    @app.schedule(Rate(1, unit=Rate.HOURS))
    def tick(event: Any) -> dict[str, Any]:
        return {"ticked": event.to_dict()["detail-type"]}

    return app


def test_functions_of_app() -> None:
    functions = Functions.of(make_app())
    assert functions.connect == "connect" and functions.message == "message"
    assert functions.disconnect is None
    assert functions.sqs == {"jobs": ["jobs"]} and functions.sqs_batch_size == {"jobs": 5}
    assert functions.schedules == ["tick"]


def test_in_process_invoker(factory: EventFactory, facts: ConnectionFacts,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    app = make_app()
    invoker = InProcessInvoker(lambda: app)
    assert invoker.invoke("connect", factory.connect(facts, []))["statusCode"] == 200
    assert invoker.invoke("message", factory.message(facts, "ok")) == {"statusCode": 200}
    with pytest.raises(InvocationError) as info:
        invoker.invoke("message", factory.message(facts, "boom"))
    assert "RuntimeError: boom" in info.value.details
    event = scheduled_event("tick", FakeClock(), RandomIdSource())
    assert invoker.invoke("tick", event) == {"ticked": "Scheduled Event"}
    with pytest.raises(UnknownFunctionError):
        invoker.invoke("nope", {})


def test_reload_purges_only_project_modules(tmp_path: Path) -> None:
    import chalice

    import localgateway.project

    project = str(tmp_path)
    assert is_project_module(str(tmp_path / "app.py"), project)
    assert is_project_module(str(tmp_path / "chalicelib" / "x.py"), project)
    assert not is_project_module(str(tmp_path / ".venv" / "lib" / "site-packages" / "b.py"),
                                 project)
    assert not is_project_module("/elsewhere/app.py", project)
    repo = str(Path(localgateway.project.__file__).resolve().parents[1])
    assert not is_project_module(str(Path(localgateway.project.__file__).resolve()), repo)
    assert not is_project_module(str(Path(chalice.__file__).resolve()), str(Path("/")))


def test_reload_lock_never_runs_a_reload_beside_a_handler() -> None:
    import threading

    from localgateway.invoker import ReloadLock
    from localgateway.testing import wait_until

    lock = ReloadLock()
    order: list[str] = []
    handler_inside = threading.Event()
    release_handler = threading.Event()

    def handler() -> None:
        with lock.reading():
            order.append("handler start")
            handler_inside.set()
            release_handler.wait(10)
            order.append("handler end")

    def reload() -> None:
        with lock.writing():
            order.append("reload")

    first = threading.Thread(target=handler)
    first.start()
    assert handler_inside.wait(10)
    writer = threading.Thread(target=reload)
    writer.start()
    wait_until(lambda: lock.writers_waiting == 1, 10, "the reload to wait")

    def late_handler() -> None:
        with lock.reading():
            order.append("late")

    # A handler arriving while the reload waits queues behind it (writers first).
    late = threading.Thread(target=late_handler)
    late.start()
    release_handler.set()
    for thread in (first, writer, late):
        thread.join(10)
    assert order == ["handler start", "handler end", "reload", "late"]
