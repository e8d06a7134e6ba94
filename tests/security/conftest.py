"""Security test kit: keys, honest and forged tokens, a real JWKS server, an auth-on harness."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from chalice.test import Client
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import ROOT, AppHarness
from tests.support.events import connect_event, new_connection_id
from tests.support.http import start_server, stop_server
from tests.support.management_api import FakeManagementApi

SECRET = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz"  # >= 32 bytes
OTHER_SECRET = "another-secret-0123456789abcdefghijklmnopqrstu"
AUDIENCE = "ws-rooms-test"
ISSUER = "https://issuer.test.example"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(sub: str = "alice", *, ttl: int = 600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + ttl, "aud": AUDIENCE, "iss": ISSUER, **extra}


def hs256(payload: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def forge(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWS assembled by hand (what an attacker does): HMAC-SHA256 with ``key``, or no
    signature at all when ``key`` is None."""
    signing_input = (
        b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(signature)


@dataclass
class SigningKey:
    """An asymmetric key pair with a ``kid``, as an IdP would hold it."""

    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str) -> SigningKey:
        return cls(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))

    @classmethod
    def ec(cls, kid: str) -> SigningKey:
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def sign(self, payload: dict[str, Any], **header: Any) -> str:
        return jwt.encode(payload, self.private, algorithm=self.alg,
                          headers={"kid": self.kid, **header})

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        data: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        data.update({"kid": self.kid, "use": "sig", "alg": self.alg})
        return data


@dataclass
class JwksServer:
    """A real HTTP server on 127.0.0.1 serving a JWKS; change ``keys`` to rotate."""

    keys: list[SigningKey] = field(default_factory=list)
    requests: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"

    def start(self) -> JwksServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = json.dumps({"keys": [k.jwk() for k in owner.keys]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = start_server(Handler)
        return self

    def stop(self) -> None:
        stop_server(self._server)


@pytest.fixture(scope="session")
def rsa_key() -> SigningKey:
    return SigningKey.rsa("rsa-1")


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return SigningKey.ec("ec-1")


@pytest.fixture
def jwks_server(rsa_key: SigningKey, ec_key: SigningKey) -> Iterator[JwksServer]:
    server = JwksServer(keys=[rsa_key, ec_key]).start()
    yield server
    server.stop()


class AuthHarness(AppHarness):
    """:class:`AppHarness` whose ``$connect`` may be refused: returns the handler's response."""

    def try_connect(
        self, token: str | None = None, *, origin: str | None = None,
        query: dict[str, str] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        connection_id = new_connection_id()
        self.api.open(connection_id)
        params = dict(query or {})
        if token is not None:
            params["token"] = token
        headers = {"Origin": origin} if origin is not None else None
        response = self.invoke(
            "connect", connect_event(connection_id, headers=headers, query=params or None)
        )
        return connection_id, response

    def status(self, token: str | None = None, **kwargs: Any) -> int:
        connection_id, response = self.try_connect(token, **kwargs)
        status = int(response["statusCode"])
        if status != 200:
            # Nothing is registered for a refused connection.
            assert self.store.get(connection_id) is None
        return status

    def connect_as(self, token: str, **kwargs: Any) -> str:
        connection_id, response = self.try_connect(token, **kwargs)
        assert response == {"statusCode": 200}, response
        return connection_id


@pytest.fixture
def security_env(
    aws_env: None, management_api: FakeManagementApi, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> pytest.MonkeyPatch:
    monkeypatch.setenv("CONNECTIONS_STORE", f"sqlite:///{tmp_path}/connections.db")
    monkeypatch.setenv("WS_MANAGEMENT_ENDPOINT", management_api.endpoint)
    for name in ("WS_AUTH_SECRET", "WS_AUTH_JWKS_URL", "WS_AUTH_AUDIENCE", "WS_AUTH_ISSUER",
                 "WS_ALLOWED_ORIGINS", "WS_RATE_LIMIT", "WS_RATE_WINDOW_SECONDS",
                 "WS_MAX_ROOMS_PER_CONNECTION", "WS_MAX_DATA_BYTES", "WS_AUTH_LEEWAY_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _harness(api: FakeManagementApi) -> Iterator[AuthHarness]:
    from app import app

    with Client(app, stage_name="test", project_dir=str(ROOT)) as client:
        yield AuthHarness(client, api)


@pytest.fixture
def secured(security_env: pytest.MonkeyPatch, management_api: FakeManagementApi
            ) -> Iterator[AuthHarness]:
    """HS256 with SECRET, audience and issuer checked."""
    security_env.setenv("WS_AUTH_SECRET", SECRET)
    security_env.setenv("WS_AUTH_AUDIENCE", AUDIENCE)
    security_env.setenv("WS_AUTH_ISSUER", ISSUER)
    yield from _harness(management_api)


@pytest.fixture
def jwks_secured(
    security_env: pytest.MonkeyPatch, management_api: FakeManagementApi, jwks_server: JwksServer
) -> Iterator[AuthHarness]:
    """RS256/ES256 against the local JWKS server, audience and issuer checked."""
    security_env.setenv("WS_AUTH_JWKS_URL", jwks_server.url)
    security_env.setenv("WS_AUTH_AUDIENCE", AUDIENCE)
    security_env.setenv("WS_AUTH_ISSUER", ISSUER)
    yield from _harness(management_api)


@pytest.fixture
def open_app(security_env: pytest.MonkeyPatch, management_api: FakeManagementApi
             ) -> Iterator[AuthHarness]:
    """Auth off (the local default); limits are set per test through ``security_env``."""
    yield from _harness(management_api)
