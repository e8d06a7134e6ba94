"""docs/blueprint.md is a test: an existing app with its own route mounts the rooms blueprint,
and both work through the local gateway (a copy of chalicelib/, as the guide says)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import websockets

from localgateway.testing import running_gateway
from tests.conftest import ROOT

GUIDE = ROOT / "docs" / "blueprint.md"
TIMEOUT = 15


def guide_app() -> str:
    [code] = re.findall(r"```python app\n(.*?)```", GUIDE.read_text(), re.S)
    return str(code)


def make_project(directory: Path) -> Path:
    """An existing app: the guide's app.py, a copy of chalicelib/, a config of its own."""
    project = directory / "existing-app"
    shutil.copytree(ROOT / "chalicelib", project / "chalicelib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (project / "app.py").write_text(guide_app())
    (project / ".chalice").mkdir()
    (project / ".chalice" / "config.json").write_text(json.dumps({
        "version": "2.0", "app_name": "notes-with-rooms", "api_gateway_stage": "api",
        "stages": {"dev": {"environment_variables": {}}}}))
    return project


def test_an_existing_app_mounts_the_rooms_blueprint(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WS_AUTH")}
    env["CONNECTIONS_STORE"] = f"sqlite:///{tmp_path}/connections.db"
    with running_gateway(str(project), env=env) as gw:
        # The app's own REST route...
        health = gw.rest_url.rstrip("/") + "/health"
        with urllib.request.urlopen(health, timeout=TIMEOUT) as response:
            assert json.loads(response.read()) == {"ok": True}

        # ... and the blueprint's WebSocket rooms, side by side.
        async def scenario() -> None:
            async with websockets.connect(gw.ws_url) as a, websockets.connect(gw.ws_url) as b:
                for ws in (a, b):
                    await ws.send(json.dumps({"action": "join", "room": "lobby", "id": "j"}))
                    assert (await next_of(ws, "joined"))["data"]["room"] == "lobby"
                await a.send(json.dumps({"action": "send", "room": "lobby", "data": "hi"}))
                message = await next_of(b, "message")
                assert message["data"]["data"] == "hi"

        asyncio.run(scenario())
        assert "Traceback" not in gw.log()


async def next_of(ws: Any, type_: str) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame.get("type") == type_:
                return frame


def test_the_app_defines_no_handler_of_its_own() -> None:
    from app import app
    from chalicelib.blueprint import rooms

    # app.py is the Chalice app plus the blueprint: every function comes from chalicelib.
    assert rooms.current_app is app
    assert sorted(app.handler_map) == sorted(
        ["connect", "message", "disconnect", "welcome_follow_up", "fan_out_worker", "sweep",
         "push_to_room"])
