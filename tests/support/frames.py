"""Reading server frames in tests."""

from __future__ import annotations

from typing import Any

#: Fields protocol v2 added to v1 frames, whose values tests check separately.
V2_IDS = ("seq", "mid", "ts")


def without_ids(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without v2's ``seq``/``mid``/``ts`` (asserting they are present and typed), so
    a test can compare the v1 fields exactly: every v1 field stays in v2."""
    for key in V2_IDS:
        if key in data:
            assert isinstance(data[key], int if key != "mid" else str), (key, data[key])
    return {k: v for k, v in data.items() if k not in V2_IDS}
