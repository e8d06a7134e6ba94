"""The store factory: URL parsing, Lambda refusal, backend selection."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from chalicelib.errors import ConfigError
from chalicelib.store import Claim, open_store
from chalicelib.store.dynamodb import DynamoDbStore, table_definition
from chalicelib.store.memory import MemoryStore
from chalicelib.store.sqlite import SqliteStore

from .fakes import T0, FakeClock

LAMBDA = {"AWS_LAMBDA_FUNCTION_NAME": "ws-app-dev"}


def test_memory_gives_a_new_empty_store_each_call() -> None:
    first = open_store("memory://", environ={})
    second = open_store("memory://", environ={})
    assert isinstance(first, MemoryStore)
    first.register("c1", connected_at=T0)
    assert second.get("c1") is None


def test_clock_is_passed_to_the_store() -> None:
    clock = FakeClock()
    store = open_store("memory://", environ={}, clock=clock)
    store.register("c1", connected_at=T0)
    clock.advance(10_000)
    assert store.get("c1") is None


def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///.local/conns.db", environ={})
    assert isinstance(store, SqliteStore)
    assert store.path == Path(".local/conns.db")
    assert (tmp_path / ".local" / "conns.db").exists()


def test_sqlite_absolute_path(tmp_path: Path) -> None:
    path = tmp_path / "abs" / "conns.db"
    assert path.is_absolute()
    store = open_store(f"sqlite:///{path}", environ={}, clock=FakeClock())  # 4 slashes
    assert isinstance(store, SqliteStore)
    assert store.path == path
    store.register("c1", connected_at=T0)
    again = open_store(f"sqlite:///{path}", environ={}, clock=FakeClock())
    assert again.claim_welcome("c1") is Claim.CLAIMED


def test_dynamodb_uses_injected_client() -> None:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(**table_definition("conns"))
        store = open_store(
            "dynamodb://conns", environ=LAMBDA, dynamodb_client=client, clock=FakeClock()
        )
        assert isinstance(store, DynamoDbStore)
        assert store.table_name == "conns"
        store.register("c1", connected_at=T0)
        assert store.admit("c1", rate_limit=0, window_seconds=1).claim is not Claim.UNKNOWN


def test_dynamodb_without_client_is_lazy() -> None:
    # No AWS call happens until the first operation.
    store = open_store("dynamodb://conns", environ=LAMBDA)
    assert isinstance(store, DynamoDbStore)


def test_default_environ_is_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environ, "AWS_LAMBDA_FUNCTION_NAME", "fn")
    with pytest.raises(ConfigError):
        open_store("memory://")


@pytest.mark.parametrize("url", ["memory://", "sqlite:///x.db", "sqlite:////tmp/x.db"])
def test_lambda_refuses_process_local_stores(url: str) -> None:
    with pytest.raises(ConfigError, match="Lambda") as info:
        open_store(url, environ=LAMBDA)
    assert url in str(info.value)
    assert "dynamodb://" in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "memory",
        "redis://localhost",
        "sqlite://",
        "sqlite:///",
        "sqlite://host/x.db",
        "dynamodb://",
        "dynamodb://a",
        "dynamodb://bad/name",
        "memory://something",
    ],
)
def test_bad_urls_are_config_errors_naming_the_value(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_store(url, environ={})
    assert repr(url) in str(info.value)


def test_scheme_is_case_insensitive_and_whitespace_ignored() -> None:
    assert isinstance(open_store("  MEMORY://\n", environ={}), MemoryStore)
