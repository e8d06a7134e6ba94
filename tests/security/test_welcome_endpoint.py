"""The welcome follow-up does not trust its message (issue 15, item 6).

Before: the SQS handler posted (SigV4-signed GetConnection and PostToConnection) to whatever
endpoint the message body named, even with ``WS_MANAGEMENT_ENDPOINT`` set.  Now the configured
endpoint wins, and without one only an execute-api endpoint of this region is accepted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from chalicelib.errors import BadEventError
from chalicelib.events import execute_api_endpoint
from chalicelib.welcome import FollowUp
from tests.conftest import AppHarness
from tests.support.events import sqs_event
from tests.support.management_api import FakeManagementApi

API = "https://abc123defg.execute-api.eu-west-1.amazonaws.com/api"


@pytest.fixture
def attacker() -> Iterator[FakeManagementApi]:
    """Another management API on 127.0.0.1: where a forged message would send signed calls."""
    api = FakeManagementApi().start()
    yield api
    api.stop()


def follow_up(harness: AppHarness, connection_id: str, endpoint: str) -> None:
    body = json.dumps({"connectionId": connection_id, "endpoint": endpoint})
    harness.invoke("welcome_follow_up", sqs_event(body))


def test_configured_endpoint_wins_over_the_message(
    harness: AppHarness, attacker: FakeManagementApi
) -> None:
    connection_id = harness.connect()
    attacker.open(connection_id)
    follow_up(harness, connection_id, attacker.endpoint)
    assert attacker.calls == []  # nothing signed went to the endpoint the message named
    assert harness.api.types(connection_id) == ["welcome"]


def test_without_configuration_a_foreign_endpoint_is_dropped(
    harness: AppHarness, attacker: FakeManagementApi, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    connection_id = harness.connect()
    attacker.open(connection_id)
    monkeypatch.delenv("WS_MANAGEMENT_ENDPOINT")
    from app import app

    app.log.addHandler(caplog.handler)
    try:
        # Dropped (logged, not raised: SQS must not redeliver it forever).
        follow_up(harness, connection_id, attacker.endpoint + "\nINFO forged")
        follow_up(harness, connection_id, attacker.endpoint)
    finally:
        app.log.removeHandler(caplog.handler)
    assert attacker.calls == [] and harness.api.calls == []
    assert caplog.text.count("dropping malformed message") == 2
    assert "\nINFO forged" not in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        API,
        API + "/",
        "https://a1b2c3d4e5.execute-api.us-east-1.amazonaws.com/prod_v2",
        "https://a1b2c3d4e5.execute-api.us-gov-west-1.amazonaws.com/api",
        "https://a1b2c3d4e5.execute-api.cn-north-1.amazonaws.com.cn/api",
    ],
)
def test_execute_api_shapes_are_accepted(url: str) -> None:
    assert execute_api_endpoint(url, region=None) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://abc123defg.execute-api.eu-west-1.amazonaws.com/api",
        "https://evil.example/api",
        "https://abc123defg.execute-api.eu-west-1.amazonaws.com.evil.example/api",
        "https://abc123defg.execute-api.eu-west-1.amazonaws.com@evil.example/api",
        "https://evil.example#@abc123defg.execute-api.eu-west-1.amazonaws.com/api",
        "https://abc123defg.execute-api.eu-west-1.amazonaws.com:8443/api",
        "https://abc123defg.execute-api.eu-west-1.amazonaws.com/api/extra",
        "https://abc123defg.execute-api.eu-west-1.amazonaws.com/api?x=1",
        "https://abc123defg.execute-api.eu-west-1.amazonaws.com/",
        "https://abc123defg.execute-api.eu-west-1.amazonaws.com",
        "https://ABC123DEFG.execute-api.eu-west-1.amazonaws.com/api",
        "https://abc123.execute-api.eu-west-1.amazonaws.com/api",
        "https://abc123defg.execute-api.cn-north-1.amazonaws.com/api",
        "https://abc123defg.execute-api.eu-west-1.amazonaws.com.cn/api",
        "http://127.0.0.1:8001/@connections",
        "https://ws.example.com/api",
        API + "\n",
        " " + API,
        "",
    ],
)
def test_everything_else_is_refused(url: str) -> None:
    with pytest.raises(BadEventError, match="endpoint"):
        execute_api_endpoint(url, region=None)


def test_only_this_deployments_region() -> None:
    assert execute_api_endpoint(API, region="eu-west-1") == API
    with pytest.raises(BadEventError, match="not this deployment's region us-east-1"):
        execute_api_endpoint(API, region="us-east-1")


def test_follow_up_trusted() -> None:
    forged = FollowUp("c1", "https://evil.example/api")
    assert forged.trusted(configured=API + "/", region=None) == FollowUp("c1", API)
    with pytest.raises(BadEventError):
        forged.trusted(configured=None, region="eu-west-1")
    assert FollowUp("c1", API).trusted(configured=None, region="eu-west-1") == FollowUp("c1", API)
