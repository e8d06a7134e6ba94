"""DynamoDB-specific behaviour, with botocore's Stubber: throttling, condition failures, queries.

A Stubber fails the test on any call it does not expect, so expecting ``query`` proves that
``members`` never scans.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from chalicelib.errors import StoreError
from chalicelib.store import Claim, TransientStoreError
from chalicelib.store.base import DEFAULT_ATTEMPTS, expires_at
from chalicelib.store.dynamodb import (
    LAST_SEEN_INDEX,
    SWEEP_SHARDS,
    TTL_ATTRIBUTE,
    DynamoDbStore,
    sweep_shard,
    table_definition,
)

from .fakes import T0, FakeClock

TABLE = "stubbed"


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def client(fake_aws: None) -> Any:
    return boto3.client("dynamodb", region_name="us-east-1")


@pytest.fixture
def stubber(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def store(client: Any, sleep: RecordingSleep) -> DynamoDbStore:
    return DynamoDbStore(TABLE, client, clock=FakeClock(), sleep=sleep)


def live_item(cid: str = "c1", *, welcomed: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "pk": {"S": f"conn#{cid}"},
        "sk": {"S": "meta"},
        "connectedAt": {"N": str(T0)},
        "lastSeen": {"N": str(T0)},
    }
    if welcomed:
        item["welcomedAt"] = {"N": str(T0)}
    return item


def test_throttled_twice_then_succeeds(
    stubber: Stubber, store: DynamoDbStore, sleep: RecordingSleep
) -> None:
    for _ in range(2):
        stubber.add_client_error(
            "get_item", service_error_code="ProvisionedThroughputExceededException"
        )
    stubber.add_response("get_item", {"Item": live_item(welcomed=True)})
    record = store.get("c1")
    assert record is not None and record.welcomed
    assert len(sleep.calls) == 2


@pytest.mark.parametrize(
    "code",
    [
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "TransactionConflictException",
    ],
)
def test_always_throttled_gives_transient_error_after_bound(
    stubber: Stubber, store: DynamoDbStore, sleep: RecordingSleep, code: str
) -> None:
    for _ in range(DEFAULT_ATTEMPTS):
        stubber.add_client_error("get_item", service_error_code=code)
    with pytest.raises(TransientStoreError, match=code):
        store.get("c1")
    assert len(sleep.calls) == DEFAULT_ATTEMPTS - 1


def test_other_errors_are_store_errors_without_retry(
    stubber: Stubber, store: DynamoDbStore, sleep: RecordingSleep
) -> None:
    stubber.add_client_error("get_item", service_error_code="ResourceNotFoundException")
    with pytest.raises(StoreError, match="ResourceNotFoundException") as info:
        store.get("c1")
    assert not isinstance(info.value, TransientStoreError)
    assert sleep.calls == []


def test_condition_failure_on_claim_is_already_claimed(
    stubber: Stubber, store: DynamoDbStore
) -> None:
    stubber.add_client_error(
        "update_item",
        service_error_code="ConditionalCheckFailedException",
        modeled_fields={"Item": live_item(welcomed=True)},
        expected_params={
            "TableName": TABLE,
            "Key": {"pk": {"S": "conn#c1"}, "sk": {"S": "meta"}},
            "UpdateExpression": ANY,
            "ConditionExpression": ANY,
            "ExpressionAttributeValues": ANY,
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        },
    )
    assert store.claim_welcome("c1") is Claim.ALREADY_CLAIMED


def test_condition_failure_without_item_is_unknown(stubber: Stubber, store: DynamoDbStore) -> None:
    stubber.add_client_error("update_item", service_error_code="ConditionalCheckFailedException")
    assert store.claim_welcome("c1") is Claim.UNKNOWN


def meta_item(*, welcomed: bool, last_seen: float = T0, user: str | None = None
              ) -> dict[str, Any]:
    item = live_item(welcomed=welcomed)
    item["lastSeen"] = {"N": str(last_seen)}
    if user is not None:
        item["user"] = {"S": user}
    return item


def expect_update(stubber: Stubber, check: Any) -> None:
    """Expect one conditional update_item of the meta item; ``check(update)`` inspects it."""

    class Inspect:
        def __eq__(self, other: object) -> bool:
            check(other)
            return True

    stubber.add_response("update_item", {}, {
        "TableName": TABLE, "Key": {"pk": {"S": "conn#c1"}, "sk": {"S": "meta"}},
        "UpdateExpression": Inspect(), "ConditionExpression": ANY,
        "ExpressionAttributeValues": ANY, "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
    })


def expect_count(stubber: Stubber, key: str, *, refused: bool = False) -> None:
    """Expect the rate counter's one conditional ADD on the window's item of ``key``."""
    window = int(T0 // 10) * 10
    params = {
        "TableName": TABLE, "Key": {"pk": {"S": f"rate#{key}"}, "sk": {"S": str(window)}},
        "UpdateExpression": "ADD n :one SET expiresAt = :exp",
        "ConditionExpression": "attribute_not_exists(n) OR n < :limit",
        "ExpressionAttributeValues": {":one": {"N": "1"}, ":exp": {"N": str(window + 70)},
                                      ":limit": {"N": "10"}},
    }
    if refused:
        stubber.add_client_error("update_item",
                                 service_error_code="ConditionalCheckFailedException",
                                 expected_params=params)
    else:
        stubber.add_response("update_item", {}, params)


def test_steady_message_is_one_read_and_one_write_without_an_index_move(
    stubber: Stubber, store: DynamoDbStore
) -> None:
    # The Stubber fails on any call not listed: one GetItem, then the counter's UpdateItem; the
    # meta item (and so the sweep index) is not written.
    stubber.add_response("get_item", {"Item": meta_item(welcomed=True)})
    expect_count(stubber, "c:c1")
    admission = store.admit("c1", rate_limit=10, window_seconds=10)
    assert (admission.claim, admission.admitted) == (Claim.ALREADY_CLAIMED, True)


def test_the_rate_counter_belongs_to_the_user(stubber: Stubber, store: DynamoDbStore) -> None:
    stubber.add_response("get_item", {"Item": meta_item(welcomed=True, user="alice")})
    expect_count(stubber, "u:alice")
    assert store.admit("c1", rate_limit=10, window_seconds=10).admitted


def test_rate_limited_message_costs_what_an_accepted_one_does(
    stubber: Stubber, store: DynamoDbStore
) -> None:
    stubber.add_response("get_item", {"Item": meta_item(welcomed=True)})
    expect_count(stubber, "c:c1", refused=True)
    admission = store.admit("c1", rate_limit=10, window_seconds=10)
    assert admission.admitted is False


def test_first_message_claims_the_welcome_then_counts(
    stubber: Stubber, store: DynamoDbStore
) -> None:
    stubber.add_response("get_item", {"Item": meta_item(welcomed=False)})

    def claims(update: object) -> None:
        assert update == "SET welcomedAt = :now"

    expect_update(stubber, claims)
    expect_count(stubber, "c:c1")
    assert store.admit("c1", rate_limit=10, window_seconds=10).claim is Claim.CLAIMED


def test_stale_activity_moves_the_index_once(stubber: Stubber, store: DynamoDbStore) -> None:
    stubber.add_response("get_item", {"Item": meta_item(welcomed=True, last_seen=T0 - 61)})

    def moves_last_seen(update: object) -> None:
        assert update == "SET lastSeen = :seen"

    expect_update(stubber, moves_last_seen)
    store.admit("c1", rate_limit=0, window_seconds=10)


def test_lost_race_reads_again(stubber: Stubber, store: DynamoDbStore) -> None:
    stubber.add_response("get_item", {"Item": meta_item(welcomed=False)})
    stubber.add_client_error("update_item", service_error_code="ConditionalCheckFailedException")
    # Someone else claimed the welcome in between: the second round sees it and does not claim.
    stubber.add_response("get_item", {"Item": meta_item(welcomed=True)})
    expect_count(stubber, "c:c1")
    assert store.admit("c1", rate_limit=10, window_seconds=10).claim is Claim.ALREADY_CLAIMED


def test_member_pages_query_one_page_at_a_time(stubber: Stubber, store: DynamoDbStore) -> None:
    expected = {
        "TableName": TABLE,
        "KeyConditionExpression": "pk = :pk AND sk BETWEEN :low AND :high",
        "ExpressionAttributeValues": {":pk": {"S": "room#lobby"}, ":low": {"S": "conn#"},
                                      ":high": {"S": "conn$"}},
        "ProjectionExpression": "sk",
        "ConsistentRead": True,
        "Limit": 2,
    }
    last_key = {"pk": {"S": "room#lobby"}, "sk": {"S": "conn#b"}}
    stubber.add_response(
        "query",
        {"Items": [{"sk": {"S": "conn#a"}}, {"sk": {"S": "conn#b"}}], "LastEvaluatedKey": last_key},
        expected,
    )
    stubber.add_response(
        "query",
        {"Items": [{"sk": {"S": "conn#b"}}, {"sk": {"S": "conn#c"}}]},
        {**expected, "Limit": 3, "ExpressionAttributeValues": {
            ":pk": {"S": "room#lobby"}, ":low": {"S": "conn#b"}, ":high": {"S": "conn$"}}},
    )
    assert list(store.member_pages("lobby", page_size=2)) == [["a", "b"], ["c"]]


def test_idle_connections_queries_every_shard_of_the_index(
    stubber: Stubber, store: DynamoDbStore
) -> None:
    for shard in range(SWEEP_SHARDS):
        items = [live_item(f"old{shard}", welcomed=False)] if shard in (3, 17) else []
        stubber.add_response(
            "query",
            {"Items": items},
            {
                "TableName": TABLE,
                "IndexName": LAST_SEEN_INDEX,
                "KeyConditionExpression": "sweepShard = :shard AND lastSeen <= :cutoff",
                "ExpressionAttributeValues": {":shard": {"S": f"{shard:02d}"}, ":cutoff": ANY},
                "ScanIndexForward": True,
                "Limit": 10,
            },
        )
    assert sorted(r.connection_id for r in store.idle_connections(60, limit=10)) == [
        "old17", "old3"]


def test_sweep_shards_spread_connections() -> None:
    shards = {sweep_shard(f"conn-{i}") for i in range(2000)}
    assert shards == {f"{n:02d}" for n in range(SWEEP_SHARDS)}
    assert sweep_shard("abc") == sweep_shard("abc")


def test_remove_resends_unprocessed_items(
    stubber: Stubber, store: DynamoDbStore, sleep: RecordingSleep
) -> None:
    stubber.add_response("query", {"Items": [{"sk": {"S": "meta"}}, {"sk": {"S": "room#lobby"}}]})
    # The room side and the room's counter go in one transaction.
    stubber.add_response("transact_write_items", {})
    meta = {"DeleteRequest": {"Key": {"pk": {"S": "conn#c1"}, "sk": {"S": "meta"}}}}
    stubber.add_response("batch_write_item", {"UnprocessedItems": {TABLE: [meta]}})
    stubber.add_response(
        "batch_write_item", {"UnprocessedItems": {}}, {"RequestItems": {TABLE: [meta]}}
    )
    assert store.remove("c1").rooms == ["lobby"]
    assert len(sleep.calls) == 1


def test_leave_of_a_non_member_changes_no_counter(stubber: Stubber, store: DynamoDbStore) -> None:
    stubber.add_client_error(
        "transact_write_items",
        service_error_code="TransactionCanceledException",
        modeled_fields={"CancellationReasons": [{"Code": "ConditionalCheckFailed"},
                                                {"Code": "None"}]},
    )
    stubber.add_response("delete_item", {})
    assert store.leave("c1", "lobby") is False


def test_transaction_conflict_is_transient(
    stubber: Stubber, store: DynamoDbStore, sleep: RecordingSleep
) -> None:
    for _ in range(DEFAULT_ATTEMPTS):
        stubber.add_client_error(
            "transact_write_items",
            service_error_code="TransactionCanceledException",
            modeled_fields={"CancellationReasons": [{"Code": "TransactionConflict"},
                                                    {"Code": "None"}]},
        )
    with pytest.raises(TransientStoreError):
        store.leave("c1", "lobby")
    assert len(sleep.calls) == DEFAULT_ATTEMPTS - 1


def test_table_definition_shape() -> None:
    definition = table_definition("t")
    assert definition["TableName"] == "t"
    assert definition["BillingMode"] == "PAY_PER_REQUEST"
    keys = {k["AttributeName"]: k["KeyType"] for k in definition["KeySchema"]}
    assert keys == {"pk": "HASH", "sk": "RANGE"}
    assert [i["IndexName"] for i in definition["GlobalSecondaryIndexes"]] == [LAST_SEEN_INDEX]
    assert TTL_ATTRIBUTE == "expiresAt"


def test_from_table_creates_a_client_without_its_own_retries() -> None:
    with mock_aws():
        boto3.client("dynamodb", region_name="us-east-1").create_table(**table_definition("t1"))
        store = DynamoDbStore.from_table("t1", clock=FakeClock())
        store.register("c1", connected_at=T0)
        assert store.get("c1") is not None
        # The base class retries; botocore must not multiply those attempts.
        assert store._client.meta.config.retries["total_max_attempts"] == 1


def test_items_carry_ttl_and_index_keys() -> None:
    with mock_aws():
        raw = boto3.client("dynamodb", region_name="us-east-1")
        raw.create_table(**table_definition("t2"))
        store = DynamoDbStore("t2", raw, clock=FakeClock())
        store.register("c1", connected_at=T0, user="alice")
        store.join("c1", "lobby", user="alice")
        items = raw.scan(TableName="t2")["Items"]  # the test may scan; the store never does
        # meta, the connection's side, the room's side, the room's counter, the user's index
        assert sorted((i["pk"]["S"], i["sk"]["S"]) for i in items) == [
            ("conn#c1", "meta"), ("conn#c1", "room#lobby"),
            ("room#lobby", "conn#c1"), ("room#lobby", "count"), ("usr#alice", "conn#c1")]
        assert all(TTL_ATTRIBUTE in item for item in items)
        assert all(item[TTL_ATTRIBUTE]["N"].isdigit() for item in items)
        meta = next(item for item in items if item["sk"]["S"] == "meta")
        assert meta["sweepShard"] == {"S": sweep_shard("c1")}
        assert float(meta["lastSeen"]["N"]) == T0
        assert int(meta[TTL_ATTRIBUTE]["N"]) == int(expires_at(T0))
        assert "welcomedAt" not in meta
        member = next(item for item in items if item["sk"]["S"] == "conn#c1")
        assert member["user"] == {"S": "alice"}
        # Only connection records are in the sweep index (the index is sparse).
        assert sum("sweepShard" in item for item in items) == 1
        index = raw.query(TableName="t2", IndexName=LAST_SEEN_INDEX,
                          KeyConditionExpression="sweepShard = :s",
                          ExpressionAttributeValues={":s": {"S": sweep_shard("c1")}})["Items"]
        assert set(index[0]) == {"pk", "sk", "sweepShard", "lastSeen", "connectedAt", "endpoint"}
