"""Issue 15 item 4: a website the developer visits cannot drive the local gateway.

Each refusal is shown against a real gateway process (the echo fixture project) with real
clients: raw HTTP the way a browser would send it (foreign ``Origin``, rebinding ``Host``,
unsigned ``text/plain`` posts), and that boto3 and ``websockets`` clients still work.  The
browser side (a page on another origin in Chromium) is in tests/browser/test_live_view.py.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from localgateway.core import RequestGuard
from localgateway.testing import SIGV4_SHAPED, Gateway, running_gateway, wait_until

ECHO = Path(__file__).resolve().parents[1] / "fixtures" / "echo"
CONFIGURED_ORIGIN = "http://app.example:3000"
RECV_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("guard")
    env = {k: v for k, v in os.environ.items() if k != "CONNECTIONS_STORE"}
    env["ECHO_RECORD_FILE"] = str(tmp / "records.jsonl")
    with running_gateway(str(ECHO), env=env,
                         extra_args=["--env-file", "local.env",
                                     "--allowed-origin", CONFIGURED_ORIGIN + "/"]) as gw:
        yield gw


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def port(gateway: Gateway) -> int:
    return int(gateway.gateway_url.rsplit(":", 1)[1])


def request(gateway: Gateway, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, bytes]:
    """One raw HTTP request with exactly these headers (``Host`` included when given)."""
    conn = http.client.HTTPConnection("127.0.0.1", port(gateway), timeout=15)
    try:
        headers = dict(headers or {})
        skip_host = "Host" in headers
        conn.putrequest(method, path, skip_host=skip_host, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def connection_id(ws: ClientConnection) -> str:
    await ws.send("event")
    frame = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
    return str(json.loads(frame)["requestContext"]["connectionId"])


def upgrade_headers(host: str, origin: str | None = None) -> dict[str, str]:
    headers = {"Host": host, "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    if origin is not None:
        headers["Origin"] = origin
    return headers


# ----- Host: DNS rebinding ------------------------------------------------------------------------


def test_rebinding_host_is_refused_on_every_kind_of_request(gateway: Gateway) -> None:
    evil = f"rebind.evil.example:{port(gateway)}"
    stage = gateway.ws_url.rsplit("/", 1)[1]
    assert request(gateway, "GET", "/_gateway/health", {"Host": evil})[0] == 403
    assert request(gateway, "GET", "/_gateway/stats", {"Host": evil})[0] == 403
    assert request(gateway, "GET", f"/{stage}", upgrade_headers(evil))[0] == 403
    assert request(gateway, "POST", "/_gateway/schedule/tick",
                   {"Host": evil, "Content-Type": "application/json"}, b"{}")[0] == 403
    assert request(gateway, "POST", f"/{stage}/@connections/x",
                   {"Host": evil, "Authorization": SIGV4_SHAPED}, b"hi")[0] == 403
    # Loopback names and IP literals are fine.
    for host in (f"127.0.0.1:{port(gateway)}", f"localhost:{port(gateway)}", "localhost"):
        assert request(gateway, "GET", "/_gateway/health", {"Host": host})[0] == 200
    assert "refused GET /_gateway/health with 403" in gateway.log()


# ----- Origin on the WebSocket upgrade ------------------------------------------------------------


def test_foreign_origin_cannot_open_a_websocket(gateway: Gateway) -> None:
    async def status(origin: str) -> int:
        with pytest.raises(InvalidStatus) as info:
            async with connect(gateway.ws_url, origin=Origin(origin), open_timeout=30):
                pass
        return int(info.value.response.status_code)

    assert run(status("http://evil.example")) == 403
    assert run(status(f"http://evil.example:{port(gateway)}")) == 403  # same port, other host
    assert run(status("http://127.0.0.1:1")) == 403  # loopback, but another port (site)
    assert run(status("null")) == 403
    # ... and the refusal comes before $connect: no connect record for them.
    assert "refused GET /api with 403: Origin 'http://evil.example'" in gateway.log()


def test_own_configured_and_absent_origins_open_a_websocket(gateway: Gateway) -> None:
    async def opens(origin: str | None) -> str:
        async with connect(gateway.ws_url, origin=Origin(origin) if origin else None,
                           open_timeout=30) as ws:
            await ws.send("hello")
            return str(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))

    assert run(opens(None)) == "hello"  # websockets, CLIs: no Origin
    assert run(opens(gateway.gateway_url)) == "hello"  # the demo page's own origin
    assert run(opens(CONFIGURED_ORIGIN)) == "hello"  # --allowed-origin


# ----- @connections: SigV4-shaped requests only --------------------------------------------


def test_unsigned_management_calls_are_refused_and_change_nothing(gateway: Gateway) -> None:
    stage = gateway.ws_url.rsplit("/", 1)[1]

    async def scenario() -> None:
        async with connect(gateway.ws_url) as ws:
            cid = await connection_id(ws)
            path = f"/{stage}/@connections/{cid}"
            host = {"Host": f"127.0.0.1:{port(gateway)}"}
            # A cross-site form post (text/plain), a DELETE, a GET: no Authorization.
            attempts = [
                ("POST", path, {**host, "Content-Type": "text/plain"}, b"forged"),
                ("POST", f"/{stage}/%40connections/{cid}", host, b"forged"),
                ("DELETE", path, host, None),
                ("GET", path, host, None),
                # Something shaped like a signature but from a browser (Origin): refused too.
                ("POST", path, {**host, "Authorization": SIGV4_SHAPED,
                                "Origin": "http://evil.example"}, b"forged"),
                # Not the SigV4 shape.
                ("POST", path, {**host, "Authorization": "Bearer abc"}, b"forged"),
            ]
            for method, target, headers, body in attempts:
                status, payload = await asyncio.to_thread(request, gateway, method, target,
                                                          headers, body)
                assert status == 403, (method, headers, payload)
            # Nothing was delivered and the connection is still open: the next frame is ours.
            client = gateway.management_client()
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"signed")
            assert await asyncio.wait_for(ws.recv(), RECV_TIMEOUT) == "signed"
            info = await asyncio.to_thread(client.get_connection, ConnectionId=cid)
            assert info["Identity"]["SourceIp"] == "127.0.0.1"

    run(scenario())
    stats = json.loads(request(gateway, "GET", "/_gateway/stats")[1])
    assert stats["management_by_status"].get("403", 0) >= 6


def test_boto3_delete_still_closes_the_connection(gateway: Gateway) -> None:
    async def scenario() -> None:
        async with connect(gateway.ws_url) as ws:
            cid = await connection_id(ws)
            await asyncio.to_thread(gateway.management_client().delete_connection,
                                    ConnectionId=cid)
            await asyncio.wait_for(ws.wait_closed(), RECV_TIMEOUT)

    run(scenario())


# ----- control endpoints: JSON and same-origin only --------------------------------------------


def test_schedule_trigger_needs_a_same_origin_json_request(gateway: Gateway) -> None:
    host = {"Host": f"127.0.0.1:{port(gateway)}"}
    # What a cross-site form can send: no JSON content type.
    for content_type in (None, "text/plain", "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=x"):
        headers = dict(host) if content_type is None else {**host, "Content-Type": content_type}
        assert request(gateway, "POST", "/_gateway/schedule/tick", headers, b"{}")[0] == 415
    # JSON from a foreign page (it would need a CORS preflight, which is never approved).
    status, _ = request(gateway, "POST", "/_gateway/schedule/tick",
                        {**host, "Content-Type": "application/json",
                         "Origin": "http://evil.example"}, b"{}")
    assert status == 403
    status, _ = request(gateway, "OPTIONS", "/_gateway/schedule/tick",
                        {**host, "Origin": "http://evil.example",
                         "Access-Control-Request-Method": "POST"})
    assert status in (403, 405)
    # curl, tests and the own origin: fine.
    for extra in ({}, {"Origin": gateway.gateway_url}):
        status, body = request(gateway, "POST", "/_gateway/schedule/tick",
                               {**host, "Content-Type": "application/json", **extra}, b"{}")
        assert status == 200 and json.loads(body)["result"] == {"ticked": True}


def test_live_view_is_read_only_and_not_readable_cross_origin(gateway: Gateway) -> None:
    # No CORS headers: a foreign page's fetch cannot read the stats (same-origin policy).
    status, body = request(gateway, "GET", "/_gateway/stats",
                           {"Host": f"127.0.0.1:{port(gateway)}"})
    assert status == 200 and "connections" in json.loads(body)
    conn = http.client.HTTPConnection("127.0.0.1", port(gateway), timeout=15)
    try:
        conn.request("GET", "/_gateway/stats", headers={"Origin": gateway.gateway_url})
        response = conn.getresponse()
        response.read()
        assert response.getheader("Access-Control-Allow-Origin") is None
    finally:
        conn.close()
    # A foreign Origin is refused outright.
    assert request(gateway, "GET", "/_gateway/stats",
                   {"Host": f"127.0.0.1:{port(gateway)}", "Origin": "http://evil.example"}
                   )[0] == 403


# ----- the rules themselves ----------------------------------------------------------------------


def test_guard_rules() -> None:
    guard = RequestGuard("devbox.lan", frozenset({"https://app.example"}))
    for host in ("127.0.0.1:8001", "localhost", "LOCALHOST:1", "app.localhost:8001",
                 "[::1]:8001", "10.0.0.5:8001", "devbox.lan:8001", None, ""):
        assert guard.host_allowed(host), host
    for host in ("evil.example", "127.0.0.1.evil.example:8001", "localhost.evil.example"):
        assert not guard.host_allowed(host), host
    assert guard.origin_allowed(None, "127.0.0.1:8001")
    assert guard.origin_allowed("http://127.0.0.1:8001", "127.0.0.1:8001")
    assert guard.origin_allowed("https://APP.example/", "127.0.0.1:8001")
    assert not guard.origin_allowed("http://127.0.0.1:8002", "127.0.0.1:8001")
    assert not guard.origin_allowed("http://localhost:8001", "127.0.0.1:8001")
    assert not guard.origin_allowed("file://", "127.0.0.1:8001")
    ok = {"Host": "127.0.0.1:1", "Authorization": SIGV4_SHAPED}
    assert guard.check("connections", "POST", ok) is None
    refused = guard.check("connections", "POST", {"Host": "127.0.0.1:1"})
    assert refused is not None and refused.status == 403
    assert refused.error_type == "MissingAuthenticationTokenException"


def test_guard_refusal_is_logged_without_query_values(gateway: Gateway) -> None:
    status, _ = request(gateway, "GET", "/api?token=secret-value-123",
                        upgrade_headers(f"127.0.0.1:{port(gateway)}", "http://evil.example"))
    assert status == 403
    wait_until(lambda: "refused GET /api" in gateway.log(), 10, "the refusal line")
    assert "secret-value-123" not in gateway.log()
