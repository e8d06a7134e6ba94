"""Log injection (issue 15, item 5): client-controlled text never starts a new log line.

Before: a ``crit`` header holding a newline reached the log verbatim through PyJWT's error text
(``Unsupported critical extension: x\\nINFO ...``), forging a line.  Every client-controlled
string now goes through :func:`chalicelib.redaction.loggable` (control characters escaped,
length bounded) before it is logged.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib.redaction import loggable

from .conftest import SECRET, AuthHarness, SigningKey, claims, forge

FORGED = "INFO app: user admin logged in"


@pytest.fixture
def app_log_lines() -> Iterator[io.StringIO]:
    """What a real log handler writes for app.log: one formatted record per line."""
    from app import app

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    app.log.addHandler(handler)
    try:
        yield stream
    finally:
        app.log.removeHandler(handler)


def assert_one_line_per_record(stream: io.StringIO, expected_records: int) -> list[str]:
    lines = stream.getvalue().splitlines()
    assert len(lines) == expected_records, lines
    assert not any(line.startswith(FORGED) for line in lines)
    return lines


def test_crit_header_with_a_newline_cannot_forge_a_log_line(
    secured: AuthHarness, app_log_lines: io.StringIO
) -> None:
    header = {"alg": "HS256", "typ": "JWT", "crit": [f"x\n{FORGED}\r\n{FORGED}"]}
    assert secured.status(forge(header, claims(), SECRET.encode())) == 403
    (line,) = assert_one_line_per_record(app_log_lines, 1)
    assert "refused with 403" in line
    assert f"x\\n{FORGED}\\r\\n{FORGED}" in line  # still readable, escaped


def test_other_client_controlled_header_fields_are_escaped(
    secured: AuthHarness, app_log_lines: io.StringIO
) -> None:
    forged_alg = forge({"alg": f"HS256\n{FORGED}", "typ": "JWT"}, claims(), None)
    assert secured.status(forged_alg) == 403
    assert_one_line_per_record(app_log_lines, 1)


def test_origin_with_control_characters_is_escaped(
    secured: AuthHarness, app_log_lines: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WS_ALLOWED_ORIGINS", "https://app.example.com")
    assert secured.status(None, origin=f"https://evil.example\r\n{FORGED}") == 403
    (line,) = assert_one_line_per_record(app_log_lines, 1)
    assert "\\r\\n" in line


def test_jwks_kid_with_a_newline_is_escaped(
    jwks_secured: AuthHarness, app_log_lines: io.StringIO
) -> None:
    token = SigningKey.rsa(f"nobody\n{FORGED}").sign(claims())
    assert jwks_secured.status(token) == 403
    (line,) = assert_one_line_per_record(app_log_lines, 1)
    assert "nobody\\n" in line


def test_long_error_text_is_truncated(
    secured: AuthHarness, app_log_lines: io.StringIO
) -> None:
    header = {"alg": "HS256", "typ": "JWT", "crit": ["x" * 5000]}
    assert secured.status(forge(header, claims(), SECRET.encode())) == 403
    (line,) = assert_one_line_per_record(app_log_lines, 1)
    assert len(line) < 800 and "more)" in line


# ---------------------------------------------------------------- loggable itself


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text: ok", "plain text: ok"),
        ("a\nb\rc\td", "a\\nb\\rc\\td"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("\x00\x7f\x85", "\\x00\\x7f\\x85"),
        ("line\u2028sep\u2029para", "line\\u2028sep\\u2029para"),
        ("bidi \u202egnp.exe", "bidi \\u202egnp.exe"),
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("caf\u00e9 \u6f22\u5b57", "caf\u00e9 \u6f22\u5b57"),
        (b"bytes\n\xff", "bytes\\n\\xff"),
        (42, "42"),
        (None, "None"),
        (ValueError("boom\nINFO x"), "boom\\nINFO x"),
    ],
)
def test_loggable_escapes_control_characters(value: Any, expected: str) -> None:
    assert loggable(value) == expected


def test_loggable_truncates_to_the_limit_with_a_marker() -> None:
    assert loggable("x" * 300) == "x" * 200 + "...(100 more)"
    assert loggable("abcdef", limit=3) == "abc...(3 more)"
    # The limit counts escaped characters, so escaping cannot blow the line up.
    assert loggable("\n" * 1000, limit=10) == "\\n" * 5 + "...(995 more)"


def test_loggable_never_raises() -> None:
    class Broken:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert loggable(Broken()) == "<unprintable Broken>"
