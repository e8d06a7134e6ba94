"""Test helper: run ``python -m localgateway`` as a subprocess on free ports.

Usable from any test folder::

    from localgateway.testing import running_gateway

    with running_gateway("tests/fixtures/echo", extra_args=["--idle-timeout", "1"]) as gw:
        ...  # gw.rest_url, gw.ws_url, gw.management_endpoint, gw.log()
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

STARTUP_TIMEOUT = 60.0
#: How many times running_gateway picks new free ports when one was taken before the bind.
PORT_ATTEMPTS = 3
#: Flags appended to every gateway started here, e.g. ``LOCALGATEWAY_TEST_ARGS=--in-process``
#: to run a whole test suite against the single-process mode.
EXTRA_ARGS_VARIABLE = "LOCALGATEWAY_TEST_ARGS"
STOP_TIMEOUT = 10.0

T = TypeVar("T")
#: An ``Authorization`` header of the shape boto3 sends (the gateway checks the shape only), for
#: raw HTTP calls to ``@connections`` in tests.
SIGV4_SHAPED = ("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/execute-api/"
                "aws4_request, SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def api_gateway_stage(project_dir: str, stage: str = "dev") -> str:
    with open(os.path.join(project_dir, ".chalice", "config.json")) as f:
        config = json.load(f)
    stage_config = config.get("stages", {}).get(stage, {})
    return str(stage_config.get("api_gateway_stage", config.get("api_gateway_stage", "api")))


@dataclass
class Gateway:
    """A running gateway subprocess."""

    process: subprocess.Popen[bytes]
    rest_url: str
    ws_url: str
    management_endpoint: str
    gateway_url: str
    log_path: str

    def management_client(self) -> Any:
        """A boto3 management-API client for this gateway (no retries, offline credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "apigatewaymanagementapi",
            endpoint_url=self.management_endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1}, read_timeout=15),
        )

    def log(self) -> str:
        """Everything the gateway printed so far (stdout and stderr)."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        return wait_until(lambda: self.log() if text in self.log() else None, timeout,
                          f"{text!r} in the gateway log")


def wait_until(check: Callable[[], T | None], timeout: float, what: str = "condition",
               interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; bounded by ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _listening(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stop_process(process: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@contextlib.contextmanager
def running_gateway(
    project_dir: str,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    python: str = sys.executable,
    startup_timeout: float = STARTUP_TIMEOUT,
    reload: bool = False,
    port: int | None = None,
    ws_port: int | None = None,
) -> Iterator[Gateway]:
    """Start the gateway for ``project_dir`` on free ports, wait until it listens, stop it.

    ``--no-reload`` is passed unless ``reload`` is true; the flags in the environment variable
    ``LOCALGATEWAY_TEST_ARGS`` (of the test process) are appended.  ``port``/``ws_port`` pin the
    ports (a restart test starts a second gateway where clients reconnect); free ones otherwise.
    """
    project_dir = os.path.abspath(project_dir)
    pinned = port is not None or ws_port is not None
    # A free port can be taken between picking it and the gateway binding it (another test's
    # client sockets draw from the same range): pick again, a bounded number of times.
    attempts = 1 if pinned else PORT_ATTEMPTS
    for attempt in range(1, attempts + 1):
        process, gateway = _start_gateway(project_dir, extra_args, env, python, reload,
                                          port or free_port(), ws_port)
        try:
            _wait_ready(process, gateway, startup_timeout)
            break
        except _PortTaken:
            log = gateway.log()
            _discard(process, gateway)
            if attempt == attempts:
                raise RuntimeError(f"gateway ports taken {attempts} times:\n{log}") from None
        except BaseException:
            _discard(process, gateway)
            raise
    try:
        yield gateway
    finally:
        _discard(process, gateway)


class _PortTaken(Exception):
    """The gateway exited because a port picked as free was bound by then."""


def _start_gateway(project_dir: str, extra_args: Sequence[str], env: Mapping[str, str] | None,
                   python: str, reload: bool, port: int,
                   ws_port: int | None) -> tuple[subprocess.Popen[bytes], Gateway]:
    ws_port = ws_port or free_port()
    while ws_port == port:
        ws_port = free_port()
    stage = api_gateway_stage(project_dir)
    cmd = [python, "-m", "localgateway", "--project-dir", project_dir,
           "--port", str(port), "--ws-port", str(ws_port),
           *([] if reload else ["--no-reload"]), *extra_args,
           *shlex.split(os.environ.get(EXTRA_ARGS_VARIABLE, ""))]
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (repo_root, child_env.get("PYTHONPATH", "")) if p
    )
    fd, log_path = tempfile.mkstemp(prefix="localgateway-", suffix=".log")
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                                   env=child_env, cwd=project_dir)
    gateway = Gateway(
        process=process,
        rest_url=f"http://127.0.0.1:{port}",
        ws_url=f"ws://127.0.0.1:{ws_port}/{stage}",
        management_endpoint=f"http://127.0.0.1:{ws_port}/{stage}",
        gateway_url=f"http://127.0.0.1:{ws_port}",
        log_path=log_path,
    )
    return process, gateway


def _wait_ready(process: subprocess.Popen[bytes], gateway: Gateway, timeout: float) -> None:
    """Wait until both ports answer; raises _PortTaken, RuntimeError or TimeoutError."""
    rest_port = int(gateway.rest_url.rsplit(":", 1)[1])

    def ready() -> bool:
        if process.poll() is not None:
            log = gateway.log()
            if "is already in use" in log:
                raise _PortTaken()
            raise RuntimeError(f"gateway exited early:\n{log}")
        return _listening(f"{gateway.gateway_url}/_gateway/health") and _port_open(rest_port)

    try:
        wait_until(ready, timeout, "the gateway to listen", interval=0.1)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{gateway.log()}") from None


def _discard(process: subprocess.Popen[bytes], gateway: Gateway) -> None:
    stop_process(process)
    with contextlib.suppress(OSError):
        os.unlink(gateway.log_path)
