"""The refusals through the real local gateway, with a real WebSocket client: the upgrade itself
must fail with the right HTTP status; the accepted connection carries the user.  Also the dev
token command and the gateway's log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from localgateway.testing import Gateway, running_gateway
from tests.conftest import ROOT

from .conftest import OTHER_SECRET, SECRET, claims, forge, hs256

ALLOWED = "http://allowed.example"
RECV_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("secure-gateway")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WS_") and k != "AWS_LAMBDA_FUNCTION_NAME"}
    env.update({
        "WS_AUTH_SECRET": SECRET,
        "WS_ALLOWED_ORIGINS": ALLOWED,
        "CONNECTIONS_STORE": f"sqlite:///{tmp}/c.db",
    })
    # The gateway's own Origin rule (issue 15 item 4) lets the configured page origin through;
    # the app's WS_ALLOWED_ORIGINS then decides, as on AWS.
    with running_gateway(str(ROOT), extra_args=["--stage", "test", "--allowed-origin", ALLOWED],
                         env=env) as gw:
        yield gw


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def refused_status(gateway: Gateway, token: str | None, origin: str | None = ALLOWED) -> int:
    url = gateway.ws_url + ("" if token is None else f"?token={token}")

    async def scenario() -> int:
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, origin=Origin(origin) if origin else None,
                               open_timeout=30):
                pass
        return int(info.value.response.status_code)

    return int(run(scenario()))


def test_no_token_upgrade_fails_with_401(gateway: Gateway) -> None:
    assert refused_status(gateway, None) == 401


@pytest.mark.parametrize(
    "make_token",
    [
        lambda: "garbage",
        lambda: forge({"alg": "none", "typ": "JWT"}, claims(aud=None, iss=None), None),
        lambda: hs256(claims(), OTHER_SECRET),
        lambda: hs256(claims(ttl=-300)),
        lambda: hs256(claims(nbf=claims()["iat"] + 300)),
    ],
    ids=["garbage", "alg-none", "wrong-secret", "expired", "not-yet-valid"],
)
def test_bad_tokens_upgrade_fails_with_403(gateway: Gateway, make_token: Any) -> None:
    assert refused_status(gateway, make_token()) == 403


def test_disallowed_origin_upgrade_fails_with_403(gateway: Gateway) -> None:
    token = hs256(claims())
    assert refused_status(gateway, token, origin="http://evil.example") == 403
    assert refused_status(gateway, token, origin=None) == 403


def mint_with_cli(sub: str, secret: str = SECRET, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WS_AUTH_SECRET": secret}
    return subprocess.run([sys.executable, "-m", "localgateway.token", "--sub", sub, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_accepted_connection_is_welcomed_and_whoami_shows_the_user(gateway: Gateway) -> None:
    minted = mint_with_cli("alice")
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()

    async def scenario() -> tuple[Any, Any]:
        async with connect(f"{gateway.ws_url}?token={token}", origin=Origin(ALLOWED),
                           open_timeout=30) as ws:
            await ws.send(json.dumps({"action": "whoami", "id": "w"}))
            welcome = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
            identity = json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
            return welcome, identity

    welcome, identity = run(scenario())
    assert welcome["type"] == "welcome" and welcome["data"]["connectionId"]
    assert identity["type"] == "identity" and identity["id"] == "w"
    assert identity["data"]["user"] == "alice"
    assert identity["data"]["connectionId"] == welcome["data"]["connectionId"]

    # Nothing of any token reached the gateway's log (its own lines and the app's).
    log = gateway.log()
    assert "refused with 401" in log and "refused with 403" in log
    assert token not in log and token.split(".")[2] not in log
    assert SECRET not in log


def test_rest_request_lines_are_redacted(gateway: Gateway) -> None:
    token = hs256(claims())
    with contextlib.suppress(OSError):  # 403/404: only the log line matters
        urllib.request.urlopen(f"{gateway.rest_url}/nowhere?token={token}", timeout=15)
    gateway.wait_for_log("/nowhere?token=")
    assert token not in gateway.log()


def test_token_command(tmp_path: Path) -> None:
    minted = mint_with_cli("bob", SECRET, "--ttl", "120", "--aud", "app", "--iss", "https://i")
    assert minted.returncode == 0, minted.stderr
    decoded = jwt.decode(minted.stdout.strip(), SECRET, algorithms=["HS256"], audience="app",
                         issuer="https://i")
    assert decoded["sub"] == "bob" and decoded["exp"] - decoded["iat"] == 120
    short = mint_with_cli("bob", "too-short")
    assert short.returncode == 2 and "WS_AUTH_SECRET" in short.stderr
    assert short.stdout == ""


def test_gateway_binds_loopback_by_default_and_warns_otherwise() -> None:
    from localgateway.__main__ import build_parser, exposure_warning

    assert build_parser().parse_args([]).host == "127.0.0.1"
    for host in ("127.0.0.1", "localhost", "::1"):
        assert exposure_warning(host) is None
    for host in ("0.0.0.0", "::", "192.168.1.20"):
        warning = exposure_warning(host)
        assert warning is not None and "WARNING" in warning and host in warning


# ----- issue 15 item 4 on the REST port: IAM routes and rebinding ---------------------------------


def rest_post(gateway: Gateway, path: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"{gateway.rest_url}{path}", data=body, method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_iam_push_route_needs_a_sigv4_shaped_request(gateway: Gateway) -> None:
    from localgateway.testing import SIGV4_SHAPED

    body = json.dumps({"data": "pushed"}).encode()
    # A cross-site form (text/plain), or JSON without a signature: API Gateway's 403.
    assert rest_post(gateway, "/rooms/lobby/messages", body,
                     {"Content-Type": "text/plain"}) == 403
    assert rest_post(gateway, "/rooms/lobby/messages", body,
                     {"Content-Type": "application/json", "Authorization": "Bearer x"}) == 403
    gateway.wait_for_log("Missing Authentication Token (IAMAuthorizer)")
    # Signed the way boto3/awscurl sign: it reaches the app.
    assert rest_post(gateway, "/rooms/lobby/messages", body,
                     {"Content-Type": "application/json", "Authorization": SIGV4_SHAPED}) == 200


def test_rest_port_refuses_a_rebinding_host(gateway: Gateway) -> None:
    import http.client

    port = int(gateway.rest_url.rsplit(":", 1)[1])

    def get(host: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            conn.putrequest("GET", "/nowhere", skip_host=True)
            conn.putheader("Host", host)
            conn.endheaders()
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    status, body = get(f"rebind.evil.example:{port}")
    assert status == 403 and b"is not allowed" in body
    # A loopback Host reaches chalice's LocalGateway (API Gateway's 403 for an unknown route).
    status, body = get(f"localhost:{port}")
    assert b"is not allowed" not in body and b"Missing Authentication Token" in body
