"""The gateway is generic: a second, unrelated Chalice WebSocket app, and ``invoke``.

``tests/fixtures/notes`` has its own ``chalicelib`` package, its own stage settings
(``api_gateway_stage`` ``v1``) and replies through Chalice's built-in ``app.websocket_api``.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from localgateway.testing import running_gateway

from .conftest import FIXTURES

NOTES = FIXTURES / "notes"
REPO = Path(__file__).resolve().parents[2]
AWS_EVENTS = REPO / "tests" / "data" / "aws-events"


def invoke(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "localgateway", "invoke", *args,
                           "--project-dir", str(NOTES)], capture_output=True, text=True,
                          timeout=90, env=env, cwd=str(NOTES), input=stdin)


@pytest.mark.parametrize("mode", [[], ["--in-process"]])
def test_a_second_app_runs_through_the_gateway(mode: list[str]) -> None:
    with running_gateway(str(NOTES), extra_args=mode) as gateway:
        assert gateway.ws_url.endswith("/v1")

        async def scenario() -> list[dict[str, Any]]:
            async with connect(gateway.ws_url) as ws:
                replies = []
                for text in ("first", "second"):
                    await ws.send(json.dumps({"action": "chat", "message": text}))
                    replies.append(json.loads(await asyncio.wait_for(ws.recv(), 20)))
                return replies

        first, second = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert first["notes"] == ["first"] and second["notes"] == ["first", "second"]
    assert first["greeting"] == "hello from notes"
    # Its own chalicelib, not the repository app's (which is on the gateway's PYTHONPATH).
    assert Path(first["chalicelib"]) == NOTES / "chalicelib"


def test_invoke_runs_a_schedule_with_a_default_event() -> None:
    result = invoke("tidy")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"tidied": 0, "source": "aws.events"}
    assert "REPORT RequestId:" in result.stderr and "Init Duration:" in result.stderr


def test_invoke_with_an_event_file_and_from_stdin(tmp_path: Path) -> None:
    event = json.loads((AWS_EVENTS / "message.json").read_text())
    event["body"] = json.dumps({"action": "noop"})
    path = tmp_path / "event.json"
    path.write_text(json.dumps(event))
    from_file = invoke("message", "--event", str(path))
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout) == {"statusCode": 200}
    from_stdin = invoke("message", "--event", "-", "--in-process", stdin=json.dumps(event))
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert json.loads(from_stdin.stdout) == {"statusCode": 200}


def test_invoke_reports_failures_and_unknown_functions(tmp_path: Path) -> None:
    unknown = invoke("nope")
    assert unknown.returncode == 2
    assert "no function 'nope'" in unknown.stderr and "tidy" in unknown.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    assert invoke("tidy", "--event", str(bad)).returncode == 2
    # No gateway is listening: the handler's post to the management API fails.
    event = json.loads((AWS_EVENTS / "message.json").read_text())
    failing = invoke("message", "--event", "-", "--ws-port", "9", stdin=json.dumps(event))
    assert failing.returncode == 1
    assert "error: message failed" in failing.stderr
