"""docs/extending.md is a test: its server code registers the action, its test code runs."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from chalicelib import actions
from tests.conftest import ROOT, AppHarness

GUIDE = ROOT / "docs" / "extending.md"


def block(tag: str) -> str:
    """The guide's code block fenced as ```python <tag>."""
    found = re.findall(rf"```python {tag}\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(found) == 1, f"docs/extending.md has {len(found)} 'python {tag}' blocks"
    return str(found[0])


@pytest.fixture
def guide_action() -> Iterator[dict[str, Any]]:
    namespace: dict[str, Any] = {}
    exec(compile(block("server"), str(GUIDE), "exec"), namespace)
    yield namespace
    actions.registry.clear()


def test_the_guides_typing_indicator_works(
    guide_action: dict[str, Any], harness: AppHarness
) -> None:
    namespace: dict[str, Any] = {}
    exec(compile(block("test"), str(GUIDE), "exec"), namespace)
    namespace["check_typing"](harness)


def test_app_actions_are_listed_and_validated_like_built_ins(
    guide_action: dict[str, Any], harness: AppHarness
) -> None:
    cid = harness.connect()
    unknown = harness.send(cid, {"action": "dance"})
    assert unknown["data"]["code"] == "unknown_action"
    assert "typing" in unknown["data"]["message"] and "send" in unknown["data"]["message"]
    missing = harness.send(cid, {"action": "typing", "typing": True})
    assert missing["data"] == {"code": "bad_request", "message": "missing field 'room'"}
    not_member = harness.send(cid, {"action": "typing", "room": "elsewhere", "typing": False})
    assert not_member["data"]["code"] == "not_member"
    assert harness.send(cid, {"action": "ping"})["type"] == "pong"  # still usable


def test_registering_refuses_bad_and_taken_names() -> None:
    registry = actions.ActionRegistry()
    with pytest.raises(ValueError, match="built in"):
        registry.register("send", (), lambda ctx, fields: None)
    with pytest.raises(ValueError, match="action name"):
        registry.register("Bad-Name", (), lambda ctx, fields: None)
    with pytest.raises(ValueError, match="unique"):
        registry.register("x", (actions.Field("a"), actions.Field("a")), lambda c, f: None)


def test_a_handler_that_fails_answers_internal_without_a_traceback(harness: AppHarness) -> None:
    @actions.action("explode")
    def explode(ctx: actions.ActionContext, fields: Any) -> None:
        raise RuntimeError("secret detail")

    try:
        cid = harness.connect()
        reply = harness.send(cid, {"action": "explode", "id": "e"})
        assert reply["data"]["code"] == "internal" and reply["id"] == "e"
        assert "secret" not in str(reply)
        # None from a handler: a plain ok.
        actions.registry.register("noop", (), lambda ctx, fields: None)
        assert harness.send(cid, {"action": "noop"}) == {
            "type": "ok", "data": {"action": "noop"}}
    finally:
        actions.registry.clear()
