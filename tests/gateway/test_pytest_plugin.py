"""The pytest plugin, as a user of another Chalice WebSocket app lists it in ``pytest_plugins``.

A copy of the ``notes`` fixture project gets a ``conftest.py`` and a test module that use the
plugin's fixtures; pytest runs them in a subprocess (its own interpreter, its own ``app``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import FIXTURES

REPO = Path(__file__).resolve().parents[2]

USER_CONFTEST = 'pytest_plugins = ["localgateway.pytest_plugin"]\n'

USER_TESTS = '''
import asyncio
import json

import pytest
from chalice.app import WebsocketDisconnectedError
from websockets.asyncio.client import connect


def chat(text):
    return json.dumps({"action": "chat", "message": text})


def test_in_process_client_records_calls(ws_client, management_api):
    alice = ws_client.connect(query={"room": "a"})
    assert alice.open
    ws_client.send(alice, chat("hello"))
    (frame,) = ws_client.received(alice)
    assert frame["notes"] == ["hello"] and frame["greeting"] == "hello from notes"
    (call,) = management_api.calls_on(alice.connection_id)
    assert (call.method, call.status) == ("POST", 200)
    event_stage = management_api.endpoint.rsplit("/", 1)[1]
    assert event_stage == "v1"


def test_gone_connections_answer_410_like_aws(ws_client, management_api):
    bob = ws_client.connect()
    ws_client.disconnect(bob)
    with pytest.raises(WebsocketDisconnectedError):
        ws_client.send(bob, chat("too late"))
    assert [c.status for c in management_api.calls_on(bob.connection_id)] == [410]


def test_scripted_forbidden(ws_client, management_api):
    carol = ws_client.connect()
    management_api.script(carol.connection_id, 403)
    with pytest.raises(Exception, match="Forbidden"):
        ws_client.send(carol, chat("x"))
    ws_client.send(carol, chat("y"))
    assert [c.status for c in management_api.calls_on(carol.connection_id)] == [403, 200]


def test_running_gateway(local_gateway):
    async def scenario():
        async with connect(local_gateway.ws_url) as ws:
            await ws.send(chat("over the wire"))
            return json.loads(await asyncio.wait_for(ws.recv(), 20))

    assert asyncio.run(scenario())["notes"] == ["over the wire"]
'''


def test_plugin_fixtures_in_another_project(tmp_path: Path) -> None:
    project = tmp_path / "notes"
    shutil.copytree(FIXTURES / "notes", project,
                    ignore=shutil.ignore_patterns(".local", "__pycache__"))
    (project / "conftest.py").write_text(USER_CONFTEST)
    (project / "test_with_plugin.py").write_text(USER_TESTS)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in ("WS_MANAGEMENT_ENDPOINT", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(project), str(project / "test_with_plugin.py")],
        cwd=str(project), env=env, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout
