"""Fixtures shared by the store tests: fake AWS settings, a controllable clock, the stores."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from chalicelib.store.base import ConnectionStore
from chalicelib.store.dynamodb import DynamoDbStore, table_definition
from chalicelib.store.memory import MemoryStore
from chalicelib.store.sqlite import SqliteStore
from tests.support.aws import offline_aws

from .fakes import FakeClock, no_sleep

TABLE = "connections-test"


@cache
def _session() -> boto3.session.Session:
    """One boto3 session for every DynamoDB store: a client from a new session re-reads the
    service model (~0.1 s; the contract suite creates a hundred). moto intercepts this session's
    clients like any other (it hooks every session created after moto is imported)."""
    return boto3.session.Session()


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never reach real AWS or read the developer's profile."""
    offline_aws(monkeypatch, tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", "dynamodb"])
def store(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path, fake_aws: None
) -> Iterator[ConnectionStore]:
    """The same contract, once per backend."""
    if request.param == "memory":
        yield MemoryStore(clock=clock, sleep=no_sleep)
    elif request.param == "sqlite":
        sqlite_store = SqliteStore(tmp_path / "sub" / "store.db", clock=clock, sleep=no_sleep)
        yield sqlite_store
        sqlite_store.close()
    else:
        with mock_aws():
            client = _session().client(
                "dynamodb", region_name="us-east-1",
                aws_access_key_id="testing", aws_secret_access_key="testing",
            )
            client.create_table(**table_definition(TABLE))
            serialize_requests(client)
            yield DynamoDbStore(TABLE, client, clock=clock, sleep=no_sleep)


def serialize_requests(client: Any) -> None:
    """Let one request at a time into moto.

    Real DynamoDB applies each conditional write to an item atomically; moto evaluates the
    condition and applies the update in separate Python steps without a lock, so concurrent
    claims can both "win" there.  Serializing requests gives moto DynamoDB's per-item atomicity
    and leaves the concurrency test checking our logic, not moto's thread safety.
    """
    lock = threading.Lock()

    def enter(**_: Any) -> None:
        lock.acquire()

    def leave(**_: Any) -> None:
        lock.release()

    client.meta.events.register("before-call.dynamodb", enter)
    client.meta.events.register("after-call.dynamodb", leave)
    client.meta.events.register("after-call-error.dynamodb", leave)
