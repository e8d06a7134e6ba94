"""No secrets in logs: the redaction patterns, and logs captured while real tokens flow."""

from __future__ import annotations

import logging

import pytest

from chalicelib import redaction
from chalicelib.redaction import REDACTED, redact

from .conftest import OTHER_SECRET, SECRET, AuthHarness, claims, hs256

SAMPLES = [
    "GET /api?token={t} HTTP/1.1",
    "wss://x.execute-api.us-east-1.amazonaws.com/api?room=a&token={t}&x=1",
    "{{'queryStringParameters': {{'token': '{t}'}}}}",
    '{{"headers": {{"Authorization": "Bearer {t}", "Host": "h"}}}}',
    "Authorization: Bearer {t}",
    "{{'Cookie': 'session={t}', 'X-Api-Key': '{t}'}}",
    "Sec-WebSocket-Protocol: bearer, {t}",
    "token rejected for {t}",
    "access_token={t}&id_token={t}",
]


@pytest.mark.parametrize("template", SAMPLES)
def test_redact_removes_tokens(template: str) -> None:
    token = hs256(claims())
    cleaned = redact(template.format(t=token))
    assert token not in cleaned
    assert token.split(".")[0] not in cleaned and token.split(".")[2] not in cleaned
    assert REDACTED in cleaned


def test_redact_removes_non_jwt_query_tokens() -> None:
    assert redact("GET /api?token=opaque-garbage-123&room=a") == (
        f"GET /api?token={REDACTED}&room=a"
    )


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "connected BFaT_fALIAMCKug= from 166.90.225.1 to asasasas.execute-api.us-east-1"
    assert redact(text) == text


def test_every_record_is_scrubbed_including_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    redaction.install()
    token = hs256(claims())
    log = logging.getLogger("chalicelib.anything")
    with caplog.at_level(logging.DEBUG):
        log.info("event %s", {"queryStringParameters": {"token": token}})
        log.warning("Authorization: Bearer %s", token)
        try:
            raise ValueError(f"bad token {token}")
        except ValueError:
            log.exception("failed")
        logging.getLogger("botocore.whatever").debug("url=https://x/?token=%s", token)
    assert "failed" in caplog.text and "ValueError" in caplog.text
    assert token not in caplog.text
    assert token.split(".")[2] not in caplog.text


def test_tokens_absent_from_logs_of_real_connects(
    secured: AuthHarness, caplog: pytest.LogCaptureFixture
) -> None:
    good = hs256(claims("alice"))
    bad = hs256(claims("mallory"), OTHER_SECRET)
    with caplog.at_level(logging.DEBUG):
        # app.log does not propagate to the root logger: capture it too.
        from app import app

        app.log.addHandler(caplog.handler)
        try:
            cid = secured.connect_as(good)
            assert secured.status(bad) == 403
            assert secured.status(None) == 401
            secured.send(cid, {"action": "whoami"})
            # Whatever a handler might log about the event is scrubbed as well.
            app.log.info("connect event: %s", {"queryStringParameters": {"token": good}})
        finally:
            app.log.removeHandler(caplog.handler)
    assert "refused with 403" in caplog.text  # the refusal was logged ...
    for token in (good, bad, SECRET, OTHER_SECRET):
        assert token not in caplog.text  # ... without the token
    assert good.split(".")[2] not in caplog.text and bad.split(".")[2] not in caplog.text


# Opaque (not JWT-shaped) secrets, so only the form-specific patterns can catch them: each of
# these leaked before issue 15.
OPAQUE = "IQoJb3JpZ2luX2VjEBAaCXVzLWVhc3QtMSJHMEUCIQD0paque"
FORMS = [
    # botocore DEBUG output: header values are bytes
    "{'X-Amz-Security-Token': b'%s', 'Host': 'x'}",
    "{'X-Amz-Security-Token': b\"%s\"}",
    "{'Authorization': b'AWS4-HMAC-SHA256 Credential=AKIA/x, Signature=%s'}",
    # percent-encoded key, or '=' / '&' encoded (a URL inside a URL)
    "GET /api?%%74oken=%s&room=a",
    "GET /api?room=a&%%74%%6F%%6B%%65%%6E=%s",
    "next=%%2Fapi%%3Froom%%3Da%%26token%%3D%s",
    # other *_token names
    "GET /api?auth_token=%s",
    "GET /api?session_token=%s&room=a",
    "refresh-token=%s",
    "X-Amz-Security-Token=%s",
    # dict reprs and JSON with a quoted secret key
    "{'queryStringParameters': {'token': '%s', 'room': 'a'}}",
    "{'multiValueQueryStringParameters': {'token': ['%s', 'x']}}",
    '{"token": "%s"}',
    "{'auth_token': b'%s'}",
    "{'client_secret': '%s'}",
]


@pytest.mark.parametrize("template", FORMS)
def test_redact_removes_opaque_secrets_in_every_form(template: str) -> None:
    text = template % OPAQUE
    cleaned = redact(text)
    assert OPAQUE not in cleaned, cleaned
    assert OPAQUE[:12] not in cleaned, cleaned
    assert REDACTED in cleaned


def test_redact_keeps_the_shape_and_the_neighbours() -> None:
    assert redact("{'token': 'abc', 'room': 'lobby'}") == (
        f"{{'token': '{REDACTED}', 'room': 'lobby'}}"
    )
    assert redact("GET /api?%74oken=abc&room=lobby") == f"GET /api?%74oken={REDACTED}&room=lobby"
    assert redact("a%26token%3Dabc%26room%3Dlobby") == f"a%26token%3D{REDACTED}%26room%3Dlobby"


@pytest.mark.parametrize(
    "text",
    ["tokens=5 rooms=3", "WS_AUTH_TOKEN_USE='access'", "{'token_use': 'access'}",
     "{'authorizer': {'principalId': 'x'}}", "room=lobby&id=7"],
)
def test_redact_leaves_lookalike_names_alone(text: str) -> None:
    assert redact(text) == text


def test_redact_is_linear_on_hostile_input() -> None:
    # Long runs of key characters must not backtrack quadratically (bounded by the test timeout;
    # this finishes in well under a second).
    for text in ("a" * 200_000, "%41" * 70_000, "_token" * 40_000, "'" + "a-" * 100_000 + "'"):
        assert redact(text) == text


def test_botocore_debug_record_with_byte_headers_is_scrubbed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    redaction.install()
    headers = {"X-Amz-Security-Token": OPAQUE.encode(), "Authorization": b"AWS4 " + b"s" * 20}
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("botocore.endpoint").debug("Sending http request: %s", headers)
    assert "Sending http request" in caplog.text
    assert OPAQUE not in caplog.text and "s" * 20 not in caplog.text
