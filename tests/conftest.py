"""Shared fixtures: the app under chalice.test.Client, against a real local management API."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

from localgateway.pytest_plugin import TestConnection, WebSocketTestClient
from tests.support.aws import offline_aws
from tests.support.events import EVENTS, SOURCE_IP, disconnect_event, message_event
from tests.support.management_api import FakeManagementApi

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fresh_observability() -> Iterator[None]:
    """Each test starts with the app's logging as imported and an empty metrics tally: the
    first invocation installs JSON logging and EMF metrics process-wide (app.py middleware)."""
    yield
    observability = sys.modules.get("chalicelib.observability")
    if observability is not None:
        observability.uninstall()
    runtime = sys.modules.get("chalicelib.runtime")
    if runtime is not None:
        runtime.recorder().drain()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Offline AWS settings, and none of the app's variables from the developer's shell."""
    offline_aws(monkeypatch, tmp_path)
    for name in ("WELCOME_QUEUE_URL", "CONNECTIONS_STORE", "WS_MANAGEMENT_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def management_api() -> Iterator[FakeManagementApi]:
    api = FakeManagementApi().start()
    yield api
    api.stop()


class AppHarness:
    """Drives the Chalice app's handlers the way Lambda would, and reads the results.

    Built on the gateway's pytest plugin client (:class:`WebSocketTestClient`): the same event
    builder and the same recording management API as any app using the plugin.
    """

    def __init__(self, client: Client, api: FakeManagementApi) -> None:
        from app import app

        self.client = client
        self.api = api
        self.ws = WebSocketTestClient(client, app, api, events=EVENTS)
        self._connections: dict[str, TestConnection] = {}

    def invoke(self, function: str, event: dict[str, Any]) -> Any:
        return self.ws.invoke(function, event)

    def connect(self, headers: dict[str, str] | None = None,
                query: dict[str, str] | None = None) -> str:
        connection = self.ws.new_connection(SOURCE_IP)
        connection = self.ws.connect(headers=headers, query=query, connection=connection)
        assert connection.connect_response == {"statusCode": 200}
        self._connections[connection.connection_id] = connection
        return connection.connection_id

    def send(self, connection_id: str, body: str | bytes | dict[str, Any], **kw: Any) -> Any:
        """Send a frame and return the last frame the connection received."""
        self.invoke("message", message_event(connection_id, body, **kw))
        return self.api.received(connection_id)[-1]

    def last(self, connection_id: str, type_: str) -> Any:
        """The last frame of type ``type_`` the connection received (presence frames and
        replies interleave with room messages)."""
        frames = [f for f in self.api.received(connection_id) if f["type"] == type_]
        assert frames, f"{connection_id} received no {type_!r} frame"
        return frames[-1]

    def disconnect(self, connection_id: str) -> Any:
        connection = self._connections.get(connection_id)
        if connection is None:
            self.api.close(connection_id)
            return self.invoke("disconnect", disconnect_event(connection_id))
        return self.ws.disconnect(connection, 1005, "Client-side close frame status not set")

    def join(self, connection_id: str, room: str) -> Any:
        return self.send(connection_id, {"action": "join", "room": room})

    @property
    def store(self) -> Any:
        from chalicelib.runtime import messaging

        return messaging().store


@pytest.fixture
def harness(
    aws_env: None,
    management_api: FakeManagementApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[AppHarness]:
    monkeypatch.setenv("CONNECTIONS_STORE", f"sqlite:///{tmp_path}/connections.db")
    monkeypatch.setenv("WS_MANAGEMENT_ENDPOINT", management_api.endpoint)
    from app import app

    with Client(app, stage_name="test", project_dir=str(ROOT)) as client:
        yield AppHarness(client, management_api)


def frame(data: bytes | str) -> Any:
    return json.loads(data)
