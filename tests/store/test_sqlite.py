"""SQLite-specific behaviour: exactly-once claims across processes, files and error mapping."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from chalicelib.errors import StoreError
from chalicelib.store import Claim, TransientStoreError
from chalicelib.store.sqlite import SqliteStore

from .fakes import T0, FakeClock, no_sleep

PROCESSES = 4


def _claim_in_child(path: str, barrier: Any, results: Any) -> None:
    """Runs in a spawned process: open the store independently, then race the others."""
    store = SqliteStore(path)
    barrier.wait()
    results.put(store.admit("c1", rate_limit=100, window_seconds=10).claim.value)


def test_claim_is_exactly_once_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    store = SqliteStore(path)
    # The children use the real clock: register as connected now so the record is live for them.
    store.register("c1", connected_at=time.time())
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_claim_in_child, args=(path, barrier, results)) for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in range(PROCESSES)]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sorted(outcomes) == ["already_claimed"] * (PROCESSES - 1) + ["claimed"]
    record = store.get("c1")
    assert record is not None and record.welcomed


def test_creates_parent_directory_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "store.db"
    SqliteStore(path)
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_state_is_shared_between_store_instances(tmp_path: Path) -> None:
    clock = FakeClock()
    first = SqliteStore(tmp_path / "s.db", clock=clock)
    second = SqliteStore(tmp_path / "s.db", clock=clock)
    first.register("c1", connected_at=T0)
    first.join("c1", "lobby")
    assert second.claim_welcome("c1") is Claim.CLAIMED
    assert first.claim_welcome("c1") is Claim.ALREADY_CLAIMED
    assert second.members("lobby") == ["c1"]


def test_locked_database_is_transient(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SqliteStore(path, busy_timeout_ms=0, sleep=no_sleep, attempts=2, clock=FakeClock())
    store.register("c1", connected_at=T0)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    try:
        with pytest.raises(TransientStoreError, match="locked"):
            store.claim_welcome("c1")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    # The failed transaction was rolled back: the connection is usable again.
    assert store.claim_welcome("c1") is Claim.CLAIMED


def test_unopenable_path_is_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "is-a-directory.db"
    directory.mkdir()
    with pytest.raises(StoreError) as info:
        SqliteStore(directory)
    assert not isinstance(info.value, TransientStoreError)


def test_a_file_of_an_older_schema_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE connections (connection_id TEXT PRIMARY KEY)")
    conn.execute("CREATE TABLE message_rates (connection_id TEXT PRIMARY KEY)")
    conn.execute("INSERT INTO connections VALUES ('stale')")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    assert store.get("stale") is None
    store.register("c1", connected_at=T0)
    assert store.admit("c1", rate_limit=1, window_seconds=10).admitted
    tables = {row[0] for row in sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "message_rates" not in tables and {"connections", "memberships"} <= tables
