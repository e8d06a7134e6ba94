"""End-to-end: the gateway as a subprocess, a real ``websockets`` client and boto3."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from localgateway.testing import SIGV4_SHAPED, Gateway, wait_until

from .conftest import ECHO, POST_IN_CONNECT

AWS_EVENTS = Path(__file__).resolve().parents[1] / "data" / "aws-events"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RECV_TIMEOUT = 15.0
GONE_ID = "AAAAAAAAAAAAAAAAAAAA"
#: Control endpoints take JSON requests only (issue 15 item 4).
JSON = {"Content-Type": "application/json"}

StartWith = Callable[..., AbstractContextManager[Gateway]]


def mgmt(gateway: Gateway) -> Any:
    return gateway.management_client()


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def recv(ws: ClientConnection) -> Any:
    return await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)


async def connection_id(ws: ClientConnection) -> str:
    await ws.send("event")
    return str(json.loads(await recv(ws))["requestContext"]["connectionId"])


async def wait_closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    with pytest.raises(ConnectionClosed):
        while True:
            await recv(ws)
    await asyncio.wait_for(ws.wait_closed(), RECV_TIMEOUT)
    return ws.close_code, ws.close_reason


def records(path: Path, kind: str, connection_id: str | None = None) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        item = json.loads(line)
        event = item["event"]
        cid = event.get("requestContext", {}).get("connectionId")
        if item["kind"] == kind and (connection_id is None or cid == connection_id):
            found.append(event)
    return found


def wait_record(path: Path, kind: str, connection_id: str) -> dict[str, Any]:
    found = wait_until(lambda: records(path, kind, connection_id), 15, f"{kind} record")
    return found[0]


def aws_keys(name: str) -> set[str]:
    return set(json.loads((AWS_EVENTS / f"{name}.json").read_text())["requestContext"])


# ----- basics -----------------------------------------------------------------------------------


def test_rest_routes_served_with_stage_config(echo_gateway: Gateway) -> None:
    with urllib.request.urlopen(echo_gateway.rest_url + "/", timeout=10) as response:
        assert json.loads(response.read()) == {"hello": "echo", "stage_var": "from-stage-config"}
    log = echo_gateway.log()
    assert echo_gateway.ws_url in log and echo_gateway.management_endpoint in log


def test_echo_round_trip(echo_gateway: Gateway) -> None:
    async def scenario() -> None:
        async with connect(echo_gateway.ws_url) as ws:
            await ws.send("hello")
            assert await recv(ws) == "hello"

    run(scenario())


def test_message_event_is_faithful(echo_gateway: Gateway) -> None:
    async def scenario() -> dict[str, Any]:
        async with connect(echo_gateway.ws_url) as ws:
            await ws.send("event")
            return dict(json.loads(await recv(ws)))

    event = run(scenario())
    assert set(event) == {"requestContext", "body", "isBase64Encoded"}
    ctx = event["requestContext"]
    assert set(ctx) == aws_keys("message")
    assert ctx["routeKey"] == "$default" and ctx["eventType"] == "MESSAGE"
    assert ctx["stage"] == "api"
    assert ctx["identity"]["sourceIp"] == "127.0.0.1"
    assert ctx["domainName"] == echo_gateway.management_endpoint.split("/")[2]
    assert re.match(r"^\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000$", ctx["requestTime"])
    assert event["body"] == "event" and event["isBase64Encoded"] is False


def test_binary_frames_arrive_base64(echo_gateway: Gateway) -> None:
    async def scenario() -> Any:
        async with connect(echo_gateway.ws_url) as ws:
            await ws.send(b"\x00\x01binary\xff")
            return await recv(ws)

    assert base64.b64decode(run(scenario())) == b"\x00\x01binary\xff"


def test_environment_seen_by_handlers(echo_gateway: Gateway) -> None:
    async def scenario() -> dict[str, Any]:
        async with connect(echo_gateway.ws_url) as ws:
            await ws.send("env")
            return dict(json.loads(await recv(ws)))

    env = run(scenario())
    assert env["WS_MANAGEMENT_ENDPOINT"] == echo_gateway.management_endpoint
    assert env["AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"] == echo_gateway.management_endpoint
    # --env-file wins over the stage's value ("dynamodb://should-be-overridden-locally").
    assert env["CONNECTIONS_STORE"] == "sqlite:///.local/connections.db"
    assert env["ECHO_ENV_FILE_VAR"] == "from-env-file"
    assert env["FOLLOWUP_QUEUE_URL"].startswith(env["AWS_ENDPOINT_URL_SQS"])
    assert env["FOLLOWUP_QUEUE_URL"].endswith("/echo-followup")
    assert env["ECHO_STAGE_VAR"] == "from-stage-config"


# ----- management API ---------------------------------------------------------------------------


def test_gone_for_unknown_connection(echo_gateway: Gateway) -> None:
    client = mgmt(echo_gateway)
    with pytest.raises(client.exceptions.GoneException):
        client.post_to_connection(ConnectionId=GONE_ID, Data=b"x")
    with pytest.raises(client.exceptions.GoneException):
        client.get_connection(ConnectionId=GONE_ID)
    with pytest.raises(client.exceptions.GoneException):
        client.delete_connection(ConnectionId=GONE_ID)


def test_get_connection_fields(echo_gateway: Gateway) -> None:
    async def scenario() -> None:
        async with connect(echo_gateway.ws_url, user_agent_header="gateway-test/1.0") as ws:
            cid = await connection_id(ws)
            url = f"{echo_gateway.management_endpoint}/%40connections/{cid}"
            signed = urllib.request.Request(url, headers={"Authorization": SIGV4_SHAPED})
            raw = await asyncio.to_thread(urllib.request.urlopen, signed, timeout=10)
            info = json.loads(raw.read())
            assert set(info) == {"connectedAt", "identity", "lastActiveAt"}
            assert info["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "gateway-test/1.0"}
            assert ISO.match(info["connectedAt"]) and ISO.match(info["lastActiveAt"])
            parsed = await asyncio.to_thread(mgmt(echo_gateway).get_connection, ConnectionId=cid)
            assert parsed["Identity"]["SourceIp"] == "127.0.0.1"
            # The handler itself can call GET on its own connection.
            await ws.send("info")
            assert json.loads(await recv(ws))["Identity"]["UserAgent"] == "gateway-test/1.0"

    run(scenario())


def test_delete_closes_socket_and_fires_disconnect(echo_gateway: Gateway,
                                                   echo_record_file: Path) -> None:
    async def scenario() -> None:
        async with connect(echo_gateway.ws_url) as ws:
            cid = await connection_id(ws)
            client = mgmt(echo_gateway)
            response = await asyncio.to_thread(client.delete_connection, ConnectionId=cid)
            assert response["ResponseMetadata"]["HTTPStatusCode"] == 204
            await wait_closed(ws)
            event = await asyncio.to_thread(wait_record, echo_record_file, "disconnect", cid)
            assert event["requestContext"]["eventType"] == "DISCONNECT"
            with pytest.raises(client.exceptions.GoneException):
                await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"x")

    run(scenario())


def test_post_over_128_kb_is_payload_too_large(echo_gateway: Gateway) -> None:
    async def scenario() -> None:
        async with connect(echo_gateway.ws_url) as ws:
            cid = await connection_id(ws)
            client = mgmt(echo_gateway)
            with pytest.raises(client.exceptions.PayloadTooLargeException):
                await asyncio.to_thread(
                    client.post_to_connection, ConnectionId=cid, Data=b"x" * 131073
                )
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid,
                                    Data=b"y" * 131072)
            assert await recv(ws) == "y" * 131072

    run(scenario())


def test_management_api_answers_while_handler_blocks(echo_gateway: Gateway) -> None:
    async def scenario() -> None:
        async with connect(echo_gateway.ws_url) as ws:
            cid = await connection_id(ws)
            await ws.send("sleep:3")
            await ws.send("after")
            # The handler is blocked; the management API still answers, and frames queue up.
            info = await asyncio.to_thread(mgmt(echo_gateway).get_connection, ConnectionId=cid)
            assert "ConnectedAt" in info
            await asyncio.to_thread(mgmt(echo_gateway).post_to_connection,
                                    ConnectionId=cid, Data=b"meanwhile")
            assert await recv(ws) == "meanwhile"
            assert await recv(ws) == "slept"
            assert await recv(ws) == "after"

    run(scenario())


def test_frames_of_one_connection_are_handled_in_order(echo_gateway: Gateway) -> None:
    async def scenario() -> None:
        async with connect(echo_gateway.ws_url) as ws:
            for i in range(10):
                await ws.send(f"m{i}")
            assert [await recv(ws) for _ in range(10)] == [f"m{i}" for i in range(10)]

    run(scenario())


# ----- limits and errors ------------------------------------------------------------------------


def test_oversize_frame_closes_with_1009(echo_gateway: Gateway) -> None:
    async def scenario(size: int) -> int | None:
        async with connect(echo_gateway.ws_url, max_size=None) as ws:
            await ws.send("x" * size)
            code, _ = await wait_closed(ws)
            return code

    assert run(scenario(32769)) == 1009
    assert run(scenario(131073)) == 1009


def test_frame_at_the_limit_is_accepted(echo_gateway: Gateway) -> None:
    async def scenario() -> None:
        async with connect(echo_gateway.ws_url) as ws:
            await ws.send("z" * 32768)
            assert await recv(ws) == "z" * 32768

    run(scenario())


def test_handler_exception_sends_internal_server_error(echo_gateway: Gateway) -> None:
    async def scenario() -> dict[str, Any]:
        async with connect(echo_gateway.ws_url) as ws:
            cid = await connection_id(ws)
            await ws.send("boom")
            frame = dict(json.loads(await recv(ws)))
            assert frame["connectionId"] == cid
            await ws.send("still-open")
            assert await recv(ws) == "still-open"
            return frame

    frame = run(scenario())
    assert set(frame) == {"message", "connectionId", "requestId"}
    assert frame["message"] == "Internal server error"
    log = echo_gateway.wait_for_log("boom requested by the client")
    assert "Traceback" in log


def test_connect_refusal_carries_handler_status(echo_gateway: Gateway) -> None:
    async def scenario() -> int:
        with pytest.raises(InvalidStatus) as info:
            async with connect(echo_gateway.ws_url + "?deny=1"):
                pass
        return int(info.value.response.status_code)

    assert run(scenario()) == 401


def test_headers_and_query_reach_connect(echo_gateway: Gateway, echo_record_file: Path) -> None:
    async def scenario() -> str:
        url = echo_gateway.ws_url + "?room=blue&token=abc"
        async with connect(url, additional_headers={"X-Test-Header": "yes"}) as ws:
            return await connection_id(ws)

    cid = run(scenario())
    event = wait_record(echo_record_file, "connect", cid)
    assert event["queryStringParameters"] == {"room": "blue", "token": "abc"}
    assert event["headers"]["X-Test-Header"] == "yes"
    assert event["multiValueHeaders"]["X-Test-Header"] == ["yes"]
    assert "Sec-WebSocket-Key" in event["headers"]
    ctx = event["requestContext"]
    assert set(ctx) == aws_keys("connect")
    assert ctx["routeKey"] == "$connect" and ctx["connectionId"] == cid


def test_client_close_fires_disconnect(echo_gateway: Gateway, echo_record_file: Path) -> None:
    async def scenario() -> str:
        async with connect(echo_gateway.ws_url) as ws:
            cid = await connection_id(ws)
        return cid

    cid = run(scenario())
    event = wait_record(echo_record_file, "disconnect", cid)
    ctx = event["requestContext"]
    assert set(ctx) == aws_keys("disconnect")
    assert set(event) == set(json.loads((AWS_EVENTS / "disconnect.json").read_text()))
    assert ctx["disconnectStatusCode"] == 1000


def test_post_in_connect_is_refused_with_502(start_gateway: Callable[..., Any]) -> None:
    with start_gateway(str(POST_IN_CONNECT)) as gateway:

        async def scenario() -> int:
            with pytest.raises(InvalidStatus) as info:
                async with connect(gateway.ws_url):
                    pass
            return int(info.value.response.status_code)

        assert run(scenario()) == 502
        log = gateway.wait_for_log("GoneException")
        assert re.search(r"@connections POST \S+ -> 410 GoneException", log)


# ----- SQS and schedules ------------------------------------------------------------------------


def test_sqs_followup_after_delay(echo_gateway: Gateway) -> None:
    async def scenario() -> dict[str, Any]:
        async with connect(echo_gateway.ws_url) as ws:
            await ws.send("delay:1")
            assert await recv(ws) == "queued"
            frame = await recv(ws)
            assert frame.startswith("followup:")
            return dict(json.loads(frame[len("followup:"):]))

    event = run(scenario())
    (record,) = event["Records"]
    assert record["eventSource"] == "aws:sqs"
    assert record["eventSourceARN"] == "arn:aws:sqs:us-east-1:123456789012:echo-followup"
    assert {"messageId", "receiptHandle", "body", "attributes", "messageAttributes",
            "md5OfBody", "awsRegion"} <= set(record)


def test_schedule_trigger(echo_gateway: Gateway, echo_record_file: Path) -> None:
    request = urllib.request.Request(echo_gateway.gateway_url + "/_gateway/schedule/tick",
                                     method="POST", headers=JSON)
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = json.loads(response.read())
    assert payload["result"] == {"ticked": True}
    assert payload["event"]["detail-type"] == "Scheduled Event"
    assert any(r["id"] == payload["event"]["id"] for r in records(echo_record_file, "schedule"))
    missing = urllib.request.Request(echo_gateway.gateway_url + "/_gateway/schedule/nope",
                                     method="POST", headers=JSON)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(missing, timeout=10)
    assert info.value.code == 404


def test_no_static_directory_means_404(echo_gateway: Gateway) -> None:
    for path in ("/", "/static/client.js"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(echo_gateway.gateway_url + path, timeout=10)
        assert info.value.code == 404
    assert "Demo page" not in echo_gateway.log()


def test_static_directory_is_served(gateway_with: StartWith, tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<html>hello</html>")
    (site / "lib.js").write_text("export const x = 1;")
    (tmp_path / "secret.txt").write_text("outside")
    with gateway_with("--static", str(site)) as gateway:
        with urllib.request.urlopen(gateway.gateway_url + "/", timeout=10) as response:
            assert response.read() == b"<html>hello</html>"
        with urllib.request.urlopen(gateway.gateway_url + "/static/lib.js", timeout=10) as js:
            assert js.headers["Content-Type"].startswith("application/javascript")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(gateway.gateway_url + "/static/..%2Fsecret.txt", timeout=10)
        assert info.value.code == 404
        assert "Demo page:" in gateway.log()


# ----- dedicated gateways (timeouts and chaos) ----------------------------------------------------


def test_idle_timeout_closes_with_1001_and_fires_disconnect(gateway_with: StartWith,
                                                            tmp_path: Path) -> None:
    with gateway_with("--idle-timeout", "1") as gateway:

        async def scenario() -> tuple[str, int | None]:
            async with connect(gateway.ws_url) as ws:
                cid = await connection_id(ws)
                code, _ = await wait_closed(ws)
                return cid, code

        cid, code = run(scenario())
        assert code == 1001
        event = wait_record(tmp_path / "records.jsonl", "disconnect", cid)
        assert event["requestContext"]["disconnectStatusCode"] == 1001


def test_chaos_throttle_drop_disconnect_and_hard_timeout(gateway_with: StartWith,
                                                         tmp_path: Path) -> None:
    args = ("--throttle-rate", "1", "--drop-disconnect-rate", "1", "--hard-timeout", "2")
    with gateway_with(*args) as gateway:
        client = mgmt(gateway)
        with pytest.raises(client.exceptions.LimitExceededException):
            client.get_connection(ConnectionId=GONE_ID)
        # The live view counts the throttle (issue 14 part 5).
        with urllib.request.urlopen(f"{gateway.gateway_url}/_gateway/stats",
                                    timeout=10) as response:
            stats = json.loads(response.read())
        assert {"method": "GET", "status": 429, "count": 1} in stats["management"]

        async def scenario() -> tuple[str, int | None]:
            async with connect(gateway.ws_url) as ws:
                connect_event = await asyncio.to_thread(
                    wait_until, lambda: records(tmp_path / "records.jsonl", "connect"), 15
                )
                cid = str(connect_event[0]["requestContext"]["connectionId"])
                code, _ = await wait_closed(ws)  # maximum duration (--hard-timeout 2)
                return cid, code

        cid, code = run(scenario())
        assert code == 1001
        gateway.wait_for_log(f"dropping $disconnect for {cid}")
        assert records(tmp_path / "records.jsonl", "disconnect") == []


def test_code_change_reloads_and_keeps_connections(tmp_path: Path,
                                                   start_gateway: Callable[..., Any]) -> None:
    project = tmp_path / "echo"
    shutil.copytree(ECHO, project, ignore=shutil.ignore_patterns(".local", "__pycache__"))
    with start_gateway(str(project), reload=True) as gateway:

        async def scenario() -> None:
            async with connect(gateway.ws_url) as ws:
                await ws.send("hi")
                assert await recv(ws) == "hi"
                app_py = project / "app.py"
                source = app_py.read_text().replace(
                    "        _post(cid, body)\n", "        _post(cid, 'v2:' + body)\n"
                )
                app_py.write_text(source)
                await asyncio.to_thread(gateway.wait_for_log, "reloaded app", 20)
                await ws.send("hi")
                assert await recv(ws) == "v2:hi"

        run(scenario())
