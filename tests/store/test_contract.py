"""One behavioural contract, run against every backend (the ``store`` fixture is parametrized)."""

from __future__ import annotations

import threading

import pytest

from chalicelib.store import Admission, Claim, ConnectionStore
from chalicelib.store.base import (
    ACTIVITY_RESOLUTION_SECONDS,
    EXPIRY_GRACE_SECONDS,
    MAX_CONNECTION_SECONDS,
    JoinResult,
    SendRecord,
    StoredMessage,
)

from .fakes import T0, FakeClock


def register(store: ConnectionStore, cid: str, at: float = T0) -> None:
    store.register(cid, connected_at=at)


def admit(store: ConnectionStore, cid: str, limit: int = 0, window: int = 10) -> Admission:
    return store.admit(cid, rate_limit=limit, window_seconds=window)


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
    assert store.claim_welcome("c1") is Claim.CLAIMED
    register(store, "c1")
    record = store.get("c1")
    assert record is not None
    assert record.welcomed is True
    assert store.claim_welcome("c1") is Claim.ALREADY_CLAIMED


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
    assert store.claim_welcome("c1") is Claim.UNKNOWN
    assert admit(store, "c1").claim is Claim.UNKNOWN


# ---------------------------------------------------------------- welcome claim


def test_claim_exactly_once(store: ConnectionStore) -> None:
    register(store, "c1")
    assert store.claim_welcome("c1") is Claim.CLAIMED
    assert store.claim_welcome("c1") is Claim.ALREADY_CLAIMED
    assert admit(store, "c1").claim is Claim.ALREADY_CLAIMED
    record = store.get("c1")
    assert record is not None and record.welcomed


def test_admit_claims_the_welcome_exactly_once(store: ConnectionStore) -> None:
    register(store, "c1")
    first = admit(store, "c1")
    assert first.claim is Claim.CLAIMED and first.admitted
    assert admit(store, "c1").claim is Claim.ALREADY_CLAIMED
    assert store.claim_welcome("c1") is Claim.ALREADY_CLAIMED


def test_claim_unknown(store: ConnectionStore) -> None:
    assert store.claim_welcome("nobody") is Claim.UNKNOWN
    unknown = admit(store, "nobody", limit=5)
    assert unknown.claim is Claim.UNKNOWN and unknown.record is None
    # Neither creates a record.
    assert store.get("nobody") is None


def test_claim_after_remove_is_unknown(store: ConnectionStore) -> None:
    register(store, "c1")
    store.remove("c1")
    assert admit(store, "c1").claim is Claim.UNKNOWN
    assert store.claim_welcome("c1") is Claim.UNKNOWN


def test_admit_returns_the_record(store: ConnectionStore) -> None:
    store.register("c1", connected_at=T0, user="alice", endpoint="https://e/api")
    admission = admit(store, "c1")
    assert admission.record is not None
    assert admission.record.user == "alice"
    assert admission.record.endpoint == "https://e/api"


def test_activity_moves_last_seen_at_most_once_a_minute(
    store: ConnectionStore, clock: FakeClock
) -> None:
    register(store, "c1")
    admit(store, "c1")
    clock.advance(ACTIVITY_RESOLUTION_SECONDS - 1)
    admit(store, "c1")
    record = store.get("c1")
    assert record is not None and record.last_seen == T0  # still fresh: not moved
    clock.advance(1)
    admit(store, "c1")
    record = store.get("c1")
    assert record is not None and record.last_seen == T0 + ACTIVITY_RESOLUTION_SECONDS


def test_claim_keeps_last_seen(store: ConnectionStore, clock: FakeClock) -> None:
    register(store, "c1")
    clock.advance(100)
    store.claim_welcome("c1")
    store.claim_welcome("c1")
    record = store.get("c1")
    assert record is not None and record.last_seen == T0


@pytest.mark.parametrize("path", ["claim_welcome", "admit", "both"])
def test_concurrent_claims_yield_one_winner(store: ConnectionStore, path: str) -> None:
    register(store, "c1")
    barrier = threading.Barrier(8)
    results: list[Claim] = []
    lock = threading.Lock()

    def claim(index: int) -> None:
        barrier.wait()
        use_admit = path == "admit" or (path == "both" and index % 2 == 0)
        result = admit(store, "c1", limit=100).claim if use_admit else store.claim_welcome("c1")
        with lock:
            results.append(result)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.value for r in results) == ["already_claimed"] * 7 + ["claimed"]


# ---------------------------------------------------------------- rooms


def test_join_counts_members_including_joiner(store: ConnectionStore) -> None:
    assert store.join("a", "lobby").members == 1
    assert store.join("b", "lobby").members == 2
    assert store.join("c", "other").members == 1
    assert store.member_count("lobby") == 2
    assert store.member_count("nobody-here") == 0


def test_join_is_idempotent(store: ConnectionStore) -> None:
    assert store.join("a", "lobby") == JoinResult(members=1, new=True)
    assert store.join("a", "lobby") == JoinResult(members=1, new=False)
    assert store.members("lobby") == ["a"]
    assert store.rooms_of("a") == ["lobby"]
    assert store.member_count("lobby") == 1


def test_leave_reports_membership(store: ConnectionStore) -> None:
    store.join("a", "lobby")
    store.join("b", "lobby")
    assert store.leave("a", "lobby") is True
    assert store.leave("a", "lobby") is False
    assert store.leave("a", "never") is False
    assert store.members("lobby") == ["b"]
    assert store.rooms_of("a") == []
    # A second leave does not decrement again: the count stays exact.
    assert store.member_count("lobby") == 1
    assert store.join("a", "lobby").members == 2


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
    assert store.members("lobby") == ["a", "b"]
    assert store.members("empty") == []


def test_members_of_large_room(store: ConnectionStore) -> None:
    ids = [f"conn-{i:04d}" for i in range(150)]
    for i, cid in enumerate(ids, start=1):
        assert store.join(cid, "big").members == i
    assert store.members("big") == ids
    assert store.member_count("big") == 150


@pytest.mark.parametrize("page_size", [1, 7, 50, 51, 1000])
def test_member_pages_cover_the_room_once(store: ConnectionStore, page_size: int) -> None:
    ids = [f"m{i:03d}" for i in range(50)]
    for cid in ids:
        store.join(cid, "paged")
    store.join("zz-other-room", "elsewhere")
    pages = list(store.member_pages("paged", page_size=page_size))
    assert all(1 <= len(page) <= page_size for page in pages)
    assert [cid for page in pages for cid in page] == ids
    assert list(store.member_pages("empty-room", page_size=page_size)) == []


def test_member_pages_resume_after_a_member(store: ConnectionStore) -> None:
    ids = [f"m{i:03d}" for i in range(20)]
    for cid in ids:
        store.join(cid, "paged")
    resumed = list(store.member_pages("paged", page_size=6, start_after="m007"))
    assert [cid for page in resumed for cid in page] == ids[8:]


def test_member_pages_rejects_bad_page_size(store: ConnectionStore) -> None:
    with pytest.raises(ValueError):
        list(store.member_pages("r", page_size=0))


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
    assert store.remove("a").rooms == ["games", "lobby"]
    assert store.get("a") is None
    assert store.members("lobby") == ["b"]
    assert store.members("games") == []
    assert store.rooms_of("a") == []
    assert not store.is_member("a", "lobby")
    assert store.get("b") is not None
    assert store.member_count("lobby") == 1
    assert store.member_count("games") == 0


def test_remove_is_idempotent(store: ConnectionStore) -> None:
    register(store, "a")
    store.join("a", "lobby")
    assert store.remove("a").rooms == ["lobby"]
    assert store.remove("a").rooms == []
    assert store.remove("never-registered").rooms == []
    assert store.member_count("lobby") == 0


def test_remove_connection_in_many_rooms(store: ConnectionStore) -> None:
    # More than one BatchWriteItem (25 requests) on DynamoDB.
    register(store, "a")
    rooms = [f"room-{i:02d}" for i in range(30)]
    for room in rooms:
        store.join("a", room)
    assert store.remove("a").rooms == rooms
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


def test_idle_connections_carry_what_the_sweep_needs(
    store: ConnectionStore, clock: FakeClock
) -> None:
    store.register("c1", connected_at=T0, endpoint="https://e/api")
    clock.advance(100)
    [idle] = store.idle_connections(50)
    assert (idle.connection_id, idle.connected_at, idle.last_seen, idle.endpoint) == (
        "c1", T0, T0, "https://e/api")


def test_idle_connections_limit(store: ConnectionStore, clock: FakeClock) -> None:
    for i in range(40):
        register(store, f"c{i:02d}", at=T0 + i)
        clock.advance(1)
    clock.advance(100)
    idle = store.idle_connections(50, limit=3)
    assert [r.connection_id for r in idle] == ["c00", "c01", "c02"]


def test_activity_makes_connection_not_idle(store: ConnectionStore, clock: FakeClock) -> None:
    register(store, "a")
    register(store, "b")
    clock.advance(100)
    admit(store, "a")
    idle = store.idle_connections(50)
    assert [r.connection_id for r in idle] == ["b"]
    assert idle[0].last_seen == T0


def test_mark_checked_moves_a_record_to_the_back(
    store: ConnectionStore, clock: FakeClock
) -> None:
    for cid in ("a", "b", "c"):
        register(store, cid)
        clock.advance(1)
    clock.advance(100)
    assert store.mark_checked("a") is True
    assert [r.connection_id for r in store.idle_connections(50)] == ["b", "c"]
    clock.advance(100)
    assert [r.connection_id for r in store.idle_connections(50)] == ["b", "c", "a"]
    assert store.mark_checked("nobody") is False
    assert store.get("nobody") is None


def test_past_limit(store: ConnectionStore, clock: FakeClock) -> None:
    register(store, "c1")
    clock.advance(MAX_CONNECTION_SECONDS - 1)
    [idle] = store.idle_connections(0)
    assert not store.is_past_limit(idle)
    clock.advance(1)
    assert store.is_past_limit(idle)


# ---------------------------------------------------------------- message rate (fixed window)


def _window_start(clock: FakeClock, window: int) -> None:
    clock.advance(window - clock() % window)


def test_admit_counts_up_to_the_limit(store: ConnectionStore, clock: FakeClock) -> None:
    _window_start(clock, 10)
    register(store, "c1")
    assert [admit(store, "c1", limit=3).admitted for _ in range(5)] == [
        True, True, True, False, False
    ]
    clock.advance(9.5)
    assert admit(store, "c1", limit=3).admitted is False


def test_admit_recovers_in_the_next_window(store: ConnectionStore, clock: FakeClock) -> None:
    _window_start(clock, 10)
    register(store, "c1")
    for _ in range(4):
        admit(store, "c1", limit=2)
    clock.advance(10)
    # Refused messages were not counted: the new window starts from zero.
    assert [admit(store, "c1", limit=2).admitted for _ in range(3)] == [True, True, False]


def test_admit_with_the_limit_off_always_admits(store: ConnectionStore) -> None:
    register(store, "c1")
    assert all(admit(store, "c1", limit=0).admitted for _ in range(20))
    # Nothing was counted: with a limit of 1 the next message is still admitted.
    assert admit(store, "c1", limit=1).admitted


def test_rate_limited_message_still_gets_the_welcome(
    store: ConnectionStore, clock: FakeClock
) -> None:
    _window_start(clock, 10)
    register(store, "c1")
    assert store.claim_welcome("c1") is Claim.CLAIMED
    store.remove("c1")
    register(store, "c1")
    # A fresh record is welcomed on the first message even if it is over the limit.
    first = admit(store, "c1", limit=1)
    assert (first.claim, first.admitted) == (Claim.CLAIMED, True)
    second = admit(store, "c1", limit=1)
    assert (second.claim, second.admitted) == (Claim.ALREADY_CLAIMED, False)


def test_admit_is_per_connection(store: ConnectionStore, clock: FakeClock) -> None:
    _window_start(clock, 10)
    register(store, "a")
    register(store, "b")
    assert admit(store, "a", limit=1).admitted is True
    assert admit(store, "a", limit=1).admitted is False
    assert admit(store, "b", limit=1).admitted is True


def test_register_again_keeps_the_rate_counter(store: ConnectionStore, clock: FakeClock) -> None:
    _window_start(clock, 10)
    register(store, "c1")
    assert admit(store, "c1", limit=1).admitted is True
    register(store, "c1")  # a healing re-registration must not reset the limit
    assert admit(store, "c1", limit=1).admitted is False


def test_the_rate_is_counted_per_user_across_connections(
    store: ConnectionStore, clock: FakeClock
) -> None:
    _window_start(clock, 10)
    for cid in ("phone", "laptop", "tablet"):
        store.register(cid, connected_at=T0, user="alice")
    store.register("bob-1", connected_at=T0, user="bob")
    # Three sockets of one user share one budget of 4 (not 4 each).
    results = [admit(store, cid, limit=4).admitted
               for cid in ("phone", "laptop", "tablet", "phone", "laptop", "tablet")]
    assert results == [True, True, True, True, False, False]
    assert admit(store, "bob-1", limit=4).admitted is True  # another user's budget
    clock.advance(10)
    assert admit(store, "tablet", limit=4).admitted is True  # the next window


def test_admit_rejects_bad_arguments(store: ConnectionStore) -> None:
    with pytest.raises(ValueError):
        admit(store, "", limit=1)
    with pytest.raises(ValueError):
        store.admit("c1", rate_limit=-1, window_seconds=1)
    with pytest.raises(ValueError):
        store.admit("c1", rate_limit=1, window_seconds=0)


def test_concurrent_admits_never_exceed_the_limit(
    store: ConnectionStore, clock: FakeClock
) -> None:
    _window_start(clock, 60)
    register(store, "c1")
    results: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait(timeout=10)
        for _ in range(5):
            admitted = admit(store, "c1", limit=17, window=60).admitted
            with lock:
                results.append(admitted)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 40
    assert results.count(True) == 17


def test_remove_returns_the_user(store: ConnectionStore) -> None:
    store.register("a", connected_at=T0, user="alice")
    store.join("a", "lobby")
    removal = store.remove("a")
    assert (removal.user, removal.rooms) == ("alice", ["lobby"])
    assert store.remove("a").user is None


# ---------------------------------------------------------------- protocol v2: seq and history


def publish(store: ConnectionStore, room: str, n: int, *, keep: int = 100, ts: int = 0,
            ttl: int = 3600) -> int:
    return store.publish(room, mid=f"mid-{n}", sender="alice", data_json=f'{{"n":{n}}}',
                         ts=ts or int(T0 * 1000), keep=keep, ttl_seconds=ttl)


def test_publish_numbers_each_room_from_one(store: ConnectionStore) -> None:
    assert store.head("r") == 0
    assert [publish(store, "r", n) for n in range(3)] == [1, 2, 3]
    assert publish(store, "other", 0) == 1
    assert store.head("r") == 3


def test_concurrent_publishes_get_distinct_consecutive_numbers(store: ConnectionStore) -> None:
    seqs: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def worker() -> None:
        barrier.wait(timeout=10)
        for n in range(5):
            seq = publish(store, "busy", n, keep=0)
            with lock:
                seqs.append(seq)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(seqs) == list(range(1, 31))


def test_history_returns_the_newest_within_the_range(store: ConnectionStore) -> None:
    for n in range(1, 11):
        publish(store, "r", n)
    found = store.history("r", after=0, upto=10, head=10, limit=3, keep=100, ttl_seconds=3600)
    assert [m.seq for m in found] == [8, 9, 10]
    assert found[0] == StoredMessage(8, "mid-8", "alice", '{"n":8}', int(T0 * 1000))
    middle = store.history("r", after=2, upto=5, head=10, limit=50, keep=100, ttl_seconds=3600)
    assert [m.seq for m in middle] == [3, 4, 5]


def test_history_keeps_only_the_last_messages(store: ConnectionStore) -> None:
    for n in range(1, 11):
        publish(store, "r", n, keep=4)
    found = store.history("r", after=0, upto=10, head=10, limit=50, keep=4, ttl_seconds=3600)
    assert [m.seq for m in found] == [7, 8, 9, 10]


def test_history_filters_expired_messages(store: ConnectionStore, clock: FakeClock) -> None:
    publish(store, "r", 1, ts=int(clock() * 1000))
    clock.advance(50)
    publish(store, "r", 2, ts=int(clock() * 1000))
    clock.advance(20)  # the first is 70 s old, the second 20 s
    found = store.history("r", after=0, upto=2, head=2, limit=50, keep=100, ttl_seconds=60)
    assert [m.seq for m in found] == [2]


def test_history_off_keeps_nothing_but_still_numbers(store: ConnectionStore) -> None:
    assert publish(store, "r", 1, keep=0) == 1
    assert store.history("r", after=0, upto=1, head=1, limit=5, keep=0, ttl_seconds=60) == []
    assert store.head("r") == 1


def test_forget_message(store: ConnectionStore) -> None:
    for n in range(1, 4):
        publish(store, "r", n)
    store.forget_message("r", 2)
    store.forget_message("r", 2)  # idempotent
    found = store.history("r", after=0, upto=3, head=3, limit=50, keep=100, ttl_seconds=3600)
    assert [m.seq for m in found] == [1, 3]


def test_history_of_a_room_with_many_messages_reads_in_pages(store: ConnectionStore) -> None:
    for n in range(1, 121):
        publish(store, "long", n)
    found = store.history("long", after=5, upto=120, head=120, limit=100, keep=200,
                          ttl_seconds=3600)
    assert [m.seq for m in found] == list(range(21, 121))


# ---------------------------------------------------------------- protocol v2: idempotent send


def test_remember_and_recall_a_send(store: ConnectionStore, clock: FakeClock) -> None:
    assert store.recall_send("alice", "r", "id-1") is None
    assert store.remember_send("alice", "r", "id-1", SendRecord(4, "m4"), 60) is None
    assert store.recall_send("alice", "r", "id-1") == SendRecord(4, "m4")
    # Another accepted send with the same id loses: the first record wins.
    assert store.remember_send("alice", "r", "id-1", SendRecord(5, "m5"), 60) == SendRecord(
        4, "m4")
    # Per user and per room.
    assert store.recall_send("bob", "r", "id-1") is None
    assert store.recall_send("alice", "other", "id-1") is None
    clock.advance(61)
    assert store.recall_send("alice", "r", "id-1") is None
    assert store.remember_send("alice", "r", "id-1", SendRecord(9, "m9"), 60) is None


def test_concurrent_remembers_have_one_winner(store: ConnectionStore) -> None:
    barrier = threading.Barrier(6)
    results: list[SendRecord | None] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        barrier.wait(timeout=10)
        result = store.remember_send("alice", "r", "same", SendRecord(n, f"m{n}"), 60)
        with lock:
            results.append(result)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results.count(None) == 1
    winner = store.recall_send("alice", "r", "same")
    assert winner is not None and all(r in (None, winner) for r in results)


# ---------------------------------------------------------------- protocol v2: presence


def test_presence_counts_connections_per_user(store: ConnectionStore) -> None:
    assert store.presence_enter("r", "alice") == 1
    assert store.presence_enter("r", "alice") == 2
    assert store.presence_enter("r", "bob") == 1
    presence = store.presence("r")
    assert (sorted(presence.users), presence.count) == ([("alice", 2), ("bob", 1)], 2)
    assert store.presence_exit("r", "alice") == 1
    assert store.presence_exit("r", "alice") == 0
    assert store.presence_exit("r", "alice") is None  # not present: nothing to announce
    presence = store.presence("r")
    assert (presence.users, presence.count, presence.truncated) == ([("bob", 1)], 1, False)


def test_presence_list_is_capped_but_the_count_is_exact(store: ConnectionStore) -> None:
    for n in range(12):
        store.presence_enter("r", f"user-{n:02d}")
    presence = store.presence("r", limit=5)
    assert len(presence.users) == 5 and presence.count == 12 and presence.truncated
    assert store.presence("empty").count == 0


# ---------------------------------------------------------------- room access control


def test_membership_records_the_granted_operations(store: ConnectionStore) -> None:
    assert store.membership("a", "r") is None
    store.join("a", "r", ops="s")
    assert store.membership("a", "r") == "s"
    store.join("a", "r", ops="sp")  # a re-join (a new token) updates them
    assert store.membership("a", "r") == "sp"
    assert store.join("a", "r").new is False
    assert store.membership("a", "r") == "sphr"  # none recorded: every operation
    store.leave("a", "r")
    assert store.membership("a", "r") is None


def test_capabilities_and_claims_are_kept_with_the_connection(store: ConnectionStore) -> None:
    store.register("c1", connected_at=T0, user="alice", capabilities="news=s;team-a:*=sp")
    record = store.get("c1")
    assert record is not None and record.capabilities == "news=s;team-a:*=sp"
    assert admit(store, "c1").record is not None
    assert admit(store, "c1").record.capabilities == "news=s;team-a:*=sp"  # type: ignore[union-attr]
    assert store.claims_of("c1") is None
    store.remember_claims("c1", '{"sub": "alice", "tenant": "t1"}')
    assert store.claims_of("c1") == '{"sub": "alice", "tenant": "t1"}'
    store.register("c2", connected_at=T0)
    record = store.get("c2")
    assert record is not None and record.capabilities is None
    store.remove("c1")
    assert store.claims_of("c1") is None


def test_connections_of_a_user(store: ConnectionStore, clock: FakeClock) -> None:
    store.register("phone", connected_at=T0, user="bob")
    store.register("laptop", connected_at=T0, user="bob")
    store.register("other", connected_at=T0, user="alice")
    store.register("anonymous", connected_at=T0)
    assert store.connections_of_user("bob") == ["laptop", "phone"]
    store.remove("phone")
    assert store.connections_of_user("bob") == ["laptop"]
    assert store.connections_of_user("nobody") == []
    clock.advance(MAX_CONNECTION_SECONDS + EXPIRY_GRACE_SECONDS + 1)
    assert store.connections_of_user("bob") == []  # expired records do not count
    with pytest.raises(ValueError):
        store.connections_of_user("")
