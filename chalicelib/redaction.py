"""Keep secrets out of logs: tokens in query strings, credential headers, anything JWT-shaped.

:func:`install` wraps the process's log-record factory, so **every** record created afterwards
(the app's loggers, Chalice's ``app.log``, botocore, the local gateway, pytest's ``caplog``) has
its message, its formatted traceback and its stack info scrubbed by :func:`redact` before any
handler sees it.  It is idempotent and cheap: records below a logger's level are never created.

:class:`RedactingFilter` does the same for one handler, for code that builds its own logging
setup.  Redaction is pattern-based, so it is a safety net, not a licence to log secrets.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

REDACTED = "[REDACTED]"

#: ``token=...`` and friends in query strings, form bodies and ``key=value`` log text.
_QUERY_SECRET = re.compile(
    r"(?i)(\b(?:token|access_token|id_token|refresh_token|jwt|auth|authorization|api_key|apikey"
    r"|x-api-key|password|passwd|secret|client_secret|signature|x-amz-signature"
    r"|x-amz-security-token)=)[^&\s\"'#;,)}\]]+"
)
#: Credential-carrying headers, as ``Name: value``, ``'Name': 'value'`` or ``"Name": "value"``.
_HEADER_SECRET = re.compile(
    r"(?i)(\b(?:proxy-)?authorization|\bcookie|\bset-cookie|\bx-api-key|\bx-amz-security-token"
    r"|\bsec-websocket-protocol|\bx-auth-token)(['\"]?\s*[:=]\s*)(['\"]?)([^'\"\r\n]+)"
)
#: Anything shaped like a JWS/JWT (base64url JSON header starting ``{"``, then two segments).
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


def redact(text: str) -> str:
    """``text`` with token-like values replaced by ``[REDACTED]``."""
    if not text:
        return text
    text = _JWT.sub(REDACTED, text)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
    return _HEADER_SECRET.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + REDACTED, text)


def scrub_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact ``record`` in place: message (args folded in), traceback text and stack info."""
    try:
        message = record.getMessage()
    except Exception:  # a broken format string: let the handler report it as usual
        return record
    cleaned = redact(message)
    if cleaned != message or record.args:
        record.msg = cleaned
        record.args = None
    if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


class RedactingFilter(logging.Filter):
    """A handler (or logger) filter that scrubs every record passing through it."""

    def filter(self, record: logging.LogRecord) -> bool:
        scrub_record(record)
        return True


_MARKER = "_ws_rooms_redacting"


def install() -> None:
    """Scrub every log record created in this process from now on (idempotent)."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, _MARKER, False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return scrub_record(factory(*args, **kwargs))

    setattr(redacting_factory, _MARKER, True)
    logging.setLogRecordFactory(redacting_factory)
    # Handlers that exist already (Lambda's, Chalice's app.log) get the filter too, as a second
    # line for records created by code that replaced the factory after us.
    for logger in (logging.getLogger(), logging.getLogger("ws-rooms")):
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
