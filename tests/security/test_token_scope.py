"""Token scope (issue 15, item 2): a maximum lifetime, Cognito's client_id and token_use, and
deployed stages that refuse to run without an issuer and an audience (or client id).

Before: any token the IdP signed was admitted when AuthAudience/AuthIssuer were left empty (the
prod template's defaults), including tokens for another app client and tokens expiring in 2100.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib.errors import ConfigError
from chalicelib.settings import Settings

from .conftest import (
    AUDIENCE,
    ISSUER,
    SECRET,
    AuthHarness,
    JwksServer,
    SigningKey,
    _harness,
    claims,
    hs256,
)

DAY = 86400
YEAR_2100 = 4102444800
CLIENT_ID = "3n4b5urk1ft4fl3mg5e62d9ado"
LAMBDA = {"AWS_LAMBDA_FUNCTION_NAME": "ws-rooms-prod-websocket_connect",
          "CONNECTIONS_STORE": "dynamodb://ws-rooms-prod-connections"}


def lived(seconds: int, **extra: Any) -> dict[str, Any]:
    """Claims issued now that expire ``seconds`` later."""
    now = int(time.time())
    return claims(**{"iat": now, "exp": now + seconds, **extra})


def without(payload: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in payload.items() if k not in names}


# ---------------------------------------------------------------- maximum lifetime


def test_default_maximum_lifetime_is_a_day(secured: AuthHarness) -> None:
    assert secured.status(hs256(lived(DAY))) == 200
    assert secured.status(hs256(lived(DAY + 1))) == 403


def test_token_expiring_in_2100_is_refused(secured: AuthHarness) -> None:
    assert secured.status(hs256(claims(iat=int(time.time()), exp=YEAR_2100))) == 403


def test_token_without_iat_is_refused_when_a_maximum_is_set(secured: AuthHarness) -> None:
    assert secured.status(hs256(without(lived(600), "iat"))) == 403


def test_backdated_iat_does_not_widen_the_window(secured: AuthHarness) -> None:
    # A long-lived token issued long ago, still valid: its lifetime is what counts.
    now = int(time.time())
    assert secured.status(hs256(claims(iat=now - 5 * DAY, exp=now + 600))) == 403
    # iat ahead of the clock (beyond the leeway) is refused by PyJWT before the lifetime check.
    assert secured.status(hs256(claims(iat=now + 3600, exp=now + 3700))) == 403


def test_configured_maximum(secured: AuthHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS", "3600")
    assert secured.status(hs256(lived(3600))) == 200
    assert secured.status(hs256(lived(3601))) == 403


def test_zero_disables_the_maximum_and_iat_becomes_optional(
    secured: AuthHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS", "0")
    assert secured.status(hs256(claims(exp=YEAR_2100))) == 200
    assert secured.status(hs256(without(lived(600), "iat"))) == 200


def test_lifetime_refusal_names_the_setting(
    secured: AuthHarness, caplog: pytest.LogCaptureFixture
) -> None:
    from app import app

    app.log.addHandler(caplog.handler)
    try:
        assert secured.status(hs256(lived(DAY + 1))) == 403
    finally:
        app.log.removeHandler(caplog.handler)
    assert "WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS" in caplog.text


# ---------------------------------------------------------------- Cognito client_id / token_use


@pytest.fixture
def cognito_access(
    security_env: pytest.MonkeyPatch, management_api: Any, jwks_server: JwksServer
) -> Iterator[AuthHarness]:
    """JWKS mode as for Cognito access tokens: issuer, client_id and token_use, no audience."""
    security_env.setenv("WS_AUTH_JWKS_URL", jwks_server.url)
    security_env.setenv("WS_AUTH_ISSUER", ISSUER)
    security_env.setenv("WS_AUTH_CLIENT_ID", CLIENT_ID)
    security_env.setenv("WS_AUTH_TOKEN_USE", "access")
    yield from _harness(management_api)


def access_token(**extra: Any) -> dict[str, Any]:
    """A Cognito-shaped access token's claims: no aud, client_id and token_use instead."""
    return without(lived(3600, **{"client_id": CLIENT_ID, "token_use": "access", **extra}),
                   "aud")


def test_cognito_access_token_for_this_client_is_admitted(
    cognito_access: AuthHarness, rsa_key: SigningKey
) -> None:
    connection_id = cognito_access.connect_as(rsa_key.sign(access_token()))
    assert cognito_access.store.get(connection_id).user == "alice"


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(access_token(client_id="another-app-client"), id="other-client"),
        pytest.param(without(access_token(), "client_id"), id="no-client_id"),
        pytest.param(access_token(token_use="id"), id="id-token"),
        pytest.param(without(access_token(), "token_use"), id="no-token_use"),
        pytest.param(access_token(iss="https://cognito-idp.example/other-pool"), id="other-pool"),
        pytest.param(access_token(client_id=[CLIENT_ID]), id="client_id-list"),
    ],
)
def test_cognito_tokens_out_of_scope_are_refused(
    cognito_access: AuthHarness, rsa_key: SigningKey, payload: dict[str, Any]
) -> None:
    assert cognito_access.status(rsa_key.sign(payload)) == 403


def test_token_use_id_with_audience(
    security_env: pytest.MonkeyPatch, management_api: Any, jwks_server: JwksServer,
    rsa_key: SigningKey,
) -> None:
    security_env.setenv("WS_AUTH_JWKS_URL", jwks_server.url)
    security_env.setenv("WS_AUTH_ISSUER", ISSUER)
    security_env.setenv("WS_AUTH_AUDIENCE", CLIENT_ID)
    security_env.setenv("WS_AUTH_TOKEN_USE", "id")
    for harness in _harness(management_api):
        assert harness.status(rsa_key.sign(lived(3600, aud=CLIENT_ID, token_use="id"))) == 200
        assert harness.status(rsa_key.sign(lived(3600, aud=CLIENT_ID, token_use="access"))) == 403
        assert harness.status(rsa_key.sign(lived(3600, aud="other", token_use="id"))) == 403


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WS_AUTH_TOKEN_USE": "refresh"}, "WS_AUTH_TOKEN_USE"),
        ({"WS_AUTH_TOKEN_USE": "id", "WS_AUTH_CLIENT_ID": CLIENT_ID}, "WS_AUTH_AUDIENCE"),
        ({"WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS": "-1"}, "WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS"),
        ({"WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS": str(31 * DAY)},
         "WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS"),
        ({"WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS": "1d"}, "WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS"),
    ],
)
def test_bad_scope_settings_name_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings.from_env(env)


def test_scope_defaults_locally() -> None:
    settings = Settings.from_env({"WS_AUTH_SECRET": SECRET})
    assert settings.auth_max_token_lifetime_seconds == DAY
    assert (settings.auth_issuer, settings.auth_audience) == (None, None)
    assert (settings.auth_client_id, settings.auth_token_use) == (None, None)


@pytest.mark.parametrize(
    ("scope", "missing"),
    [
        ({}, r"missing: WS_AUTH_ISSUER; WS_AUTH_AUDIENCE \(or WS_AUTH_CLIENT_ID and"),
        ({"WS_AUTH_AUDIENCE": AUDIENCE}, r"missing: WS_AUTH_ISSUER; see docs"),
        ({"WS_AUTH_ISSUER": ISSUER}, r"missing: WS_AUTH_AUDIENCE"),
        ({"WS_AUTH_ISSUER": ISSUER, "WS_AUTH_CLIENT_ID": CLIENT_ID}, r"missing: WS_AUTH_AUD"),
        ({"WS_AUTH_ISSUER": ISSUER, "WS_AUTH_TOKEN_USE": "access"}, r"missing: WS_AUTH_AUD"),
    ],
)
@pytest.mark.parametrize(
    "mode",
    [{"WS_AUTH_SECRET": SECRET}, {"WS_AUTH_JWKS_URL": "https://idp.example/jwks.json"}],
)
def test_deployed_stage_requires_issuer_and_audience_or_client(
    mode: dict[str, str], scope: dict[str, str], missing: str
) -> None:
    with pytest.raises(ConfigError, match=missing) as refused:
        Settings.from_env({**LAMBDA, **mode, **scope})
    assert "WS_AUTH_ISSUER and either WS_AUTH_AUDIENCE or WS_AUTH_CLIENT_ID" in str(refused.value)


@pytest.mark.parametrize(
    "scope",
    [
        {"WS_AUTH_ISSUER": ISSUER, "WS_AUTH_AUDIENCE": AUDIENCE},
        {"WS_AUTH_ISSUER": ISSUER, "WS_AUTH_CLIENT_ID": CLIENT_ID, "WS_AUTH_TOKEN_USE": "access"},
        {"WS_AUTH_ISSUER": ISSUER, "WS_AUTH_AUDIENCE": CLIENT_ID, "WS_AUTH_TOKEN_USE": "id"},
    ],
)
def test_deployed_stage_with_scope_starts(scope: dict[str, str]) -> None:
    settings = Settings.from_env(
        {**LAMBDA, "WS_AUTH_JWKS_URL": "https://idp.example/jwks.json", **scope}
    )
    assert settings.auth_issuer == ISSUER


def test_deployed_stage_without_scope_refuses_every_connect(
    open_app: AuthHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.events import connect_event, new_connection_id

    for name, value in LAMBDA.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WS_AUTH_SECRET", SECRET)
    with pytest.raises(ConfigError, match="WS_AUTH_ISSUER"):
        open_app.invoke("connect", connect_event(new_connection_id(),
                                                 query={"token": hs256(claims())}))
