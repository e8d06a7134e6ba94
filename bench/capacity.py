"""``python -m bench.capacity [--quick] [--out docs/capacity.md]``: the capacity model.

Drives the real handlers (app.py under ``chalice.test.Client``) against moto's DynamoDB, with the
table built from deploy/resources.json, a local fake management API on 127.0.0.1
(:class:`tests.support.management_api.FakeManagementApi`) and moto's SQS for the fan-out queue.
Every DynamoDB call is priced by :class:`bench.dynamo_units.Meter` (botocore event hooks on the
default boto3 session, which creates the store's client).  From the per-action units it models the
app-wide ceiling (messages per second, and which limit sets it), the time to deliver to a
100,000-member room, and dollars per million messages; prices and limits are constants below,
each with its source.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bench.dynamo_units import Cost, Meter, TableShape, item_size
from bench.dynamo_units import read_units as _read_units

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESOURCES = os.path.join(ROOT, "deploy", "resources.json")
CHALICE_CONFIG = os.path.join(ROOT, ".chalice", "config.json")
REGION = "us-east-1"


class Constant(NamedTuple):
    value: float
    source: str


_LIMITS_DOC = "/work/shared/aws-limits.md"
_APIGW_QUOTAS = 'API Gateway developer guide, "Amazon API Gateway quotas"'
_DDB_PARTITIONS = "DynamoDB developer guide, partition key design / warm throughput"
_DDB_QUOTAS = ('DynamoDB developer guide, "Service, account, and table quotas" (on-demand'
               " per-table throughput; adjustable)")

# ---------------------------------------------------------------------- limits (us-east-1)

APIGW_ACCOUNT_RPS = Constant(10_000, f"{_APIGW_QUOTAS}: account-level throttle per Region, REST,"
                             " HTTP, WebSocket and @connections calls together (soft)")
APIGW_NEW_CONNECTIONS = Constant(500, 'API Gateway developer guide, "Quotas for configuring and'
                                 ' running a WebSocket API" (new connections/s, soft)')
DDB_PARTITION_WCU = Constant(1_000, _DDB_PARTITIONS)
DDB_PARTITION_RCU = Constant(3_000, _DDB_PARTITIONS)
DDB_TABLE_UNITS = Constant(40_000, _DDB_QUOTAS + ": 40,000 read and 40,000 write request units/s")
LAMBDA_CONCURRENCY = Constant(1_000, 'Lambda developer guide, "Lambda quotas": concurrent'
                              " executions per Region, default (soft)")
LAMBDA_FULL_VCPU_MB = Constant(1_769, 'Lambda developer guide, "Configure Lambda function memory"')

# ---------------------------------------------------------------------- prices (USD, us-east-1)

PRICE_APIGW_MESSAGE = Constant(1.00e-6, "aws.amazon.com/api-gateway/pricing: $1.00 per million"
                               " WebSocket messages (first billion, 32 KB units)")
PRICE_APIGW_CONNECTION_MINUTE = Constant(0.25e-6, "aws.amazon.com/api-gateway/pricing: $0.25 per"
                                         " million connection-minutes")
PRICE_DDB_WRU = Constant(0.625e-6, "aws.amazon.com/dynamodb/pricing: $0.625 per million write"
                         " request units (on-demand, after the November 2024 reduction)")
PRICE_DDB_RRU = Constant(0.125e-6, "aws.amazon.com/dynamodb/pricing: $0.125 per million read"
                         " request units (on-demand)")
PRICE_LAMBDA_REQUEST = Constant(0.20e-6, "aws.amazon.com/lambda/pricing: $0.20 per million"
                                " requests (x86)")
PRICE_LAMBDA_GB_SECOND = Constant(0.0000166667, "aws.amazon.com/lambda/pricing: $0.0000166667"
                                  " per GB-second (x86)")
PRICE_SQS_REQUEST = Constant(0.40e-6, "aws.amazon.com/sqs/pricing: $0.40 per million standard"
                             " requests (64 KB chunks)")

# ---------------------------------------------------------------------- measured and assumed

BENCHMARKS = os.path.join(ROOT, "docs", "benchmarks.md")
#: The row of docs/benchmarks.md section 3 (``bench/cost.py``) that measures the app's sender.
DELIVERER_ROW = "| app: `Deliverer`, one cached client |"


def measured_cpu_per_post(path: str = BENCHMARKS) -> Constant:
    """CPU seconds per delivery as ``make bench`` last measured it (docs/benchmarks.md section 3:
    the fourth column of the ``Deliverer`` row), so the model never copies a stale figure.

    Raises ``ValueError`` naming the file when the row is missing or malformed.
    """
    try:
        with open(path) as f:
            rows = [line for line in f if line.startswith(DELIVERER_ROW)]
        milliseconds = float(rows[-1].split("|")[4])
    except (OSError, IndexError, ValueError):
        raise ValueError(f"{path}: no section 3 row {DELIVERER_ROW!r} with the CPU ms per"
                         " delivery in its fourth column (run make bench)") from None
    return Constant(milliseconds / 1000, "measured: docs/benchmarks.md section 3 (`Deliverer`,"
                    f" one cached client: {milliseconds:.3f} ms CPU per delivery on one core of"
                    " this machine), taken as one Lambda vCPU")


CPU_PER_POST_S = measured_cpu_per_post()
#: Assumptions (no AWS measurement available offline); each says so in the report.
DYNAMODB_CALL_S = Constant(0.005, "assumed: in-Region DynamoDB single-item call latency")
POST_LATENCY_S = Constant(0.020, "assumed: in-Region PostToConnection round trip")
SQS_CALL_S = Constant(0.010, "assumed: in-Region SendMessageBatch latency")
ESM_PICKUP_S = Constant(1.0, "assumed: SQS event source mapping pickup (long polling)")
HANDLER_OVERHEAD_S = Constant(0.003, "assumed: Lambda runtime + Chalice dispatch per invocation")
DEFAULT_WORKER_CONCURRENCY = 3

SCHEDULED_EVENT = {"detail-type": "Scheduled Event", "source": "aws.events",
                   "time": "2024-11-11T13:45:46Z", "detail": {}, "resources": [], "id": "1",
                   "region": REGION, "account": "123456789012", "version": "0"}


# ---------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the measured scenario (the test uses smaller ones)."""

    join_room_sizes: tuple[int, int] = (10, 200)
    pair_room: int = 2
    small_room: int = 10
    large_room: int = 1000
    #: FANOUT_INLINE_MAX / FANOUT_BATCH_SIZE for the run (None: the app's defaults).
    inline_max: int | None = None
    batch_size: int | None = None
    steady_samples: int = 5
    sweep_records: int = 20
    #: Messages a reconnecting client misses and gets replayed on join (protocol v2).
    replay_messages: int = 100
    target_room: int = 100_000
    target_seconds: float = 30.0
    quick: bool = False


QUICK = ModelConfig(join_room_sizes=(10, 200), large_room=40, inline_max=20, batch_size=10,
                    steady_samples=3, sweep_records=5, replay_messages=20, quick=True)


# ---------------------------------------------------------------------- the table


def table_kwargs(table_name: str) -> dict[str, Any]:
    """``CreateTable`` arguments translated from deploy/resources.json's ConnectionsTable.

    The schema properties are the same in CloudFormation and the API; TTL, point-in-time recovery
    and tags are separate API calls that do not change capacity, so they are left out.
    """
    with open(RESOURCES) as f:
        properties = json.load(f)["Resources"]["ConnectionsTable"]["Properties"]
    kwargs: dict[str, Any] = {"TableName": table_name}
    for name in ("BillingMode", "AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes",
                 "LocalSecondaryIndexes", "ProvisionedThroughput"):
        if name in properties:
            kwargs[name] = copy.deepcopy(properties[name])
    return kwargs


# ---------------------------------------------------------------------- driving the app


@contextlib.contextmanager
def _environ(values: Mapping[str, str], unset: tuple[str, ...]) -> Iterator[None]:
    saved = dict(os.environ)
    for name in unset:
        os.environ.pop(name, None)
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


_UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB",
          "AWS_ENDPOINT_URL_SQS", "AWS_LAMBDA_FUNCTION_NAME", "WELCOME_QUEUE_URL",
          "WS_AUTH_SECRET", "WS_AUTH_JWKS_URL", "WS_ALLOWED_ORIGINS", "FANOUT_INLINE_MAX",
          "FANOUT_BATCH_SIZE", "FANOUT_CONCURRENCY", "WS_RATE_LIMIT", "WS_RATE_WINDOW_SECONDS",
          "SWEEP_BATCH", "DELIVERY_MAX_ATTEMPTS")


class Driver:
    """The app's handlers, the management API, the queue and the meter of one run."""

    def __init__(self, client: Any, api: Any, sqs: Any, queue_url: str, meter: Meter,
                 reader: Any, table: str) -> None:
        self.reader = reader
        self.table = table
        self.client = client
        self.api = api
        self.sqs = sqs
        self.queue_url = queue_url
        self.meter = meter

    # ------------------------------------------------------------ handlers

    def invoke(self, function: str, event: dict[str, Any]) -> Any:
        return self.client.lambda_.invoke(function, event).payload

    def connect(self) -> str:
        from tests.support.events import connect_event, new_connection_id

        connection_id = new_connection_id()
        self.api.open(connection_id)
        if self.invoke("connect", connect_event(connection_id)) != {"statusCode": 200}:
            raise RuntimeError("connect refused")
        return connection_id

    def send(self, connection_id: str, body: dict[str, Any]) -> Any:
        from tests.support.events import message_event

        self.invoke("message", message_event(connection_id, body))
        return self.api.received(connection_id)[-1]

    def ping(self, connection_id: str) -> Any:
        return self.send(connection_id, {"action": "ping"})

    def join(self, connection_id: str, room: str) -> Any:
        return self.send(connection_id, {"action": "join", "room": room})

    def disconnect(self, connection_id: str) -> Any:
        from tests.support.events import disconnect_event

        self.api.close(connection_id)
        return self.invoke("disconnect", disconnect_event(connection_id))

    def push(self, room: str, data: Any) -> Any:
        response = self.client.http.post(
            f"/rooms/{room}/messages", headers={"Content-Type": "application/json"},
            body=json.dumps({"data": data}))
        return json.loads(response.body)

    def sweep(self) -> Any:
        return self.invoke("sweep", dict(SCHEDULED_EVENT))

    def worker(self, bodies: list[str]) -> Any:
        from tests.support.events import sqs_event

        return self.invoke("fan_out_worker", sqs_event(*bodies, queue="ws-rooms-fanout"))

    # ------------------------------------------------------------ setup without the meter

    @property
    def store(self) -> Any:
        from chalicelib.runtime import messaging

        return messaging().store

    def members(self, room: str, count: int) -> list[str]:
        """``count`` connected members of ``room``, set up through the store's own primitives
        (the same items the handlers write; faster than one invocation each)."""
        from tests.support.events import new_connection_id

        endpoint = self.api.endpoint
        made = []
        for _ in range(count):
            connection_id = new_connection_id()
            self.api.open(connection_id)
            self.store.register(connection_id, connected_at=time.time(), source_ip="166.90.225.1",
                                endpoint=endpoint)
            self.store.join(connection_id, room)
            made.append(connection_id)
        return made

    def age(self, connection_id: str, seconds: float) -> None:
        """Make the record's last sign of life ``seconds`` old (time passing, without waiting):
        one direct write to the item of the layout in chalicelib/store/dynamodb.py."""
        self.reader.update_item(
            TableName=self.table, Key={"pk": {"S": f"conn#{connection_id}"}, "sk": {"S": "meta"}},
            UpdateExpression="SET lastSeen = :old",
            ExpressionAttributeValues={":old": {"N": str(int(time.time() - seconds))}})

    def member_item_bytes(self, room: str, connection_id: str) -> int:
        item = self.reader.get_item(
            TableName=self.table,
            Key={"pk": {"S": f"room#{room}"}, "sk": {"S": f"conn#{connection_id}"}})["Item"]
        return item_size(item)

    def queued(self) -> list[dict[str, Any]]:
        """Every message on the fan-out queue (received and deleted)."""
        taken: list[dict[str, Any]] = []
        while True:
            batch = self.sqs.receive_message(QueueUrl=self.queue_url,
                                             MaxNumberOfMessages=10).get("Messages", [])
            if not batch:
                return taken
            for message in batch:
                self.sqs.delete_message(QueueUrl=self.queue_url,
                                        ReceiptHandle=message["ReceiptHandle"])
            taken += batch

    def queue_depth(self) -> int:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url, AttributeNames=["ApproximateNumberOfMessages"])
        return int(attributes["Attributes"]["ApproximateNumberOfMessages"])

    # ------------------------------------------------------------ measuring

    def measure(self, action: Callable[[], Any]) -> tuple[Any, Cost]:
        """Run ``action`` with the meter on; returns (its result, its Cost)."""
        calls_before = len(self.api.calls)
        depth_before = self.queue_depth()
        with self.meter.measure() as cost:
            result = action()
        new_calls = self.api.calls[calls_before:]
        cost.posts = sum(1 for c in new_calls if c.method == "POST")
        cost.gets = sum(1 for c in new_calls if c.method == "GET")
        cost.queued_batches = self.queue_depth() - depth_before
        return result, cost


@contextlib.contextmanager
def running_app(config: ModelConfig) -> Iterator[Driver]:
    """The app wired to moto DynamoDB + SQS and a local management API, with the meter on."""
    import boto3
    from chalice.test import Client
    from moto import mock_aws

    from tests.support.management_api import FakeManagementApi

    table = f"ws-rooms-capacity-{uuid.uuid4().hex[:8]}"  # a fresh service per run (cache key)
    with tempfile.TemporaryDirectory(prefix="capacity-") as tmp:
        env = {
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
            "AWS_CONFIG_FILE": os.path.join(tmp, "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": os.path.join(tmp, "no-aws-credentials"),
            "CONNECTIONS_STORE": f"dynamodb://{table}",
            "SWEEP_IDLE_SECONDS": "0", "LOG_LEVEL": "WARNING",
        }
        if config.inline_max is not None:
            env["FANOUT_INLINE_MAX"] = str(config.inline_max)
        if config.batch_size is not None:
            env["FANOUT_BATCH_SIZE"] = str(config.batch_size)
        api = FakeManagementApi().start()
        env["WS_MANAGEMENT_ENDPOINT"] = api.endpoint
        try:
            with _environ(env, _UNSET), mock_aws():
                definition = table_kwargs(table)
                reader = boto3.session.Session(region_name=REGION).client("dynamodb")
                reader.create_table(**definition)
                sqs = boto3.session.Session(region_name=REGION).client("sqs")
                queue_url = sqs.create_queue(QueueName="ws-rooms-fanout")["QueueUrl"]
                os.environ["FANOUT_QUEUE_URL"] = queue_url
                # The store creates its client with boto3.client() on first use: hook the
                # default session's events now, before that client exists (it copies them).
                session = boto3._get_default_session()
                meter = Meter(TableShape.from_definition(definition), reader)
                meter.install(session.events)
                try:
                    from app import app

                    with Client(app, stage_name="test", project_dir=ROOT) as client:
                        yield Driver(client, api, sqs, queue_url, meter, reader, table)
                finally:
                    meter.uninstall()
        finally:
            api.stop()


# ---------------------------------------------------------------------- the measurements


@dataclass
class Action:
    name: str
    cost: Cost
    note: str = ""


@dataclass
class Measurements:
    actions: dict[str, Action] = field(default_factory=dict)
    #: Sizes actually used (the quick run is smaller).
    config: ModelConfig = field(default_factory=ModelConfig)
    sweep_checked: int = 0
    large_batches: int = 0
    worker_batch_size: int = 0
    steady_samples: list[Cost] = field(default_factory=list)
    #: Size of one room membership item (room side), as stored.
    member_item_bytes: int = 0

    def add(self, key: str, name: str, cost: Any, note: str = "") -> None:
        self.actions[key] = Action(name, cost, note)

    def __getitem__(self, key: str) -> Cost:
        return self.actions[key].cost


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"capacity scenario went wrong: {what}")


def measure_all(config: ModelConfig) -> Measurements:
    """Run the scenario once and price every action."""
    from chalicelib.settings import Settings

    settings = Settings.from_env({})
    batch_size = config.batch_size or settings.fanout_batch_size
    out = Measurements(config=config, worker_batch_size=batch_size)
    with running_app(config) as app:
        # -- the sweep first, over a known population (every record idle: SWEEP_IDLE_SECONDS=0)
        population = [app.connect() for _ in range(config.sweep_records)]
        report, cost = app.measure(app.sweep)
        _expect(report["checked"] == len(population), f"sweep checked {report}")
        out.sweep_checked = report["checked"]
        out.add("sweep", f"sweep run ({report['checked']} records checked)", cost)
        out.add("sweep_record", "sweep, per record checked", cost.scaled(report["checked"]),
                "the run's Query per shard spread over the records it checked")
        for connection_id in population:
            app.disconnect(connection_id)

        # -- one connection's life: connect, first message, steady messages
        a, cost = app.measure(app.connect)
        _expect(cost.writes == 1, "the meter saw no DynamoDB write on connect: the hooks are not"
                " on the store's client")
        out.add("connect", "connect", cost)
        reply, cost = app.measure(lambda: app.ping(a))
        _expect(reply["type"] == "pong", f"first ping answered {reply}")
        out.add("first", "first message (welcome claimed with it)", cost,
                "no welcome queue in the model: the first message claims the welcome in its one"
                " update")
        for _ in range(config.steady_samples):
            reply, cost = app.measure(lambda: app.ping(a))
            _expect(reply["type"] == "pong", f"steady ping answered {reply}")
            out.steady_samples.append(cost)
        out.add("steady", "steady ping (after the first)", out.steady_samples[-1],
                f"same units in all {config.steady_samples} samples"
                if _same_units(out.steady_samples) else "samples differ: see the table")

        # -- the welcome through its queue worker, then activity refresh: a connection whose
        # last sign of life is 2 minutes old
        from chalicelib.welcome import FollowUp

        b = app.connect()

        result, cost = app.measure(lambda: app.invoke(
            "welcome_follow_up", _sqs_event(FollowUp(b, app.api.endpoint).to_json(),
                                            "ws-rooms-welcome")))
        out.add("welcome", "welcome follow-up (queue worker claims the welcome)", cost)
        app.age(b, 120)
        reply, cost = app.measure(lambda: app.ping(b))
        _expect(reply["type"] == "pong", f"refresh ping answered {reply}")
        out.add("refresh", "steady ping that refreshes activity (at most once a minute)", cost,
                "moves lastSeen, the sweep index's sort key")

        # -- rate limited: count up to the limit, then one more (retried across a window edge)
        c = app.connect()
        limited = None
        for _ in range(3 * settings.rate_limit + 10):
            reply = app.ping(c)
            if reply["type"] == "error" and reply["data"]["code"] == "rate_limited":
                reply, limited = app.measure(lambda: app.ping(c))
                if reply["type"] == "error" and reply["data"]["code"] == "rate_limited":
                    break
                limited = None
        _expect(limited is not None, "never rate limited")
        out.add("limited", "rate-limited message", limited,
                f"limit {settings.rate_limit} per {settings.rate_window_seconds} s")

        # -- rooms: join a room of 10 (and 200), send, push, leave, disconnect
        small, big = config.join_room_sizes
        app.members("r-join-small", small)
        j = app.connect()
        reply, cost = app.measure(lambda: app.join(j, "r-join-small"))
        _expect(reply["type"] == "joined" and reply["data"]["members"] == small + 1,
                f"join answered {reply}")
        out.add("join_small", f"join (room of {small})", cost)
        app.members("r-join-big", big)
        k = app.connect()
        reply, cost = app.measure(lambda: app.join(k, "r-join-big"))
        _expect(reply["type"] == "joined" and reply["data"]["members"] == big + 1,
                f"join answered {reply}")
        out.add("join_big", f"join (room of {big})", cost)

        s = app.connect()
        app.members("r-small", config.small_room - 1)
        app.join(s, "r-small")
        app.ping(s)  # welcomed: the send below is a steady message
        reply, cost = app.measure(lambda: app.send(
            s, {"action": "send", "room": "r-small", "data": {"text": "hello"}}))
        _expect(reply["type"] == "sent" and reply["data"]["delivered"] == config.small_room - 1,
                f"send answered {reply}")
        out.add("send_small", f"send to a room of {config.small_room}", cost)
        result, cost = app.measure(lambda: app.push("r-small", {"text": "from the server"}))
        _expect(result["delivered"] == config.small_room, f"push answered {result}")
        out.add("push_small", f"REST push to {config.small_room}", cost)
        reply, cost = app.measure(lambda: app.send(s, {"action": "leave", "room": "r-small"}))
        _expect(reply["type"] == "left", f"leave answered {reply}")
        out.add("leave", f"leave (room of {config.small_room})", cost)
        app.join(s, "r-small")
        _result, cost = app.measure(lambda: app.disconnect(s))
        out.add("disconnect", "disconnect (member of 1 room)", cost)

        p = app.connect()
        app.members("r-pair", config.pair_room - 1)
        app.join(p, "r-pair")
        app.ping(p)
        reply, cost = app.measure(lambda: app.send(
            p, {"action": "send", "room": "r-pair", "data": {"text": "hi"}}))
        _expect(reply["type"] == "sent" and reply["data"]["delivered"] == config.pair_room - 1,
                f"send answered {reply}")
        out.add("send_pair", f"send to a room of {config.pair_room} (1-to-1 chat)", cost)

        # -- protocol v2: seq + history, idempotent send, replay, history, presence
        v = app.connect()
        app.members("r-v2", config.small_room - 1)
        app.join(v, "r-v2")
        app.ping(v)
        kilobyte = "x" * 700  # a message frame of about 900 bytes: its history item is <= 1 KB
        reply, cost = app.measure(lambda: app.send(
            v, {"action": "send", "room": "r-v2", "data": {"text": kilobyte}}))
        _expect(reply["type"] == "sent", f"v2 send answered {reply}")
        out.add("send_v2", f"send of <= 1 KB to a room of {config.small_room} (seq + history)",
                cost)
        reply, cost = app.measure(lambda: app.send(
            v, {"action": "send", "room": "r-v2", "data": {"text": kilobyte}, "id": "once"}))
        _expect(reply["type"] == "sent", f"send with an id answered {reply}")
        out.add("send_v2_id", "the same with an `id` (remembered for idempotency)", cost)
        reply, cost = app.measure(lambda: app.send(
            v, {"action": "send", "room": "r-v2", "data": {"text": kilobyte}, "id": "once"}))
        _expect(reply["data"].get("duplicate") is True, f"duplicate answered {reply}")
        out.add("send_v2_duplicate", "a duplicate send (same `id`: not broadcast)", cost)
        # Setup through the store's own primitive (the rate limit would refuse 100 sends).
        for n in range(config.replay_messages):
            app.store.publish("r-v2", mid=uuid.uuid4().hex, sender=v,
                              data_json=json.dumps({"n": n, "text": "x" * 200}),
                              ts=int(time.time() * 1000), keep=100, ttl_seconds=86400)
        late = app.connect()
        since = app.store.head("r-v2") - config.replay_messages
        reply, cost = app.measure(lambda: app.send(
            late, {"action": "join", "room": "r-v2", "since": since}))
        _expect(reply["type"] == "message" and reply["data"].get("replay") is True,
                f"replay ended with {reply}")
        out.add("join_replay", f"join with `since` replaying {config.replay_messages} messages",
                cost, "one Query page for the whole replay, not one read per message")
        reply, cost = app.measure(lambda: app.send(
            late, {"action": "history", "room": "r-v2", "limit": 50}))
        _expect(reply["type"] == "history", f"history answered {reply}")
        out.add("history", "history (limit 50)", cost)
        reply, cost = app.measure(lambda: app.send(late, {"action": "members", "room": "r-v2"}))
        _expect(reply["type"] == "members", f"members answered {reply}")
        out.add("members", "members (presence list)", cost)
        _result, cost = app.measure(lambda: app.store.presence_enter("r-v2", "presence-user"))
        out.add("presence_enter", "presence join (the user's first connection: store write)",
                cost, "the announcement's deliveries read the room like a send")
        _result, cost = app.measure(lambda: app.store.presence_exit("r-v2", "presence-user"))
        out.add("presence_exit", "presence leave (the user's last connection: store writes)",
                cost)

        # -- a large room: handed to the queue, then one worker batch
        q = app.connect()
        app.members("r-large", config.large_room - 1)
        app.join(q, "r-large")
        app.ping(q)
        reply, cost = app.measure(lambda: app.send(
            q, {"action": "send", "room": "r-large", "data": {"text": "to everyone"}}))
        _expect(reply["type"] == "sent" and reply["data"]["queued"] == config.large_room - 1,
                f"large send answered {reply}")
        out.add("send_large", f"send to a room of {config.large_room:,} (handed to the queue)",
                cost, f"{int(cost.queued_batches)} batches of up to {batch_size} recipients")
        out.large_batches = int(cost.queued_batches)
        bodies = [m["Body"] for m in app.queued()]
        full = max(bodies, key=lambda body: len(json.loads(body)["recipients"]))
        recipients = len(json.loads(full)["recipients"])
        result, cost = app.measure(lambda: app.worker([full]))
        _expect(result == {"batchItemFailures": []} and cost.posts == recipients,
                f"worker answered {result}, {cost.posts} posts")
        out.add("worker", f"fan-out worker batch ({recipients} recipients)", cost)
        out.member_item_bytes = app.member_item_bytes("r-large", q)
    return out


def _sqs_event(body: str, queue: str) -> dict[str, Any]:
    from tests.support.events import sqs_event

    return sqs_event(body, queue=queue)


def _same_units(costs: list[Cost]) -> bool:
    first = costs[0]
    return all((c.wcu, c.rcu, c.index_writes, dict(c.calls)) ==
               (first.wcu, first.rcu, first.index_writes, dict(first.calls)) for c in costs)


# ---------------------------------------------------------------------- the deployment's numbers


@dataclass(frozen=True)
class Deployment:
    """What the model takes from the project's configuration (each with where it came from)."""

    handler_mb: Constant
    fanout_concurrency: Constant
    worker_mb: Constant
    worker_concurrency: Constant
    esm_batch: Constant
    batch_size: Constant
    inline_max: Constant
    stage_rate: Constant
    rate_limit: tuple[int, int]
    sweep_shards: Constant


def _find_key(node: Any, wanted: str) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == wanted:
                return value
            found = _find_key(value, wanted)
            if found is not None:
                return found
    elif isinstance(node, list):
        for item in node:
            found = _find_key(item, wanted)
            if found is not None:
                return found
    return None


def worker_concurrency() -> Constant:
    """The fan-out worker's MaximumConcurrency: from app.py's event source, else the template
    deploy/package.py builds (a parameter's default when it is a Ref), else assumed."""
    from app import app

    for source in app.event_sources:
        maximum = getattr(source, "maximum_concurrency", None)
        if getattr(source, "name", "") == "fan_out_worker" and maximum:
            return Constant(int(maximum), "app.py: fan_out_worker's maximum_concurrency")
    try:
        from deploy.package import merge_template

        template = merge_template("prod")
    except Exception as exc:  # packaging helpers unavailable: say so and assume
        return Constant(DEFAULT_WORKER_CONCURRENCY,
                        f"assumed ({DEFAULT_WORKER_CONCURRENCY}): deploy.package failed: {exc!r}")
    value = _find_key(template.get("Resources", {}), "MaximumConcurrency")
    if isinstance(value, dict) and "Ref" in value:
        parameter = template.get("Parameters", {}).get(value["Ref"], {})
        if "Default" in parameter:
            return Constant(int(parameter["Default"]),
                            f"deploy/package.py: parameter {value['Ref']} default")
    elif value is not None:
        return Constant(int(value), "deploy/package.py: ScalingConfig.MaximumConcurrency")
    return Constant(DEFAULT_WORKER_CONCURRENCY,
                    f"assumed ({DEFAULT_WORKER_CONCURRENCY}): neither app.py nor deploy/package.py"
                    " sets the fan-out worker's MaximumConcurrency yet")


def deployment() -> Deployment:
    from app import app
    from chalicelib.settings import Settings
    from chalicelib.store.dynamodb import SWEEP_SHARDS

    defaults = Settings.from_env({})
    with open(CHALICE_CONFIG) as f:
        prod = json.load(f)["stages"]["prod"]
    handler_mb = int(prod.get("lambda_memory_size", 128))
    worker_cfg = prod.get("lambda_functions", {}).get("fan_out_worker", {})
    if "lambda_memory_size" in worker_cfg:
        worker_mb = Constant(int(worker_cfg["lambda_memory_size"]),
                             ".chalice/config.json prod fan_out_worker lambda_memory_size")
    else:
        worker_mb = Constant(LAMBDA_FULL_VCPU_MB.value,
                             "assumed: one full vCPU (issue 11); .chalice/config.json sets no"
                             " memory for fan_out_worker yet")
    conc = prod.get("environment_variables", {}).get("FANOUT_CONCURRENCY")
    fanout = (Constant(int(conc), ".chalice/config.json prod FANOUT_CONCURRENCY") if conc
              else Constant(defaults.fanout_concurrency, "chalicelib/settings.py default"))
    esm = next((s for s in app.event_sources if getattr(s, "name", "") == "fan_out_worker"), None)
    esm_batch = Constant(int(getattr(esm, "batch_size", 10) or 10),
                         "app.py: fan_out_worker batch_size")
    try:
        from deploy.package import THROTTLING_PARAMETERS

        stage_rate = Constant(THROTTLING_PARAMETERS["WebsocketThrottlingRateLimit"][1],
                              "deploy/package.py: WebsocketThrottlingRateLimit default")
    except Exception:
        stage_rate = Constant(float("inf"), "no stage throttling found")
    return Deployment(
        handler_mb=Constant(handler_mb, ".chalice/config.json prod lambda_memory_size"),
        fanout_concurrency=fanout,
        worker_mb=worker_mb,
        worker_concurrency=worker_concurrency(),
        esm_batch=esm_batch,
        batch_size=Constant(defaults.fanout_batch_size, "FANOUT_BATCH_SIZE default"),
        inline_max=Constant(defaults.fanout_inline_max, "FANOUT_INLINE_MAX default"),
        stage_rate=stage_rate,
        rate_limit=(defaults.rate_limit, defaults.rate_window_seconds),
        sweep_shards=Constant(SWEEP_SHARDS, "SWEEP_SHARDS in chalicelib/store/dynamodb.py"),
    )


# ---------------------------------------------------------------------- the model


def cpu_per_post(memory_mb: float) -> float:
    """CPU seconds of one post at ``memory_mb`` (below one vCPU, Lambda gives a share of it)."""
    return CPU_PER_POST_S.value * max(1.0, LAMBDA_FULL_VCPU_MB.value / memory_mb)


def worker_seconds(recipients: int, dep: Deployment) -> float:
    """One worker invocation's batch: CPU-bound or latency-bound, whichever is slower."""
    cpu = recipients * cpu_per_post(dep.worker_mb.value)
    io = math.ceil(recipients / dep.fanout_concurrency.value) * POST_LATENCY_S.value
    return HANDLER_OVERHEAD_S.value + max(cpu, io)


@dataclass
class Profile:
    """One message sent to a room of ``members``, as the model sees it."""

    label: str
    members: int
    send: Cost  # the sender's invocation
    batches: int
    worker: Cost  # one worker batch
    dep: Deployment

    @property
    def deliveries(self) -> int:
        return self.members - 1

    @property
    def apigw_requests(self) -> int:
        """The inbound message, its deliveries and the ``sent`` reply."""
        return 1 + self.deliveries + 1

    @property
    def wru(self) -> float:
        return float(self.send.total_wcu + self.batches * self.worker.total_wcu)

    @property
    def rru(self) -> float:
        return float(self.send.rcu + self.batches * self.worker.rcu)

    @property
    def pages(self) -> int:
        return math.ceil(self.members / (self.dep.inline_max.value + 1)) if self.batches else 0

    @property
    def handler_seconds(self) -> float:
        posts = self.send.posts
        db_calls = self.send.reads + self.send.writes
        rounds = math.ceil(max(0.0, posts - 1) / self.dep.fanout_concurrency.value) + 1
        return (HANDLER_OVERHEAD_S.value + db_calls * DYNAMODB_CALL_S.value
                + self.pages * SQS_CALL_S.value + rounds * POST_LATENCY_S.value
                + posts * cpu_per_post(self.dep.handler_mb.value))

    @property
    def worker_seconds(self) -> float:
        if not self.batches:
            return 0.0
        per_batch = math.ceil(self.deliveries / self.batches)
        return self.batches * worker_seconds(per_batch, self.dep)

    @property
    def lambda_seconds(self) -> float:
        return self.handler_seconds + self.worker_seconds

    @property
    def gb_seconds(self) -> float:
        return (self.dep.handler_mb.value / 1024 * self.handler_seconds
                + self.dep.worker_mb.value / 1024 * self.worker_seconds)

    @property
    def lambda_requests(self) -> int:
        return 1 + math.ceil(self.batches / self.dep.esm_batch.value)

    @property
    def sqs_requests(self) -> int:
        """SendMessageBatch per page, then the event source mapping's receive and delete."""
        if not self.batches:
            return 0
        return self.pages + 2 * math.ceil(self.batches / self.dep.esm_batch.value)


@dataclass(frozen=True)
class Limit:
    name: str
    messages_per_second: float
    kind: str  # "account quota", "table quota", "one key", "configuration"
    why: str


def limits(profile: Profile) -> list[Limit]:
    """Every limit on messages/s for this room size (app-wide ones first, then single keys)."""
    out = [
        Limit("API Gateway account throttle", APIGW_ACCOUNT_RPS.value / profile.apigw_requests,
              "account quota", f"{APIGW_ACCOUNT_RPS.value:,.0f} rps / {profile.apigw_requests:,}"
              " requests per message (inbound + deliveries + reply)"),
        Limit("DynamoDB table writes", _per(DDB_TABLE_UNITS.value, profile.wru), "table quota",
              f"{DDB_TABLE_UNITS.value:,.0f} WRU/s / {profile.wru:g} WRU per message"),
        Limit("DynamoDB table reads", _per(DDB_TABLE_UNITS.value, profile.rru), "table quota",
              f"{DDB_TABLE_UNITS.value:,.0f} RRU/s / {profile.rru:g} RRU per message"),
        Limit("Lambda concurrency", LAMBDA_CONCURRENCY.value / profile.lambda_seconds,
              "account quota", f"{LAMBDA_CONCURRENCY.value:,.0f} / {profile.lambda_seconds:.3f}"
              " Lambda-seconds per message (modelled)"),
    ]
    for partition, (w_units, r_units) in sorted(profile.send.partitions.items()):
        ceiling = min(_per(DDB_PARTITION_WCU.value, w_units),
                      _per(DDB_PARTITION_RCU.value, r_units))
        out.append(Limit(f"one key: {_kind(partition)}", ceiling, "one key",
                         f"{w_units:g} WCU and {r_units:g} RCU per message on it, of"
                         f" {DDB_PARTITION_WCU.value:,.0f} WCU/s and"
                         f" {DDB_PARTITION_RCU.value:,.0f} RCU/s"))
    return out


def _kind(partition: str) -> str:
    if partition.startswith("conn#"):
        return "one sender (its connection partition)"
    if partition.startswith("room#"):
        return "one room (its partition)"
    return partition or "none"


def _per(capacity: float, units: float) -> float:
    return capacity / units if units > 0 else float("inf")


def app_wide(profile: Profile) -> Limit:
    return min((x for x in limits(profile) if x.kind != "one key"),
               key=lambda x: x.messages_per_second)


def backend(profile: Profile) -> Limit:
    """The ceiling of what sits behind API Gateway (DynamoDB table quotas and Lambda)."""
    return min((x for x in limits(profile) if x.kind != "one key"
                and not x.name.startswith("API Gateway")), key=lambda x: x.messages_per_second)


def dollars_per_million(profile: Profile) -> dict[str, float]:
    million = 1_000_000
    return {
        "API Gateway messages": profile.apigw_requests * PRICE_APIGW_MESSAGE.value * million,
        "DynamoDB writes": profile.wru * PRICE_DDB_WRU.value * million,
        "DynamoDB reads": profile.rru * PRICE_DDB_RRU.value * million,
        "Lambda requests": profile.lambda_requests * PRICE_LAMBDA_REQUEST.value * million,
        "Lambda GB-s": profile.gb_seconds * PRICE_LAMBDA_GB_SECOND.value * million,
        "SQS": profile.sqs_requests * PRICE_SQS_REQUEST.value * million,
    }


@dataclass(frozen=True)
class BigRoom:
    members: int
    pages: int
    batches: int
    sender_seconds: float
    per_worker_rate: float
    delivery_rate: float
    rate_bound: str
    delivery_seconds: float
    total_seconds: float
    room_read_units: float
    ideal_batches: int


def big_room(members: int, dep: Deployment, member_bytes: int) -> BigRoom:
    """Time to deliver one message to ``members``: the sender pages the room and queues batches,
    the workers deliver (conservatively, without overlapping the two)."""
    from chalicelib.fanout import SQS_MAX_BATCH_ENTRIES
    from chalicelib.service import LARGE_ROOM_PAGE

    # The sender reads two pages of inline_max + 1 (is the room large?), then pages of
    # LARGE_ROOM_PAGE; batches are packed across pages (chalicelib/service.py).
    page = int(dep.inline_max.value) + 1
    sizes = [min(page, members), min(page, max(0, members - page))]
    rest = members - sum(sizes)
    sizes += [min(LARGE_ROOM_PAGE, rest - i * LARGE_ROOM_PAGE)
              for i in range(math.ceil(rest / LARGE_ROOM_PAGE))]
    sizes = [size for size in sizes if size > 0]
    pages = len(sizes)
    batches = math.ceil((members - 1) / dep.batch_size.value)
    # Strongly consistent Query pages of the room's membership items (the size measured).
    room_units = sum(_read_units(size * member_bytes, True) for size in sizes)
    sender = (HANDLER_OVERHEAD_S.value + (2 + pages) * DYNAMODB_CALL_S.value
              + math.ceil(batches / SQS_MAX_BATCH_ENTRIES) * SQS_CALL_S.value
              + POST_LATENCY_S.value)
    cpu_rate = 1 / cpu_per_post(dep.worker_mb.value)
    io_rate = dep.fanout_concurrency.value / POST_LATENCY_S.value
    per_worker = min(cpu_rate, io_rate)
    workers_rate = dep.worker_concurrency.value * per_worker
    rate = min(workers_rate, APIGW_ACCOUNT_RPS.value)
    bound = ("workers' CPU" if per_worker == cpu_rate else "post latency") if (
        rate == workers_rate) else "API Gateway account throttle"
    delivery = (members - 1) / rate
    return BigRoom(members, pages, batches, sender, per_worker, rate, bound, delivery,
                   sender + ESM_PICKUP_S.value + delivery, room_units,
                   math.ceil((members - 1) / dep.batch_size.value))


# ---------------------------------------------------------------------- targets


@dataclass(frozen=True)
class Target:
    name: str
    passed: bool
    detail: str


@dataclass
class Model:
    measurements: Measurements
    dep: Deployment
    profiles: list[Profile]
    room: BigRoom
    targets: list[Target]
    elapsed: float = 0.0


def build_model(m: Measurements, dep: Deployment) -> Model:
    cfg = m.config
    worker = m["worker"].scaled(1)
    profiles = [
        Profile(f"1-to-1 chat (room of {cfg.pair_room})", cfg.pair_room, m["send_pair"], 0,
                worker, dep),
        Profile(f"room of {cfg.small_room}", cfg.small_room, m["send_small"], 0, worker, dep),
        Profile(f"room of {cfg.large_room:,}", cfg.large_room, m["send_large"], m.large_batches,
                worker, dep),
    ]
    room = big_room(cfg.target_room, dep, m.member_item_bytes)
    steady = m["steady"]
    targets = [
        Target("steady message: <= 1 write unit, no index write",
               steady.total_wcu <= 1 and steady.index_writes == 0,
               f"{steady.wcu:g} WCU, {steady.index_writes:g} index writes "
               f"({steady.calls_text()}; item {steady.largest_item} bytes of 1,024)"),
    ]
    for profile in profiles[:2]:
        ceiling = backend(profile)
        targets.append(Target(
            f"ceiling >= 10,000 messages/s behind API Gateway, set by an account or table limit,"
            f" not one key ({profile.label})",
            ceiling.messages_per_second >= 10_000 and ceiling.kind != "one key",
            f"{ceiling.messages_per_second:,.0f}/s, set by {ceiling.name} ({ceiling.kind})"))
    # The app-wide ceiling at default quotas (API Gateway's account throttle) is reported with
    # each profile, not as a target: it is AWS's adjustable quota, not a property of the design.
    steady_wcu, v2 = m["steady"].total_wcu, m["send_v2"]
    extra = v2.total_wcu - steady_wcu
    targets.append(Target(
        "protocol v2: seq + history of a message <= 1 KB costs <= 2 extra write units",
        extra <= 2, f"{_n(extra)} WCU beyond the steady message's {_n(steady_wcu)}"
        f" ({v2.calls_text()})"))
    for key in ("presence_enter", "presence_exit"):
        targets.append(Target(
            f"protocol v2: {m.actions[key].name} <= 3 write units", m[key].total_wcu <= 3,
            f"{_n(m[key].total_wcu)} WCU ({m[key].calls_text()})"))
    replay, join = m["join_replay"], m["join_small"]
    targets.append(Target(
        f"protocol v2: replay of {cfg.replay_messages} messages costs a bounded number of reads",
        replay.reads - join.reads <= 2,
        f"{_n(replay.reads - join.reads)} read calls beyond a plain join (the head and one"
        f" history Query page), {_n(replay.rcu - join.rcu)} RCU"))
    targets.append(Target(
        f"a {cfg.target_room:,}-member room delivered in <= {cfg.target_seconds:g} s",
        room.total_seconds <= cfg.target_seconds,
        f"{room.total_seconds:.1f} s modelled ({room.batches} batches, "
        f"{dep.worker_concurrency.value:g} workers x {room.per_worker_rate:,.0f} posts/s,"
        f" bound by {room.rate_bound})"
        + (f"; worker MaximumConcurrency {dep.worker_concurrency.source}"
           if dep.worker_concurrency.source.startswith("assumed") else "")))
    return Model(m, dep, profiles, room, targets)


def concurrency_sweep(model: Model) -> list[tuple[int, float]]:
    """Modelled time of the big room for a few worker MaximumConcurrency values."""
    out = []
    for workers in (2, 3, 4, 5, 6, 8):
        dep = dataclasses.replace(model.dep, worker_concurrency=Constant(workers, "sweep"))
        room = big_room(model.room.members, dep, model.measurements.member_item_bytes)
        out.append((workers, room.total_seconds))
    return out


def run(config: ModelConfig) -> Model:
    started = time.monotonic()
    measurements = measure_all(config)
    model = build_model(measurements, deployment())
    model.elapsed = time.monotonic() - started
    return model


# ---------------------------------------------------------------------- the report


def _n(value: float, digits: int = 2) -> str:
    if value == float("inf"):
        return "unbounded"
    text = f"{value:,.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def action_rows(model: Model) -> list[list[str]]:
    rows = []
    for action in model.measurements.actions.values():
        c = action.cost
        rows.append([action.name, c.calls_text(), _n(c.wcu), _n(c.rcu),
                     f"{_n(c.index_writes)} ({_n(c.index_wcu)} WCU)", f"{c.largest_item:,}",
                     _n(c.posts + c.gets),
                     action.note + (f" ({c.unpriced} calls not priced)" if c.unpriced else "")])
    return rows


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out


ACTION_HEADERS = ["action", "DynamoDB calls", "WCU", "RCU", "index writes", "largest item (B)",
                  "@connections calls", "note"]


def summary(model: Model) -> str:
    """The stdout summary: per-action units, ceilings, cost, targets."""
    lines = ["Capacity model (DynamoDB units per action; moto + the real handlers)", ""]
    width = max(len(a.name) for a in model.measurements.actions.values())
    lines.append(f"{'action':<{width}}  {'WCU':>6} {'RCU':>6} {'idx':>5}  calls")
    for action in model.measurements.actions.values():
        c = action.cost
        lines.append(f"{action.name:<{width}}  {_n(c.wcu):>6} {_n(c.rcu):>6}"
                     f" {_n(c.index_writes):>5}  {c.calls_text()}")
    lines.append("")
    for profile in model.profiles:
        wide, back = app_wide(profile), backend(profile)
        cost = sum(dollars_per_million(profile).values())
        lines.append(f"{profile.label}: app-wide ceiling {_n(wide.messages_per_second, 0)} msg/s"
                     f" ({wide.name}); behind API Gateway {_n(back.messages_per_second, 0)} msg/s"
                     f" ({back.name}); ${cost:,.2f} per million messages")
    room = model.room
    lines.append(f"{room.members:,}-member room: {room.total_seconds:.1f} s modelled"
                 f" ({room.batches} batches, {room.delivery_rate:,.0f} posts/s)")
    if model.dep.stage_rate.value != float("inf"):
        lines.append(f"as deployed today: stage throttling {model.dep.stage_rate.value:,.0f}"
                     f" requests/s ({model.dep.stage_rate.source}) caps inbound messages first")
    lines.append("")
    for target in model.targets:
        lines.append(f"{'PASS' if target.passed else 'FAIL'}  {target.name}: {target.detail}")
    return "\n".join(lines)


def render(model: Model, command: str) -> str:
    m, dep, room = model.measurements, model.dep, model.room
    small = model.profiles[1]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        "# Capacity model",
        "",
        "Generated by `make capacity` (`python -m bench.capacity --out docs/capacity.md`); do not"
        " edit by hand, regenerate it. "
        f"Run: {now}, `{command}`, {model.elapsed:.0f} s"
        + (" (quick: reduced room sizes)." if m.config.quick else "."),
        "",
        "## Method",
        "",
        "The real handlers (app.py under `chalice.test.Client`) run against moto's DynamoDB, the"
        " table created from deploy/resources.json's `ConnectionsTable` properties (key schema,"
        " attribute definitions, billing mode and the `by-last-seen` index; TTL, point-in-time"
        " recovery and tags left out), `CONNECTIONS_STORE=dynamodb://<table>`, moto's SQS as the"
        " fan-out queue and the tests' fake management API on 127.0.0.1. Every DynamoDB call is"
        " seen by botocore `before-call`/`after-call` hooks registered on boto3's default session"
        " before the store creates its client; no project code is patched. Around each call the"
        " items it touches are read through a second, unhooked client, and the call is priced"
        " with DynamoDB's rules (bench/dynamo_units.py): item size is the UTF-8 length of every"
        " attribute name plus its value (numbers about one byte per two significant digits plus"
        " one); writes cost one unit per started KB of the larger of the old and new item, twice"
        " in a transaction; strongly consistent reads one unit per 4 KB (eventually consistent"
        " half), a Query's page summed before rounding; an index write is counted when an item"
        " write adds, removes or changes an index entry (a key change is a delete plus a put),"
        " sized by the projected entry.",
        "",
        "Rooms are populated through the store's own primitives (the same items the handlers"
        " write) and only the action itself is measured. The rate limit is the default"
        f" ({dep.rate_limit[0]} messages per {dep.rate_limit[1]} s). There is no welcome queue in"
        " the run, so the first message claims the welcome in its one update; the queue's"
        " follow-up is measured separately.",
        "",
        "## Units per action",
        "",
        *_table(ACTION_HEADERS, action_rows(model)),
        "",
        "WCU and RCU are the table's units; index writes are extra write units on the"
        " `by-last-seen` index (on-demand bills them as write request units too). @connections"
        " calls are the management-API requests the action made (POST and GET).",
        "",
        "## Targets",
        "",
        *[f"- **{'PASS' if t.passed else 'FAIL'}** {t.name}: {t.detail}" for t in model.targets],
        "",
    ]
    failed = [t for t in model.targets if not t.passed]
    if any("app-wide" in t.name for t in failed):
        needed = {p.label: 10_000 * p.apigw_requests for p in model.profiles[:2]}
        out += [
            "Why the app-wide figure falls short: API Gateway's account-level throttle (10,000"
            " requests/s per Region) counts the inbound message *and* every `@connections` call."
            " A message to a room of N members costs N + 1 requests (inbound, N - 1 deliveries,"
            " the `sent` reply), so even a 1-to-1 chat stops at 10,000 / 3 messages/s whatever the"
            " store does. No store change moves it; the quota is adjustable: 10,000 messages/s"
            " needs "
            + ", ".join(f"{rps:,} requests/s ({label})" for label, rps in needed.items())
            + ". Behind API Gateway (DynamoDB table quotas and Lambda concurrency) the ceiling is "
            + ", ".join(f"{backend(p).messages_per_second:,.0f}/s ({p.label}, {backend(p).name})"
                        for p in model.profiles[:2]) + ".",
            "",
        ]
    out += [
        "## Ceiling: messages per second, and which limit sets it",
        "",
        "Traffic spread over many connections and rooms; each row is one limit. App-wide limits"
        " are account and table quotas; \"one key\" rows cap a single connection or a single"
        " room, not the app.",
        "",
    ]
    for profile in model.profiles:
        wide = app_wide(profile)
        out += [f"### {profile.label}", ""]
        rows = [[x.name, x.kind, _n(x.messages_per_second, 0), x.why] for x in limits(profile)]
        out += _table(["limit", "kind", "messages/s", "from"], rows)
        out += ["", f"App-wide ceiling: **{_n(wide.messages_per_second, 0)} messages/s**, set by"
                f" {wide.name} ({wide.kind}). Behind API Gateway:"
                f" {_n(backend(profile).messages_per_second, 0)} messages/s"
                f" ({backend(profile).name}).", ""]
    refresh = m["refresh"]
    per_minute = refresh.index_wcu
    shards = dep.sweep_shards.value
    connections = shards * DDB_PARTITION_WCU.value * 60 / per_minute if per_minute else math.inf
    out += [
        "### Connections, the sweep index and configuration",
        "",
        f"- Sweep index: {shards:g} shards ({dep.sweep_shards.source}) x"
        f" {DDB_PARTITION_WCU.value:,.0f} WCU/s. A connection writes its entry at registration"
        f" and then at most once a minute ({_n(per_minute)} index write units per refresh:"
        " delete + put, the sort key moves), so the index carries about"
        f" {_n(connections, 0)} connections that are all active every minute. Message traffic"
        " itself never writes the index.",
        f"- New connections: {APIGW_NEW_CONNECTIONS.value:,.0f}/s per account"
        f" ({APIGW_NEW_CONNECTIONS.source}); each connect is {_n(m['connect'].total_wcu)} WRU,"
        f" far from any DynamoDB limit.",
        f"- One connection: its meta item takes {DDB_PARTITION_WCU.value:,.0f} writes/s, while"
        f" the rate limit allows {dep.rate_limit[0] / dep.rate_limit[1]:g} messages/s.",
    ]
    if dep.stage_rate.value != float("inf"):
        out.append(
            f"- **As deployed today** the WebSocket stage throttles every route at"
            f" {dep.stage_rate.value:,.0f} requests/s steady ({dep.stage_rate.source}): that, not"
            " AWS, caps inbound messages (and the ceilings above) until the default is raised."
            " Sized from this model: an inbound rate of 10,000 / 2 = 5,000 requests/s keeps the"
            " smallest exchange (a message and its reply) inside the account throttle; larger"
            " rooms are bounded by the account throttle whatever the stage allows.")
    out += [
        "",
        f"## A {room.members:,}-member room",
        "",
        f"- The sender pages the room: {room.pages} Query pages of"
        f" {dep.inline_max.value + 1:g} membership items ({m.member_item_bytes} bytes each),"
        f" {_n(room.room_read_units, 0)} read units on the room's partition in about"
        f" {room.sender_seconds:.1f} s (assumed latencies below), i.e."
        f" {_n(room.room_read_units / room.sender_seconds, 0)} RCU/s against the partition's"
        f" {DDB_PARTITION_RCU.value:,.0f}; it queues {room.batches} batches of up to"
        f" {dep.batch_size.value:g} recipients ({dep.batch_size.source})."
        + (f" Each page is packed on its own, so a page of {dep.inline_max.value + 1:g} leaves a"
           f" batch of {int(dep.inline_max.value + 1) % int(dep.batch_size.value)}: {room.batches}"
           f" batches where {room.ideal_batches} would do (a page size that is a multiple of"
           " FANOUT_BATCH_SIZE, or packing across pages, fixes it; it costs SQS requests and"
           " invocations, not delivery time)." if room.batches > room.ideal_batches else ""),
        f"- Workers: MaximumConcurrency {dep.worker_concurrency.value:g}"
        f" ({dep.worker_concurrency.source}); memory {dep.worker_mb.value:g} MB"
        f" ({dep.worker_mb.source}). One worker posts"
        f" {room.per_worker_rate:,.0f}/s = 1 / {CPU_PER_POST_S.value * 1000:.3f} ms CPU per post"
        f" ({CPU_PER_POST_S.source}); with {dep.fanout_concurrency.value:g} threads and"
        f" {POST_LATENCY_S.value * 1000:g} ms per post the latency bound is"
        f" {dep.fanout_concurrency.value / POST_LATENCY_S.value:,.0f}/s.",
        f"- Delivery rate {room.delivery_rate:,.0f} posts/s (bound by {room.rate_bound}; the"
        f" account throttle of {APIGW_ACCOUNT_RPS.value:,.0f} rps is shared with all other"
        f" traffic): {room.delivery_seconds:.1f} s for {room.members - 1:,} recipients.",
        f"- Total, sender + queue pickup ({ESM_PICKUP_S.value:g} s) + delivery, not overlapped:"
        f" **{room.total_seconds:.1f} s** (target {m.config.target_seconds:g} s).",
        "- By worker MaximumConcurrency: " + ", ".join(
            f"{w}: {t:.1f} s" for w, t in concurrency_sweep(model)) + f". Above"
        f" {int(APIGW_ACCOUNT_RPS.value // room.per_worker_rate)} workers the deliveries alone"
        " would exceed the account throttle.",
        "",
        f"## Dollars per million messages ({small.label} is the headline)",
        "",
    ]
    price_rows = []
    costs = [dollars_per_million(p) for p in model.profiles]
    for item in costs[0]:
        price_rows.append([item, *(f"${c[item]:,.3f}" for c in costs)])
    price_rows.append(["**total**", *(f"**${sum(c.values()):,.2f}**" for c in costs)])
    out += _table(["per million messages", *(p.label for p in model.profiles)], price_rows)
    out += [
        "",
        "- API Gateway: every message is billed in and out: "
        + "; ".join(f"{p.label}: {p.apigw_requests:,} messages" for p in model.profiles)
        + " (inbound, deliveries, the `sent` reply; each under 32 KB).",
        "- DynamoDB: the measured units of the send (and of the worker batches); the activity"
        " refresh is per connection, not per message: at most"
        f" {_n(refresh.index_wcu)} index WRU per active connection-minute"
        f" (${refresh.index_wcu * PRICE_DDB_WRU.value * 1e6:,.2f} per million"
        " connection-minutes).",
        "- Lambda: modelled durations (not measured on AWS): "
        + "; ".join(f"{p.label}: {p.handler_seconds * 1000:,.0f} ms at"
                    f" {dep.handler_mb.value:g} MB" + (
                        f" + {p.worker_seconds:,.2f} s of workers at {dep.worker_mb.value:g} MB"
                        if p.batches else "") for p in model.profiles) + ".",
        "- SQS: only rooms above FANOUT_INLINE_MAX use the queue (SendMessageBatch of up to 10"
        " batches, then the event source mapping's receive and delete); idle long polling is not"
        " counted.",
        "- Connection minutes are separate: $0.25 per million"
        f" ({PRICE_APIGW_CONNECTION_MINUTE.source}), i.e."
        f" ${60 * PRICE_APIGW_CONNECTION_MINUTE.value:,.6f} per connection-hour; connect and"
        f" disconnect cost {_n(m['connect'].total_wcu + m['disconnect'].total_wcu)} WRU and"
        f" {_n(m['connect'].rcu + m['disconnect'].rcu)} RRU per connection.",
        "",
    ]
    out += observations(model)
    out += [
        "## Constants and their sources",
        "",
    ]
    constants = [
        ("API Gateway account throttle (rps)", APIGW_ACCOUNT_RPS),
        ("API Gateway new connections/s", APIGW_NEW_CONNECTIONS),
        ("DynamoDB partition WCU/s", DDB_PARTITION_WCU),
        ("DynamoDB partition RCU/s", DDB_PARTITION_RCU),
        ("DynamoDB on-demand table units/s (soft)", DDB_TABLE_UNITS),
        ("Lambda concurrency", LAMBDA_CONCURRENCY),
        ("Lambda MB per vCPU", LAMBDA_FULL_VCPU_MB),
        ("API Gateway per message ($)", PRICE_APIGW_MESSAGE),
        ("API Gateway per connection-minute ($)", PRICE_APIGW_CONNECTION_MINUTE),
        ("DynamoDB per WRU ($)", PRICE_DDB_WRU),
        ("DynamoDB per RRU ($)", PRICE_DDB_RRU),
        ("Lambda per request ($)", PRICE_LAMBDA_REQUEST),
        ("Lambda per GB-second ($)", PRICE_LAMBDA_GB_SECOND),
        ("SQS per request ($)", PRICE_SQS_REQUEST),
        ("CPU per post (s)", CPU_PER_POST_S),
        ("DynamoDB call (s)", DYNAMODB_CALL_S),
        ("PostToConnection (s)", POST_LATENCY_S),
        ("SQS SendMessageBatch (s)", SQS_CALL_S),
        ("event source pickup (s)", ESM_PICKUP_S),
        ("invocation overhead (s)", HANDLER_OVERHEAD_S),
        ("handler memory (MB)", dep.handler_mb),
        ("FANOUT_CONCURRENCY", dep.fanout_concurrency),
        ("worker memory (MB)", dep.worker_mb),
        ("worker MaximumConcurrency", dep.worker_concurrency),
        ("worker SQS batch size", dep.esm_batch),
        ("FANOUT_BATCH_SIZE", dep.batch_size),
        ("FANOUT_INLINE_MAX", dep.inline_max),
        ("stage throttling (rps)", dep.stage_rate),
    ]
    out += _table(["constant", "value", "source"],
                  [[name, f"{c.value:g}", c.source] for name, c in constants])
    out += [
        "",
        f"Limits and prices are us-east-1, on-demand, without free tiers ({_LIMITS_DOC} lists"
        " them with their sources).",
        "",
        "## Approximations",
        "",
        "- Item sizes follow the published rules; DynamoDB's exact number encoding may differ by"
        " a byte. The largest item column shows the margin: every item is far below 1 KB, so"
        " rounding, not size, sets the units.",
        "- Index entries are sized as the projected item (table keys, index keys, projected"
        " attributes) without the 100-byte storage overhead; index writes caused by a"
        " transaction are counted once.",
        "- A failed conditional write costs its write units but no index write; a Query or"
        " GetItem that finds nothing costs one read unit (0.5 eventually consistent).",
        "- Queries are priced on the items of the page they read (the same page replayed"
        " without its projection: a projection does not reduce the units).",
        "- Item sizes here use a local endpoint URL and 16-character connection ids like AWS's;"
        " with authentication on, each record and membership also carries the user id (tens of"
        " bytes more), still one unit.",
        "- Durations (Lambda-seconds, the sender's paging, queue pickup) are assumptions, listed"
        " above; only the CPU per post is measured (on this machine's core, taken as one Lambda"
        " vCPU at 1,769 MB).",
        "- The API Gateway ceiling assumes the account's whole 10,000 rps goes to this app.",
        "",
    ]
    return "\n".join(out)


def observations(model: Model) -> list[str]:
    """What the figures say beyond the targets (computed, so they follow the code)."""
    m, room = model.measurements, model.room
    join, steady, large = m["join_small"], m["steady"], m["send_large"]
    transaction = join.units_by_operation.get("TransactWriteItems", 0)
    room_reads = max((units[1] for key, units in large.partitions.items()
                      if key.startswith("room#")), default=0.0)
    out = ["## Observations", ""]
    out.append(
        f"- A join costs {_n(join.total_wcu)} WRU and {_n(join.rcu)} RRU, the same in a room of"
        f" {m.config.join_room_sizes[0]} and of {m.config.join_room_sizes[1]}; of it,"
        f" {_n(steady.wcu)} WRU and {_n(steady.rcu)} RRU are the message's own admission and"
        f" {_n(transaction)} WRU the membership-and-counter transaction (two items, billed"
        " twice). Leave and disconnect pay the same doubling; connection churn, not message"
        " traffic, is where those units go.")
    out.append(
        f"- Member pages are read strongly consistent: the send to {m.config.large_room:,} reads"
        f" {_n(room_reads)} RCU on the room's partition; an eventually consistent page would"
        " halve that (and a room of 10's 1 RCU to 0.5), at the price of a member who joined"
        " within the replication lag possibly missing one message.")
    if room.batches > room.ideal_batches:
        out.append(
            f"- Fan-out packing: {room.batches} queue messages where {room.ideal_batches} would"
            " do.")
    v2 = m["send_v2"]
    hist = sum(w for key, (w, _r) in v2.partitions.items() if key.startswith("hist#"))
    out.append(
        f"- Protocol v2: each message takes {_n(hist)} write units in its room's history"
        " partition (`hist#<room>`: the `head` counter, one write per message, and the history"
        " item). A partition takes 1,000 write units/s, so one room saturates near"
        f" {_n(1000 / max(hist, 1), 0)} messages/s (1,000/s with HISTORY_MAX_MESSAGES=0: the"
        " counter alone). A busier room should be split into shard rooms (`feed:0`..`feed:N`,"
        " each with its own seq; clients join all and order by (shard, seq)) or run with history"
        " off. A send with an `id` adds one write in the sender's own partition (`send#<user>`)"
        " and one read; a duplicate costs reads only.")
    out.append(
        f"- The sweep's fixed cost is one eventually consistent Query per shard per run"
        f" ({_n(m['sweep'].rcu)} RCU for {model.dep.sweep_shards.value:g} shards); each record it"
        f" verifies is one write plus {_n(m['sweep_record'].index_wcu)} index write units (its"
        " entry moves to the back).")
    out.append("")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "capacity.md"))
    parser.add_argument("--quick", action="store_true", help="reduced room sizes (seconds)")
    args = parser.parse_args(argv)
    model = run(QUICK if args.quick else ModelConfig())
    command = "python -m bench.capacity" + (" --quick" if args.quick else "")
    directory = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(directory, exist_ok=True)
    with open(args.out, "w") as f:
        f.write(render(model, command))
    print(summary(model))
    print(f"\nwritten: {os.path.relpath(args.out, ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
