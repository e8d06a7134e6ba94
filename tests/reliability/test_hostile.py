"""Hostile input (hypothesis): random and adversarial frames, and malformed Lambda events.

Every frame gets exactly one reply, a valid envelope ``{"type": str, "data": dict}`` with ``id``
only when the frame had a valid one, and the right error code (from an oracle written from
docs/protocol.md, not from the code); the connection stays usable (the next ping answers pong);
no handler raises, nobody ever sees ``internal``, and room members only ever get valid JSON.
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import AppHarness
from tests.support.events import message_event

ROOMS = ["a", "b"]
VALID_ROOM = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
#: `make soak` raises it (RELIABILITY_EXAMPLES=2000); `make test` runs 200 per property.
EXAMPLES = int(os.environ.get("RELIABILITY_EXAMPLES", "200"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large])

# Text that includes lone surrogates (JSON escapes them as \ud800 when ensure_ascii is on).
any_text = st.text(st.characters(codec=None, categories=None), max_size=40)
scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
           allow_infinity=False) | any_text)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text, inner, max_size=4), max_leaves=20)

#: Raw JSON tokens json.dumps cannot produce: huge and non-finite numbers, deep nesting.
ADVERSARIAL = [
    "1e400", "-1e999", "NaN", "Infinity", "9" * 5000, "9" * 4000, "1e-400",
    "[" * 200 + "]" * 200, "[" * 100 + "]" * 100, '{"k":' * 129 + "0" + "}" * 129,
    '"\\ud800"', '"\\udfff\\ud800"', '"' + "x" * (1 << 20) + '"', '"' + "y" * 40000 + '"',
]


def field_value(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return valid | json_values


@st.composite
def structured_frames(draw: st.DrawFn) -> tuple[str, dict[str, Any], str | None]:
    """(frame text, the fields as sent, raw token placed in data or None)."""
    obj: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        obj["action"] = draw(field_value(st.sampled_from(
            ["ping", "join", "leave", "send", "whoami", "nope", "SEND"])))
    if draw(st.booleans()):
        obj["room"] = draw(field_value(st.sampled_from([*ROOMS, "", "bad room", "x" * 65])))
    if draw(st.booleans()):
        obj["id"] = draw(field_value(st.text(max_size=70)))
    raw: str | None = None
    if draw(st.booleans()):
        if draw(st.booleans()):
            raw = draw(st.sampled_from(ADVERSARIAL))
            obj["data"] = "RAW"
        else:
            obj["data"] = draw(json_values)
    text = json.dumps(obj)
    if raw is not None:
        text = text.replace('"RAW"', raw, 1)
    return text, obj, raw


def _encodable(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def expected(obj: dict[str, Any], raw: str | None, text: str, member_of: set[str]
             ) -> tuple[str, bool]:
    """(reply type or error code, whether the reply carries the id), from docs/protocol.md."""
    if len(text.encode("utf-8", "surrogatepass")) > 128 * 1024:
        return "too_large", False
    if raw is not None and (raw in ("NaN", "Infinity", "1e400", "-1e999", "9" * 5000)
                            or raw.startswith(("[" * 200, '{"k":' * 129))):
        return "bad_json", False
    rid = obj.get("id")
    if "id" in obj and not (isinstance(rid, str) and len(rid) <= 64 and _encodable(rid)):
        return "bad_request", False
    has_id = "id" in obj
    action = obj.get("action")
    if not isinstance(action, str):
        return "bad_request", has_id
    if action in ("ping", "whoami"):
        return {"ping": "pong", "whoami": "identity"}[action], has_id
    if action not in ("join", "leave", "send"):
        return "unknown_action", has_id
    room = obj.get("room")
    if not (isinstance(room, str) and VALID_ROOM.fullmatch(room)):
        return "bad_request", has_id
    if action == "join":
        return "joined", has_id
    if action == "leave":
        return "left", has_id
    if "data" not in obj:
        return "bad_request", has_id
    data_text = raw if raw is not None else json.dumps(obj["data"], ensure_ascii=False)
    if len(data_text.encode("utf-8", "surrogatepass")) > 32768:
        return "too_large", has_id  # the default WS_MAX_DATA_BYTES
    if room not in member_of:
        return "not_member", has_id
    if raw is None and not _encodable(obj["data"]):
        return "bad_request", has_id  # a lone surrogate cannot reach members intact
    if raw is not None and "\\ud" in raw:
        return "bad_request", has_id
    return "sent", has_id


def check_envelope(frame: Any) -> None:
    assert isinstance(frame, dict), frame
    assert set(frame) <= {"type", "data", "id"}, frame
    assert isinstance(frame["type"], str) and isinstance(frame["data"], dict), frame
    if frame["type"] == "error":
        assert frame["data"]["code"] != "internal", frame
        assert isinstance(frame["data"]["message"], str)


class Conversation:
    """One sender and one member in room "a" and "b", reused across hypothesis examples."""

    def __init__(self, harness: AppHarness) -> None:
        self.h = harness
        self.sender = harness.connect()
        self.member = harness.connect()
        for cid in (self.sender, self.member):
            harness.join(cid, "a")
        harness.join(self.member, "b")

    def frame(self, body: str, *, binary: bool = False) -> dict[str, Any]:
        before = len(self.h.api.received(self.sender))
        self.h.invoke("message", message_event(self.sender, body, binary=binary))
        frames = self.h.api.received(self.sender)[before:]
        assert len(frames) == 1, frames  # exactly one reply, the connection is not closed
        check_envelope(frames[0])
        pong = self.h.send(self.sender, {"action": "ping", "id": "after"})
        assert pong == {"type": "pong", "data": {}, "id": "after"}
        reply: dict[str, Any] = frames[0]
        return reply

    def members_frames_are_valid_json(self) -> None:
        for frame in self.h.api.received(self.member):
            check_envelope(frame)
            # The fake API parsed what was posted; re-encode strictly to prove it was JSON.
            json.dumps(frame, allow_nan=False)


@pytest.fixture
def conversation(harness: AppHarness, monkeypatch: pytest.MonkeyPatch) -> Conversation:
    monkeypatch.setenv("WS_RATE_LIMIT", "0")  # hundreds of frames on one connection
    return Conversation(harness)


@SETTINGS
@given(case=structured_frames())
def test_structured_frames_get_the_right_reply(
    conversation: Conversation, case: tuple[str, dict[str, Any], str | None]
) -> None:
    text, obj, raw = case
    member_of = set(conversation.h.store.rooms_of(conversation.sender))
    want, with_id = expected(obj, raw, text, member_of)
    reply = conversation.frame(text)
    got = reply["data"]["code"] if reply["type"] == "error" else reply["type"]
    assert got == want, (text[:300], reply)
    assert ("id" in reply) == with_id, (text[:300], reply)
    if with_id:
        assert reply["id"] == obj["id"]
    conversation.members_frames_are_valid_json()


@SETTINGS
@given(body=any_text | st.text(max_size=200).map(lambda t: "{" + t))
def test_random_text_frames(conversation: Conversation, body: str) -> None:
    reply = conversation.frame(body)
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        assert reply["type"] == "error" and reply["data"]["code"] == "bad_json", reply


@SETTINGS
@given(payload=st.binary(max_size=300))
def test_binary_frames(conversation: Conversation, payload: bytes) -> None:
    reply = conversation.frame(base64.b64encode(payload).decode(), binary=True)
    try:
        parsed = json.loads(payload.decode("utf-8"))
    except (ValueError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        assert reply["data"].get("code") == "bad_json", (payload, reply)


@pytest.mark.parametrize("raw", [
    "1e400", "-1e400", "[1e999]", '{"x": 1e309}', "NaN", "[Infinity]", "-Infinity",
    "[" * 129 + "]" * 129, '{"k":' * 200 + "1" + "}" * 200, "[" * 944 + "]" * 944,
    '{"k":' * 946 + "1" + "}" * 946, "[" * 5000 + "]" * 5000,
])
def test_numbers_and_nesting_members_could_not_read_are_refused(
    conversation: Conversation, raw: str
) -> None:
    received = len(conversation.h.api.received(conversation.member))
    reply = conversation.frame('{"action":"send","room":"a","id":"n","data":' + raw + "}")
    assert reply["data"].get("code") == "bad_json", reply
    assert len(conversation.h.api.received(conversation.member)) == received


def test_lone_surrogate_in_data_is_refused_with_the_id(conversation: Conversation) -> None:
    reply = conversation.frame('{"action":"send","room":"a","id":"s","data":{"\\ud800":1}}')
    assert reply == {"type": "error", "id": "s", "data": {
        "code": "bad_request", "message": reply["data"]["message"]}}


@pytest.mark.parametrize("body", ['{"data": 1e400}', '{"data": NaN}', '{"data": [-Infinity]}'])
def test_push_of_non_finite_numbers_is_refused(conversation: Conversation, body: str) -> None:
    received = len(conversation.h.api.received(conversation.member))
    response = conversation.h.client.http.post(
        "/rooms/a/messages", headers={"Content-Type": "application/json"}, body=body)
    assert response.status_code == 400
    assert len(conversation.h.api.received(conversation.member)) == received


# ---------------------------------------------------------------------- malformed events

request_contexts = st.fixed_dictionaries({}, optional={
    "connectionId": st.text(max_size=20) | st.integers() | st.none(),
    "apiId": st.text(max_size=8) | st.none(),
    "stage": st.text(max_size=8) | st.integers(),
    "domainName": st.text(max_size=20) | st.none(),
    "routeKey": st.sampled_from(["$connect", "$default", "$disconnect"]),
    "connectedAt": st.integers() | st.text(max_size=5) | st.none(),
    "identity": st.none() | st.text(max_size=5) | st.fixed_dictionaries(
        {}, optional={"sourceIp": st.text(max_size=5) | st.integers()}),
})
events: st.SearchStrategy[Any] = st.one_of(
    st.just({}), st.none(), st.lists(st.integers(), max_size=2),
    st.fixed_dictionaries({}, optional={
        "requestContext": request_contexts | st.text(max_size=5) | st.none(),
        "body": st.none() | st.text(max_size=20) | st.integers(),
        "isBase64Encoded": st.booleans() | st.none(),
        "headers": st.none() | st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
    }),
)


@SETTINGS
@given(event=events, function=st.sampled_from(["connect", "message", "disconnect"]))
def test_malformed_lambda_events_never_raise(
    harness: AppHarness, monkeypatch: pytest.MonkeyPatch, event: Any, function: str
) -> None:
    monkeypatch.setenv("WS_RATE_LIMIT", "0")
    from app import app

    response = app.handler_map[function](event, None)
    assert isinstance(response, dict) and isinstance(response.get("statusCode"), int)
    ctx = event.get("requestContext") if isinstance(event, dict) else None
    complete = isinstance(ctx, dict) and all(
        isinstance(ctx.get(k), str) and ctx.get(k) for k in
        ("connectionId", "apiId", "stage", "domainName"))
    if not complete:
        assert response["statusCode"] == 400
