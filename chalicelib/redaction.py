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


def _spelled(word: str) -> str:
    """A pattern for ``word`` where every character may also be percent-encoded (``%74oken``),
    and ``_``/``-`` stand for either (``auth-token``, ``x_api_key``)."""
    parts = []
    for char in word:
        if char in "_-":
            parts.append(r"(?:[_-]|%5f|%2d)")
        else:
            parts.append(f"(?:{re.escape(char)}|%{ord(char):02x})")
    return "".join(parts)


#: Names whose value is a secret: any key **ending** in one of these words, so ``auth_token``,
#: ``session_token``, ``x-amz-security-token``, ``client_secret``, ``x-amz-signature`` ...
_SECRET_WORDS = (
    "token", "jwt", "auth", "authorization", "api_key", "apikey", "password", "passwd",
    "secret", "signature", "credential", "credentials",
)
_KEY_CHARS = r"(?:[a-z0-9_.-]|%[0-9a-f]{2})"
_SECRET_KEY = (
    r"(?<![a-z0-9_.%-])"  # the start of a key, not the middle of a longer word
    + _KEY_CHARS + "*?"
    + "(?:" + "|".join(_spelled(word) for word in _SECRET_WORDS) + ")"
)
#: ``token=...`` and friends in query strings, form bodies and ``key=value`` log text, with the
#: key or the ``=`` percent-encoded too (``%74oken=``, ``token%3D``).  A value the JWT pattern
#: already replaced is left alone (else ``token=[REDACTED]`` would become ``[REDACTED]]``).
_QUERY_SECRET = re.compile(
    r"(?i)(" + _SECRET_KEY + r"(?:=|%3d))(?!\[REDACTED\])(?:(?!%26)[^&\s\"'#;,)}\]])+"
)
#: The same keys quoted, as in dict reprs and JSON: ``'token': 'abc'``, ``"auth_token": b'..'``,
#: ``'token': ['a', 'b']``.
_QUOTED_SECRET = re.compile(
    r"(?i)(['\"]" + _SECRET_KEY + r"['\"]\s*:\s*)"
    r"(b?'[^'\r\n]*'|b?\"[^\"\r\n]*\"|\[[^\]\r\n]*\]|[^\s,}\]'\"]+)"
)
#: Credential-carrying headers, as ``Name: value``, ``'Name': 'value'``, ``"Name": "value"``
#: or ``'Name': b'value'`` (botocore logs header values as bytes).
_HEADER_SECRET = re.compile(
    r"(?i)(\b(?:proxy-)?authorization|\bcookie|\bset-cookie|\bx-api-key|\bx-amz-security-token"
    r"|\bsec-websocket-protocol|\bx-auth-token)(['\"]?\s*[:=]\s*)((?:b(?=['\"]))?['\"]?)"
    r"([^'\"\r\n]+)"
)
#: Anything shaped like a JWS/JWT (base64url JSON header starting ``{"``, then two segments).
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")


def _quoted_value(match: re.Match[str]) -> str:
    value = match.group(2)
    quote = value[1] if value[:1] == "b" else value[:1]
    if quote in ("'", '"'):
        return match.group(1) + quote + REDACTED + quote
    return match.group(1) + REDACTED


def redact(text: str) -> str:
    """``text`` with token-like values replaced by ``[REDACTED]``.

    Call it on any text that may hold credentials before it leaves the process (the record
    factory installed by :func:`install` calls it on every log record).  Never raises.
    """
    if not text:
        return text
    text = _JWT.sub(REDACTED, text)
    text = _QUOTED_SECRET.sub(_quoted_value, text)
    text = _QUERY_SECRET.sub(lambda m: m.group(1) + REDACTED, text)
    return _HEADER_SECRET.sub(lambda m: m.group(1) + m.group(2) + m.group(3) + REDACTED, text)


#: What :func:`loggable` writes for each control character it escapes.
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def loggable(value: object, limit: int = 200) -> str:
    """``value`` as text that is safe to put in one log line.

    Call it on every client-controlled value (header values, token error text, room names,
    user ids, origins, endpoints from messages ...) before it is logged.  Control characters,
    line and paragraph separators and invisible format characters (bidi overrides) are escaped
    (``\\n``, ``\\x1b``, ``\\u2028``), so a value can neither end the line nor forge
    another one; the result is at most ``limit`` characters of escaped text plus a
    ``...(N more)`` marker.  Never raises.
    """
    text = value if isinstance(value, str) else _text(value)
    out: list[str] = []
    used = 0
    for index, char in enumerate(text):
        piece = _escape(char)
        if used + len(piece) > limit:
            out.append(f"...({len(text) - index} more)")
            break
        out.append(piece)
        used += len(piece)
    return "".join(out)


def _text(value: object) -> str:
    try:
        return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(
            value
        )
    except Exception:  # a broken __str__ must not break logging
        return f"<unprintable {type(value).__name__}>"


def _escape(char: str) -> str:
    if char.isprintable() or char == " ":
        return char
    if char in _ESCAPES:
        return _ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else (
        f"\\U{code:08x}"
    )


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
