"""Lambda's execution model through the real gateway: containers, limits, REPORT, reaping.

Every test runs ``python -m localgateway`` as a subprocess on the ``lambda_model`` fixture app
and talks to it with real ``websockets`` clients; no timing threshold is asserted anywhere
(waits are bounded, outcomes are checked).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from localgateway.testing import EXTRA_ARGS_VARIABLE, Gateway, running_gateway, wait_until

from .conftest import FIXTURES

pytestmark = pytest.mark.skipif(
    "--in-process" in os.environ.get(EXTRA_ARGS_VARIABLE, ""),
    reason="these tests are about the container model, which --in-process turns off",
)

MODEL = FIXTURES / "lambda_model"
RECV_TIMEOUT = 20.0
REPORT = re.compile(
    r"REPORT RequestId: (?P<id>[0-9a-f-]{36})\tFunction: (?P<fn>\S+)\t"
    r"Duration: (?P<duration>[\d.]+) ms\tBilled Duration: \d+ ms\tMemory Size: (?P<memory>\d+) MB"
    r"\tMax Memory Used: (?P<rss>\d+) MB(?:\tInit Duration: (?P<init>[\d.]+) ms)?"
)


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 90))


async def ask(ws: ClientConnection, body: str) -> Any:
    await ws.send(body)
    return json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def model() -> Iterator[Gateway]:
    with running_gateway(str(MODEL), extra_args=["--max-containers", "2"]) as gateway:
        yield gateway


def test_functions_are_isolated_from_each_other(model: Gateway) -> None:
    async def scenario() -> dict[str, Any]:
        async with connect(model.ws_url) as ws:
            return dict(await ask(ws, "pid"))

    answer = run(scenario())
    # $connect wrote its module state in its own container: $default cannot see it.
    assert answer["saw_connect"] is False
    assert answer["pid"] != model.process.pid


def test_sequential_invocations_reuse_a_warm_container(model: Gateway) -> None:
    async def scenario() -> list[int]:
        pids = []
        for _ in range(3):
            async with connect(model.ws_url) as ws:
                for _ask in range(2):
                    done = _reports(model, "message")
                    pids.append((await ask(ws, "pid"))["pid"])
                    # The reply is posted during the invocation: wait for its REPORT (the
                    # container is free again) so the next message is sequential, not racing.
                    await _until(lambda done=done: _reports(model, "message") > done)
        return pids

    pids = run(scenario())
    assert len(set(pids)) == 1


def _reports(gateway: Gateway, function: str) -> int:
    return sum(1 for m in REPORT.finditer(gateway.log()) if m.group("fn") == function)


async def _until(condition: Any) -> None:
    async with asyncio.timeout(RECV_TIMEOUT):
        while not condition():
            await asyncio.sleep(0.02)


def test_concurrent_invocations_get_separate_containers(model: Gateway, tmp_path: Path) -> None:
    async def scenario() -> list[dict[str, Any]]:
        async with connect(model.ws_url) as a, connect(model.ws_url) as b:
            return list(await asyncio.gather(ask(a, f"meet:{tmp_path}:2"),
                                             ask(b, f"meet:{tmp_path}:2")))

    first, second = run(scenario())
    assert first["met"] and second["met"]
    assert first["pid"] != second["pid"]


def test_limits_and_environment_are_scoped_per_function(model: Gateway) -> None:
    async def scenario() -> dict[str, Any]:
        async with connect(model.ws_url) as ws:
            return dict(await ask(ws, "limits"))

    message = run(scenario())
    assert message["function_name"] == "message"
    assert message["memory"] == 256  # the stage's lambda_memory_size
    assert 0 < message["remaining_ms"] <= 3000  # lambda_functions.message.lambda_timeout
    assert message["stage_var"] == "stage" and message["function_var"] == "message-only"
    with urllib.request.urlopen(model.rest_url + "/limits", timeout=30) as response:
        rest = json.loads(response.read())
    assert rest["function_name"] == "api_handler"
    assert rest["memory"] == 256
    assert 3000 < rest["remaining_ms"] <= 30000  # the top-level lambda_timeout
    assert rest["stage_var"] == "stage" and rest["function_var"] is None


def test_rest_routes_run_in_their_own_container(model: Gateway) -> None:
    request = urllib.request.Request(model.rest_url + "/echo", data=b'{"a": [1, "\\u00e9"]}',
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert answer["json"] == {"a": [1, "\u00e9"]}
    assert answer["pid"] != model.process.pid


def test_report_line_after_every_invocation(model: Gateway) -> None:
    async def scenario() -> None:
        async with connect(model.ws_url) as ws:
            await ask(ws, "pid")

    run(scenario())
    reports = wait_until(
        lambda: [m for m in REPORT.finditer(model.log()) if m["fn"] == "message"],
        15, "a REPORT line for message",
    )
    assert all(int(m["memory"]) == 256 and int(m["rss"]) > 0 for m in reports)
    # Every container's first invocation reports its cold start.
    assert any(m["init"] is not None for m in reports)
    assert any(m["fn"] == "connect" for m in REPORT.finditer(model.log()))
    assert "cold start: message#" in model.log()


def test_timeout_kills_the_container_and_the_next_call_recovers(model: Gateway) -> None:
    async def scenario() -> tuple[int, dict[str, Any], int]:
        async with connect(model.ws_url) as ws:
            before = (await ask(ws, "pid"))["pid"]
            frame = await ask(ws, "hang")
            after = (await ask(ws, "pid"))["pid"]
            return before, frame, after

    before, frame, after = run(scenario())
    assert set(frame) == {"message", "connectionId", "requestId"}
    assert frame["message"] == "Internal server error"
    assert "Task timed out after 3.00 seconds" in model.log()
    wait_until(lambda: not pid_alive(before), 10, "the timed-out container to be gone")
    assert after != before


def test_connect_timeout_refuses_the_upgrade(model: Gateway) -> None:
    async def scenario() -> int:
        with pytest.raises(InvalidStatus) as info:
            async with connect(model.ws_url + "?hang=1"):
                pass
        return int(info.value.response.status_code)

    assert run(scenario()) == 502


def test_crashed_container_is_replaced(model: Gateway) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with connect(model.ws_url) as ws:
            await ws.send("exit")
            frame = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
            return frame, await ask(ws, "pid")

    frame, answer = run(scenario())
    assert frame["message"] == "Internal server error"
    assert answer["saw_connect"] is False and pid_alive(answer["pid"])


@pytest.mark.parametrize("cap", ["flag", "reserved_concurrency"])
def test_invocations_past_the_cap_queue(tmp_path: Path, cap: str) -> None:
    project, args = MODEL, ["--max-containers", "1"]
    if cap == "reserved_concurrency":
        # Chalice's per-function reserved_concurrency caps that function's containers.
        project = tmp_path / "model"
        shutil.copytree(MODEL, project, ignore=shutil.ignore_patterns(".local", "__pycache__"))
        config_path = project / ".chalice" / "config.json"
        config = json.loads(config_path.read_text())
        config["stages"]["dev"]["lambda_functions"]["message"]["reserved_concurrency"] = 1
        config_path.write_text(json.dumps(config))
        args = ["--max-containers", "4"]
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    with running_gateway(str(project), extra_args=args) as gateway:

        async def scenario() -> list[dict[str, Any]]:
            async with connect(gateway.ws_url) as a, connect(gateway.ws_url) as b:
                return list(await asyncio.gather(ask(a, f"meet:{meeting}:2"),
                                                 ask(b, f"meet:{meeting}:2")))

        first, second = run(scenario())
    # One container: the second invocation waited for the first, which met nobody.
    assert first["pid"] == second["pid"]
    assert sorted([first["met"], second["met"]]) == [False, True]


def test_idle_containers_are_reaped(tmp_path: Path) -> None:
    with running_gateway(str(MODEL), extra_args=["--container-idle", "1"]) as gateway:

        async def pid() -> int:
            async with connect(gateway.ws_url) as ws:
                return int((await ask(ws, "pid"))["pid"])

        first = run(pid())
        gateway.wait_for_log("reaped container message#", 15)
        wait_until(lambda: not pid_alive(first), 10, "the reaped container to exit")
        assert run(pid()) != first


def test_in_process_mode_shares_module_state() -> None:
    # The reason --in-process is not the default: $connect's module state leaks into $default.
    with running_gateway(str(MODEL), extra_args=["--in-process"]) as gateway:

        async def scenario() -> dict[str, Any]:
            async with connect(gateway.ws_url) as ws:
                return dict(await ask(ws, "pid"))

        answer = run(scenario())
    assert answer["saw_connect"] is True and answer["pid"] == gateway.process.pid


def test_a_container_works_when_the_gateway_holds_over_1024_files(tmp_path: Path) -> None:
    # The gateway may hold thousands of sockets: waiting on a container must not use select().
    import resource

    from localgateway.containers import Container, FunctionSettings, Generation
    from localgateway.events import RandomIdSource, SystemClock, scheduled_event

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"the hard open-file limit ({hard}) is below 1200")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1"}
    settings = FunctionSettings("tidy", timeout_seconds=30, environment=env)
    notes = str(FIXTURES / "notes")
    container = Container(settings, Generation(1, notes, lambda name: settings))
    try:
        container.start()
        ok, reply = container.invoke("request-1", scheduled_event("tidy", SystemClock(),
                                                                     RandomIdSource()))
    finally:
        container.stop()
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert ok and reply["result"] == {"tidied": 0, "source": "aws.events"}
