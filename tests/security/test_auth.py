"""$connect authentication: each case here is one that would let someone in if it broke.

Driven through the real handlers (chalice.test.Client), SQLite on disk, a real local JWKS
server; the same refusals through the real local gateway are in test_gateway.py.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from chalicelib.auth import JwksKeys, TokenVerifier
from chalicelib.errors import ConfigError
from chalicelib.settings import Settings
from tests.support.frames import without_ids

from .conftest import (
    AUDIENCE,
    ISSUER,
    OTHER_SECRET,
    SECRET,
    AuthHarness,
    JwksServer,
    SigningKey,
    claims,
    forge,
    hs256,
)

# ---------------------------------------------------------------- HS256 (WS_AUTH_SECRET)


def test_valid_token_is_admitted_and_sub_becomes_the_user(secured: AuthHarness) -> None:
    connection_id = secured.connect_as(hs256(claims("alice")))
    record = secured.store.get(connection_id)
    assert record is not None and record.user == "alice"
    identity = secured.send(connection_id, {"action": "whoami"})["data"]
    assert identity == {"connectionId": connection_id, "rooms": [], "user": "alice"}


def test_room_messages_come_from_the_user_id(secured: AuthHarness) -> None:
    alice = secured.connect_as(hs256(claims("alice")))
    bob = secured.connect_as(hs256(claims("bob")))
    secured.join(alice, "lobby")
    secured.join(bob, "lobby")
    secured.send(alice, {"action": "send", "room": "lobby", "data": "hi"})
    message = secured.last(bob, "message")
    assert without_ids(message["data"]) == {"room": "lobby", "from": "alice", "data": "hi"}


def test_no_token_is_401(secured: AuthHarness) -> None:
    assert secured.status(None) == 401
    assert secured.status("") == 401
    assert secured.status(None, query={"access_token": hs256(claims())}) == 401


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.", "x" * 9000, "..", "eyJ.eyJ.eyJ"],
)
def test_garbage_token_is_403(secured: AuthHarness, token: str) -> None:
    assert secured.status(token) == 403


def test_alg_none_is_403(secured: AuthHarness) -> None:
    for alg in ("none", "None", "NONE"):
        assert secured.status(forge({"alg": alg, "typ": "JWT"}, claims(), None)) == 403
    # "none" with a signature attached, too.
    assert secured.status(forge({"alg": "none"}, claims(), b"whatever")) == 403


def test_wrong_secret_is_403(secured: AuthHarness) -> None:
    assert secured.status(hs256(claims(), OTHER_SECRET)) == 403


def test_tampered_payload_is_403(secured: AuthHarness) -> None:
    header, _payload, signature = hs256(claims("alice")).split(".")
    evil = forge({"alg": "HS256", "typ": "JWT"}, claims("admin"), None).split(".")[1]
    assert secured.status(f"{header}.{evil}.{signature}") == 403


def test_asymmetric_token_is_refused_in_secret_mode(
    secured: AuthHarness, rsa_key: SigningKey
) -> None:
    assert secured.status(rsa_key.sign(claims())) == 403


def test_other_hmac_algorithms_are_refused(secured: AuthHarness) -> None:
    import warnings

    import jwt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyJWT's key-length advice for HS512
        token = jwt.encode(claims(), SECRET, algorithm="HS512")
    assert secured.status(token) == 403


def test_expired_is_403(secured: AuthHarness) -> None:
    assert secured.status(hs256(claims(ttl=-120))) == 403


def test_expiry_leeway_is_small_and_applied(secured: AuthHarness) -> None:
    # Within the default 30 s leeway (clock skew between the IdP and Lambda) ...
    assert secured.status(hs256(claims(ttl=-5))) == 200
    # ... and not beyond it.
    assert secured.status(hs256(claims(ttl=-31 - 5))) == 403


def test_not_yet_valid_is_403(secured: AuthHarness) -> None:
    assert secured.status(hs256(claims(nbf=int(time.time()) + 300))) == 403


def test_wrong_audience_is_403(secured: AuthHarness) -> None:
    assert secured.status(hs256(claims(aud="some-other-app"))) == 403
    assert secured.status(hs256({k: v for k, v in claims().items() if k != "aud"})) == 403


def test_wrong_issuer_is_403(secured: AuthHarness) -> None:
    assert secured.status(hs256(claims(iss="https://evil.example"))) == 403
    assert secured.status(hs256({k: v for k, v in claims().items() if k != "iss"})) == 403


@pytest.mark.parametrize("claim", ["exp", "sub"])
def test_required_claims(secured: AuthHarness, claim: str) -> None:
    assert secured.status(hs256({k: v for k, v in claims().items() if k != claim})) == 403


@pytest.mark.parametrize("sub", ["", 42, None, "x" * 300])
def test_sub_must_be_a_reasonable_string(secured: AuthHarness, sub: Any) -> None:
    assert secured.status(hs256(claims(sub=sub))) == 403


def test_repeated_token_parameter_is_refused(secured: AuthHarness) -> None:
    from tests.support.events import connect_event, new_connection_id

    event = connect_event(new_connection_id(), query={"token": hs256(claims())})
    event["multiValueQueryStringParameters"] = {"token": [hs256(claims()), "other"]}
    assert secured.invoke("connect", event) == {"statusCode": 403}


# ---------------------------------------------------------------- JWKS (RS256/ES256)


def test_jwks_rs256_and_es256_are_admitted(
    jwks_secured: AuthHarness, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    rsa_user = jwks_secured.connect_as(rsa_key.sign(claims("rsa-user")))
    ec_user = jwks_secured.connect_as(ec_key.sign(claims("ec-user")))
    assert jwks_secured.store.get(rsa_user).user == "rsa-user"  # type: ignore[union-attr]
    assert jwks_secured.store.get(ec_user).user == "ec-user"  # type: ignore[union-attr]


def test_jwks_keys_are_cached_across_invocations(
    jwks_secured: AuthHarness, rsa_key: SigningKey, jwks_server: JwksServer
) -> None:
    for _ in range(5):
        jwks_secured.connect_as(rsa_key.sign(claims()))
    assert jwks_server.requests == 1


def test_algorithm_confusion_public_key_as_hmac_secret_is_403(
    jwks_secured: AuthHarness, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    # The attacker knows the public key (it is published) and signs HS256 with it.
    for key in (rsa_key, ec_key):
        for secret in (key.public_pem(), json.dumps(key.jwk()).encode()):
            token = forge({"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims(), secret)
            assert jwks_secured.status(token) == 403


def test_jwks_mode_refuses_alg_none_and_hs256(jwks_secured: AuthHarness) -> None:
    assert jwks_secured.status(forge({"alg": "none", "kid": "rsa-1"}, claims(), None)) == 403
    assert jwks_secured.status(hs256(claims())) == 403


def test_jwks_key_used_with_the_other_algorithm_is_403(
    jwks_secured: AuthHarness, rsa_key: SigningKey
) -> None:
    # An RSA key presented as ES256 (kid of the RSA key, alg of the EC family).
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    forged = jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256",
                        headers={"kid": rsa_key.kid})
    assert jwks_secured.status(forged) == 403


def test_jwks_unknown_kid_and_foreign_key_are_403(jwks_secured: AuthHarness) -> None:
    stranger = SigningKey.rsa("rsa-1")  # same kid, different key
    assert jwks_secured.status(stranger.sign(claims())) == 403
    assert jwks_secured.status(SigningKey.rsa("nobody").sign(claims())) == 403
    no_kid = forge({"alg": "RS256"}, claims(), None)
    assert jwks_secured.status(no_kid) == 403


def test_jwks_expired_wrong_audience_wrong_issuer(
    jwks_secured: AuthHarness, rsa_key: SigningKey
) -> None:
    assert jwks_secured.status(rsa_key.sign(claims(ttl=-120))) == 403
    assert jwks_secured.status(rsa_key.sign(claims(aud="other"))) == 403
    assert jwks_secured.status(rsa_key.sign(claims(iss="https://evil.example"))) == 403
    assert jwks_secured.status(rsa_key.sign(claims(nbf=int(time.time()) + 300))) == 403


def test_unreachable_jwks_refuses_with_503(
    security_env: pytest.MonkeyPatch, management_api: Any, rsa_key: SigningKey
) -> None:
    from chalice.test import Client

    from app import app
    from tests.conftest import ROOT
    from tests.support.events import connect_event, new_connection_id

    security_env.setenv("WS_AUTH_JWKS_URL", "http://127.0.0.1:9/jwks.json")
    with Client(app, stage_name="test", project_dir=str(ROOT)) as client:
        event = connect_event(new_connection_id(), query={"token": rsa_key.sign(claims())})
        assert client.lambda_.invoke("connect", event).payload == {"statusCode": 503}


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_jwks_key_rotation_new_kid_verifies_after_refresh(jwks_server: JwksServer) -> None:
    clock = FakeMonotonic()
    old, new = SigningKey.rsa("2024-old"), SigningKey.rsa("2025-new")
    jwks_server.keys = [old]
    verifier = TokenVerifier(
        jwks=JwksKeys(jwks_server.url, clock=clock, cooldown=30, lifespan=300),
        audience=AUDIENCE, issuer=ISSUER,
    )
    assert verifier.verify(old.sign(claims("u1"))) == "u1"
    assert jwks_server.requests == 1

    # The IdP rotates: the JWKS now publishes the new key (and drops the old one).
    jwks_server.keys = [new]
    clock.now += 31  # past the refetch cooldown
    assert verifier.verify(new.sign(claims("u2"))) == "u2"
    assert jwks_server.requests == 2
    # The set was replaced: tokens signed with the retired key stop verifying.
    with pytest.raises(Exception, match="kid"):
        clock.now += 31
        verifier.verify(old.sign(claims("u1")))


def test_unknown_kids_cannot_hammer_the_jwks_endpoint(jwks_server: JwksServer,
                                                      rsa_key: SigningKey) -> None:
    clock = FakeMonotonic()
    verifier = TokenVerifier(jwks=JwksKeys(jwks_server.url, clock=clock, cooldown=30))
    assert verifier.verify(rsa_key.sign(claims(aud=None))) == "alice"
    for n in range(20):
        with pytest.raises(Exception, match="kid"):
            verifier.verify(SigningKey.ec(f"random-{n}").sign(claims()))
    assert jwks_server.requests == 1  # all within the cooldown: no refetch
    clock.now += 30
    with pytest.raises(Exception, match="kid"):
        verifier.verify(SigningKey.ec("random-x").sign(claims()))
    assert jwks_server.requests == 2  # one refetch after the cooldown


def test_jwks_lifespan_refreshes_periodically(jwks_server: JwksServer,
                                              rsa_key: SigningKey) -> None:
    clock = FakeMonotonic()
    verifier = TokenVerifier(jwks=JwksKeys(jwks_server.url, clock=clock, lifespan=300))
    verifier.verify(rsa_key.sign(claims()))
    clock.now += 299
    verifier.verify(rsa_key.sign(claims()))
    assert jwks_server.requests == 1
    clock.now += 1
    verifier.verify(rsa_key.sign(claims()))
    assert jwks_server.requests == 2


# ---------------------------------------------------------------- Origin allowlist


def test_origin_allowlist(secured: AuthHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_ALLOWED_ORIGINS", "https://app.example.com, http://localhost:3000")
    token = hs256(claims())
    assert secured.status(token, origin="https://app.example.com") == 200
    assert secured.status(token, origin="HTTPS://APP.EXAMPLE.COM/") == 200
    assert secured.status(token, origin="http://localhost:3000") == 200
    assert secured.status(token, origin="https://evil.example") == 403
    assert secured.status(token, origin="https://app.example.com.evil.example") == 403
    assert secured.status(token, origin="http://app.example.com") == 403
    assert secured.status(token, origin="null") == 403
    assert secured.status(token) == 403  # no Origin header at all
    # The origin is checked before the token: a bad origin is 403 even without a token.
    assert secured.status(None, origin="https://evil.example") == 403


def test_origin_allowlist_applies_with_auth_off(open_app: AuthHarness,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_ALLOWED_ORIGINS", "https://app.example.com")
    assert open_app.status(origin="https://evil.example") == 403
    assert open_app.status(origin="https://app.example.com") == 200


# ---------------------------------------------------------------- auth off / deployed stage


def test_auth_off_locally_admits_without_token_and_sender_is_the_connection(
    open_app: AuthHarness,
) -> None:
    a, b = open_app.connect(), open_app.connect()
    open_app.join(a, "r")
    open_app.join(b, "r")
    open_app.send(a, {"action": "send", "room": "r", "data": 1})
    assert open_app.api.received(b)[-1]["data"]["from"] == a
    assert open_app.send(a, {"action": "whoami"})["data"] == {"connectionId": a, "rooms": ["r"]}


def test_deployed_stage_without_auth_refuses_to_start(
    open_app: AuthHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "ws-rooms-prod-connect")
    monkeypatch.setenv("CONNECTIONS_STORE", "dynamodb://ws-rooms-prod-connections")
    from tests.support.events import connect_event, message_event, new_connection_id

    cid = new_connection_id()
    with pytest.raises(ConfigError, match=r"WS_AUTH_SECRET.*WS_AUTH_JWKS_URL"):
        open_app.invoke("connect", connect_event(cid))
    with pytest.raises(ConfigError, match="WS_AUTH_SECRET"):
        open_app.invoke("message", message_event(cid, {"action": "ping"}))


def test_identity_lost_record_cannot_send_anonymously(secured: AuthHarness) -> None:
    alice = secured.connect_as(hs256(claims("alice")))
    secured.join(alice, "lobby")
    secured.store.remove(alice)  # record lost (swept during an outage); the socket is still up
    secured.join(alice, "lobby")  # the message path heals the record, without a user
    reply = secured.send(alice, {"action": "send", "room": "lobby", "data": 1, "id": "x"})
    assert reply["type"] == "error" and reply["data"]["code"] == "unauthenticated"


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WS_AUTH_SECRET": "short"}, "WS_AUTH_SECRET is shorter"),
        ({"WS_AUTH_SECRET": SECRET, "WS_AUTH_JWKS_URL": "https://idp.example/jwks"},
         "both set"),
        ({"WS_AUTH_JWKS_URL": "http://idp.example/jwks"}, "WS_AUTH_JWKS_URL"),
        ({"WS_AUTH_JWKS_URL": "file:///etc/passwd"}, "WS_AUTH_JWKS_URL"),
        ({"WS_ALLOWED_ORIGINS": "app.example.com"}, "WS_ALLOWED_ORIGINS"),
        ({"WS_ALLOWED_ORIGINS": "https://app.example.com/path"}, "WS_ALLOWED_ORIGINS"),
        ({"WS_RATE_LIMIT": "-1"}, "WS_RATE_LIMIT"),
        ({"WS_RATE_WINDOW_SECONDS": "0"}, "WS_RATE_WINDOW_SECONDS"),
        ({"WS_MAX_ROOMS_PER_CONNECTION": "0"}, "WS_MAX_ROOMS_PER_CONNECTION"),
        ({"WS_MAX_DATA_BYTES": "200000"}, "WS_MAX_DATA_BYTES"),
        ({"WS_AUTH_LEEWAY_SECONDS": "3600"}, "WS_AUTH_LEEWAY_SECONDS"),
    ],
)
def test_bad_security_settings_name_the_variable(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Settings.from_env(env)


def test_lambda_without_auth_names_both_variables() -> None:
    env = {"AWS_LAMBDA_FUNCTION_NAME": "f", "CONNECTIONS_STORE": "dynamodb://table"}
    with pytest.raises(ConfigError, match=r"WS_AUTH_SECRET.*WS_AUTH_JWKS_URL"):
        Settings.from_env(env)
    scoped = {"WS_AUTH_SECRET": SECRET, "WS_AUTH_ISSUER": ISSUER, "WS_AUTH_AUDIENCE": AUDIENCE}
    assert Settings.from_env({**env, **scoped}).auth_enabled


def test_secret_is_not_in_the_settings_repr() -> None:
    assert SECRET not in repr(Settings.from_env({"WS_AUTH_SECRET": SECRET}))


def test_jwt_is_not_imported_at_app_import() -> None:
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = "import sys, app; print('jwt' in sys.modules, 'cryptography' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["False", "False"]
