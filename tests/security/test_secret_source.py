"""The HS256 secret from SSM Parameter Store or Secrets Manager (issue 15, item 8).

Moto (in process) plays SSM and Secrets Manager; the app's real ``$connect`` handler runs under
chalice.test.Client.  The bound on a fetch is shown against a silent server on 127.0.0.1.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from chalice.test import Client
from moto import mock_aws

from chalicelib.errors import ConfigError
from chalicelib.secret_source import (
    BACKOFF_INITIAL_SECONDS,
    CONNECT_TIMEOUT_SECONDS,
    MAX_ATTEMPTS,
    READ_TIMEOUT_SECONDS,
    FetchedSecret,
    SecretUnavailableError,
    fetch_parameter,
    fetch_secret,
)
from chalicelib.settings import Settings
from tests.conftest import ROOT
from tests.security.conftest import AUDIENCE, ISSUER, SECRET, claims, hs256
from tests.support.events import connect_event, new_connection_id

SOURCE_VARIABLES = ("WS_AUTH_SECRET_PARAMETER", "WS_AUTH_SECRET_ARN")
LAMBDA = {"AWS_LAMBDA_FUNCTION_NAME": "ws-rooms-prod-websocket_connect",
          "CONNECTIONS_STORE": "dynamodb://ws-rooms-prod-connections",
          "WS_AUTH_ISSUER": ISSUER, "WS_AUTH_AUDIENCE": AUDIENCE}
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:ws-rooms/prod/auth-AbCdEf"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(security_env: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in SOURCE_VARIABLES:
        security_env.delenv(name, raising=False)
    security_env.setenv("WS_AUTH_AUDIENCE", AUDIENCE)
    security_env.setenv("WS_AUTH_ISSUER", ISSUER)
    with mock_aws():
        yield security_env


def unique_name() -> str:
    """A parameter name no other test uses: the runtime caches one gate per settings."""
    return f"/ws-rooms/test/{uuid.uuid4().hex}"


def connect(token: str | None) -> dict[str, Any]:
    from app import app

    with Client(app, stage_name="test", project_dir=str(ROOT)) as client:
        query = None if token is None else {"token": token}
        payload: dict[str, Any] = client.lambda_.invoke(
            "connect", connect_event(new_connection_id(), query=query)).payload
        return payload


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("variable, value", [
    ("WS_AUTH_SECRET_PARAMETER", "/ws-rooms/prod/auth-secret"),
    ("WS_AUTH_SECRET_PARAMETER", "arn:aws:ssm:eu-west-1:123456789012:parameter/ws/auth"),
    ("WS_AUTH_SECRET_ARN", SECRET_ARN),
])
def test_a_fetched_secret_is_an_auth_mode_a_deployed_stage_accepts(
    variable: str, value: str
) -> None:
    settings = Settings.from_env({**LAMBDA, variable: value})
    assert settings.auth_enabled and settings.auth_secret is None
    assert settings.auth_secret_source == value
    assert value in repr(settings)  # a name, not a secret: it may be logged


@pytest.mark.parametrize("other", [
    {"WS_AUTH_SECRET": SECRET},
    {"WS_AUTH_JWKS_URL": "https://idp.example.com/jwks.json"},
    {"WS_AUTH_SECRET_ARN": SECRET_ARN},
])
def test_a_fetched_secret_excludes_every_other_mode(other: dict[str, str]) -> None:
    environ = {**LAMBDA, "WS_AUTH_SECRET_PARAMETER": "/ws/auth", **other}
    with pytest.raises(ConfigError, match="WS_AUTH_SECRET_PARAMETER") as raised:
        Settings.from_env(environ)
    assert next(iter(other)) in str(raised.value)
    assert SECRET not in str(raised.value)


@pytest.mark.parametrize("variable, value", [
    ("WS_AUTH_SECRET_PARAMETER", "ws auth secret"),
    ("WS_AUTH_SECRET_PARAMETER", "arn:aws:ssm:eu-west-1:1234:parameter/x"),
    ("WS_AUTH_SECRET_ARN", "arn:aws:ssm:us-east-1:123456789012:parameter/x"),
    ("WS_AUTH_SECRET_ARN", "ws-rooms/prod/auth"),
])
def test_a_malformed_source_names_its_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({**LAMBDA, variable: value})


# ---------------------------------------------------------------- fetched, checked, cached


def test_ssm_secure_string_verifies_tokens_and_is_fetched_once(
    env: pytest.MonkeyPatch,
) -> None:
    name = unique_name()
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name=name, Value=SECRET, Type="SecureString")
    env.setenv("WS_AUTH_SECRET_PARAMETER", name)
    assert connect(hs256(claims())) == {"statusCode": 200}
    assert connect(hs256(claims(), secret="x" * 40)) == {"statusCode": 403}
    # Cached for the container's life: gone from SSM, tokens still verify without a fetch.
    ssm.delete_parameter(Name=name)
    assert connect(hs256(claims())) == {"statusCode": 200}


def test_secrets_manager_secret_verifies_tokens(env: pytest.MonkeyPatch) -> None:
    client = boto3.client("secretsmanager", region_name="us-east-1")
    arn = client.create_secret(Name=f"ws-rooms/{uuid.uuid4().hex}", SecretString=SECRET)["ARN"]
    env.setenv("WS_AUTH_SECRET_ARN", arn)
    assert connect(hs256(claims())) == {"statusCode": 200}
    assert connect(hs256(claims(), secret="y" * 40)) == {"statusCode": 403}


def test_no_token_is_refused_without_a_fetch(env: pytest.MonkeyPatch) -> None:
    env.setenv("WS_AUTH_SECRET_PARAMETER", unique_name())  # does not exist
    assert connect(None) == {"statusCode": 401}


@pytest.mark.parametrize("problem", ["missing", "short"])
def test_an_unusable_secret_answers_503_and_logs_why(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, problem: str
) -> None:
    name = unique_name()
    short = "short-secret-31-bytes-long-xxxxx"[:31]
    if problem == "short":
        boto3.client("ssm", region_name="us-east-1").put_parameter(
            Name=name, Value=short, Type="SecureString")
    env.setenv("WS_AUTH_SECRET_PARAMETER", name)
    with caplog.at_level(logging.ERROR):
        assert connect(hs256(claims())) == {"statusCode": 503}
    logged = caplog.text
    assert "refused with 503" in logged and "WS_AUTH_SECRET_PARAMETER" in logged
    assert name in logged
    assert ("ParameterNotFound" if problem == "missing" else "shorter than 32 bytes") in logged
    assert short not in logged


def test_secrets_manager_binary_secret_is_refused() -> None:
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="us-east-1")
        arn = client.create_secret(Name="binary", SecretBinary=b"x" * 40)["ARN"]
        with pytest.raises(SecretUnavailableError, match="no SecretString"):
            fetch_secret(arn, "us-east-1")


def test_an_arn_is_read_in_its_own_region() -> None:
    with mock_aws():
        ssm = boto3.client("ssm", region_name="eu-west-1")
        ssm.put_parameter(Name="/ws/auth", Value=SECRET, Type="SecureString")
        arn = "arn:aws:ssm:eu-west-1:123456789012:parameter/ws/auth"
        assert fetch_parameter(arn, "us-east-1") == SECRET


def test_failures_back_off_then_a_fixed_parameter_is_picked_up() -> None:
    clock = FakeMonotonic()
    calls: list[str] = []
    name = "/ws/auth"

    def fetch() -> str:
        calls.append(name)
        return fetch_parameter(name, "us-east-1")

    with mock_aws():
        secret = FetchedSecret("WS_AUTH_SECRET_PARAMETER", name, fetch, clock=clock)
        with pytest.raises(SecretUnavailableError, match="ParameterNotFound"):
            secret.value()
        # Within the backoff: refused at once, no call to SSM.
        with pytest.raises(SecretUnavailableError, match="next attempt in"):
            secret.value()
        assert len(calls) == 1 and secret.failures == 1
        boto3.client("ssm", region_name="us-east-1").put_parameter(
            Name=name, Value=SECRET, Type="SecureString")
        clock.now += BACKOFF_INITIAL_SECONDS
        assert secret.value() == SECRET
        assert secret.value() == SECRET
        assert len(calls) == 2 and secret.failures == 0


def test_a_silent_endpoint_fails_within_the_bound(
    env: pytest.MonkeyPatch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SSM that accepts the connection and never answers: a bounded failure, then 503."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        port = listener.getsockname()[1]
        # botocore's service-specific endpoint variable: the client goes to 127.0.0.1 (moto
        # does not intercept a request it is not asked for: the socket is real).
        monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", f"http://127.0.0.1:{port}")
        bound = MAX_ATTEMPTS * (CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS) + 2.0
        started = time.monotonic()
        passthrough = {"core": {"passthrough": {"urls": [r"http://127\.0\.0\.1.*"]}}}
        with mock_aws(config=passthrough), pytest.raises(
            SecretUnavailableError, match=r"[Tt]imeout"
        ):
            fetch_parameter("/ws/auth", "us-east-1")
        elapsed = time.monotonic() - started
        assert READ_TIMEOUT_SECONDS <= elapsed < bound, elapsed
    finally:
        listener.close()
