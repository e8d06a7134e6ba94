"""DynamoDB connection store (``dynamodb://TABLE``): the one that works across Lambda containers.

Single-table design (all keys are strings):

=====================  ==============  ==========================================================
pk                     sk              attributes
=====================  ==============  ==========================================================
``conn#<id>``          ``meta``        connectedAt, lastSeen, welcomedAt (absent until claimed),
                                       sourceIp, user, endpoint, expiresAt,
                                       caps (capabilities, compact), sweepShard (``00``..``31``,
                                       from the id)
``conn#<id>``          ``room#<room>`` joinedAt, expiresAt  (rooms of a connection)
``conn#<id>``          ``claims``      claims, expiresAt  (the token's claims, only when the app
                                       registered a join authoriser)
``room#<room>``        ``conn#<id>``   joinedAt, expiresAt, user, ops  (members of a room; ops:
                                       the operations granted there, when restricted)
``room#<room>``        ``count``       members, expiresAt  (the room's member counter)
``room#<room>``        ``user#<user>`` connections, expiresAt  (presence: a user's connections)
``hist#<room>``        ``head``        seq  (the room's last sequence number)
``hist#<room>``        ``msg#<seq>``   seq, mid, sender, data, ts, expiresAt  (history; seq is
                                       zero-padded to 20 digits so it sorts)
``send#<user>``        ``<room>#<id>`` seq, mid, expiresAt  (accepted sends, for idempotency)
``usr#<user>``         ``conn#<id>``   expiresAt  (a user's connections, for sending to a user)
``rate#u:<user>``      ``<window>``    n, expiresAt  (messages of a user in one rate window;
                                       ``rate#c:<id>`` per connection with authentication off)
=====================  ==============  ==========================================================

History and heads live in their own partition (``hist#``), not the room's: a busy room's
messages and its joins do not share one partition's 1,000 writes/s.  Send records live in the
sender's partition, spread over users.

``expiresAt`` (epoch seconds, integer) is the table's TTL attribute, so records of connections
whose ``$disconnect`` never ran disappear on their own; until DynamoDB's TTL sweep gets to them
(it may lag by a day or two) the store filters them on read.

The sweep index ``by-last-seen`` is keyed ``sweepShard``/``lastSeen`` and projects only
``connectedAt`` and ``endpoint``.  So:

* no index partition is shared by all connections: :data:`SWEEP_SHARDS` partitions, a connection's
  shard fixed by a hash of its id (the sweep queries each);
* only a write that changes ``lastSeen`` (registration, activity at most once a minute, a sweep
  verification) writes the index; counting a message or claiming the welcome does not, because
  neither touches a key or a projected attribute.

Costs (what the caller must know; docs/capacity.md has the measured figures): a steady message
(:meth:`~chalicelib.store.base.ConnectionStore.admit`) is one strongly consistent GetItem of the
``meta`` item and one conditional UpdateItem of the sender's rate counter (a small item: one write
unit); the ``meta`` item is written only to claim the welcome and to move ``lastSeen`` at most once
a minute.  A rate-limited message is the read and a failed conditional write (the same units).
Joining and leaving are O(1) in the room's size: the membership's room side and the counter change
in one transaction (exact counts), then one GetItem reads the counter.

Errors are translated where each call is made (:meth:`DynamoDbStore._call`): a failed condition
becomes a domain result on the spot, throttling becomes
:class:`~chalicelib.store.base.TransientStoreError`, anything else
:class:`~chalicelib.errors.StoreError`.  The botocore client must not retry on its own
(``total_max_attempts=1``, as :meth:`from_table` configures it): the base class retries transient
failures with jittered backoff, and two layers of retries multiply.
"""

from __future__ import annotations

import math
import random
import threading
import zlib
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Unpack, cast

from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from chalicelib.errors import StoreError
from chalicelib.store.base import (
    ALL_OPS,
    EXPIRY_GRACE_SECONDS,
    MAX_CONNECTION_SECONDS,
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

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, WriteRequestTypeDef

    Item = Mapping[str, AttributeValueTypeDef]

#: The table's TTL attribute (enable TTL on it when deploying; ``table_definition`` cannot).
TTL_ATTRIBUTE = "expiresAt"
#: The sweep index over connection records, keyed by shard and last sign of life.
LAST_SEEN_INDEX = "by-last-seen"
#: Partitions of the sweep index.  Each takes about 1,000 index writes/s; a connection writes its
#: entry at registration and then at most once a minute, so 32 shards carry well over a million
#: active connections (docs/capacity.md).
SWEEP_SHARDS = 32

_META = "meta"
_CLAIMS = "claims"
_COUNT = "count"
_HEAD = "head"
_CONN = "conn#"
_ROOM = "room#"
_USER = "user#"
_HIST = "hist#"
_MSG = "msg#"
_SEND = "send#"
_USR = "usr#"
_RATE = "rate#"

#: Error codes worth retrying: the request was not applied, or may succeed on a second try.
_TRANSIENT_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "TransactionConflictException",
    }
)
_CONDITION_FAILED = "ConditionalCheckFailedException"
_TRANSACTION_CANCELED = "TransactionCanceledException"

#: BatchWriteItem takes at most 25 requests; unprocessed ones are resent this many more times.
_BATCH_SIZE = 25
_BATCH_ROUNDS = 5


def table_definition(table_name: str) -> dict[str, Any]:
    """``CreateTable`` keyword arguments for the store's table (on-demand billing, with the index).

    Use it in tests (``client.create_table(**table_definition(name))``); deploy/resources.json
    declares the same table (a test keeps the two equal).  TTL is a separate call:
    ``update_time_to_live`` on :data:`TTL_ATTRIBUTE`.
    """
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "sweepShard", "AttributeType": "S"},
            {"AttributeName": "lastSeen", "AttributeType": "N"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": LAST_SEEN_INDEX,
                "KeySchema": [
                    {"AttributeName": "sweepShard", "KeyType": "HASH"},
                    {"AttributeName": "lastSeen", "KeyType": "RANGE"},
                ],
                # Only what the sweep needs, none of it changed by message traffic: counting a
                # message must not write the index.
                "Projection": {
                    "ProjectionType": "INCLUDE",
                    "NonKeyAttributes": ["connectedAt", "endpoint"],
                },
            }
        ],
    }


def sweep_shard(connection_id: str) -> str:
    """The sweep index partition of a connection (stable: a hash of its id)."""
    return f"{zlib.crc32(connection_id.encode('utf-8')) % SWEEP_SHARDS:02d}"


class ConditionFailed(Exception):
    """Internal: a conditional write (or a transaction's item) did not apply.

    ``item`` is the item as it was (None if absent, or for transactions); ``reasons`` are a
    cancelled transaction's per-item cancellation codes.
    """

    def __init__(self, item: Item | None, reasons: Sequence[str] = ()) -> None:
        super().__init__("condition failed")
        self.item = item
        self.reasons = list(reasons)


class DynamoDbStore(ConnectionStore):
    """A :class:`ConnectionStore` in one DynamoDB table (see the module docstring for the layout).

    Pass a low-level ``dynamodb`` client created with retries disabled, or none to have one created
    on first use (see :meth:`from_table`).  Operations raise
    :class:`~chalicelib.store.base.TransientStoreError` when DynamoDB still throttles (or fails
    internally) after the base class's retries, :class:`~chalicelib.errors.StoreError` for every
    other failure (missing table, access denied, validation); never a botocore exception.
    """

    def __init__(
        self,
        table_name: str,
        client: DynamoDBClient | None = None,
        **options: Unpack[StoreOptions],
    ) -> None:
        super().__init__(**options)
        if not table_name:
            raise ValueError("table_name must be non-empty")
        self._table = table_name
        self._client_instance = client
        self._client_lock = threading.Lock()

    @classmethod
    def from_table(cls, table_name: str, **options: Unpack[StoreOptions]) -> DynamoDbStore:
        """A store whose client is created lazily, on first use, from the environment.

        Region and credentials come from the usual boto3 sources (``AWS_REGION`` in Lambda);
        ``AWS_ENDPOINT_URL_DYNAMODB`` points it at DynamoDB Local.
        """
        return cls(table_name, None, **options)

    @property
    def table_name(self) -> str:
        return self._table

    @property
    def _client(self) -> DynamoDBClient:
        if self._client_instance is None:
            # boto3's default session is not thread-safe: create the client once, under a lock.
            with self._client_lock:
                if self._client_instance is None:
                    self._client_instance = _make_client()
        return self._client_instance

    # ------------------------------------------------------------------ the one call site

    def _call(self, method: str, **kwargs: Any) -> Any:
        """``client.<method>(TableName=..., **kwargs)``, its errors translated right here.

        Raises :class:`ConditionFailed` for a failed condition (with the old item when the request
        asked for it, and the cancellation reasons of a transaction),
        :class:`~chalicelib.store.base.TransientStoreError` for throttling, internal errors and
        dropped connections, :class:`~chalicelib.errors.StoreError` for everything else.
        """
        if method not in ("transact_write_items", "batch_write_item"):
            kwargs["TableName"] = self._table
        try:
            return getattr(self._client, method)(**kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == _CONDITION_FAILED:
                raise ConditionFailed(cast("Item | None", exc.response.get("Item"))) from exc
            reasons = [
                str(reason.get("Code") or "None")
                for reason in exc.response.get("CancellationReasons", [])
            ]
            if code == _TRANSACTION_CANCELED and "ConditionalCheckFailed" in reasons:
                raise ConditionFailed(None, reasons) from exc
            message = f"dynamodb {method} on {self._table}: {code}: {exc}"
            if code in _TRANSIENT_CODES or (
                code == _TRANSACTION_CANCELED
                and any(r in ("TransactionConflict", "ThrottlingError") for r in reasons)
            ):
                raise TransientStoreError(message) from exc
            raise StoreError(message) from exc
        except BotoConnectionError as exc:
            # Connect/read timeouts and dropped connections: worth another try.
            raise TransientStoreError(f"dynamodb {method} on {self._table}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"dynamodb {method} on {self._table}: {exc}") from exc

    def _update_if(
        self,
        key: dict[str, AttributeValueTypeDef],
        update: str,
        condition: str,
        values: dict[str, AttributeValueTypeDef],
        names: dict[str, str] | None = None,
    ) -> tuple[bool, Item | None]:
        """One conditional UpdateItem: (True, None) if applied, else (False, the old item)."""
        extra: dict[str, Any] = {"ExpressionAttributeNames": names} if names else {}
        try:
            self._call(
                "update_item",
                Key=key,
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
                **extra,
            )
        except ConditionFailed as failed:
            return False, failed.item
        return True, None

    # ------------------------------------------------------------------ primitives

    def _register(self, record: ConnectionRecord) -> None:
        values: dict[str, AttributeValueTypeDef] = {
            ":connected": _n(record.connected_at),
            ":seen": _n(record.last_seen),
            ":ip": {"S": record.source_ip},
            ":endpoint": {"S": record.endpoint},
            ":exp": _n(_ttl(record.connected_at)),
            ":shard": {"S": sweep_shard(record.connection_id)},
        }
        update = (
            "SET connectedAt = :connected, lastSeen = :seen, sourceIp = :ip, expiresAt = :exp,"
            " sweepShard = :shard, endpoint = :endpoint"
        )
        # welcomedAt is left alone: registering again keeps the welcome state.
        removed = []
        if record.user is None:
            removed.append("#user")
        else:
            update += ", #user = :user"
            values[":user"] = {"S": record.user}
        if record.capabilities is None:
            removed.append("caps")
        else:
            update += ", caps = :caps"
            values[":caps"] = {"S": record.capabilities}
        if removed:
            update += " REMOVE " + ", ".join(removed)
        self._call(
            "update_item",
            Key=_conn_key(record.connection_id),
            UpdateExpression=update,
            ExpressionAttributeNames={"#user": "user"},  # USER is a reserved word
            ExpressionAttributeValues=values,
        )
        if record.user is not None:
            # The user's index entry (a second write, at $connect only): sending to a user is
            # one Query of the user's own partition.
            self._call("put_item", Item={**_key(_USR + record.user, _CONN + record.connection_id),
                                         TTL_ATTRIBUTE: _n(_ttl(record.connected_at))})

    def _get(self, connection_id: str) -> ConnectionRecord | None:
        response = self._call("get_item", Key=_conn_key(connection_id), ConsistentRead=True)
        item = response.get("Item")
        return None if item is None else _record(item)

    def _apply_change(
        self, connection_id: str, expected: ConnectionRecord, change: RecordChange
    ) -> bool:
        sets: list[str] = []
        values: dict[str, AttributeValueTypeDef] = {":connected": _n(expected.connected_at)}
        if change.claim_welcome:
            sets.append("welcomedAt = :now")
            values[":now"] = _n(self._clock())
        if change.last_seen is not None:
            sets.append("lastSeen = :seen")
            values[":seen"] = _n(change.last_seen)
        welcomed = (
            "attribute_exists(welcomedAt)" if expected.welcomed
            else "attribute_not_exists(welcomedAt)"
        )
        done, _old = self._update_if(
            _conn_key(connection_id),
            "SET " + ", ".join(sets),
            f"connectedAt = :connected AND {welcomed}",
            values,
        )
        return done

    def _count_message(self, key: str, window: int, limit: int, expires: int) -> bool:
        # One item per key and window: a new window is a new item, so counting is always one
        # conditional ADD (never a reset); TTL removes past windows.
        try:
            self._call(
                "update_item", Key=_key(_RATE + key, str(window)),
                UpdateExpression="ADD n :one SET expiresAt = :exp",
                ConditionExpression="attribute_not_exists(n) OR n < :limit",
                ExpressionAttributeValues={":one": _n(1), ":exp": _n(expires),
                                           ":limit": _n(limit)},
            )
        except ConditionFailed:
            return False  # the limit is reached in this window; nothing was counted
        return True

    def _claim_welcome(self, connection_id: str, now: float) -> Claim:
        # "Live" inside the condition: the record exists and has not expired.  Comparing
        # connectedAt (exact) rather than expiresAt (rounded up for TTL) matches get().
        done, old = self._update_if(
            _conn_key(connection_id),
            "SET welcomedAt = :now",
            "attribute_exists(pk) AND attribute_not_exists(welcomedAt) AND connectedAt > :oldest",
            {":now": _n(now), ":oldest": _n(now - MAX_CONNECTION_SECONDS - EXPIRY_GRACE_SECONDS)},
        )
        if done:
            return Claim.CLAIMED
        return Claim.ALREADY_CLAIMED if _live(old, now) else Claim.UNKNOWN

    def _mark_checked(self, connection_id: str, now: float) -> bool:
        done, _old = self._update_if(
            _conn_key(connection_id),
            "SET lastSeen = :now",
            "attribute_exists(pk)",
            {":now": _n(now)},
        )
        return done

    def _remove(self, connection_id: str) -> Removal:
        items = self._query(
            KeyConditionExpression="pk = :pk",
            ExpressionAttributeValues={":pk": {"S": _CONN + connection_id}},
            ProjectionExpression="sk, #user",
            ExpressionAttributeNames={"#user": "user"},
            ConsistentRead=True,
        )
        sort_keys = [item["sk"]["S"] for item in items]
        user = next((item["user"]["S"] for item in items
                     if item["sk"]["S"] == _META and "user" in item), None)
        rooms = sorted(sk[len(_ROOM) :] for sk in sort_keys if sk.startswith(_ROOM))
        # Room sides first (broadcasts stop, counters drop), the connection's own partition last:
        # if we fail halfway, a retry still finds every room through the connection's partition.
        for room in rooms:
            self._leave_room_side(connection_id, room)
        deletes = [_delete(_CONN + connection_id, sk) for sk in sort_keys]
        if user is not None:
            deletes.insert(0, _delete(_USR + user, _CONN + connection_id))
        self._batch_write(deletes)
        return Removal(user, rooms)

    def _join(
        self, connection_id: str, room: str, user: str | None, ops: str | None, now: float
    ) -> JoinResult:
        # Memberships expire no later than the connection could (joined after it connected), so
        # an orphan left by a join racing a disconnect disappears through TTL; the counter lives
        # as long as its newest membership.
        expiry = _n(_ttl(now))
        self._call(
            "put_item",
            Item={**_key(_CONN + connection_id, _ROOM + room), "joinedAt": _n(now),
                  TTL_ATTRIBUTE: expiry},
        )
        member: dict[str, AttributeValueTypeDef] = {
            **_key(_ROOM + room, _CONN + connection_id), "joinedAt": _n(now), TTL_ATTRIBUTE: expiry,
        }
        if user is not None:
            member["user"] = {"S": user}
        if ops is not None:
            member["ops"] = {"S": ops}
        # The membership and the counter move together or not at all: the count stays exact
        # without ever counting the room.  A failed condition: already a member, nothing moves.
        new = True
        try:
            self._call("transact_write_items", TransactItems=[
                {"Put": {"TableName": self._table, "Item": member,
                         "ConditionExpression": "attribute_not_exists(pk)"}},
                {"Update": {"TableName": self._table, "Key": _key(_ROOM + room, _COUNT),
                            "UpdateExpression": "ADD members :one SET expiresAt = :exp",
                            "ExpressionAttributeValues": {":one": _n(1), ":exp": expiry}}},
            ])
        except ConditionFailed:
            new = False
            # Joining again (a new token's capabilities, or a re-join): the ops follow.
            self._call("update_item", Key=_key(_ROOM + room, _CONN + connection_id),
                       UpdateExpression="REMOVE ops" if ops is None else "SET ops = :ops",
                       **({} if ops is None else {"ExpressionAttributeValues": {
                           ":ops": {"S": ops}}}))
        return JoinResult(self._member_count(room), new)

    def _membership(self, connection_id: str, room: str) -> str | None:
        response = self._call(
            "get_item", Key=_key(_ROOM + room, _CONN + connection_id),
            ProjectionExpression="pk, ops", ConsistentRead=True)
        item = response.get("Item")
        if item is None:
            return None
        return item["ops"]["S"] if "ops" in item else ALL_OPS

    def _user_connections(self, user: str, now: float) -> list[str]:
        items = self._query(
            KeyConditionExpression="pk = :pk",
            FilterExpression="expiresAt > :now",
            ExpressionAttributeValues={":pk": {"S": _USR + user}, ":now": _n(now)},
            ConsistentRead=True,
        )
        return [item["sk"]["S"][len(_CONN):] for item in items]

    def _put_claims(self, connection_id: str, claims_json: str) -> None:
        self._call("put_item", Item={**_key(_CONN + connection_id, _CLAIMS),
                                     "claims": {"S": claims_json},
                                     TTL_ATTRIBUTE: _n(_ttl(self._clock()))})

    def _claims(self, connection_id: str) -> str | None:
        response = self._call("get_item", Key=_key(_CONN + connection_id, _CLAIMS),
                              ConsistentRead=True)
        item = response.get("Item")
        return None if item is None else item["claims"]["S"]

    def _leave(self, connection_id: str, room: str) -> bool:
        # The room's side first (broadcasts stop), the connection's side last (remove() relies on
        # it to find the room if we fail in between).
        was_member = self._leave_room_side(connection_id, room)
        self._call("delete_item", Key=_key(_CONN + connection_id, _ROOM + room))
        return was_member

    def _leave_room_side(self, connection_id: str, room: str) -> bool:
        """Delete the room side of a membership and decrement the counter, in one transaction."""
        try:
            self._call("transact_write_items", TransactItems=[
                {"Delete": {"TableName": self._table,
                            "Key": _key(_ROOM + room, _CONN + connection_id),
                            "ConditionExpression": "attribute_exists(pk)"}},
                # if_not_exists: a counter TTL already removed comes back with an expiry, never
                # as an immortal negative item.
                {"Update": {"TableName": self._table, "Key": _key(_ROOM + room, _COUNT),
                            "UpdateExpression": "ADD members :minus"
                                                " SET expiresAt = if_not_exists(expiresAt, :exp)",
                            "ExpressionAttributeValues": {
                                ":minus": _n(-1), ":exp": _n(_ttl(self._clock()))}}},
            ])
        except ConditionFailed:
            return False
        return True

    def _is_member(self, connection_id: str, room: str) -> bool:
        response = self._call(
            "get_item",
            Key=_key(_ROOM + room, _CONN + connection_id),
            ProjectionExpression="pk",
            ConsistentRead=True,
        )
        return "Item" in response

    def _member_count(self, room: str) -> int:
        response = self._call("get_item", Key=_key(_ROOM + room, _COUNT), ConsistentRead=True)
        item = response.get("Item")
        return 0 if item is None else int(item["members"]["N"])

    def _rooms_of(self, connection_id: str) -> list[str]:
        items = self._query(
            KeyConditionExpression="pk = :pk AND begins_with(sk, :room)",
            ExpressionAttributeValues={":pk": {"S": _CONN + connection_id}, ":room": {"S": _ROOM}},
            ProjectionExpression="sk",
            ConsistentRead=True,
        )
        return [item["sk"]["S"][len(_ROOM) :] for item in items]

    def _members_page(
        self, room: str, after: str | None, limit: int
    ) -> tuple[list[str], str | None]:
        # A range condition instead of ExclusiveStartKey: the cursor is a plain connection id,
        # and the counter item (sk "count") sorts outside "conn#" .. "conn$".  BETWEEN includes
        # the cursor itself, hence one item more and the filter.
        page = self._call(
            "query",
            KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
            ExpressionAttributeValues={
                ":pk": {"S": _ROOM + room},
                ":low": {"S": _CONN + (after or "")},
                ":high": {"S": _CONN[:-1] + "$"},
            },
            ProjectionExpression="sk",
            ConsistentRead=True,
            Limit=limit if after is None else limit + 1,
        )
        ids = [
            sk[len(_CONN) :] for sk in (item["sk"]["S"] for item in page["Items"])
            if sk != _CONN + (after or "")
        ][:limit]
        more = bool(page.get("LastEvaluatedKey"))
        return ids, (ids[-1] if more and ids else None)

    def _next_seq(self, room: str) -> int:
        response = self._call(
            "update_item", Key=_key(_HIST + room, _HEAD), UpdateExpression="ADD seq :one",
            ExpressionAttributeValues={":one": _n(1)}, ReturnValues="UPDATED_NEW",
        )
        return int(response["Attributes"]["seq"]["N"])

    def _head(self, room: str) -> int:
        response = self._call("get_item", Key=_key(_HIST + room, _HEAD), ConsistentRead=True)
        item = response.get("Item")
        return 0 if item is None else int(item["seq"]["N"])

    def _put_message(self, room: str, message: StoredMessage, expires: int) -> None:
        self._call("put_item", Item={
            **_key(_HIST + room, _msg_sk(message.seq)),
            "seq": _n(message.seq), "mid": {"S": message.mid}, "sender": {"S": message.sender},
            "data": {"S": message.data_json}, "ts": _n(message.ts), TTL_ATTRIBUTE: _n(expires),
        })

    def _messages(self, room: str, low: int, high: int, limit: int) -> list[StoredMessage]:
        found: list[StoredMessage] = []
        # Newest first, so ``limit`` keeps the newest; each page is one bounded read (1 MB).
        for page in self._query_pages(
            KeyConditionExpression="pk = :pk AND sk BETWEEN :low AND :high",
            ExpressionAttributeValues={":pk": {"S": _HIST + room},
                                       ":low": {"S": _msg_sk(low + 1)},
                                       ":high": {"S": _msg_sk(high)}},
            ScanIndexForward=False,
            ConsistentRead=True,
            Limit=limit,
        ):
            found.extend(_message(item) for item in page["Items"])
            if len(found) >= limit:
                break
        return sorted(found[:limit], key=lambda m: m.seq)

    def _delete_message(self, room: str, seq: int) -> None:
        self._call("delete_item", Key=_key(_HIST + room, _msg_sk(seq)))

    def _recall_send(
        self, user: str, room: str, request_id: str, now: float
    ) -> SendRecord | None:
        response = self._call(
            "get_item", Key=_key(_SEND + user, f"{room}#{request_id}"), ConsistentRead=True)
        item = response.get("Item")
        if item is None or int(item[TTL_ATTRIBUTE]["N"]) <= now:
            return None
        return SendRecord(int(item["seq"]["N"]), item["mid"]["S"])

    def _remember_send(
        self, user: str, room: str, request_id: str, record: SendRecord, expires: float,
        now: float,
    ) -> SendRecord | None:
        try:
            self._call(
                "put_item",
                Item={**_key(_SEND + user, f"{room}#{request_id}"), "seq": _n(record.seq),
                      "mid": {"S": record.mid}, TTL_ATTRIBUTE: _n(math.ceil(expires))},
                # An expired record that TTL has not deleted yet does not count.
                ConditionExpression="attribute_not_exists(pk) OR expiresAt <= :now",
                ExpressionAttributeValues={":now": _n(now)},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ConditionFailed as failed:
            if failed.item is None:
                raise StoreError(f"dynamodb remember_send on {self._table}: no item") from None
            return SendRecord(int(failed.item["seq"]["N"]), failed.item["mid"]["S"])
        return None

    def _presence_add(self, room: str, user: str, delta: int, now: float) -> int | None:
        key = _key(_ROOM + room, _USER + user)
        if delta > 0:
            response = self._call(
                "update_item", Key=key,
                UpdateExpression="ADD connections :delta SET expiresAt = :exp",
                ExpressionAttributeValues={":delta": _n(delta), ":exp": _n(_ttl(now))},
                ReturnValues="UPDATED_NEW",
            )
            return int(response["Attributes"]["connections"]["N"])
        try:
            response = self._call(
                "update_item", Key=key, UpdateExpression="ADD connections :delta",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":delta": _n(delta)}, ReturnValues="UPDATED_NEW",
            )
        except ConditionFailed:
            return None  # not present: nothing to announce
        left = int(response["Attributes"]["connections"]["N"])
        if left > 0:
            return left
        try:
            self._call("delete_item", Key=key, ConditionExpression="connections <= :zero",
                       ExpressionAttributeValues={":zero": _n(0)},
                       ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except ConditionFailed as failed:
            # Another connection of the user entered in between: still present.
            item = failed.item
            return int(item["connections"]["N"]) if item is not None else 0
        return 0

    def _presence(self, room: str, limit: int) -> Presence:
        condition = {
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :user)",
            "ExpressionAttributeValues": {":pk": {"S": _ROOM + room}, ":user": {"S": _USER}},
            "ConsistentRead": True,
        }
        page = self._call("query", ProjectionExpression="sk, connections", Limit=limit,
                          **condition)
        users = [(item["sk"]["S"][len(_USER):], int(item["connections"]["N"]))
                 for item in page["Items"]]
        count = sum(int(p["Count"]) for p in self._query_pages(Select="COUNT", **condition))
        return Presence(users, count)

    def _idle_connections(self, cutoff: float, limit: int) -> list[IdleConnection]:
        found: list[IdleConnection] = []
        for shard in range(SWEEP_SHARDS):
            shard_found = 0
            for page in self._query_pages(
                IndexName=LAST_SEEN_INDEX,
                KeyConditionExpression="sweepShard = :shard AND lastSeen <= :cutoff",
                ExpressionAttributeValues={
                    ":shard": {"S": f"{shard:02d}"}, ":cutoff": _n(cutoff)},
                ScanIndexForward=True,  # oldest first
                Limit=min(limit, 1000),
            ):
                items = page["Items"]
                found.extend(_idle(item) for item in items)
                shard_found += len(items)
                if shard_found >= limit:
                    break
        return found

    # ------------------------------------------------------------------ helpers

    def _query_pages(self, **kwargs: Any) -> Any:
        """Every page of one Query (a generator; errors are translated per page)."""
        start: Mapping[str, Any] | None = None
        while True:
            if start is not None:
                kwargs["ExclusiveStartKey"] = start
            page = self._call("query", **kwargs)
            yield page
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    def _query(self, **kwargs: Any) -> list[Item]:
        items: list[Item] = []
        for page in self._query_pages(**kwargs):
            items.extend(page["Items"])
        return items

    def _batch_write(self, requests: Sequence[WriteRequestTypeDef]) -> None:
        """BatchWriteItem in chunks of 25, resending unprocessed items a bounded number of times.

        Raises TransientStoreError when items are still unprocessed after the last round (the
        base class then retries the whole, idempotent, operation).
        """
        for start in range(0, len(requests), _BATCH_SIZE):
            pending: Sequence[Any] = requests[start : start + _BATCH_SIZE]
            for round_ in range(_BATCH_ROUNDS):
                if round_:
                    # Unprocessed items mean throttling: back off before resending them.
                    self._sleep(self._retry.delay(round_, random.random))
                response = self._call("batch_write_item", RequestItems={self._table: pending})
                pending = response.get("UnprocessedItems", {}).get(self._table, [])
                if not pending:
                    break
            else:
                raise TransientStoreError(
                    f"dynamodb batch_write_item on {self._table}: {len(pending)} items still"
                    f" unprocessed after {_BATCH_ROUNDS} rounds"
                )


def _make_client() -> DynamoDBClient:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": 1},  # the store retries, with backoff and a bound
        connect_timeout=3,
        read_timeout=10,
    )
    return boto3.client("dynamodb", config=config)


def _n(value: float) -> AttributeValueTypeDef:
    """A DynamoDB number in plain notation (repr could give '1e-05'); ints stay integral (TTL)."""
    if isinstance(value, int):
        return {"N": str(value)}
    return {"N": format(Decimal(repr(float(value))), "f")}


def _ttl(connected_at: float) -> int:
    # Rounded up: TTL must never delete a record that get() still considers live.
    return math.ceil(expires_at(connected_at))


def _key(pk: str, sk: str) -> dict[str, AttributeValueTypeDef]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _conn_key(connection_id: str) -> dict[str, AttributeValueTypeDef]:
    return _key(_CONN + connection_id, _META)


def _delete(pk: str, sk: str) -> WriteRequestTypeDef:
    return {"DeleteRequest": {"Key": _key(pk, sk)}}


def _live(item: Item | None, now: float) -> bool:
    return (
        item is not None
        and "connectedAt" in item
        and (expires_at(float(item["connectedAt"]["N"])) > now)
    )


def _record(item: Item) -> ConnectionRecord:
    user = item.get("user")
    return ConnectionRecord(
        connection_id=item["pk"]["S"][len(_CONN) :],
        connected_at=float(item["connectedAt"]["N"]),
        last_seen=float(item["lastSeen"]["N"]),
        welcomed="welcomedAt" in item,
        source_ip=item.get("sourceIp", {}).get("S", ""),
        user=None if user is None else user.get("S"),
        endpoint=item.get("endpoint", {}).get("S", ""),
        capabilities=item["caps"]["S"] if "caps" in item else None,
    )


def _msg_sk(seq: int) -> str:
    return f"{_MSG}{seq:020d}"


def _message(item: Item) -> StoredMessage:
    return StoredMessage(
        seq=int(item["seq"]["N"]),
        mid=item["mid"]["S"],
        sender=item["sender"]["S"],
        data_json=item["data"]["S"],
        ts=int(item["ts"]["N"]),
    )


def _idle(item: Item) -> IdleConnection:
    return IdleConnection(
        connection_id=item["pk"]["S"][len(_CONN) :],
        connected_at=float(item["connectedAt"]["N"]),
        last_seen=float(item["lastSeen"]["N"]),
        endpoint=item.get("endpoint", {}).get("S", ""),
    )


__all__ = [
    "LAST_SEEN_INDEX",
    "SWEEP_SHARDS",
    "TTL_ATTRIBUTE",
    "DynamoDbStore",
    "sweep_shard",
    "table_definition",
]
