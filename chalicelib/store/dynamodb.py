"""DynamoDB connection store (``dynamodb://TABLE``): the one that works across Lambda containers.

Single-table design (all keys are strings):

=====================  ==============  ==========================================================
pk                     sk              attributes
=====================  ==============  ==========================================================
``conn#<id>``          ``meta``        connectedAt, lastSeen, welcomedAt (absent until claimed),
                                       sourceIp, user, expiresAt, gsi1pk=``conn``, gsi1sk=lastSeen
``conn#<id>``          ``room#<room>`` joinedAt, expiresAt  (rooms of a connection)
``room#<room>``        ``conn#<id>``   joinedAt, expiresAt  (members of a room)
``conn#<id>``          ``rate``        window, messages, expiresAt  (the message rate counter)
=====================  ==============  ==========================================================

``expiresAt`` (epoch seconds, integer) is the table's TTL attribute, so records of connections
whose ``$disconnect`` never ran disappear on their own; until DynamoDB's TTL sweep gets to them
(it may lag by a day or two) the store filters them on read.  The sparse GSI ``by-last-seen``
(``gsi1pk``/``gsi1sk``) lets the idle sweep Query connections by last activity instead of
scanning.

Write costs (what the caller must know): ``claim_welcome(touch=True)`` first tries the common case,
"already welcomed: just bump lastSeen", as one conditional UpdateItem.  So every message after the
first costs one write; the first message of a connection costs two (the failed touch, then the
claim), and a message racing another claimer may cost a third.  ``claim_welcome(touch=False)``
costs one write.  Every write to a connection record also writes the GSI (lastSeen is its key).
``admit_message`` (the rate limit) costs one more write per message on its own item (not the
record, so the GSI is not written): one conditional ``ADD``; the first message of each window costs
two (the failed increment, then the reset).  All reads of the base table are strongly
consistent; ``idle_connections`` reads the GSI, which is
eventually consistent (fine for a sweep).

The botocore client must not retry on its own (``total_max_attempts=1``, as :meth:`from_table`
configures it): :class:`~chalicelib.store.base.ConnectionStore` retries transient failures with
jittered backoff, and two layers of retries multiply.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Unpack, cast

from botocore.exceptions import BotoCoreError, ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from chalicelib.errors import StoreError
from chalicelib.store.base import (
    EXPIRY_GRACE_SECONDS,
    MAX_CONNECTION_SECONDS,
    Claim,
    ConnectionRecord,
    ConnectionStore,
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
#: The sparse GSI over connection records, keyed by last activity.
LAST_SEEN_INDEX = "by-last-seen"

_META = "meta"
_RATE = "rate"
_CONN = "conn#"
_ROOM = "room#"
_GSI_PK = "conn"

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

#: BatchWriteItem takes at most 25 requests; unprocessed ones are resent this many more times.
_BATCH_SIZE = 25
_BATCH_ROUNDS = 5


def table_definition(table_name: str) -> dict[str, Any]:
    """``CreateTable`` keyword arguments for the store's table (on-demand billing, with the GSI).

    Use it in tests (``client.create_table(**table_definition(name))``) and as the source of truth
    for the deployment template.  TTL is a separate call: ``update_time_to_live`` on
    :data:`TTL_ATTRIBUTE`.
    """
    return {
        "TableName": table_name,
        "BillingMode": "PAY_PER_REQUEST",
        "AttributeDefinitions": [
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
            {"AttributeName": "gsi1pk", "AttributeType": "S"},
            {"AttributeName": "gsi1sk", "AttributeType": "N"},
        ],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": LAST_SEEN_INDEX,
                "KeySchema": [
                    {"AttributeName": "gsi1pk", "KeyType": "HASH"},
                    {"AttributeName": "gsi1sk", "KeyType": "RANGE"},
                ],
                # The sweep needs whole records; they are small.
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
    }


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

    # ------------------------------------------------------------------ error translation

    @contextmanager
    def _translated(self, operation: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            code = _error_code(exc)
            message = f"dynamodb {operation} on {self._table}: {code}: {exc}"
            if code in _TRANSIENT_CODES:
                raise TransientStoreError(message) from exc
            raise StoreError(message) from exc
        except BotoConnectionError as exc:
            # Connect/read timeouts and dropped connections: worth another try.
            raise TransientStoreError(f"dynamodb {operation} on {self._table}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"dynamodb {operation} on {self._table}: {exc}") from exc

    # ------------------------------------------------------------------ primitives

    def _register(self, record: ConnectionRecord) -> None:
        values: dict[str, AttributeValueTypeDef] = {
            ":connected": _n(record.connected_at),
            ":seen": _n(record.last_seen),
            ":ip": {"S": record.source_ip},
            ":endpoint": {"S": record.endpoint},
            ":exp": _n(_ttl(record.connected_at)),
            ":gsi": {"S": _GSI_PK},
        }
        update = (
            "SET connectedAt = :connected, lastSeen = :seen, gsi1sk = :seen, sourceIp = :ip,"
            " expiresAt = :exp, gsi1pk = :gsi, endpoint = :endpoint"
        )
        # welcomedAt is left alone: registering again keeps the welcome state.
        if record.user is None:
            update += " REMOVE #user"
        else:
            update += ", #user = :user"
            values[":user"] = {"S": record.user}
        with self._translated("register"):
            self._client.update_item(
                TableName=self._table,
                Key=_conn_key(record.connection_id),
                UpdateExpression=update,
                ExpressionAttributeNames={"#user": "user"},  # USER is a reserved word
                ExpressionAttributeValues=values,
            )

    def _get(self, connection_id: str) -> ConnectionRecord | None:
        with self._translated("get"):
            response = self._client.get_item(
                TableName=self._table, Key=_conn_key(connection_id), ConsistentRead=True
            )
        item = response.get("Item")
        return None if item is None else _record(item)

    def _claim_welcome(self, connection_id: str, now: float, touch: bool) -> Claim:
        # "Live" inside conditions: the record exists and has not expired.  Comparing connectedAt
        # (exact) rather than expiresAt (rounded up for TTL) matches the base class's get().
        live_values: dict[str, AttributeValueTypeDef] = {
            ":oldest": _n(now - MAX_CONNECTION_SECONDS - EXPIRY_GRACE_SECONDS),
        }
        if touch:
            # Common case first: the welcome went out long ago, this message only records activity.
            done, old = self._conditional_update(
                connection_id,
                "SET lastSeen = :now, gsi1sk = :now",
                "attribute_exists(welcomedAt) AND connectedAt > :oldest",
                {**live_values, ":now": _n(now)},
            )
            if done:
                return Claim.ALREADY_CLAIMED
            if not _live(old, now):
                return Claim.UNKNOWN
        update = (
            "SET welcomedAt = :now, lastSeen = :now, gsi1sk = :now"
            if touch
            else ("SET welcomedAt = :now")
        )
        done, old = self._conditional_update(
            connection_id,
            update,
            "attribute_exists(pk) AND attribute_not_exists(welcomedAt) AND connectedAt > :oldest",
            {**live_values, ":now": _n(now)},
        )
        if done:
            return Claim.CLAIMED
        if not _live(old, now):
            return Claim.UNKNOWN
        if touch:
            # Rare: another caller claimed between our two writes; still record the activity.
            self._conditional_update(
                connection_id,
                "SET lastSeen = :now, gsi1sk = :now",
                "attribute_exists(pk)",
                {":now": _n(now)},
            )
        return Claim.ALREADY_CLAIMED

    def _conditional_update(
        self,
        connection_id: str,
        update: str,
        condition: str,
        values: dict[str, AttributeValueTypeDef],
    ) -> tuple[bool, Item | None]:
        """One conditional UpdateItem on the record: (True, None) if applied, else (False, old).

        ``old`` is the item as it was when the condition failed (None if there is none), so no
        follow-up read is needed to tell "unknown" from "already claimed".
        """
        try:
            with self._translated("update_item"):
                try:
                    self._client.update_item(
                        TableName=self._table,
                        Key=_conn_key(connection_id),
                        UpdateExpression=update,
                        ConditionExpression=condition,
                        ExpressionAttributeValues=values,
                        ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    )
                except ClientError as exc:
                    if _error_code(exc) == _CONDITION_FAILED:
                        old = cast("Item | None", exc.response.get("Item"))
                        raise _ConditionFailed(old) from exc
                    raise
        except _ConditionFailed as failed:
            return False, failed.item
        return True, None

    def _admit_message(self, connection_id: str, window: int, limit: int, now: float) -> bool:
        key = _key(_CONN + connection_id, _RATE)
        names = {"#w": "window", "#n": "messages"}
        for _ in range(3):
            done, old = self._update_if(
                key,
                "ADD #n :one",
                # An older window stored by a container whose clock runs ahead counts as current.
                "#w >= :w AND #n < :limit",
                {":one": _n(1), ":w": _n(window), ":limit": _n(limit)},
                names,
            )
            if done:
                return True
            if old is not None and "window" in old and int(old["window"]["N"]) >= window:
                return False  # the limit is reached in this window; nothing was counted
            done, _old = self._update_if(
                key,
                "SET #w = :w, #n = :one, expiresAt = :exp",
                "attribute_not_exists(#w) OR #w < :w",
                {":one": _n(1), ":w": _n(window), ":exp": _n(_ttl(now))},
                names,
            )
            if done:
                return True
            # Another caller started this window between our two writes: count against it.
        raise TransientStoreError(f"dynamodb admit_message on {self._table}: contention")

    def _update_if(
        self,
        key: dict[str, AttributeValueTypeDef],
        update: str,
        condition: str,
        values: dict[str, AttributeValueTypeDef],
        names: dict[str, str],
    ) -> tuple[bool, Item | None]:
        """One conditional UpdateItem on ``key``: (True, None) if applied, else (False, old)."""
        try:
            with self._translated("update_item"):
                try:
                    self._client.update_item(
                        TableName=self._table,
                        Key=key,
                        UpdateExpression=update,
                        ConditionExpression=condition,
                        ExpressionAttributeNames=names,
                        ExpressionAttributeValues=values,
                        ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    )
                except ClientError as exc:
                    if _error_code(exc) == _CONDITION_FAILED:
                        raise _ConditionFailed(
                            cast("Item | None", exc.response.get("Item"))
                        ) from exc
                    raise
        except _ConditionFailed as failed:
            return False, failed.item
        return True, None

    def _remove(self, connection_id: str) -> list[str]:
        sort_keys = [
            item["sk"]["S"]
            for item in self._query(
                "remove",
                KeyConditionExpression="pk = :pk",
                ExpressionAttributeValues={":pk": {"S": _CONN + connection_id}},
                ProjectionExpression="sk",
                ConsistentRead=True,
            )
        ]
        rooms = sorted(sk[len(_ROOM) :] for sk in sort_keys if sk.startswith(_ROOM))
        # Mirrors first, the connection's own partition last: if we fail halfway, a retry still
        # finds every room through the connection's partition.
        self._batch_write(
            "remove",
            [_delete(_ROOM + room, _CONN + connection_id) for room in rooms],
        )
        self._batch_write(
            "remove",
            [_delete(_CONN + connection_id, sk) for sk in sort_keys],
        )
        return rooms

    def _join(self, connection_id: str, room: str, now: float) -> int:
        # Memberships expire no later than the connection could (joined after it connected), so
        # an orphan left by a join racing a disconnect disappears through TTL.
        attrs: dict[str, AttributeValueTypeDef] = {
            "joinedAt": _n(now),
            TTL_ATTRIBUTE: _n(_ttl(now)),
        }
        self._batch_write(
            "join",
            [
                {"PutRequest": {"Item": {**_key(_CONN + connection_id, _ROOM + room), **attrs}}},
                {"PutRequest": {"Item": {**_key(_ROOM + room, _CONN + connection_id), **attrs}}},
            ],
        )
        count = 0
        pages = self._query_pages(
            "join",
            KeyConditionExpression="pk = :pk AND begins_with(sk, :conn)",
            ExpressionAttributeValues={":pk": {"S": _ROOM + room}, ":conn": {"S": _CONN}},
            Select="COUNT",
            ConsistentRead=True,
        )
        for page in pages:
            count += int(page["Count"])
        return count

    def _leave(self, connection_id: str, room: str) -> bool:
        was_member = False
        # The room's side first (broadcasts stop), the connection's side last (remove() relies on
        # it to find the room if we fail in between).
        for key in (
            _key(_ROOM + room, _CONN + connection_id),
            _key(_CONN + connection_id, _ROOM + room),
        ):
            with self._translated("leave"):
                response = self._client.delete_item(
                    TableName=self._table, Key=key, ReturnValues="ALL_OLD"
                )
            was_member = was_member or bool(response.get("Attributes"))
        return was_member

    def _is_member(self, connection_id: str, room: str) -> bool:
        with self._translated("is_member"):
            response = self._client.get_item(
                TableName=self._table,
                Key=_key(_ROOM + room, _CONN + connection_id),
                ProjectionExpression="pk",
                ConsistentRead=True,
            )
        return "Item" in response

    def _rooms_of(self, connection_id: str) -> list[str]:
        items = self._query(
            "rooms_of",
            KeyConditionExpression="pk = :pk AND begins_with(sk, :room)",
            ExpressionAttributeValues={":pk": {"S": _CONN + connection_id}, ":room": {"S": _ROOM}},
            ProjectionExpression="sk",
            ConsistentRead=True,
        )
        return [item["sk"]["S"][len(_ROOM) :] for item in items]

    def _members(self, room: str) -> Iterator[str]:
        items = self._query(
            "members",
            KeyConditionExpression="pk = :pk AND begins_with(sk, :conn)",
            ExpressionAttributeValues={":pk": {"S": _ROOM + room}, ":conn": {"S": _CONN}},
            ProjectionExpression="sk",
            ConsistentRead=True,
        )
        return (item["sk"]["S"][len(_CONN) :] for item in items)

    def _idle_connections(self, cutoff: float, limit: int) -> Iterator[ConnectionRecord]:
        found: list[ConnectionRecord] = []
        pages = self._query_pages(
            "idle_connections",
            IndexName=LAST_SEEN_INDEX,
            KeyConditionExpression="gsi1pk = :gsi AND gsi1sk <= :cutoff",
            ExpressionAttributeValues={":gsi": {"S": _GSI_PK}, ":cutoff": _n(cutoff)},
            ScanIndexForward=True,  # oldest first
            Limit=min(limit, 1000),
        )
        for page in pages:
            found.extend(_record(item) for item in page["Items"])
            if len(found) >= limit:
                break
        return iter(found[:limit])

    # ------------------------------------------------------------------ helpers

    def _query_pages(self, operation: str, **kwargs: Any) -> Iterator[Mapping[str, Any]]:
        """Every page of one Query (the caller iterates; errors are translated per page)."""
        start: Mapping[str, Any] | None = None
        while True:
            if start is not None:
                kwargs["ExclusiveStartKey"] = start
            with self._translated(operation):
                page = self._client.query(TableName=self._table, **kwargs)
            yield page
            start = page.get("LastEvaluatedKey")
            if not start:
                return

    def _query(self, operation: str, **kwargs: Any) -> list[Item]:
        items: list[Item] = []
        for page in self._query_pages(operation, **kwargs):
            items.extend(page["Items"])
        return items

    def _batch_write(self, operation: str, requests: Sequence[WriteRequestTypeDef]) -> None:
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
                with self._translated(operation):
                    response = self._client.batch_write_item(RequestItems={self._table: pending})
                pending = response.get("UnprocessedItems", {}).get(self._table, [])
                if not pending:
                    break
            else:
                raise TransientStoreError(
                    f"dynamodb {operation} on {self._table}: {len(pending)} items still"
                    f" unprocessed after {_BATCH_ROUNDS} rounds"
                )


class _ConditionFailed(Exception):
    """Internal: carries the old item out of the error translation."""

    def __init__(self, item: Item | None) -> None:
        super().__init__("condition failed")
        self.item = item


def _make_client() -> DynamoDBClient:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": 1},  # the store retries, with backoff and a bound
        connect_timeout=3,
        read_timeout=10,
    )
    return boto3.client("dynamodb", config=config)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


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
    connection_id = item["pk"]["S"][len(_CONN) :]
    user = item.get("user")
    return ConnectionRecord(
        connection_id=connection_id,
        connected_at=float(item["connectedAt"]["N"]),
        last_seen=float(item["lastSeen"]["N"]),
        welcomed="welcomedAt" in item,
        source_ip=item.get("sourceIp", {}).get("S", ""),
        user=None if user is None else user.get("S"),
        endpoint=item.get("endpoint", {}).get("S", ""),
    )


__all__ = ["LAST_SEEN_INDEX", "TTL_ATTRIBUTE", "DynamoDbStore", "table_definition"]
