"""In-process connection store: plain dicts behind one lock.

Use it for unit tests only: its state lives in one process, so it cannot work across Lambda
containers (``open_store`` refuses it there).
"""

from __future__ import annotations

import bisect
import dataclasses
import threading
from typing import Unpack

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
)


class MemoryStore(ConnectionStore):
    """A :class:`ConnectionStore` kept in this process's memory.

    Never raises :class:`~chalicelib.store.base.TransientStoreError`.  Expired records stay in the
    dicts (like DynamoDB before its TTL sweep) and are filtered on read.
    """

    def __init__(self, **options: Unpack[StoreOptions]) -> None:
        super().__init__(**options)
        # One lock for everything: operations are tiny, and it makes each one trivially atomic.
        self._lock = threading.Lock()
        self._records: dict[str, ConnectionRecord] = {}
        # room -> connection id -> (user, ops)
        self._rooms: dict[str, dict[str, tuple[str | None, str | None]]] = {}
        self._claims_by_id: dict[str, str] = {}
        self._rates: dict[str, tuple[int, int]] = {}  # rate key -> (window, count)
        self._memberships: dict[str, set[str]] = {}  # connection id -> rooms
        self._heads: dict[str, int] = {}  # room -> last seq
        self._messages_by_room: dict[str, dict[int, StoredMessage]] = {}
        self._sends: dict[tuple[str, str, str], tuple[SendRecord, float]] = {}
        self._present: dict[str, dict[str, int]] = {}  # room -> user -> connections

    def _register(self, record: ConnectionRecord) -> None:
        with self._lock:
            old = self._records.get(record.connection_id)
            if old is not None:
                record = dataclasses.replace(
                    record,
                    welcomed=old.welcomed,
                    last_seen=max(old.last_seen, record.last_seen),
                )
            self._records[record.connection_id] = record

    def _get(self, connection_id: str) -> ConnectionRecord | None:
        with self._lock:
            return self._records.get(connection_id)

    def _apply_change(
        self, connection_id: str, expected: ConnectionRecord, change: RecordChange
    ) -> bool:
        with self._lock:
            record = self._records.get(connection_id)
            if record is None or (record.connected_at, record.welcomed) != (
                expected.connected_at, expected.welcomed
            ):
                return False
            if change.claim_welcome:
                record = dataclasses.replace(record, welcomed=True)
            if change.last_seen is not None:
                record = dataclasses.replace(record, last_seen=change.last_seen)
            self._records[connection_id] = record
            return True

    def _count_message(self, key: str, window: int, limit: int, expires: int) -> bool:
        with self._lock:
            stored, count = self._rates.get(key, (window - 1, 0))
            if stored < window:
                self._rates[key] = (window, 1)
                return True
            if count < limit:
                self._rates[key] = (stored, count + 1)
                return True
            return False

    def _claim_welcome(self, connection_id: str, now: float) -> Claim:
        with self._lock:
            record = self._records.get(connection_id)
            if record is None or record.expires_at <= now:
                return Claim.UNKNOWN
            if record.welcomed:
                return Claim.ALREADY_CLAIMED
            self._records[connection_id] = dataclasses.replace(record, welcomed=True)
            return Claim.CLAIMED

    def _mark_checked(self, connection_id: str, now: float) -> bool:
        with self._lock:
            record = self._records.get(connection_id)
            if record is None:
                return False
            self._records[connection_id] = dataclasses.replace(record, last_seen=now)
            return True

    def _remove(self, connection_id: str) -> Removal:
        with self._lock:
            record = self._records.pop(connection_id, None)
            self._claims_by_id.pop(connection_id, None)
            rooms = self._memberships.pop(connection_id, set())
            for room in rooms:
                members = self._rooms.get(room)
                if members is not None:
                    members.pop(connection_id, None)
                    if not members:
                        del self._rooms[room]
            return Removal(None if record is None else record.user, sorted(rooms))

    def _join(
        self, connection_id: str, room: str, user: str | None, ops: str | None, now: float
    ) -> JoinResult:
        with self._lock:
            self._memberships.setdefault(connection_id, set()).add(room)
            members = self._rooms.setdefault(room, {})
            new = connection_id not in members
            members[connection_id] = (user, ops)
            return JoinResult(len(members), new)

    def _membership(self, connection_id: str, room: str) -> str | None:
        with self._lock:
            entry = self._rooms.get(room, {}).get(connection_id)
        if entry is None:
            return None
        return ALL_OPS if entry[1] is None else entry[1]

    def _user_connections(self, user: str, now: float) -> list[str]:
        with self._lock:
            return [r.connection_id for r in self._records.values()
                    if r.user == user and r.expires_at > now]

    def _put_claims(self, connection_id: str, claims_json: str) -> None:
        with self._lock:
            self._claims_by_id[connection_id] = claims_json

    def _claims(self, connection_id: str) -> str | None:
        with self._lock:
            return self._claims_by_id.get(connection_id)

    def _leave(self, connection_id: str, room: str) -> bool:
        with self._lock:
            members = self._rooms.get(room, {})
            was_member = connection_id in members
            members.pop(connection_id, None)
            if not members:
                self._rooms.pop(room, None)
            rooms = self._memberships.get(connection_id, set())
            rooms.discard(room)
            if not rooms:
                self._memberships.pop(connection_id, None)
            return was_member

    def _is_member(self, connection_id: str, room: str) -> bool:
        with self._lock:
            return connection_id in self._rooms.get(room, {})

    def _member_count(self, room: str) -> int:
        with self._lock:
            return len(self._rooms.get(room, {}))

    def _rooms_of(self, connection_id: str) -> list[str]:
        with self._lock:
            return sorted(self._memberships.get(connection_id, ()))

    def _members_page(
        self, room: str, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        with self._lock:
            members = sorted(self._rooms.get(room, {}))
        start = 0 if after is None else bisect.bisect_right(members, after)
        page = members[start : start + limit]
        more = start + limit < len(members)
        return page, (page[-1] if more and page else None)

    def _next_seq(self, room: str) -> int:
        with self._lock:
            self._heads[room] = self._heads.get(room, 0) + 1
            return self._heads[room]

    def _head(self, room: str) -> int:
        with self._lock:
            return self._heads.get(room, 0)

    def _put_message(self, room: str, message: StoredMessage, expires: int) -> None:
        with self._lock:
            self._messages_by_room.setdefault(room, {})[message.seq] = message

    def _messages(self, room: str, low: int, high: int, limit: int) -> list[StoredMessage]:
        with self._lock:
            stored = self._messages_by_room.get(room, {})
            seqs = sorted(seq for seq in stored if low < seq <= high)[-limit:]
            return [stored[seq] for seq in seqs]

    def _delete_message(self, room: str, seq: int) -> None:
        with self._lock:
            self._messages_by_room.get(room, {}).pop(seq, None)

    def _recall_send(
        self, user: str, room: str, request_id: str, now: float
    ) -> SendRecord | None:
        with self._lock:
            found = self._sends.get((user, room, request_id))
        return found[0] if found is not None and found[1] > now else None

    def _remember_send(
        self, user: str, room: str, request_id: str, record: SendRecord, expires: float,
        now: float,
    ) -> SendRecord | None:
        with self._lock:
            found = self._sends.get((user, room, request_id))
            if found is not None and found[1] > now:
                return found[0]
            self._sends[(user, room, request_id)] = (record, expires)
            return None

    def _presence_add(self, room: str, user: str, delta: int, now: float) -> int | None:
        with self._lock:
            users = self._present.setdefault(room, {})
            if delta < 0 and user not in users:
                return None
            count = users.get(user, 0) + delta
            if count <= 0:
                users.pop(user, None)
                if not users:
                    self._present.pop(room, None)
                return 0
            users[user] = count
            return count

    def _presence(self, room: str, limit: int) -> Presence:
        with self._lock:
            users = sorted(self._present.get(room, {}).items())
        return Presence(users[:limit], len(users))

    def _idle_connections(self, cutoff: float, limit: int) -> list[IdleConnection]:
        with self._lock:
            idle = [r for r in self._records.values() if r.last_seen <= cutoff]
        idle.sort(key=lambda r: r.last_seen)
        return [
            IdleConnection(r.connection_id, r.connected_at, r.last_seen, r.endpoint)
            for r in idle[:limit]
        ]
