"""The capacity model's structural targets, measured through the real handlers on moto.

bench.capacity runs the app under chalice.test.Client against moto's DynamoDB (the table from
deploy/resources.json) and prices every DynamoDB call with botocore hooks.  The quick scenario
keeps the rooms small; nothing here depends on wall-clock time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.capacity import (
    CPU_PER_POST_S,
    DELIVERER_ROW,
    QUICK,
    Measurements,
    build_model,
    deployment,
    measure_all,
    measured_cpu_per_post,
    table_kwargs,
)
from bench.dynamo_units import Cost, item_size, number_size, read_units, write_units
from chalicelib.store.dynamodb import table_definition


@pytest.fixture(scope="module")
def measured() -> Measurements:
    return measure_all(QUICK)


def units(measurements: Measurements, key: str) -> tuple[float, float, float, dict[str, int]]:
    cost = measurements[key]
    return cost.wcu, cost.rcu, cost.index_wcu, dict(cost.calls)


def test_a_steady_message_costs_one_write_unit_and_no_index_write(measured: Measurements) -> None:
    for cost in measured.steady_samples:
        assert cost.writes == 1 and cost.reads == 1
        assert cost.wcu <= 1 and cost.index_writes == 0


def test_a_rate_limited_message_costs_no_more_than_an_accepted_one(
    measured: Measurements,
) -> None:
    limited, steady = measured["limited"], measured["steady"]
    assert limited.wcu <= steady.wcu and limited.rcu <= steady.rcu
    assert limited.index_writes <= steady.index_writes
    assert limited.writes <= steady.writes and limited.reads <= steady.reads


def v1_units(cost: Cost) -> tuple[float, float]:
    """(write units, read units) outside the room's v2 history partition (``hist#``): what the
    send costs besides protocol v2's seq and history (their own target below)."""
    writes = sum(w for key, (w, _r) in cost.partitions.items() if not key.startswith("hist#"))
    reads = sum(r for key, (_w, r) in cost.partitions.items() if not key.startswith("hist#"))
    return writes, reads


def test_a_send_to_a_room_of_ten_is_one_write_and_two_reads(measured: Measurements) -> None:
    send = measured["send_small"]
    assert v1_units(send) == (1, 2)
    assert send.index_writes == 0
    assert send.posts == QUICK.small_room  # 9 deliveries and the sender's reply
    # Protocol v2 adds the seq and the history item: 2 write units, in their own partition.
    assert send.wcu - v1_units(send)[0] == 2


def test_join_costs_the_same_in_a_room_of_10_and_of_200(measured: Measurements) -> None:
    assert QUICK.join_room_sizes == (10, 200)
    small, big = measured["join_small"], measured["join_big"]
    # The join's own store work is O(1): the same writes, and the same reads but for the
    # member pages its presence announcement reads to reach the room (a broadcast, like a send).
    assert small.wcu == big.wcu
    assert {k: v for k, v in small.units_by_operation.items() if k != "Query"} == {
        k: v for k, v in big.units_by_operation.items() if k != "Query"}


def test_activity_moves_the_sweep_index_and_nothing_else_does(measured: Measurements) -> None:
    assert measured["refresh"].index_writes == 2  # the sort key moved: delete + put
    # Once a minute per connection: the meta item (lastSeen) and the rate counter, two writes.
    assert measured["refresh"].wcu == 2 and measured["refresh"].writes == 2
    for key in ("first", "limited", "send_small", "send_pair", "join_small", "leave",
                "push_small", "worker"):
        assert measured[key].index_writes == 0, key


def test_large_rooms_are_handed_to_the_queue(measured: Measurements) -> None:
    send = measured["send_large"]
    assert v1_units(send)[0] == 1 and send.posts == 1  # only the reply is posted inline
    assert measured.large_batches == -(-(QUICK.large_room - 1) // measured.worker_batch_size)
    assert measured["worker"].posts == measured.worker_batch_size


def test_the_model_reports_every_target(measured: Measurements) -> None:
    model = build_model(measured, deployment())
    names = [target.name for target in model.targets]
    assert any(name.startswith("steady message") for name in names)
    assert model.targets[0].passed  # the steady-message target
    # Batches are packed across member pages: none is wasted.
    assert model.room.batches == model.room.ideal_batches > 0
    assert all(target.passed for target in model.targets), [
        t for t in model.targets if not t.passed]


# ---------------------------------------------------------------------- the pricing rules


def test_item_size_follows_the_published_rules() -> None:
    assert number_size("0") == 2
    assert number_size("1700000000.25") == 7  # 12 significant digits
    assert number_size("100") == 2  # trailing zeros are trimmed
    assert item_size({"pk": {"S": "conn#é"}}) == 2 + 7
    assert item_size({"ok": {"BOOL": True}, "n": {"NULL": True}}) == 3 + 2
    assert item_size({"m": {"M": {"a": {"S": "xy"}}}}) == 1 + 3 + (1 + 1 + 2)
    assert item_size({"l": {"L": [{"S": "x"}, {"S": "yz"}]}}) == 1 + 3 + (1 + 1) + (1 + 2)
    assert write_units(0) == 1 and write_units(1024) == 1 and write_units(1025, 10) == 2
    assert read_units(4096, True) == 1 and read_units(4097, False) == 1


def test_the_model_table_is_the_template_table() -> None:
    assert table_kwargs("t") == table_definition("t")


def test_cpu_per_post_is_read_from_the_benchmark_report(tmp_path: Path) -> None:
    """The model's CPU per post is docs/benchmarks.md's section 3 figure, not a copy of it."""
    report = tmp_path / "benchmarks.md"
    report.write_text("| sender | deliveries | calls per delivery | CPU ms per delivery |\n"
                      f"{DELIVERER_ROW} 3,000 | 1.00 | 0.812 | 0.15x |\n")
    measured = measured_cpu_per_post(str(report))
    assert measured.value == pytest.approx(0.000812)
    assert "0.812 ms CPU per delivery" in measured.source
    assert measured_cpu_per_post() == CPU_PER_POST_S  # the repository's report
    report.write_text("no table here\n")
    with pytest.raises(ValueError, match="no section 3 row"):
        measured_cpu_per_post(str(report))
    with pytest.raises(ValueError, match=r"missing\.md: no section 3 row"):
        measured_cpu_per_post(str(tmp_path / "missing.md"))
