"""chalicelib.protocol: parsing client frames and building server frames (no I/O)."""

from __future__ import annotations

import base64
import json

import pytest

from chalicelib.protocol import (
    MAX_MESSAGE_BYTES,
    ErrorCode,
    History,
    Join,
    Leave,
    Members,
    Ping,
    ProtocolError,
    Send,
    WhoAmI,
    encode_frame,
    error_frame,
    parse_frame,
)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ({"action": "ping"}, Ping()),
        ({"action": "ping", "id": "x"}, Ping(id="x")),
        ({"action": "whoami", "id": ""}, WhoAmI(id="")),
        ({"action": "join", "room": "a.b:c-d_9"}, Join(room="a.b:c-d_9")),
        ({"action": "leave", "room": "r" * 64}, Leave(room="r" * 64)),
        ({"action": "send", "room": "r", "data": None}, Send(room="r", data=None)),
        ({"action": "send", "room": "r", "data": {"deep": [1, 2]}, "id": "i" * 64},
         Send(room="r", data={"deep": [1, 2]}, id="i" * 64)),
        # protocol v2
        ({"action": "join", "room": "r", "since": 0}, Join(room="r", since=0)),
        ({"action": "join", "room": "r", "since": 41, "id": "j"}, Join(room="r", id="j", since=41)),
        ({"action": "join", "room": "r", "since": None}, Join(room="r")),
        ({"action": "history", "room": "r"}, History(room="r", limit=50)),
        ({"action": "history", "room": "r", "before": 9, "after": 2, "limit": 100},
         History(room="r", before=9, after=2, limit=100)),
        ({"action": "members", "room": "r", "id": "m"}, Members(room="r", id="m")),
    ],
)
def test_valid_frames_parse_to_requests(frame: dict[str, object], expected: object) -> None:
    assert parse_frame(json.dumps(frame)) == expected


def test_unknown_fields_are_ignored() -> None:
    assert parse_frame('{"action": "ping", "extra": [1]}') == Ping()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", ErrorCode.BAD_JSON),
        ("null", ErrorCode.BAD_JSON),
        ("Infinity", ErrorCode.BAD_JSON),
        ('{"action": "ping"} trailing', ErrorCode.BAD_JSON),
        ('{"action": null}', ErrorCode.BAD_REQUEST),
        ('{"action": "PING"}', ErrorCode.UNKNOWN_ACTION),
        ('{"action": "join", "room": "caf\u00e9"}', ErrorCode.BAD_REQUEST),
        ('{"action": "join", "room": "a/b"}', ErrorCode.BAD_REQUEST),
        ('{"action": "send", "room": "ok", "data": 1, "id": ["x"]}', ErrorCode.BAD_REQUEST),
        ('{"action": "ping", "id": "\\udc80"}', ErrorCode.BAD_REQUEST),
        # protocol v2 fields: non-negative integers, limit 1..100
        ('{"action": "join", "room": "r", "since": -1}', ErrorCode.BAD_REQUEST),
        ('{"action": "join", "room": "r", "since": 1.5}', ErrorCode.BAD_REQUEST),
        ('{"action": "join", "room": "r", "since": "3"}', ErrorCode.BAD_REQUEST),
        ('{"action": "join", "room": "r", "since": true}', ErrorCode.BAD_REQUEST),
        ('{"action": "join", "room": "r", "since": 9007199254740992}', ErrorCode.BAD_REQUEST),
        ('{"action": "history", "room": "r", "limit": 0}', ErrorCode.BAD_REQUEST),
        ('{"action": "history", "room": "r", "limit": 101}', ErrorCode.BAD_REQUEST),
        ('{"action": "history", "room": "r", "before": "x"}', ErrorCode.BAD_REQUEST),
        ('{"action": "history"}', ErrorCode.BAD_REQUEST),
        ('{"action": "members", "room": ""}', ErrorCode.BAD_REQUEST),
    ],
)
def test_invalid_frames_raise_with_their_code(text: str, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(text)
    assert info.value.code is code
    assert info.value.message


def test_size_limit_counts_utf8_bytes() -> None:
    # 50,000 three-byte characters: fewer characters than the limit, more bytes.
    text = json.dumps({"action": "ping", "pad": "\u20ac" * 50_000}, ensure_ascii=False)
    assert len(text) < MAX_MESSAGE_BYTES < len(text.encode())
    with pytest.raises(ProtocolError) as info:
        parse_frame(text)
    assert info.value.code is ErrorCode.TOO_LARGE


def test_error_after_a_readable_id_carries_it() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame('{"action": "join", "id": "q1"}')
    assert info.value.request_id == "q1"


def test_unknown_action_message_is_bounded_and_lists_actions() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_frame(json.dumps({"action": "z" * 10_000}))
    assert len(info.value.message) < 200
    assert "ping, join, leave, send, whoami" in info.value.message


def test_binary_frames_are_base64_utf8() -> None:
    body = base64.b64encode(b'{"action":"ping"}').decode()
    assert parse_frame(body, is_base64=True) == Ping()
    with pytest.raises(ProtocolError) as info:
        parse_frame("!!not base64!!", is_base64=True)
    assert info.value.code is ErrorCode.BAD_JSON


def test_server_frames_are_compact_utf8_envelopes() -> None:
    raw = encode_frame("message", {"text": "h\u00e9"}, "id1")
    assert raw == '{"type":"message","data":{"text":"h\u00e9"},"id":"id1"}'.encode()
    assert json.loads(error_frame(ErrorCode.NOT_MEMBER, "join first")) == {
        "type": "error", "data": {"code": "not_member", "message": "join first"}
    }


def test_unencodable_data_is_a_bad_request_not_a_crash() -> None:
    with pytest.raises(ProtocolError) as info:
        encode_frame("message", {"data": "\ud800"})
    assert info.value.code is ErrorCode.BAD_REQUEST
