"""chalicelib.capabilities: room patterns to operations (no I/O)."""

from __future__ import annotations

import pytest

from chalicelib.capabilities import (
    ALL_OPERATIONS,
    EVERYTHING,
    Capabilities,
    CapabilityError,
    matches,
)


@pytest.mark.parametrize(("pattern", "room", "expected"), [
    ("news", "news", True),
    ("news", "news2", False),  # exact means exact
    ("news", "new", False),
    ("team-a:*", "team-a:general", True),
    ("team-a:*", "team-a:", True),  # the prefix itself
    ("team-a:*", "team-a", False),
    ("team-a:*", "team-b:x", False),
    ("team*", "teams", True),
    ("*", "anything.at_all:1", True),
])
def test_matching(pattern: str, room: str, expected: bool) -> None:
    assert matches(pattern, room) is expected


def test_overlapping_patterns_grant_the_union() -> None:
    caps = Capabilities.parse({
        "team-a:*": ["subscribe", "history"],
        "team-a:general": ["publish"],
        "*": ["presence"],
    })
    assert caps.for_room("team-a:general") == {"subscribe", "history", "publish", "presence"}
    assert caps.for_room("team-a:other") == {"subscribe", "history", "presence"}
    assert caps.for_room("elsewhere") == {"presence"}


def test_the_issue_example() -> None:
    caps = Capabilities.parse({"team-a:*": ["subscribe", "publish", "history"],
                               "news": ["subscribe"]})
    assert caps.for_room("team-a:general") == {"subscribe", "publish", "history"}
    assert caps.for_room("news") == {"subscribe"}
    assert caps.for_room("team-b:x") == frozenset()


def test_everything_and_empty() -> None:
    assert EVERYTHING.for_room("x") == ALL_OPERATIONS
    assert Capabilities.parse({}).for_room("x") == frozenset()
    assert Capabilities.parse({"r": []}).for_room("r") == frozenset()


@pytest.mark.parametrize("value", [
    [], "rooms", None, 3,
    {"r": "subscribe"},  # not a list
    {"r": ["subscribe", 1]},
    {"r": ["read"]},  # unknown operation
    {"team-*-x": ["subscribe"]},  # '*' only at the end
    {"**": ["subscribe"]},
    {"a b": ["subscribe"]},
    {"": ["subscribe"]},
    {"x" * 65: ["subscribe"]},
    {f"room-{n}": ["subscribe"] for n in range(33)},  # too many patterns
])
def test_bad_shapes_are_refused_with_a_reason(value: object) -> None:
    with pytest.raises(CapabilityError) as info:
        Capabilities.parse(value)
    assert str(info.value)


def test_the_stored_form_round_trips_and_stays_small() -> None:
    caps = Capabilities.parse({"team-a:*": ["subscribe", "publish"], "news": ["subscribe"],
                               "*": ["presence"]})
    encoded = caps.encode()
    assert encoded == "*=r;news=s;team-a:*=sp"
    assert Capabilities.decode(encoded) == caps
    assert EVERYTHING.encode() == "*=sphr"
    # The stored form is bounded (the connection record must stay under 1 KB).
    big = {f"room-with-a-long-name-{n:02d}-" + "x" * 30: ["subscribe"] for n in range(20)}
    with pytest.raises(CapabilityError, match="too large"):
        Capabilities.parse(big)


def test_default_capability_json() -> None:
    assert Capabilities.parse_json('{"*": ["subscribe"]}').for_room("a") == {"subscribe"}
    with pytest.raises(CapabilityError, match="not JSON"):
        Capabilities.parse_json("{nope")
