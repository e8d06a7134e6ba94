"""wsrooms_client.resume: the client's decisions about each room message's seq (no I/O)."""

from __future__ import annotations

from wsrooms_client.resume import Cursor, Gap, Verdict, missing


def test_a_fresh_join_starts_at_the_head_and_delivers_the_next() -> None:
    cursor = Cursor()
    cursor.start("r", 41, resuming=False)
    assert cursor.observe("r", 42) == (Verdict.DELIVER, None)
    cursor.advance("r", 42)
    assert cursor.since("r") == 42


def test_already_seen_numbers_are_duplicates() -> None:
    cursor = Cursor()
    cursor.start("r", 5, resuming=False)
    assert cursor.observe("r", 5)[0] is Verdict.DUPLICATE
    assert cursor.observe("r", 3)[0] is Verdict.DUPLICATE


def test_a_jump_is_a_gap_naming_the_missing_numbers() -> None:
    cursor = Cursor()
    cursor.start("r", 5, resuming=False)
    assert cursor.observe("r", 9) == (Verdict.GAP, Gap("r", 6, 8))


def test_a_resumed_join_keeps_the_cursor_for_the_replay() -> None:
    cursor = Cursor()
    cursor.start("r", 3, resuming=False)
    cursor.start("r", 10, resuming=True)  # the joined reply of the resume: head 10
    assert cursor.since("r") == 3
    assert cursor.observe("r", 4) == (Verdict.DELIVER, None)


def test_a_fresh_join_never_moves_the_cursor_backwards() -> None:
    cursor = Cursor()
    cursor.advance("r", 8)  # a live message arrived before the joined reply
    cursor.start("r", 7, resuming=False)
    assert cursor.since("r") == 8


def test_rooms_are_independent_and_can_be_forgotten() -> None:
    cursor = Cursor()
    cursor.start("a", 1, resuming=False)
    cursor.start("b", 100, resuming=False)
    assert cursor.rooms() == ["a", "b"]
    assert cursor.observe("a", 2)[0] is Verdict.DELIVER
    cursor.forget("a")
    assert cursor.rooms() == ["b"] and cursor.since("a") is None
    assert cursor.observe("a", 50)[0] is Verdict.DELIVER  # unknown room: nothing to compare


def test_missing_lists_the_holes_history_could_not_fill() -> None:
    gap = Gap("r", 3, 9)
    assert missing(gap, [3, 4, 5, 6, 7, 8, 9]) == []
    assert missing(gap, []) == [gap]
    assert missing(gap, [5, 6, 9]) == [Gap("r", 3, 4), Gap("r", 7, 8)]
