"""Faults in storage, through the whole service: DynamoDB throttling (botocore Stubber) and
conditional-check races on the welcome claim (Stubber, and moto with concurrent claimers).

Promises: throttled writes are retried within the bound; a lost race resolves to "already
claimed"; never a double welcome, never an exception out of a handler; a store that stays
throttled past the bound costs one ``internal`` reply ("try again"), and the next frame heals.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from moto import mock_aws

from chalicelib.delivery import Deliverer, RetryPolicy
from chalicelib.events import ConnectionContext
from chalicelib.service import Messaging
from chalicelib.store.base import DEFAULT_ATTEMPTS
from chalicelib.store.dynamodb import DynamoDbStore, table_definition
from chalicelib.welcome import FollowUp
from tests.store.conftest import serialize_requests
from tests.store.fakes import T0, FakeClock, no_sleep
from tests.support.aws import offline_aws
from tests.support.management_api import FakeManagementApi

THROTTLE = "ProvisionedThroughputExceededException"
CID = "c1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    offline_aws(monkeypatch, tmp_path)


@pytest.fixture
def api() -> Iterator[FakeManagementApi]:
    fake = FakeManagementApi().start()
    fake.open(CID)
    yield fake
    fake.stop()


def _deliverer(api: FakeManagementApi) -> Deliverer:
    client = boto3.client("apigatewaymanagementapi", endpoint_url=api.endpoint,
                          region_name="us-east-1",
                          config=Config(retries={"total_max_attempts": 1}))
    return Deliverer(client, retry=RetryPolicy(base_delay=0.001))


def _ctx(cid: str = CID) -> ConnectionContext:
    return ConnectionContext(connection_id=cid, domain_name="d", stage="api", api_id="a",
                             request_id="r", source_ip="127.0.0.1", connected_at=T0)


def _item(welcomed: bool) -> dict[str, Any]:
    item: dict[str, Any] = {"pk": {"S": f"conn#{CID}"}, "sk": {"S": "meta"},
                            "connectedAt": {"N": str(T0)}, "lastSeen": {"N": str(T0)}}
    if welcomed:
        item["welcomedAt"] = {"N": str(T0)}
    return item


@pytest.fixture
def stubbed(aws: None, api: FakeManagementApi) -> Iterator[tuple[Stubber, Messaging]]:
    client = boto3.client("dynamodb", region_name="us-east-1")
    store = DynamoDbStore("t", client, clock=FakeClock(), sleep=no_sleep)
    deliverer = _deliverer(api)
    with Stubber(client) as stub:
        yield stub, Messaging(store, lambda _endpoint: deliverer)
        stub.assert_no_pending_responses()


def _ping(service: Messaging, api: FakeManagementApi, n: int = 1) -> None:
    service.on_message(_ctx(), "ep", f'{{"action":"ping","id":"p{n}"}}', False)


def test_throttled_claim_is_retried_then_welcomes_once(
    stubbed: tuple[Stubber, Messaging], api: FakeManagementApi
) -> None:
    stub, service = stubbed
    # A message is one read, then one conditional write; each is retried on its own.
    stub.add_client_error("get_item", service_error_code=THROTTLE)  # read throttled
    stub.add_response("get_item", {"Item": _item(welcomed=False)})  # read: welcome owed
    stub.add_client_error("update_item", service_error_code=THROTTLE)  # claim throttled
    stub.add_response("update_item", {})  # claim won
    _ping(service, api)
    assert api.types(CID) == ["welcome", "pong"]


def test_claim_lost_to_a_racing_claimer_sends_no_welcome(
    stubbed: tuple[Stubber, Messaging], api: FakeManagementApi
) -> None:
    stub, service = stubbed
    stub.add_response("get_item", {"Item": _item(welcomed=False)})  # read: not yet
    # Between the read and the write the follow-up claimed it: the write's condition fails,
    # and the second round reads it welcomed (nothing left to write).
    stub.add_client_error("update_item", service_error_code="ConditionalCheckFailedException")
    stub.add_response("get_item", {"Item": _item(welcomed=True)})
    _ping(service, api)
    assert api.types(CID) == ["pong"]


def test_store_throttled_past_the_bound_answers_internal_then_heals(
    stubbed: tuple[Stubber, Messaging], api: FakeManagementApi
) -> None:
    stub, service = stubbed
    for _ in range(DEFAULT_ATTEMPTS):
        stub.add_client_error("get_item", service_error_code=THROTTLE)
    _ping(service, api, 1)  # must not raise
    (reply,) = api.received(CID)
    assert reply["type"] == "error" and reply["id"] == "p1"
    assert reply["data"]["code"] == "internal"
    # Throttling ends: the next frame gets the (single) welcome and its reply.
    stub.add_response("get_item", {"Item": _item(welcomed=False)})
    stub.add_response("update_item", {})
    _ping(service, api, 2)
    assert api.types(CID) == ["error", "welcome", "pong"]


def test_follow_up_throttled_then_resolved_never_double_welcomes(
    stubbed: tuple[Stubber, Messaging], api: FakeManagementApi
) -> None:
    stub, service = stubbed
    stub.add_client_error("update_item", service_error_code=THROTTLE)
    stub.add_response("update_item", {})  # the follow-up wins the claim after a retry
    service.on_welcome_follow_up(FollowUp(CID, "ep"))
    # First message: read welcomed, activity fresh, rate limit off: no write at all.
    stub.add_response("get_item", {"Item": _item(welcomed=True)})
    _ping(service, api)
    assert api.types(CID) == ["welcome", "pong"]


@pytest.mark.parametrize("round_", range(5))
def test_concurrent_first_messages_and_follow_ups_welcome_exactly_once(
    aws: None, api: FakeManagementApi, round_: int
) -> None:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition("conns"))
        serialize_requests(client)  # DynamoDB's per-item atomicity, which moto lacks
        store = DynamoDbStore("conns", client, clock=FakeClock(), sleep=no_sleep)
        deliverer = _deliverer(api)
        service = Messaging(store, lambda _endpoint: deliverer)
        service.on_connect(_ctx(), "ep")
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def racer(n: int) -> None:
            barrier.wait()
            try:
                if n % 2:
                    service.on_welcome_follow_up(FollowUp(CID, "ep"))
                else:
                    _ping(service, api, n)
            except BaseException as exc:  # collected: the assertion below names it
                errors.append(exc)

        threads = [threading.Thread(target=racer, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert not errors
    types = api.types(CID)
    assert types.count("welcome") == 1, types
    assert types.count("pong") == 4, types
    assert types.index("welcome") < max(i for i, t in enumerate(types) if t == "pong")
