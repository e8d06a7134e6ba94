"""chalicelib.events and chalicelib.settings: reading events and the environment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chalicelib.errors import BadEventError, ConfigError
from chalicelib.events import connection_context, management_endpoint
from chalicelib.settings import DEFAULT_STORE, Settings
from tests.support.events import connect_event, disconnect_event, message_event

SHARED = Path(__file__).resolve().parent / "data" / "aws-events"


@pytest.mark.parametrize("name", ["connect.json", "message.json", "disconnect.json"])
def test_real_aws_events_are_read(name: str) -> None:
    event = json.loads((SHARED / name).read_text())
    ctx = connection_context(event)
    assert ctx.connection_id == event["requestContext"]["connectionId"]
    assert ctx.source_ip == "166.90.225.1"
    assert ctx.connected_at == event["requestContext"]["connectedAt"] / 1000
    assert ctx.stage == "prod"


@pytest.mark.parametrize(
    ("name", "builder"),
    [
        ("connect.json", lambda: connect_event("BFaT_fALIAMCKug=")),
        ("message.json", lambda: message_event("BFaT_fALIAMCKug=", {"action": "ping"})),
        ("disconnect.json", lambda: disconnect_event("BFaT_fALIAMCKug=")),
    ],
)
def test_test_events_have_the_real_shape(name: str, builder: object) -> None:
    real = json.loads((SHARED / name).read_text())
    built = builder()  # type: ignore[operator]
    assert set(built) == set(real)
    assert set(built["requestContext"]) == set(real["requestContext"])
    for key, value in real["requestContext"].items():
        assert type(built["requestContext"][key]) is type(value), key


@pytest.mark.parametrize(
    "event",
    [{}, {"requestContext": None}, {"requestContext": {}}, {"requestContext": {"connectionId": 5}},
     []],
)
def test_malformed_events_raise_bad_event(event: object) -> None:
    with pytest.raises(BadEventError):
        connection_context(event)  # type: ignore[arg-type]


def test_user_agent_header_is_found_case_insensitively() -> None:
    event = connect_event("c", headers={"user-agent": "curl/8"})
    assert connection_context(event).user_agent == "curl/8"


def test_endpoint_override_wins() -> None:
    ctx = connection_context(connect_event("c"))
    assert management_endpoint(ctx, override="http://127.0.0.1:8001/api/", region=None) == (
        "http://127.0.0.1:8001/api"
    )


def test_endpoint_from_execute_api_domain() -> None:
    ctx = connection_context(connect_event("c", stage="prod"))
    assert management_endpoint(ctx, override=None, region="eu-west-1") == (
        "https://asasasas.execute-api.us-east-1.amazonaws.com/prod"
    )


def test_endpoint_for_a_custom_domain_uses_the_api_id() -> None:
    event = connect_event("c", stage="prod")
    event["requestContext"]["domainName"] = "ws.example.com"
    ctx = connection_context(event)
    assert management_endpoint(ctx, override=None, region="cn-north-1") == (
        "https://asasasas.execute-api.cn-north-1.amazonaws.com.cn/prod"
    )
    with pytest.raises(BadEventError, match="WS_MANAGEMENT_ENDPOINT"):
        management_endpoint(ctx, override=None, region=None)


def test_settings_defaults_outside_lambda() -> None:
    settings = Settings.from_env({})
    assert settings.connections_store == DEFAULT_STORE
    assert settings.welcome_delay_seconds == 1
    assert settings.fanout_concurrency == 32


def test_settings_require_a_store_in_lambda() -> None:
    with pytest.raises(ConfigError, match="CONNECTIONS_STORE"):
        Settings.from_env({"AWS_LAMBDA_FUNCTION_NAME": "f"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("WELCOME_DELAY_SECONDS", "901"), ("WELCOME_DELAY_SECONDS", "soon"),
     ("FANOUT_CONCURRENCY", "0"), ("DELIVERY_MAX_ATTEMPTS", "-1")],
)
def test_settings_reject_bad_numbers_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})
