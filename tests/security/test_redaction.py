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
