"""DynamoDB capacity units of every call a process makes, counted with botocore event hooks.

:class:`Meter` registers on ``before-call.dynamodb`` and ``after-call.dynamodb`` of a botocore
event system (a session's, before the clients are created: clients copy the session's handlers
when they are made).  Around each call it snapshots the items the call touches through a second,
unhooked client, and prices the call with AWS's rules:

* item size: the UTF-8 length of each attribute name plus the size of its value (strings: UTF-8
  bytes; binary: raw bytes; numbers: about one byte per two significant digits plus one;
  booleans and null: one byte; lists and maps: three bytes plus one byte per element plus the
  elements; sets: the sum of their elements);
* writes (PutItem, UpdateItem, DeleteItem, each request of a BatchWriteItem): one write unit per
  1 KB, rounded up, of the larger of the item before and after (a failed condition still costs
  the write); each item of TransactWriteItems costs twice that;
* reads: GetItem one unit per 4 KB of the whole item (a projection does not make it cheaper; a
  missing item still costs one unit), Query the sum of the sizes of the items of the page rounded
  up to 4 KB once; strongly consistent reads cost 1, eventually consistent 0.5 per 4 KB;
* index writes: for each global secondary index, an item write that adds an entry costs one index
  write (a put), one that removes an entry one (a delete), one that changes an index key two (a
  delete plus a put), one that changes only a projected attribute one; none otherwise.  Each is
  sized by the projected item (table keys, index keys, projected attributes), rounded up per 1 KB.

Approximations (docs/capacity.md repeats them): index entries are sized without DynamoDB's
100-byte per-entry storage overhead; index writes of a transaction are counted once (AWS bills the
table side of a transaction twice; the index side is propagated asynchronously); a Query that
returns nothing costs one (0.5 eventually consistent) unit, like GetItem; BatchGetItem, Scan and
TransactGetItems are not priced (the store does not use them; they show up as unpriced calls).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

#: One write unit per this many bytes; one read unit per READ_UNIT_BYTES.
WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096

READ_OPERATIONS = frozenset({"GetItem", "Query", "Scan", "BatchGetItem", "TransactGetItems"})
WRITE_OPERATIONS = frozenset(
    {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"})

AttributeValue = Mapping[str, Any]
Item = Mapping[str, AttributeValue]


# ---------------------------------------------------------------------- item size


def number_size(text: str) -> int:
    """Bytes DynamoDB counts for a number: ceil(significant digits / 2) + 1."""
    mantissa = text.strip().lstrip("+-").lower().split("e", 1)[0]
    # Leading and trailing zeros are trimmed (DynamoDB stores a normalised mantissa).
    significant = max(1, len(mantissa.replace(".", "").strip("0")))
    return math.ceil(significant / 2) + 1


def value_size(value: AttributeValue) -> int:
    """Bytes of one attribute value (low-level JSON form: ``{"S": "..."}``, ``{"N": "1"}``...)."""
    (kind, content), = value.items()
    if kind == "S":
        return len(str(content).encode("utf-8"))
    if kind == "N":
        return number_size(str(content))
    if kind == "B":
        return len(_binary(content))
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "SS":
        return sum(len(str(s).encode("utf-8")) for s in content)
    if kind == "NS":
        return sum(number_size(str(n)) for n in content)
    if kind == "BS":
        return sum(len(_binary(b)) for b in content)
    if kind == "L":
        return 3 + sum(1 + value_size(element) for element in content)
    if kind == "M":
        return 3 + sum(1 + len(name.encode("utf-8")) + value_size(element)
                       for name, element in content.items())
    raise ValueError(f"unknown DynamoDB attribute type {kind!r}")


def item_size(item: Item | None) -> int:
    """Bytes of an item: every attribute's UTF-8 name length plus its value's size (0: no item)."""
    if not item:
        return 0
    return sum(len(name.encode("utf-8")) + value_size(value) for name, value in item.items())


def _binary(content: Any) -> bytes:
    if isinstance(content, bytes | bytearray):
        return bytes(content)
    return base64.b64decode(str(content))


def write_units(*sizes: int) -> int:
    """Write units of one item write: the larger size, per started KB (at least one)."""
    return max(1, math.ceil(max(sizes, default=0) / WRITE_UNIT_BYTES))


def read_units(size: int, consistent: bool) -> float:
    """Read units of one read of ``size`` bytes (at least one 4 KB block)."""
    blocks = max(1, math.ceil(size / READ_UNIT_BYTES))
    return blocks * (1.0 if consistent else 0.5)


# ---------------------------------------------------------------------- the table's shape


@dataclass(frozen=True)
class GlobalIndex:
    name: str
    keys: tuple[str, ...]
    #: "ALL", "KEYS_ONLY" or "INCLUDE".
    projection: str
    included: tuple[str, ...] = ()


@dataclass(frozen=True)
class TableShape:
    """What pricing needs from a table definition: its key attributes and its indexes."""

    name: str
    keys: tuple[str, ...]
    indexes: tuple[GlobalIndex, ...] = ()

    @classmethod
    def from_definition(cls, definition: Mapping[str, Any]) -> TableShape:
        """From ``CreateTable`` keyword arguments (or CloudFormation's identical properties)."""
        indexes = tuple(
            GlobalIndex(
                name=index["IndexName"],
                keys=tuple(key["AttributeName"] for key in index["KeySchema"]),
                projection=index["Projection"]["ProjectionType"],
                included=tuple(index["Projection"].get("NonKeyAttributes", ())),
            )
            for index in definition.get("GlobalSecondaryIndexes", ())
        )
        return cls(
            name=str(definition["TableName"]),
            keys=tuple(key["AttributeName"] for key in definition["KeySchema"]),
            indexes=indexes,
        )

    def key_of(self, item: Item) -> dict[str, AttributeValue]:
        return {name: item[name] for name in self.keys}

    def index(self, name: str) -> GlobalIndex:
        for index in self.indexes:
            if index.name == name:
                return index
        raise KeyError(name)

    def projected(self, index: GlobalIndex, item: Item | None) -> dict[str, AttributeValue] | None:
        """The index entry of ``item`` (None when the item has no entry: a key attribute is
        missing)."""
        if not item or any(key not in item for key in index.keys):
            return None
        if index.projection == "ALL":
            return dict(item)
        names = set(self.keys) | set(index.keys)
        if index.projection == "INCLUDE":
            names |= set(index.included)
        return {name: value for name, value in item.items() if name in names}


# ---------------------------------------------------------------------- costs


@dataclass
class Cost:
    """What a stretch of activity cost: DynamoDB calls and units, and the other requests seen."""

    calls: Counter[str] = field(default_factory=Counter)
    wcu: float = 0.0
    rcu: float = 0.0
    index_writes: float = 0.0
    index_wcu: float = 0.0
    #: Largest item (bytes) written or read, to show the margin below the 1 KB / 4 KB steps.
    largest_item: int = 0
    #: Calls this module cannot price (BatchGetItem, Scan, TransactGetItems).
    unpriced: int = 0
    #: Filled by the caller: management API requests (POST and GET) and fan-out batches queued.
    posts: float = 0.0
    gets: float = 0.0
    queued_batches: float = 0.0
    #: What the figures are divided by (1: one occurrence; see :meth:`scaled`).
    divisor: float = 1.0
    #: Units per partition key value: {"conn#...": [write units, read units]} (index writes are
    #: under "<index> <partition value>").
    partitions: dict[str, list[float]] = field(default_factory=dict)
    #: Table write and read units per operation name (index writes not included).
    units_by_operation: dict[str, float] = field(default_factory=dict)

    @property
    def reads(self) -> int:
        return sum(n for op, n in self.calls.items() if op in READ_OPERATIONS)

    @property
    def writes(self) -> int:
        return sum(n for op, n in self.calls.items() if op in WRITE_OPERATIONS)

    @property
    def total_wcu(self) -> float:
        """Table and index write units together (what on-demand bills)."""
        return self.wcu + self.index_wcu

    def scaled(self, divisor: float) -> Cost:
        """The cost per one of ``divisor`` things (calls become fractional averages)."""
        per = Cost(
            calls=Counter(),
            wcu=self.wcu / divisor,
            rcu=self.rcu / divisor,
            index_writes=self.index_writes / divisor,
            index_wcu=self.index_wcu / divisor,
            largest_item=self.largest_item,
            unpriced=self.unpriced,
            posts=self.posts / divisor,
            gets=self.gets / divisor,
            queued_batches=self.queued_batches / divisor,
            partitions={key: [w / divisor, r / divisor]
                        for key, (w, r) in self.partitions.items()},
            units_by_operation={op: units / divisor
                                for op, units in self.units_by_operation.items()},
        )
        per.calls.update(self.calls)
        per.divisor = divisor
        return per

    def calls_text(self) -> str:
        """``GetItem 1, UpdateItem 1`` (per one thing when scaled: ``Query 32/20``)."""
        if not self.calls:
            return "none"
        suffix = "" if self.divisor == 1 else f"/{self.divisor:g}"
        return ", ".join(f"{op} {n}{suffix}" for op, n in sorted(self.calls.items()))


# ---------------------------------------------------------------------- the meter


class Meter:
    """Prices every DynamoDB call made through clients of the hooked event system.

    ``reader`` is a DynamoDB client *without* these hooks, used to snapshot items.  Calls are
    priced only inside :meth:`measure` (setup traffic costs nothing to count).
    """

    _UNIQUE = "bench-capacity-meter"

    def __init__(self, shape: TableShape, reader: Any) -> None:
        self.shape = shape
        self._reader = reader
        self._lock = threading.Lock()
        self._current: Cost | None = None
        self._events: Any = None

    # ------------------------------------------------------------ wiring

    def install(self, events: Any) -> None:
        """Register on ``events`` (a botocore HierarchicalEmitter, e.g. a session's)."""
        events.register("before-call.dynamodb", self._before, unique_id=self._UNIQUE + "-b")
        events.register("after-call.dynamodb", self._after, unique_id=self._UNIQUE + "-a")
        self._events = events

    def uninstall(self) -> None:
        if self._events is not None:
            self._events.unregister("before-call.dynamodb", unique_id=self._UNIQUE + "-b")
            self._events.unregister("after-call.dynamodb", unique_id=self._UNIQUE + "-a")
            self._events = None

    @contextlib.contextmanager
    def measure(self) -> Iterator[Cost]:
        """Price every call made inside the block into the yielded :class:`Cost`."""
        cost = Cost()
        with self._lock:
            if self._current is not None:
                raise RuntimeError("measurements do not nest")
            self._current = cost
        try:
            yield cost
        finally:
            with self._lock:
                self._current = None

    # ------------------------------------------------------------ hooks

    def _before(self, model: Any, params: Mapping[str, Any], context: dict[str, Any],
                **_: Any) -> None:
        if self._current is None:
            return
        operation = str(model.name)
        body = params.get("body") or b"{}"
        request: dict[str, Any] = json.loads(body)
        context["capacity"] = (operation, request, self._snapshot_before(operation, request))

    def _after(self, parsed: Mapping[str, Any], context: dict[str, Any], **_: Any) -> None:
        pending = context.pop("capacity", None)
        cost = self._current
        if pending is None or cost is None:
            return
        operation, request, before = pending
        failed = "Error" in parsed
        with self._lock:
            cost.calls[operation] += 1
        self._price(cost, operation, request, before, failed)

    # ------------------------------------------------------------ snapshots and pricing

    def _snapshot_before(self, operation: str, request: Mapping[str, Any]) -> Any:
        if operation == "GetItem":
            return self._get(request["TableName"], request["Key"])
        if operation == "Query":
            return self._query_sizes(request)
        if operation in WRITE_OPERATIONS:
            return [(table, key, self._get(table, key))
                    for table, key in self._written_keys(request)]
        return None

    def _price(self, cost: Cost, operation: str, request: Mapping[str, Any], before: Any,
               failed: bool) -> None:
        consistent = bool(request.get("ConsistentRead"))
        if operation == "GetItem":
            size = item_size(before)
            self._add(cost, rcu=read_units(size, consistent), largest=size,
                      partition=self._partition(request["Key"]), operation=operation)
        elif operation == "Query":
            sizes, partition = before
            self._add(cost, rcu=read_units(sum(sizes), consistent), largest=max(sizes, default=0),
                      partition=partition, operation=operation)
        elif operation in WRITE_OPERATIONS:
            factor = 2 if operation == "TransactWriteItems" else 1
            for table, key, old in before:
                new = self._get(table, key)
                old_size, new_size = item_size(old), item_size(new)
                self._add(cost, wcu=factor * write_units(old_size, new_size),
                          largest=max(old_size, new_size), partition=self._partition(key),
                          operation=operation)
                if not failed:
                    self._index_cost(cost, old, new)
        else:
            with self._lock:
                cost.unpriced += 1

    def _index_cost(self, cost: Cost, old: Item | None, new: Item | None) -> None:
        """Price the index writes of one item write (each entry in its own index partition)."""
        for index in self.shape.indexes:
            before = self.shape.projected(index, old)
            after = self.shape.projected(index, new)
            if before is None and after is None:
                continue
            if before is not None and after is not None and before == after:
                continue
            moved = (before is not None and after is not None
                     and any(before[key] != after[key] for key in index.keys))
            if before is not None and (after is None or moved):  # delete the old entry
                self._add_index(cost, index, before, write_units(item_size(before)))
            if after is not None and (before is None or moved):  # put the new entry
                self._add_index(cost, index, after, write_units(item_size(after)))
            if before is not None and after is not None and not moved:  # projected change
                self._add_index(cost, index, after,
                                write_units(item_size(before), item_size(after)))

    def _add_index(self, cost: Cost, index: GlobalIndex, entry: Item, units: int) -> None:
        partition = f"{index.name} {_scalar(entry[index.keys[0]])}"
        with self._lock:
            cost.index_writes += 1
            cost.index_wcu += units
            cost.partitions.setdefault(partition, [0.0, 0.0])[0] += units

    def _add(self, cost: Cost, *, wcu: float = 0, rcu: float = 0, largest: int = 0,
             partition: str = "", operation: str = "") -> None:
        with self._lock:
            if operation:
                by_operation = cost.units_by_operation
                by_operation[operation] = by_operation.get(operation, 0.0) + wcu + rcu
            cost.wcu += wcu
            cost.rcu += rcu
            cost.largest_item = max(cost.largest_item, largest)
            if partition:
                units = cost.partitions.setdefault(partition, [0.0, 0.0])
                units[0] += wcu
                units[1] += rcu

    def _partition(self, key: Mapping[str, Any]) -> str:
        return _scalar(key[self.shape.keys[0]])

    def _get(self, table: str, key: Mapping[str, Any]) -> Item | None:
        response = self._reader.get_item(TableName=table, Key=key, ConsistentRead=True)
        item: Item | None = response.get("Item")
        return item

    def _written_keys(self, request: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(table, key) of every item a write request touches (a put's key comes from its item)."""
        found: list[tuple[str, dict[str, Any]]] = []

        def add(table: str, key: Mapping[str, Any] | None, item: Mapping[str, Any] | None) -> None:
            if key is None:
                if item is None or table != self.shape.name:
                    raise ValueError(f"cannot find the key of a write to {table}")
                key = self.shape.key_of(item)
            found.append((table, dict(key)))

        if "RequestItems" in request:  # BatchWriteItem
            for table, requests in request["RequestItems"].items():
                for entry in requests:
                    if "PutRequest" in entry:
                        add(table, None, entry["PutRequest"]["Item"])
                    else:
                        add(table, entry["DeleteRequest"]["Key"], None)
        elif "TransactItems" in request:
            for entry in request["TransactItems"]:
                (_kind, part), = entry.items()
                add(part["TableName"], part.get("Key"), part.get("Item"))
        else:
            add(request["TableName"], request.get("Key"), request.get("Item"))
        return found

    def _query_sizes(self, request: Mapping[str, Any]) -> tuple[list[int], str]:
        """Sizes of the items the Query's page reads: the same page, every attribute (an index
        query reads index entries, which is what querying the index returns)."""
        replay = {name: value for name, value in request.items()
                  if name not in ("ProjectionExpression", "Select", "ReturnConsumedCapacity")}
        names = replay.get("ExpressionAttributeNames")
        if names:
            used = " ".join(str(replay.get(part, "")) for part in (
                "KeyConditionExpression", "FilterExpression"))
            kept = {alias: name for alias, name in names.items() if alias in used}
            if kept:
                replay["ExpressionAttributeNames"] = kept
            else:
                del replay["ExpressionAttributeNames"]
        page = self._reader.query(**replay)
        items = page.get("Items", [])
        partition = str(replay.get("KeyConditionExpression", ""))
        if "IndexName" in replay:
            first_key = self.shape.index(replay["IndexName"]).keys[0]
            prefix = replay["IndexName"] + " "
        else:
            first_key, prefix = self.shape.keys[0], ""
        if items:
            partition = prefix + _scalar(items[0][first_key])
        return [item_size(item) for item in items], partition


def _scalar(value: AttributeValue) -> str:
    (_kind, content), = value.items()
    return str(content)
