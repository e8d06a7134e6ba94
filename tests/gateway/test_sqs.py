"""Local SQS: its own process, delay, visibility timeout, redrive to a DLQ, partial failures.

The gateway runs as a subprocess; messages are sent with boto3 over HTTP to its SQS endpoint and
the fixture's consumer records what it receives.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from localgateway.sqs import STOP_GRACE_SECONDS, LocalQueues, dlq_name, failed_message_ids
from localgateway.sqs_server import SqsBackend, SqsError
from localgateway.testing import Gateway, running_gateway, stop_process, wait_until

from .conftest import FIXTURES

MODEL = FIXTURES / "lambda_model"


def received(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def bodies(path: Path, body: str) -> list[dict[str, Any]]:
    return [r for r in received(path) if r["body"] == body]


def queue_url(gateway: Gateway, name: str) -> str:
    match = re.search(rf"  (?:SQS queue|Dead letters): +{re.escape(name)} -> (\S+)", gateway.log())
    assert match, gateway.log()
    return match.group(1)


def sqs_client(url: str) -> Any:
    endpoint = "/".join(url.split("/")[:3])
    return boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=Config(retries={"total_max_attempts": 1}, read_timeout=15))


def children(pid: int) -> list[str]:
    """Command lines of a process's children (Linux /proc)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:  # threads (and children) come and go while we look
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids = f.read().split()
        except FileNotFoundError:
            continue
        for child in kids:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as c:
                    found.append(c.read().replace(b"\0", b" ").decode())
            except FileNotFoundError:
                continue
    return found


SERVER_COMMANDS = {"builtin": "localgateway/sqs_server.py", "moto": "moto.server"}


@pytest.fixture(scope="module", params=sorted(SERVER_COMMANDS))
def server(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def record_file(tmp_path_factory: pytest.TempPathFactory, server: str) -> Path:
    return tmp_path_factory.mktemp(f"sqs-{server}") / "records.jsonl"


@pytest.fixture(scope="module")
def gateway(record_file: Path, server: str) -> Iterator[Gateway]:
    env = {**os.environ, "MODEL_RECORD_FILE": str(record_file)}
    args = ["--sqs-visibility-timeout", "1", "--sqs-max-receive", "2", "--sqs-server", server]
    with running_gateway(str(MODEL), extra_args=args, env=env) as gw:
        yield gw


def test_sqs_endpoint_runs_in_its_own_process(gateway: Gateway, server: str) -> None:
    commands = children(gateway.process.pid)
    assert any(SERVER_COMMANDS[server] in command for command in commands), commands
    assert queue_url(gateway, "model-jobs").endswith("/model-jobs")
    assert queue_url(gateway, "model-jobs-dlq").endswith("/model-jobs-dlq")


def test_partial_batch_failure_redrives_only_the_failed_record(gateway: Gateway,
                                                               record_file: Path) -> None:
    url = queue_url(gateway, "model-jobs")
    client = sqs_client(url)
    client.send_message_batch(QueueUrl=url, Entries=[
        {"Id": "1", "MessageBody": "ok-partial"}, {"Id": "2", "MessageBody": "fail-partial"},
    ])
    dlq = queue_url(gateway, "model-jobs-dlq")

    def dead_letter() -> list[str]:
        messages = client.receive_message(QueueUrl=dlq, WaitTimeSeconds=1,
                                          MaxNumberOfMessages=10).get("Messages", [])
        return [m["Body"] for m in messages]

    # maxReceiveCount 2: the failed record is delivered twice, then moves to the DLQ.
    assert "fail-partial" in wait_until(dead_letter, 30, "the failed record in the DLQ")
    failed = bodies(record_file, "fail-partial")
    assert [r["attributes"]["ApproximateReceiveCount"] for r in failed] == ["1", "2"]
    # The record that succeeded was deleted: never redelivered, never dead-lettered.
    assert len(bodies(record_file, "ok-partial")) == 1
    # The live view shows the dead letter without reading any log (issue 14 part 5).
    with urllib.request.urlopen(f"{gateway.gateway_url}/_gateway/stats", timeout=10) as response:
        queues = {q["name"]: q for q in json.loads(response.read())["queues"]}
    assert queues["model-jobs-dlq"]["dead_letter"] is True
    assert queues["model-jobs-dlq"]["visible"] + queues["model-jobs-dlq"]["in_flight"] >= 1
    assert queues["model-jobs"]["dead_letter"] is False


def test_delay_seconds_are_respected(gateway: Gateway, record_file: Path) -> None:
    url = queue_url(gateway, "model-jobs")
    sqs_client(url).send_message(QueueUrl=url, MessageBody="ok-delayed", DelaySeconds=2)
    (record,) = wait_until(lambda: bodies(record_file, "ok-delayed"), 30, "the delayed record")
    attributes = record["attributes"]
    waited_ms = (int(attributes["ApproximateFirstReceiveTimestamp"])
                 - int(attributes["SentTimestamp"]))
    assert waited_ms >= 2000  # SQS semantics: invisible for DelaySeconds


def test_batch_item_failures_are_read_like_lambda() -> None:
    ids = ["a", "b"]
    assert failed_message_ids(None, ids) == set()
    assert failed_message_ids({"batchItemFailures": []}, ids) == set()
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": "b"}]}, ids) == {"b"}
    # An id outside the batch, or a malformed answer, fails the whole batch.
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": "x"}]}, ids) is None
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": ""}]}, ids) is None
    assert failed_message_ids({"batchItemFailures": "b"}, ids) is None
    assert dlq_name("jobs") == "jobs-dlq" and dlq_name("jobs.fifo") == "jobs-dlq.fifo"


# ----- the built-in SQS server's backend (transport-free, clock injected) -----------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backend_delay_visibility_and_redrive() -> None:
    clock = Clock()
    backend = SqsBackend("http://127.0.0.1:1", clock)
    dlq = backend.create_queue("jobs-dlq", {})
    policy = json.dumps({"deadLetterTargetArn": dlq.arn, "maxReceiveCount": "2"})
    jobs = backend.create_queue("jobs", {"VisibilityTimeout": "5", "RedrivePolicy": policy})
    assert backend.create_queue("jobs", {}) is jobs  # idempotent
    backend.send(jobs, "later", delay=3)
    assert backend.receive(jobs, 10, None) == []
    assert backend.next_visible_at(jobs) == clock.now + 3
    clock.now += 3
    (first,) = backend.receive(jobs, 10, None)
    first_handle = first.receipt_handle
    assert first.receive_count == 1 and backend.receive(jobs, 10, None) == []  # in flight
    clock.now += 5  # visibility timeout over: delivered again
    (second,) = backend.receive(jobs, 10, None)
    assert second.receive_count == 2
    backend.delete(jobs, first_handle)  # an outdated handle changes nothing
    assert len(jobs.messages) == 1
    clock.now += 5  # received maxReceiveCount times: moves to the DLQ on the next receive
    assert backend.receive(jobs, 10, None) == []
    (dead,) = backend.receive(dlq, 10, None)
    assert dead.body == "later"
    backend.delete(dlq, dead.receipt_handle)
    assert not dlq.messages and not jobs.messages


def test_backend_answers_like_sqs() -> None:
    backend = SqsBackend("http://127.0.0.1:1", Clock())
    queue = backend.create_queue("q", {})
    with pytest.raises(SqsError) as info:
        backend.queue_from_url("http://127.0.0.1:1/123456789012/missing")
    assert info.value.code == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(SqsError):
        backend.send(queue, "x" * (256 * 1024 + 1), None)
    attributes = {"b": {"DataType": "String", "StringValue": "v"},
                  "a": {"DataType": "Number", "StringValue": "1"}}
    message = backend.send(queue, "body", None, attributes)
    (received_message,) = backend.receive(queue, 1, None)
    rendered = backend.render(received_message, ["All"], ["All"])
    assert rendered["MD5OfBody"] == "841a2d689ad86bd1611447453c22c6fc"
    assert rendered["Attributes"]["ApproximateReceiveCount"] == "1"
    assert rendered["MessageAttributes"] == attributes and message.message_id
    # The same digest as moto's implementation of SQS's algorithm.
    from moto.sqs.models import Message as MotoMessage

    moto_message = MotoMessage("id", "body")
    moto_message.message_attributes = attributes
    assert rendered["MD5OfMessageAttributes"] == moto_message.attribute_md5


def test_stop_ends_an_open_long_poll_instead_of_waiting_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At shutdown a poller's long poll (here 20 s) is still open: the builtin server cancels it
    and exits by itself (status 0), rather than being killed after ``stop``'s grace period."""
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    queues = LocalQueues(["jobs"])
    url = queues.start()["jobs"]
    client = boto3.client("sqs", endpoint_url=queues.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=Config(retries={"total_max_attempts": 1}, read_timeout=30))
    answers: list[Any] = []

    def long_poll() -> None:
        try:
            answers.append(client.receive_message(QueueUrl=url, WaitTimeSeconds=20))
        except Exception as exc:  # the server went away under the poll
            answers.append(exc)

    poller = threading.Thread(target=long_poll, daemon=True)
    poller.start()
    time.sleep(0.5)  # let the request reach the server (nothing to observe it by)
    try:
        status = queues.stop()
    finally:
        queues.stop()  # idempotent: None once stopped
    assert status == 0
    poller.join(timeout=STOP_GRACE_SECONDS)
    assert answers, "the long poll is still open after the server stopped"


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (Linux /proc)."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        parent = pending.pop()
        with contextlib.suppress(FileNotFoundError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(FileNotFoundError):
                    with open(f"/proc/{parent}/task/{task}/children") as f:
                        kids = {int(kid) for kid in f.read().split()}
                    pending += sorted(kids - found)
                    found |= kids
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_the_gateway_cleanly_with_its_containers_and_queue_server(
    tmp_path: Path,
) -> None:
    """The gateway's own shutdown (SQS server and containers stopped concurrently, idle
    containers in parallel) ends with status 0 and leaves no process of its own behind."""
    record_file = tmp_path / "records.jsonl"
    env = {**os.environ, "MODEL_RECORD_FILE": str(record_file)}
    with running_gateway(str(MODEL), env=env) as gw:
        client = sqs_client(queue_url(gw, "model-jobs"))
        client.send_message(QueueUrl=queue_url(gw, "model-jobs"), MessageBody="warm")
        wait_until(lambda: bodies(record_file, "warm"), 20, "the consumer's container")
        spawned = _descendants(gw.process.pid)
        assert len(spawned) >= 2, spawned  # the SQS server and at least one container
        stop_process(gw.process)
        assert gw.process.returncode == 0, gw.log()[-2000:]
        wait_until(lambda: not [pid for pid in spawned if _running(pid)] or None, 10,
                   "the gateway's processes to exit")
