"""SQLite connection store: the local default (``sqlite:///path.db``).

Safe across threads and processes (``chalice local`` with several workers, tests that spawn
processes): each thread of each process opens its own ``sqlite3`` connection, the database runs in
WAL mode (readers never block the writer), waits up to ``busy_timeout_ms`` for a lock, and every
read-modify-write runs inside ``BEGIN IMMEDIATE`` so it takes the write lock before reading.

Not for Lambda: each container has its own disk, so ``open_store`` refuses it there.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Unpack

from chalicelib.errors import StoreError
from chalicelib.store.base import (
    ALL_OPS,
    Claim,
    ConnectionRecord,
    ConnectionStore,
    IdleConnection,
    JoinResult,
    Presence,
    RecordChange,
    Removal,
    SendRecord,
    StoredMessage,
    StoreOptions,
    TransientStoreError,
    expires_at,
)

#: Bumped whenever the schema changes: an older local file is dropped and recreated (it only holds
#: connections of gateway runs that are over, so nothing of value is lost).
SCHEMA_VERSION = 6

_SCHEMA = """
CREATE TABLE IF NOT EXISTS connections (
    connection_id TEXT PRIMARY KEY,
    connected_at  REAL NOT NULL,
    last_seen     REAL NOT NULL,
    welcomed_at   REAL NULL,
    source_ip     TEXT NOT NULL DEFAULT '',
    user_id       TEXT NULL,
    expires_at    REAL NOT NULL,
    endpoint      TEXT NOT NULL DEFAULT '',
    capabilities  TEXT NULL,
    claims        TEXT NULL
);
CREATE INDEX IF NOT EXISTS connections_last_seen ON connections (last_seen);
CREATE INDEX IF NOT EXISTS connections_user_id ON connections (user_id);
CREATE TABLE IF NOT EXISTS memberships (
    room          TEXT NOT NULL,
    connection_id TEXT NOT NULL,
    joined_at     REAL NOT NULL,
    user_id       TEXT NULL,
    ops           TEXT NULL,
    PRIMARY KEY (room, connection_id)
);
CREATE INDEX IF NOT EXISTS memberships_connection_id ON memberships (connection_id);
CREATE TABLE IF NOT EXISTS rates (
    rate_key      TEXT PRIMARY KEY,
    window_start  INTEGER NOT NULL,
    count         INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS heads (
    room          TEXT PRIMARY KEY,
    seq           INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    room          TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    mid           TEXT NOT NULL,
    sender        TEXT NOT NULL,
    data          TEXT NOT NULL,
    ts            INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (room, seq)
);
CREATE TABLE IF NOT EXISTS sends (
    user_id       TEXT NOT NULL,
    room          TEXT NOT NULL,
    request_id    TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    mid           TEXT NOT NULL,
    expires_at    REAL NOT NULL,
    PRIMARY KEY (user_id, room, request_id)
);
CREATE TABLE IF NOT EXISTS presence (
    room          TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    connections   INTEGER NOT NULL,
    PRIMARY KEY (room, user_id)
)
"""

_OLD_TABLES = (
    "connections", "memberships", "message_rates", "rates", "heads", "messages", "sends",
    "presence",
)

_RECORD_COLUMNS = (
    "connection_id, connected_at, last_seen, welcomed_at, source_ip, user_id, endpoint,"
    " capabilities"
)


class SqliteStore(ConnectionStore):
    """A :class:`ConnectionStore` in one SQLite file.

    The constructor creates the file, its parent directory and the schema; it raises
    :class:`~chalicelib.errors.StoreError` when the file cannot be opened.  Operations raise
    :class:`~chalicelib.store.base.TransientStoreError` when the database stayed locked beyond the
    busy timeout and the base class's retries, :class:`~chalicelib.errors.StoreError` otherwise.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 5000,
        **options: Unpack[StoreOptions],
    ) -> None:
        super().__init__(**options)
        self._path = Path(path)
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        # Serialises this process's statements: threads then queue on a lock that wakes them at
        # once, instead of colliding on SQLite's file lock and sleeping in its busy handler
        # (backoff of up to 100 ms per retry). Other processes still wait via busy_timeout.
        self._op_lock = threading.RLock()
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create directory for {self._path}: {exc}") from exc
        self._retrying(self._create_schema)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Close the calling thread's connection (others close when their thread's state dies)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()

    # ------------------------------------------------------------------ connection handling

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        # A connection inherited through fork() must not be used in the child: open a new one.
        if conn is None or self._local.pid != os.getpid():
            conn = sqlite3.connect(
                self._path,
                # Autocommit: we issue BEGIN IMMEDIATE ourselves where atomicity matters; the
                # module's implicit (deferred) transactions would upgrade read locks to write
                # locks mid-transaction, which fails with SQLITE_BUSY instead of waiting.
                isolation_level=None,
                timeout=self._busy_timeout_ms / 1000,
                # Thread-local anyway; the check only gets in the way of close() at exit.
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            self._local.pid = os.getpid()
        return conn

    @contextmanager
    def _translated(self) -> Iterator[sqlite3.Connection]:
        """Yield this thread's connection; map sqlite3 errors to store errors."""
        try:
            with self._op_lock:
                yield self._conn()
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if "locked" in message or "busy" in message:
                raise TransientStoreError(f"sqlite {self._path}: {message}") from exc
            raise StoreError(f"sqlite {self._path}: {message}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"sqlite {self._path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error."""
        with self._translated() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                # Also when COMMIT itself failed: a transaction left open would poison the
                # thread's connection ("cannot start a transaction within a transaction").
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def _create_schema(self) -> None:
        with self._translated() as conn:
            # WAL is a property of the file (persists); setting it needs a lock, hence busy_timeout
            # is set first (in _conn) and this runs under the base class's retries.
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"sqlite {self._path}: cannot enable WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable enough in WAL for a local store
        with self._write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                for table in _OLD_TABLES:
                    conn.execute(f"DROP TABLE IF EXISTS {table}")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # ------------------------------------------------------------------ primitives

    def _register(self, record: ConnectionRecord) -> None:
        with self._translated() as conn:
            # One statement, hence atomic; ON CONFLICT keeps welcomed_at (idempotent register).
            conn.execute(
                """
                INSERT INTO connections
                    (connection_id, connected_at, last_seen, welcomed_at, source_ip, user_id,
                     expires_at, endpoint, capabilities)
                VALUES (?, ?, ?, NULL, ?, ?, ?, ?, ?)
                ON CONFLICT (connection_id) DO UPDATE SET
                    connected_at = excluded.connected_at,
                    last_seen = max(last_seen, excluded.last_seen),
                    source_ip = excluded.source_ip,
                    user_id = excluded.user_id,
                    expires_at = excluded.expires_at,
                    endpoint = excluded.endpoint,
                    capabilities = excluded.capabilities
                """,
                (
                    record.connection_id,
                    record.connected_at,
                    record.last_seen,
                    record.source_ip,
                    record.user,
                    expires_at(record.connected_at),
                    record.endpoint,
                    record.capabilities,
                ),
            )

    def _get(self, connection_id: str) -> ConnectionRecord | None:
        with self._translated() as conn:
            row = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM connections WHERE connection_id = ?",
                (connection_id,),
            ).fetchone()
        return None if row is None else _record(row)

    def _apply_change(
        self, connection_id: str, expected: ConnectionRecord, change: RecordChange
    ) -> bool:
        sets: list[str] = []
        params: list[Any] = []
        if change.claim_welcome:
            sets.append("welcomed_at = ?")
            params.append(self._clock())
        if change.last_seen is not None:
            sets.append("last_seen = ?")
            params.append(change.last_seen)
        welcomed = "welcomed_at IS NOT NULL" if expected.welcomed else "welcomed_at IS NULL"
        with self._translated() as conn:
            # One statement, hence atomic across threads and processes: the WHERE clause is the
            # condition that the record is still the one the decision was made on.
            changed = conn.execute(
                f"""
                UPDATE connections SET {", ".join(sets)}
                WHERE connection_id = ? AND connected_at = ? AND {welcomed}
                """,
                (*params, connection_id, expected.connected_at),
            ).rowcount
        return changed > 0

    def _count_message(self, key: str, window: int, limit: int, expires: int) -> bool:
        with self._translated() as conn:
            # One statement, hence atomic across threads and processes: a newer window restarts
            # the count; the same (or an older, skewed-clock) window increments below the limit;
            # at the limit the WHERE clause stops the update and nothing changes (rowcount 0).
            changed = conn.execute(
                """
                INSERT INTO rates (rate_key, window_start, count) VALUES (?, ?, 1)
                ON CONFLICT (rate_key) DO UPDATE SET
                    count = CASE WHEN excluded.window_start > window_start THEN 1
                                 ELSE count + 1 END,
                    window_start = max(window_start, excluded.window_start)
                WHERE excluded.window_start > rates.window_start OR rates.count < ?
                """,
                (key, window, limit),
            ).rowcount
        return changed > 0

    def _claim_welcome(self, connection_id: str, now: float) -> Claim:
        with self._write() as conn:
            # The claim itself is one conditional UPDATE: whoever changes the row wins, across
            # threads and processes.  The transaction only keeps the follow-up read consistent.
            claimed = conn.execute(
                """
                UPDATE connections SET welcomed_at = ?
                WHERE connection_id = ? AND welcomed_at IS NULL AND expires_at > ?
                """,
                (now, connection_id, now),
            ).rowcount
            if claimed:
                return Claim.CLAIMED
            exists = conn.execute(
                "SELECT count(*) FROM connections WHERE connection_id = ? AND expires_at > ?",
                (connection_id, now),
            ).fetchone()[0]
            return Claim.ALREADY_CLAIMED if exists else Claim.UNKNOWN

    def _mark_checked(self, connection_id: str, now: float) -> bool:
        with self._translated() as conn:
            changed = conn.execute(
                "UPDATE connections SET last_seen = ? WHERE connection_id = ?",
                (now, connection_id),
            ).rowcount
        return changed > 0

    def _remove(self, connection_id: str) -> Removal:
        with self._write() as conn:
            row = conn.execute(
                "SELECT user_id FROM connections WHERE connection_id = ?", (connection_id,)
            ).fetchone()
            rooms = [
                row[0]
                for row in conn.execute(
                    "SELECT room FROM memberships WHERE connection_id = ? ORDER BY room",
                    (connection_id,),
                )
            ]
            conn.execute("DELETE FROM memberships WHERE connection_id = ?", (connection_id,))
            conn.execute("DELETE FROM connections WHERE connection_id = ?", (connection_id,))
            conn.execute("DELETE FROM rates WHERE rate_key = ?", (f"c:{connection_id}",))
        return Removal(None if row is None or row[0] is None else str(row[0]), rooms)

    def _join(
        self, connection_id: str, room: str, user: str | None, ops: str | None, now: float
    ) -> JoinResult:
        with self._write() as conn:
            new = conn.execute(
                "INSERT OR IGNORE INTO memberships (room, connection_id, joined_at, user_id, ops)"
                " VALUES (?, ?, ?, ?, ?)",
                (room, connection_id, now, user, ops),
            ).rowcount > 0
            if not new:
                conn.execute(
                    "UPDATE memberships SET ops = ? WHERE room = ? AND connection_id = ?",
                    (ops, room, connection_id),
                )
            # The count is exact here (one indexed range in one local file): SQLite has no
            # hot-partition problem to design around, unlike the DynamoDB counter item.
            count: int = conn.execute(
                "SELECT count(*) FROM memberships WHERE room = ?", (room,)
            ).fetchone()[0]
        return JoinResult(count, new)

    def _leave(self, connection_id: str, room: str) -> bool:
        with self._translated() as conn:
            deleted = conn.execute(
                "DELETE FROM memberships WHERE room = ? AND connection_id = ?",
                (room, connection_id),
            ).rowcount
        return deleted > 0

    def _is_member(self, connection_id: str, room: str) -> bool:
        with self._translated() as conn:
            row = conn.execute(
                "SELECT 1 FROM memberships WHERE room = ? AND connection_id = ?",
                (room, connection_id),
            ).fetchone()
        return row is not None

    def _membership(self, connection_id: str, room: str) -> str | None:
        with self._translated() as conn:
            row = conn.execute(
                "SELECT ops FROM memberships WHERE room = ? AND connection_id = ?",
                (room, connection_id),
            ).fetchone()
        if row is None:
            return None
        return ALL_OPS if row[0] is None else str(row[0])

    def _user_connections(self, user: str, now: float) -> list[str]:
        with self._translated() as conn:
            rows = conn.execute(
                "SELECT connection_id FROM connections WHERE user_id = ? AND expires_at > ?",
                (user, now),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def _put_claims(self, connection_id: str, claims_json: str) -> None:
        with self._translated() as conn:
            conn.execute("UPDATE connections SET claims = ? WHERE connection_id = ?",
                         (claims_json, connection_id))

    def _claims(self, connection_id: str) -> str | None:
        with self._translated() as conn:
            row = conn.execute("SELECT claims FROM connections WHERE connection_id = ?",
                               (connection_id,)).fetchone()
        return None if row is None or row[0] is None else str(row[0])

    def _member_count(self, room: str) -> int:
        with self._translated() as conn:
            count: int = conn.execute(
                "SELECT count(*) FROM memberships WHERE room = ?", (room,)
            ).fetchone()[0]
        return count

    def _rooms_of(self, connection_id: str) -> list[str]:
        with self._translated() as conn:
            rows = conn.execute(
                "SELECT room FROM memberships WHERE connection_id = ? ORDER BY room",
                (connection_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def _members_page(
        self, room: str, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        # fetchall inside the error translation: a lazy cursor would fail outside of it.  One row
        # more than asked tells whether another page follows.
        with self._translated() as conn:
            rows = conn.execute(
                """
                SELECT connection_id FROM memberships
                WHERE room = ? AND connection_id > ? ORDER BY connection_id LIMIT ?
                """,
                (room, after or "", limit + 1),
            ).fetchall()
        page = [row[0] for row in rows[:limit]]
        return page, (page[-1] if len(rows) > limit else None)

    def _next_seq(self, room: str) -> int:
        with self._translated() as conn:
            # fetchall: the statement (and so the autocommit) completes only once it is drained.
            rows = conn.execute(
                "INSERT INTO heads (room, seq) VALUES (?, 1)"
                " ON CONFLICT (room) DO UPDATE SET seq = seq + 1 RETURNING seq",
                (room,),
            ).fetchall()
        return int(rows[0][0])

    def _head(self, room: str) -> int:
        with self._translated() as conn:
            row = conn.execute("SELECT seq FROM heads WHERE room = ?", (room,)).fetchone()
        return 0 if row is None else int(row[0])

    def _put_message(self, room: str, message: StoredMessage, expires: int) -> None:
        with self._translated() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO messages (room, seq, mid, sender, data, ts, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (room, message.seq, message.mid, message.sender, message.data_json, message.ts,
                 expires),
            )

    def _messages(self, room: str, low: int, high: int, limit: int) -> list[StoredMessage]:
        with self._translated() as conn:
            rows = conn.execute(
                "SELECT seq, mid, sender, data, ts FROM messages"
                " WHERE room = ? AND seq > ? AND seq <= ? ORDER BY seq DESC LIMIT ?",
                (room, low, high, limit),
            ).fetchall()
        return [StoredMessage(int(seq), str(mid), str(sender), str(data), int(ts))
                for seq, mid, sender, data, ts in reversed(rows)]

    def _delete_message(self, room: str, seq: int) -> None:
        with self._translated() as conn:
            conn.execute("DELETE FROM messages WHERE room = ? AND seq = ?", (room, seq))

    def _recall_send(
        self, user: str, room: str, request_id: str, now: float
    ) -> SendRecord | None:
        with self._translated() as conn:
            row = conn.execute(
                "SELECT seq, mid FROM sends WHERE user_id = ? AND room = ? AND request_id = ?"
                " AND expires_at > ?",
                (user, room, request_id, now),
            ).fetchone()
        return None if row is None else SendRecord(int(row[0]), str(row[1]))

    def _remember_send(
        self, user: str, room: str, request_id: str, record: SendRecord, expires: float,
        now: float,
    ) -> SendRecord | None:
        with self._write() as conn:
            row = conn.execute(
                "SELECT seq, mid FROM sends WHERE user_id = ? AND room = ? AND request_id = ?"
                " AND expires_at > ?",
                (user, room, request_id, now),
            ).fetchone()
            if row is not None:
                return SendRecord(int(row[0]), str(row[1]))
            conn.execute(
                "INSERT OR REPLACE INTO sends (user_id, room, request_id, seq, mid, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (user, room, request_id, record.seq, record.mid, expires),
            )
        return None

    def _presence_add(self, room: str, user: str, delta: int, now: float) -> int | None:
        with self._write() as conn:
            row = conn.execute(
                "SELECT connections FROM presence WHERE room = ? AND user_id = ?", (room, user)
            ).fetchone()
            if row is None and delta < 0:
                return None
            count = (0 if row is None else int(row[0])) + delta
            if count <= 0:
                conn.execute("DELETE FROM presence WHERE room = ? AND user_id = ?", (room, user))
                return 0
            conn.execute(
                "INSERT OR REPLACE INTO presence (room, user_id, connections) VALUES (?, ?, ?)",
                (room, user, count),
            )
        return count

    def _presence(self, room: str, limit: int) -> Presence:
        with self._translated() as conn:
            rows = conn.execute(
                "SELECT user_id, connections FROM presence WHERE room = ? ORDER BY user_id"
                " LIMIT ?",
                (room, limit),
            ).fetchall()
            count = conn.execute(
                "SELECT count(*) FROM presence WHERE room = ?", (room,)
            ).fetchone()[0]
        return Presence([(str(u), int(c)) for u, c in rows], int(count))

    def _idle_connections(self, cutoff: float, limit: int) -> list[IdleConnection]:
        with self._translated() as conn:
            rows = conn.execute(
                """
                SELECT connection_id, connected_at, last_seen, endpoint FROM connections
                WHERE last_seen <= ? ORDER BY last_seen LIMIT ?
                """,
                (cutoff, limit),
            ).fetchall()
        return [
            IdleConnection(str(cid), float(connected), float(seen), str(endpoint or ""))
            for cid, connected, seen, endpoint in rows
        ]


def _record(row: Any) -> ConnectionRecord:
    (connection_id, connected_at, last_seen, welcomed_at, source_ip, user_id, endpoint,
     capabilities) = row
    return ConnectionRecord(
        connection_id=str(connection_id),
        connected_at=float(connected_at),
        last_seen=float(last_seen),
        welcomed=welcomed_at is not None,
        source_ip=str(source_ip or ""),
        user=None if user_id is None else str(user_id),
        endpoint=str(endpoint or ""),
        capabilities=None if capabilities is None else str(capabilities),
    )
