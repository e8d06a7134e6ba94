"""In-process connection store: plain dicts behind one lock.

Use it for unit tests only: its state lives in one process, so it cannot work across Lambda
containers (``open_store`` refuses it there).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Unpack

from chalicelib.store.base import Claim, ConnectionRecord, ConnectionStore, StoreOptions


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
        self._rooms: dict[str, set[str]] = {}  # room -> connection ids
        self._memberships: dict[str, set[str]] = {}  # connection id -> rooms
        self._rates: dict[str, tuple[int, int]] = {}  # connection id -> (window, count)

    def _register(self, record: ConnectionRecord) -> None:
        with self._lock:
            old = self._records.get(record.connection_id)
            if old is not None:
                record = dataclasses.replace(
                    record, welcomed=old.welcomed, last_seen=max(old.last_seen, record.last_seen)
                )
            self._records[record.connection_id] = record

    def _get(self, connection_id: str) -> ConnectionRecord | None:
        with self._lock:
            return self._records.get(connection_id)

    def _claim_welcome(self, connection_id: str, now: float, touch: bool) -> Claim:
        with self._lock:
            record = self._records.get(connection_id)
            if record is None or record.expires_at <= now:
                return Claim.UNKNOWN
            result = Claim.ALREADY_CLAIMED if record.welcomed else Claim.CLAIMED
            last_seen = max(record.last_seen, now) if touch else record.last_seen
            self._records[connection_id] = dataclasses.replace(
                record, welcomed=True, last_seen=last_seen
            )
            return result

    def _remove(self, connection_id: str) -> list[str]:
        with self._lock:
            self._records.pop(connection_id, None)
            self._rates.pop(connection_id, None)
            rooms = self._memberships.pop(connection_id, set())
            for room in rooms:
                members = self._rooms.get(room)
                if members is not None:
                    members.discard(connection_id)
                    if not members:
                        del self._rooms[room]
            return sorted(rooms)

    def _join(self, connection_id: str, room: str, now: float) -> int:
        with self._lock:
            self._memberships.setdefault(connection_id, set()).add(room)
            members = self._rooms.setdefault(room, set())
            members.add(connection_id)
            return len(members)

    def _leave(self, connection_id: str, room: str) -> bool:
        with self._lock:
            members = self._rooms.get(room, set())
            was_member = connection_id in members
            members.discard(connection_id)
            if not members:
                self._rooms.pop(room, None)
            rooms = self._memberships.get(connection_id, set())
            rooms.discard(room)
            if not rooms:
                self._memberships.pop(connection_id, None)
            return was_member

    def _is_member(self, connection_id: str, room: str) -> bool:
        with self._lock:
            return connection_id in self._rooms.get(room, ())

    def _rooms_of(self, connection_id: str) -> list[str]:
        with self._lock:
            return sorted(self._memberships.get(connection_id, ()))

    def _members(self, room: str) -> Iterator[str]:
        with self._lock:
            # Copy under the lock: the caller iterates after we release it.
            members = sorted(self._rooms.get(room, ()))
        return iter(members)

    def _admit_message(self, connection_id: str, window: int, limit: int, now: float) -> bool:
        with self._lock:
            stored, count = self._rates.get(connection_id, (window - 1, 0))
            if stored < window:
                self._rates[connection_id] = (window, 1)
                return True
            if count < limit:
                self._rates[connection_id] = (stored, count + 1)
                return True
            return False

    def _idle_connections(self, cutoff: float, limit: int) -> Iterator[ConnectionRecord]:
        with self._lock:
            idle = [r for r in self._records.values() if r.last_seen <= cutoff]
        idle.sort(key=lambda r: r.last_seen)
        return iter(idle[:limit])
