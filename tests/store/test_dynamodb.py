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
    TTL_ATTRIBUTE,
    DynamoDbStore,
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
    assert store.claim_welcome("c1", touch=False) is Claim.ALREADY_CLAIMED


def test_condition_failure_without_item_is_unknown(stubber: Stubber, store: DynamoDbStore) -> None:
    stubber.add_client_error("update_item", service_error_code="ConditionalCheckFailedException")
    assert store.claim_welcome("c1", touch=False) is Claim.UNKNOWN


def test_message_after_welcome_costs_one_write(stubber: Stubber, store: DynamoDbStore) -> None:
    stubber.add_response("update_item", {})
    assert store.claim_welcome("c1", touch=True) is Claim.ALREADY_CLAIMED


def test_first_message_costs_two_writes(stubber: Stubber, store: DynamoDbStore) -> None:
    stubber.add_client_error(
        "update_item",
        service_error_code="ConditionalCheckFailedException",
        modeled_fields={"Item": live_item(welcomed=False)},
    )
    stubber.add_response("update_item", {})
    assert store.claim_welcome("c1", touch=True) is Claim.CLAIMED


def test_members_queries_every_page(stubber: Stubber, store: DynamoDbStore) -> None:
    expected = {
        "TableName": TABLE,
        "KeyConditionExpression": ANY,
        "ExpressionAttributeValues": {":pk": {"S": "room#lobby"}, ":conn": {"S": "conn#"}},
        "ProjectionExpression": "sk",
        "ConsistentRead": True,
    }
    last_key = {"pk": {"S": "room#lobby"}, "sk": {"S": "conn#b"}}
    stubber.add_response(
        "query",
        {"Items": [{"sk": {"S": "conn#a"}}, {"sk": {"S": "conn#b"}}], "LastEvaluatedKey": last_key},
        expected,
    )
    stubber.add_response(
        "query",
        {"Items": [{"sk": {"S": "conn#c"}}]},
        {**expected, "ExclusiveStartKey": last_key},
    )
    assert store.members("lobby") == ["a", "b", "c"]


def test_idle_connections_queries_the_index(stubber: Stubber, store: DynamoDbStore) -> None:
    stubber.add_response(
        "query",
        {"Items": [live_item("old", welcomed=False)]},
        {
            "TableName": TABLE,
            "IndexName": LAST_SEEN_INDEX,
            "KeyConditionExpression": ANY,
            "ExpressionAttributeValues": ANY,
            "ScanIndexForward": True,
            "Limit": 10,
        },
    )
    assert [r.connection_id for r in store.idle_connections(60, limit=10)] == ["old"]


def test_remove_resends_unprocessed_items(
    stubber: Stubber, store: DynamoDbStore, sleep: RecordingSleep
) -> None:
    stubber.add_response("query", {"Items": [{"sk": {"S": "meta"}}, {"sk": {"S": "room#lobby"}}]})
    mirror = {"DeleteRequest": {"Key": {"pk": {"S": "room#lobby"}, "sk": {"S": "conn#c1"}}}}
    stubber.add_response("batch_write_item", {"UnprocessedItems": {TABLE: [mirror]}})
    stubber.add_response(
        "batch_write_item", {"UnprocessedItems": {}}, {"RequestItems": {TABLE: [mirror]}}
    )
    stubber.add_response("batch_write_item", {"UnprocessedItems": {}})
    assert store.remove("c1") == ["lobby"]
    assert len(sleep.calls) == 1


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
        store.join("c1", "lobby")
        items = raw.scan(TableName="t2")["Items"]  # the test may scan; the store never does
        assert len(items) == 3
        assert all(TTL_ATTRIBUTE in item for item in items)
        assert all(item[TTL_ATTRIBUTE]["N"].isdigit() for item in items)
        meta = next(item for item in items if item["sk"]["S"] == "meta")
        assert meta["gsi1pk"] == {"S": "conn"}
        assert float(meta["gsi1sk"]["N"]) == T0
        assert int(meta[TTL_ATTRIBUTE]["N"]) == int(expires_at(T0))
        assert "welcomedAt" not in meta
        # Membership items stay out of the sparse index.
        assert sum("gsi1pk" in item for item in items) == 1
