"""Failing fast at start, and reloading only on real edits (real gateway subprocesses)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from localgateway.reload import Reloader, content_digest
from localgateway.testing import EXTRA_ARGS_VARIABLE, Gateway, free_port, running_gateway

from .conftest import ECHO

REPO = Path(__file__).resolve().parents[2]
RECV_TIMEOUT = 20.0
START_TIMEOUT = 90


def copy_echo(tmp_path: Path) -> Path:
    project = tmp_path / "echo"
    shutil.copytree(ECHO, project, ignore=shutil.ignore_patterns(".local", "__pycache__"))
    return project


def start_and_wait(project: Path, *extra: str, env: dict[str, str] | None = None
                   ) -> subprocess.CompletedProcess[str]:
    """Run the gateway expecting it to exit on its own (a start failure)."""
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = str(REPO)
    cmd = [sys.executable, "-m", "localgateway", "--project-dir", str(project), "--no-reload",
           "--port", str(free_port()), "--ws-port", str(free_port()), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=START_TIMEOUT,
                          env=child_env, cwd=str(project))


def echo_once(gateway: Gateway, text: str) -> Any:
    async def scenario() -> Any:
        async with connect(gateway.ws_url) as ws:
            await ws.send(text)
            return await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)

    return asyncio.run(asyncio.wait_for(scenario(), 60))


# ----- fail fast ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [[], ["--in-process"]])
def test_an_app_that_does_not_import_fails_at_start(tmp_path: Path, mode: list[str]) -> None:
    project = copy_echo(tmp_path)
    app_py = project / "app.py"
    app_py.write_text(app_py.read_text() + "\nimport module_that_does_not_exist\n")
    result = start_and_wait(project, *mode)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert "Gateway ready" not in output
    assert "error: the app does not import: app.py:" in output
    assert "ModuleNotFoundError: No module named 'module_that_does_not_exist'" in output


def test_a_syntax_error_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    project = copy_echo(tmp_path)
    (project / "app.py").write_text("def broken(:\n")
    result = start_and_wait(project)
    assert result.returncode == 1
    assert "error: the app does not import: app.py:1: SyntaxError:" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_a_port_in_use_is_one_line_naming_port_and_flag(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = start_and_wait(ECHO, "--ws-port", str(port))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: port {port} (--ws-port) is already in use")
    assert "Traceback" not in result.stderr and "Gateway ready" not in result.stdout



def test_the_test_harness_reports_a_taken_pinned_port_with_the_gateway_log() -> None:
    # Pinned ports are not re-picked (a restart test needs that exact port): one clear error.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError) as info, running_gateway(ECHO, ws_port=port):
            pass
    message = str(info.value)
    assert message.startswith("gateway ports taken 1 times")
    assert f"port {port} (--ws-port) is already in use" in message

# ----- reload -------------------------------------------------------------------------------------


def test_digest_changes_with_content_only(tmp_path: Path) -> None:
    project = copy_echo(tmp_path)
    before = content_digest(str(project))
    app_py = project / "app.py"
    app_py.write_text(app_py.read_text())  # saved unchanged
    os.utime(app_py)
    (project / "__pycache__").mkdir()
    (project / "__pycache__" / "x.json").write_text("{}")  # ignored folder
    (project / "notes.txt").write_text("not source")  # not watched
    assert content_digest(str(project)) == before
    (project / ".chalice" / "config.json").write_text("{}")
    assert content_digest(str(project)) != before


def test_reloader_calls_back_only_for_real_changes(tmp_path: Path) -> None:
    project = copy_echo(tmp_path)
    calls: list[int] = []
    reloader = Reloader(str(project), lambda: calls.append(1))
    assert reloader.check() is False
    app_py = project / "app.py"
    app_py.write_text(app_py.read_text() + "\n# edited\n")
    assert reloader.check() is True
    assert reloader.check() is False
    assert calls == [1]


def test_nothing_reloads_without_an_edit_then_edits_reload_once_each(
        tmp_path: Path) -> None:
    project = copy_echo(tmp_path)
    app_py = project / "app.py"
    source = app_py.read_text()
    with running_gateway(str(project), reload=True) as gateway:
        # Traffic imports modules and opens files in the gateway and its containers.
        for text in ("a", "b", "c"):
            assert echo_once(gateway, text) == text
        # Saving a file unchanged is an event, but not a change.
        app_py.write_text(source)
        gateway.wait_for_log("content is unchanged; not reloading", 20)
        assert "change detected" not in gateway.log()

        # A broken edit: one clear error, and the running code keeps serving.
        app_py.write_text(source + "\ndef broken(:\n")
        gateway.wait_for_log("reload failed", 20)
        assert echo_once(gateway, "still") == "still"
        log = gateway.log()
        assert log.count("reload failed") == 1
        assert "app.py:" in log and "SyntaxError" in log

        # The fix is picked up.
        app_py.write_text(source.replace("        _post(cid, body)\n",
                                         "        _post(cid, 'v2:' + body)\n"))
        gateway.wait_for_log("reloaded app", 30)
        assert echo_once(gateway, "hi") == "v2:hi"
        assert gateway.log().count("change detected") == 2


def test_a_container_that_fails_its_cold_start_fails_the_start(tmp_path: Path) -> None:
    # The app imports in the gateway, but the message function's own environment breaks it:
    # only starting its container before "ready" can show it.
    project = tmp_path / "notes"
    shutil.copytree(ECHO.parent / "notes", project,
                    ignore=shutil.ignore_patterns(".local", "__pycache__"))
    config_path = project / ".chalice" / "config.json"
    config = json.loads(config_path.read_text())
    config["stages"]["dev"]["lambda_functions"] = {
        "message": {"environment_variables": {"NOTES_BROKEN": "1"}}}
    config_path.write_text(json.dumps(config))
    app_py = project / "app.py"
    app_py.write_text(app_py.read_text().replace(
        "app = Chalice(", "if os.environ.get('NOTES_BROKEN'):\n"
        "    raise RuntimeError('NOTES_BROKEN is set')\n\napp = Chalice(", 1))
    result = start_and_wait(project)
    assert result.returncode == 1
    assert "Gateway ready" not in result.stdout
    assert ("error: a container of message failed to start: RuntimeError: NOTES_BROKEN is set"
            in result.stderr)
    # The container's own log has the traceback (Lambda's Runtime.ImportModuleError).
    assert "Runtime.ImportModuleError" in result.stderr


@pytest.mark.skipif("--in-process" in os.environ.get(EXTRA_ARGS_VARIABLE, ""),
                    reason="per-function environments and container generations need containers")
def test_old_containers_serve_until_new_ones_import(tmp_path: Path) -> None:
    project = tmp_path / "notes"
    shutil.copytree(ECHO.parent / "notes", project,
                    ignore=shutil.ignore_patterns(".local", "__pycache__"))
    app_py = project / "app.py"
    app_py.write_text(app_py.read_text().replace(
        "app = Chalice(", "if os.environ.get('NOTES_BROKEN'):\n"
        "    raise RuntimeError('NOTES_BROKEN is set')\n\napp = Chalice(", 1))
    config_path = project / ".chalice" / "config.json"
    config = json.loads(config_path.read_text())

    def chat(gateway: Gateway) -> Any:
        async def scenario() -> Any:
            async with connect(gateway.ws_url) as ws:
                await ws.send('{"action": "chat", "message": "x"}')
                return await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)

        return asyncio.run(asyncio.wait_for(scenario(), 60))

    with running_gateway(str(project), reload=True) as gateway:
        assert "hello from notes" in chat(gateway)
        # The gateway's own import of the edited project succeeds (stage environment); the
        # message function's new environment breaks its containers.
        config["stages"]["dev"]["lambda_functions"] = {
            "message": {"environment_variables": {"NOTES_BROKEN": "1"}}}
        config_path.write_text(json.dumps(config))
        gateway.wait_for_log("the previous containers keep serving", 30)
        assert "hello from notes" in chat(gateway)
        # Fixed: the new generation takes over.
        config["stages"]["dev"]["environment_variables"]["NOTES_GREETING"] = "v2"
        config["stages"]["dev"]["lambda_functions"] = {}
        config_path.write_text(json.dumps(config))
        gateway.wait_for_log("reloaded app", 30)
        assert '"v2"' in chat(gateway)
