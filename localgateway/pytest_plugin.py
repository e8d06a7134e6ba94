"""pytest fixtures for any Chalice WebSocket app. List this module in ``pytest_plugins``::

    # conftest.py at the root of your project
    pytest_plugins = ["localgateway.pytest_plugin"]

Fixtures (override ``localgateway_project_dir``, ``localgateway_stage`` or
``localgateway_args`` in your ``conftest.py`` to change what they run):

* ``local_gateway`` - the project behind ``python -m localgateway`` in its own process, on free
  127.0.0.1 ports (a :class:`localgateway.testing.Gateway`: ``ws_url``, ``rest_url``,
  ``management_endpoint``, ``log()``); process-level tests use real WebSocket clients on it.
* ``management_api`` - a :class:`~localgateway.recording.RecordingManagementApi`: a real HTTP
  ``@connections`` endpoint that records every call and answers like AWS (410
  ``GoneException`` with ``x-amzn-ErrorType``, 403, 429, 413, scriptable per connection).
* ``ws_client`` - a :class:`WebSocketTestClient`: in-process, builds AWS-shaped WebSocket events
  (:mod:`localgateway.events`, modelled on captured API Gateway events), invokes the handlers
  through ``chalice.test.Client`` with ``WS_MANAGEMENT_ENDPOINT`` pointing at
  ``management_api``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from localgateway.events import (
    ApiInfo,
    ConnectionFacts,
    EventFactory,
    RandomIdSource,
    SystemClock,
    epoch_ms,
)
from localgateway.project import Functions, offline_aws_defaults
from localgateway.recording import RecordingManagementApi
from localgateway.testing import Gateway, api_gateway_stage, running_gateway

#: What the in-process events say about their API (an execute-api domain, like AWS's).
TEST_API = ApiInfo("abcdef1234", "api", "abcdef1234.execute-api.us-east-1.amazonaws.com")
TEST_SOURCE_IP = "166.90.225.1"
#: The headers API Gateway adds to every ``$connect`` (X-Forwarded-*) besides the client's.
DEFAULT_CONNECT_HEADERS = {
    "Sec-WebSocket-Key": "+W5xw47OHh3OTFsWKjGu9Q==",
    "Sec-WebSocket-Version": "13",
    "X-Forwarded-Port": "443",
    "X-Forwarded-Proto": "https",
}


@dataclass
class TestConnection:
    """One simulated client connection of a :class:`WebSocketTestClient`."""

    __test__ = False  # not a test class, whatever pytest's name pattern says

    facts: ConnectionFacts
    connect_response: Any = None
    open: bool = False
    responses: list[Any] = field(default_factory=list)

    @property
    def connection_id(self) -> str:
        return self.facts.connection_id


class WebSocketTestClient:
    """Drives an app's WebSocket handlers the way API Gateway and Lambda would, in-process.

    ``client`` is a ``chalice.test.Client``; ``api`` the recording management API the app posts
    to. The function names come from the app's ``@app.on_ws_*`` handlers.
    """

    __test__ = False

    def __init__(self, client: Any, app: Any, api: RecordingManagementApi,
                 events: EventFactory | None = None) -> None:
        self.client = client
        self.api = api
        self.functions = Functions.of(app)
        self.events = events or EventFactory(TEST_API, SystemClock(), RandomIdSource())

    def invoke(self, function: str, event: Mapping[str, Any]) -> Any:
        """Invoke ``function`` with ``event`` through ``chalice.test.Client``; its response."""
        return self.client.lambda_.invoke(function, dict(event)).payload

    def new_connection(self, source_ip: str = TEST_SOURCE_IP) -> TestConnection:
        facts = ConnectionFacts(self.events.new_connection_id(), epoch_ms(self.events.clock),
                                source_ip)
        return TestConnection(facts)

    def connect(self, headers: Mapping[str, str] | None = None,
                query: Mapping[str, str] | None = None,
                connection: TestConnection | None = None) -> TestConnection:
        """Run ``$connect``; the connection is open (posts to it succeed) when it answers 2xx.

        Like API Gateway, the id is *not* open while ``$connect`` runs: posting to it from
        ``$connect`` gets 410 ``GoneException``.
        """
        from localgateway.core import connect_status, is_success

        conn = connection or self.new_connection()
        all_headers = {"Host": self.events.api.domain_name, **DEFAULT_CONNECT_HEADERS,
                       "X-Forwarded-For": conn.facts.source_ip, **(headers or {})}
        event = self.events.connect(conn.facts, list(all_headers.items()),
                                    list((query or {}).items()))
        response = {"statusCode": 200}
        if self.functions.connect:
            response = self.invoke(self.functions.connect, event)
        conn.connect_response = response
        if is_success(connect_status(response)):
            conn.open = True
            self.api.open(conn.connection_id)
        return conn

    def send(self, connection: TestConnection, data: str | bytes) -> Any:
        """Run ``$default`` with one frame (bytes arrive base64-encoded, like binary frames)."""
        if not self.functions.message:
            raise LookupError("the app has no @app.on_ws_message handler")
        response = self.invoke(self.functions.message,
                               self.events.message(connection.facts, data))
        connection.responses.append(response)
        return response

    def disconnect(self, connection: TestConnection, status_code: int = 1000,
                   reason: str = "") -> Any:
        """Close the connection (410 from now on) and run ``$disconnect``."""
        connection.open = False
        self.api.close(connection.connection_id)
        if not self.functions.disconnect:
            return None
        return self.invoke(self.functions.disconnect,
                           self.events.disconnect(connection.facts, status_code, reason))

    def received(self, connection: TestConnection) -> list[Any]:
        """The frames the app posted to the connection (JSON decoded when they parse)."""
        return self.api.received(connection.connection_id)


def load_app(project_dir: str) -> Any:
    """The ``app`` object of ``project_dir/app.py`` (imported once per test session)."""
    if project_dir not in sys.path:
        sys.path.insert(0, project_dir)
    module = importlib.import_module("app")
    return module.app


# ----- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def localgateway_project_dir(request: pytest.FixtureRequest) -> str:
    """The Chalice project the fixtures run (default: pytest's rootdir)."""
    return str(request.config.rootpath)


@pytest.fixture(scope="session")
def localgateway_stage() -> str:
    """The Chalice stage the fixtures use (default: ``dev``)."""
    return "dev"


@pytest.fixture
def localgateway_args() -> list[str]:
    """Extra ``python -m localgateway`` flags for ``local_gateway`` (default: none)."""
    return []


@pytest.fixture
def local_gateway(localgateway_project_dir: str, localgateway_stage: str,
                  localgateway_args: list[str]) -> Iterator[Gateway]:
    """The project behind the local gateway, in its own process (stopped after the test)."""
    args = ["--stage", localgateway_stage, *localgateway_args]
    with running_gateway(localgateway_project_dir, extra_args=args) as gateway:
        yield gateway


@pytest.fixture
def management_api(localgateway_project_dir: str, localgateway_stage: str
                   ) -> Iterator[RecordingManagementApi]:
    """A recording ``@connections`` endpoint on 127.0.0.1 (stopped after the test)."""
    try:
        stage = api_gateway_stage(localgateway_project_dir, localgateway_stage)
    except OSError:
        stage = "api"
    with RecordingManagementApi(stage) as api:
        yield api


@pytest.fixture
def ws_client(localgateway_project_dir: str, localgateway_stage: str,
              management_api: RecordingManagementApi,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[WebSocketTestClient]:
    """The app's WebSocket handlers in-process, posting to ``management_api``."""
    from chalice.test import Client

    monkeypatch.setenv("WS_MANAGEMENT_ENDPOINT", management_api.endpoint)
    for name, value in offline_aws_defaults(dict(os.environ)).items():
        monkeypatch.setenv(name, value)
    app = load_app(localgateway_project_dir)
    ws_api = getattr(app, "websocket_api", None)
    if ws_api is not None and hasattr(ws_api, "_endpoint"):
        # Chalice's built-in client would build an execute-api URL from the event's apiId.
        monkeypatch.setattr(ws_api, "_endpoint", management_api.endpoint)
        monkeypatch.setattr(ws_api, "_client", None)
    events = EventFactory(ApiInfo(TEST_API.api_id, management_api.stage, TEST_API.domain_name),
                          SystemClock(), RandomIdSource())
    with Client(app, stage_name=localgateway_stage,
                project_dir=localgateway_project_dir) as client:
        yield WebSocketTestClient(client, app, management_api, events)

