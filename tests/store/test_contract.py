"""One behavioural contract, run against every backend (the ``store`` fixture is parametrized)."""

from __future__ import annotations

import threading

import pytest

from chalicelib.store import Claim, ConnectionStore
from chalicelib.store.base import EXPIRY_GRACE_SECONDS, MAX_CONNECTION_SECONDS

from .fakes import T0, FakeClock


def register(store: ConnectionStore, cid: str, at: float = T0) -> None:
    store.register(cid, connected_at=at)


# ---------------------------------------------------------------- register / get


def test_get_unknown_is_none(store: ConnectionStore) -> None:
    assert store.get("nobody") is None


def test_register_then_get(store: ConnectionStore) -> None:
    store.register("c1", connected_at=T0, source_ip="203.0.113.7", user="alice",
                   endpoint="https://abc.execute-api.us-east-1.amazonaws.com/api")
    record = store.get("c1")
    assert record is not None
    assert record.connection_id == "c1"
    assert record.connected_at == T0
    assert record.last_seen == T0
    assert record.welcomed is False
    assert record.source_ip == "203.0.113.7"
    assert record.user == "alice"
    assert record.endpoint == "https://abc.execute-api.us-east-1.amazonaws.com/api"


def test_register_without_user(store: ConnectionStore) -> None:
    store.register("c1", connected_at=T0)
    record = store.get("c1")
    assert record is not None
    assert record.user is None
    assert record.source_ip == ""
    assert record.endpoint == ""


def test_register_is_idempotent_and_keeps_welcome(store: ConnectionStore) -> None:
    register(store, "c1")
    assert store.claim_welcome("c1", touch=False) is Claim.CLAIMED
    register(store, "c1")
    record = store.get("c1")
    assert record is not None
    assert record.welcomed is True
    assert store.claim_welcome("c1", touch=False) is Claim.ALREADY_CLAIMED


def test_register_rejects_empty_id(store: ConnectionStore) -> None:
    with pytest.raises(ValueError):
        store.register("", connected_at=T0)


# ---------------------------------------------------------------- expiry


def test_record_expires(store: ConnectionStore, clock: FakeClock) -> None:
    register(store, "c1")
    lifetime = MAX_CONNECTION_SECONDS + EXPIRY_GRACE_SECONDS
    clock.advance(lifetime - 1)
    assert store.get("c1") is not None
    clock.advance(1)
    assert store.get("c1") is None


def test_claim_on_expired_record_is_unknown(store: ConnectionStore, clock: FakeClock) -> None:
    register(store, "c1")
    clock.advance(MAX_CONNECTION_SECONDS + EXPIRY_GRACE_SECONDS + 1)
    assert store.claim_welcome("c1", touch=True) is Claim.UNKNOWN
    assert store.claim_welcome("c1", touch=False) is Claim.UNKNOWN


# ---------------------------------------------------------------- welcome claim


def test_claim_exactly_once(store: ConnectionStore) -> None:
    register(store, "c1")
    assert store.claim_welcome("c1", touch=False) is Claim.CLAIMED
    assert store.claim_welcome("c1", touch=False) is Claim.ALREADY_CLAIMED
    assert store.claim_welcome("c1", touch=True) is Claim.ALREADY_CLAIMED
    record = store.get("c1")
    assert record is not None and record.welcomed


def test_claim_with_touch_exactly_once(store: ConnectionStore) -> None:
    register(store, "c1")
    assert store.claim_welcome("c1", touch=True) is Claim.CLAIMED
    assert store.claim_welcome("c1", touch=True) is Claim.ALREADY_CLAIMED


def test_claim_unknown(store: ConnectionStore) -> None:
    assert store.claim_welcome("nobody", touch=False) is Claim.UNKNOWN
    assert store.claim_welcome("nobody", touch=True) is Claim.UNKNOWN
    # Touching an unknown connection must not create a record.
    assert store.get("nobody") is None


def test_claim_after_remove_is_unknown(store: ConnectionStore) -> None:
    register(store, "c1")
    store.remove("c1")
    assert store.claim_welcome("c1", touch=True) is Claim.UNKNOWN


def test_touch_updates_last_seen(store: ConnectionStore, clock: FakeClock) -> None:
    register(store, "c1")
    clock.advance(10)
    assert store.claim_welcome("c1", touch=True) is Claim.CLAIMED
    record = store.get("c1")
    assert record is not None and record.last_seen == T0 + 10
    clock.advance(5)
    assert store.claim_welcome("c1", touch=True) is Claim.ALREADY_CLAIMED
    record = store.get("c1")
    assert record is not None and record.last_seen == T0 + 15


def test_claim_without_touch_keeps_last_seen(store: ConnectionStore, clock: FakeClock) -> None:
    register(store, "c1")
    clock.advance(10)
    store.claim_welcome("c1", touch=False)
    store.claim_welcome("c1", touch=False)
    record = store.get("c1")
    assert record is not None and record.last_seen == T0


@pytest.mark.parametrize("touch", [False, True])
def test_concurrent_claims_yield_one_winner(store: ConnectionStore, touch: bool) -> None:
    register(store, "c1")
    barrier = threading.Barrier(8)
    results: list[Claim] = []
    lock = threading.Lock()

    def claim() -> None:
        barrier.wait()
        result = store.claim_welcome("c1", touch=touch)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.value for r in results) == ["already_claimed"] * 7 + ["claimed"]


# ---------------------------------------------------------------- rooms


def test_join_counts_members_including_joiner(store: ConnectionStore) -> None:
    assert store.join("a", "lobby") == 1
    assert store.join("b", "lobby") == 2
    assert store.join("c", "other") == 1


def test_join_is_idempotent(store: ConnectionStore) -> None:
    assert store.join("a", "lobby") == 1
    assert store.join("a", "lobby") == 1
    assert store.members("lobby") == ["a"]
    assert store.rooms_of("a") == ["lobby"]


def test_leave_reports_membership(store: ConnectionStore) -> None:
    store.join("a", "lobby")
    assert store.leave("a", "lobby") is True
    assert store.leave("a", "lobby") is False
    assert store.leave("a", "never") is False
    assert store.members("lobby") == []
    assert store.rooms_of("a") == []


def test_is_member(store: ConnectionStore) -> None:
    store.join("a", "lobby")
    assert store.is_member("a", "lobby")
    assert not store.is_member("a", "other")
    assert not store.is_member("b", "lobby")


def test_rooms_of_is_sorted(store: ConnectionStore) -> None:
    for room in ("zeta", "alpha", "mid"):
        store.join("a", room)
    assert store.rooms_of("a") == ["alpha", "mid", "zeta"]
    assert store.rooms_of("b") == []


def test_members(store: ConnectionStore) -> None:
    store.join("a", "lobby")
    store.join("b", "lobby")
    store.join("c", "other")
    assert sorted(store.members("lobby")) == ["a", "b"]
    assert store.members("empty") == []


def test_members_of_large_room(store: ConnectionStore) -> None:
    # Correctness at size; moto pages only at 1 MB, so test_dynamodb.py covers the paging loop.
    ids = [f"conn-{i:04d}" for i in range(150)]
    for i, cid in enumerate(ids, start=1):
        assert store.join(cid, "big") == i
    assert sorted(store.members("big")) == ids


def test_room_names_with_separator_characters(store: ConnectionStore) -> None:
    store.join("a", "room#with#hashes")
    assert store.rooms_of("a") == ["room#with#hashes"]
    assert store.members("room#with#hashes") == ["a"]


# ---------------------------------------------------------------- remove


def test_remove_returns_rooms_and_deletes_everything(store: ConnectionStore) -> None:
    register(store, "a")
    register(store, "b")
    store.join("a", "lobby")
    store.join("a", "games")
    store.join("b", "lobby")
    assert store.remove("a") == ["games", "lobby"]
    assert store.get("a") is None
    assert store.members("lobby") == ["b"]
    assert store.members("games") == []
    assert store.rooms_of("a") == []
    assert not store.is_member("a", "lobby")
    assert store.get("b") is not None


def test_remove_is_idempotent(store: ConnectionStore) -> None:
    register(store, "a")
    store.join("a", "lobby")
    assert store.remove("a") == ["lobby"]
    assert store.remove("a") == []
    assert store.remove("never-registered") == []


def test_remove_connection_in_many_rooms(store: ConnectionStore) -> None:
    # More than one BatchWriteItem (25 requests) on DynamoDB.
    register(store, "a")
    rooms = [f"room-{i:02d}" for i in range(30)]
    for room in rooms:
        store.join("a", room)
    assert store.remove("a") == rooms
    assert all(store.members(room) == [] for room in rooms)


# ---------------------------------------------------------------- idle sweep


def test_idle_connections_respects_cutoff_and_order(
    store: ConnectionStore, clock: FakeClock
) -> None:
    register(store, "old", at=T0)
    clock.advance(100)
    register(store, "mid", at=T0 + 100)
    clock.advance(100)
    register(store, "new", at=T0 + 200)
    clock.advance(50)  # now = T0 + 250: idle for 250, 150, 50 seconds

    assert [r.connection_id for r in store.idle_connections(150)] == ["old", "mid"]
    assert [r.connection_id for r in store.idle_connections(200)] == ["old"]
    assert [r.connection_id for r in store.idle_connections(10)] == ["old", "mid", "new"]
    assert store.idle_connections(1000) == []


def test_idle_connections_limit(store: ConnectionStore, clock: FakeClock) -> None:
    for i in range(5):
        register(store, f"c{i}", at=T0 + i)
        clock.advance(1)
    clock.advance(100)
    idle = store.idle_connections(50, limit=2)
    assert [r.connection_id for r in idle] == ["c0", "c1"]


def test_activity_makes_connection_not_idle(store: ConnectionStore, clock: FakeClock) -> None:
    register(store, "a")
    register(store, "b")
    clock.advance(100)
    store.claim_welcome("a", touch=True)
    idle = store.idle_connections(50)
    assert [r.connection_id for r in idle] == ["b"]
    assert idle[0].last_seen == T0


# ---------------------------------------------------------------- message rate (fixed window)


def _window_start(clock: FakeClock, window: int) -> None:
    clock.advance(window - clock() % window)


def test_admit_message_counts_up_to_the_limit(store: ConnectionStore, clock: FakeClock) -> None:
    _window_start(clock, 10)
    register(store, "c1")
    assert [store.admit_message("c1", limit=3, window_seconds=10) for _ in range(5)] == [
        True, True, True, False, False
    ]
    clock.advance(9.5)
    assert store.admit_message("c1", limit=3, window_seconds=10) is False


def test_admit_message_recovers_in_the_next_window(
    store: ConnectionStore, clock: FakeClock
) -> None:
    _window_start(clock, 10)
    for _ in range(4):
        store.admit_message("c1", limit=2, window_seconds=10)
    clock.advance(10)
    # Refused messages were not counted: the new window starts from zero.
    assert [store.admit_message("c1", limit=2, window_seconds=10) for _ in range(3)] == [
        True, True, False
    ]


def test_admit_message_is_per_connection(store: ConnectionStore, clock: FakeClock) -> None:
    _window_start(clock, 10)
    assert store.admit_message("a", limit=1, window_seconds=10) is True
    assert store.admit_message("a", limit=1, window_seconds=10) is False
    assert store.admit_message("b", limit=1, window_seconds=10) is True


def test_remove_resets_the_message_rate(store: ConnectionStore, clock: FakeClock) -> None:
    _window_start(clock, 10)
    register(store, "c1")
    store.join("c1", "lobby")
    assert store.admit_message("c1", limit=1, window_seconds=10) is True
    assert store.remove("c1") == ["lobby"]  # the counter is not mistaken for a room
    assert store.admit_message("c1", limit=1, window_seconds=10) is True


def test_admit_message_rejects_bad_arguments(store: ConnectionStore) -> None:
    with pytest.raises(ValueError):
        store.admit_message("", limit=1, window_seconds=1)
    with pytest.raises(ValueError):
        store.admit_message("c1", limit=0, window_seconds=1)


def test_concurrent_admits_never_exceed_the_limit(
    store: ConnectionStore, clock: FakeClock
) -> None:
    _window_start(clock, 60)
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait(timeout=10)
        for _ in range(5):
            admitted = store.admit_message("c1", limit=17, window_seconds=60)
            with lock:
                results.append(admitted)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 40
    assert results.count(True) == 17
