"""A hostile JWKS server on 127.0.0.1: every bad answer is a fetch failure, never an outage.

Each case was reproduced against the previous fetcher first (issue 15, item 1): HTML with 200
raised JSONDecodeError out of ``$connect``, ``{"keys": []}`` refused every token and dropped
the cached keys, a slow drip held a ``$connect`` for as long as the server liked (the timeout was
per read), a huge document was read whole, and the fetch ran under the lock.

No test asserts elapsed time: lifespans, cooldowns and backoff run on an injected clock; the
deadline is proven by a server that drips faster than any per-read timeout would notice and
records whether the client abandoned it before it finished.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from chalicelib.auth import (
    AuthError,
    JwksFetchError,
    JwksKeys,
    JwksUnavailableError,
    TokenVerifier,
    download,
)
from tests.support.http import start_server, stop_server

from .conftest import SigningKey, claims

#: Bound on every wait for a server-side observation (a liveness bound, not a threshold).
WAIT = 10.0


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HostileJwks:
    """A JWKS server whose answer is chosen by ``mode``; records what each exchange did."""

    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self.mode = "good"
        self.requests = 0
        self.request_seen = threading.Event()  # a request arrived (for "stall")
        self.release = threading.Event()  # lets a "stall" answer
        self.abandoned = threading.Event()  # the client went away mid-answer
        self.completed = threading.Event()  # a drip or stream reached its end
        self.sent = 0  # body bytes written in the last streamed answer
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"

    def good_body(self) -> bytes:
        return json.dumps({"keys": [key.jwk() for key in self.keys]}).encode()

    def start(self) -> HostileJwks:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                owner.request_seen.set()
                try:
                    getattr(self, "answer_" + owner.mode)()
                except (BrokenPipeError, ConnectionResetError):
                    owner.abandoned.set()

            def send(self, status: int, body: bytes, content_type: str = "application/json",
                     length: int | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                self.wfile.write(body)

            def answer_good(self) -> None:
                self.send(200, owner.good_body())

            def answer_html(self) -> None:
                self.send(200, b"<!doctype html><html><body>Sign in</body></html>", "text/html")

            def answer_empty(self) -> None:
                self.send(200, b'{"keys": []}')

            def answer_bad_json(self) -> None:
                self.send(200, b'{"keys": [{"kty": "RSA",')

            def answer_not_object(self) -> None:
                self.send(200, b'[{"keys": []}]')

            def answer_enc_only(self) -> None:
                keys = [dict(key.jwk(), use="enc") for key in owner.keys]
                self.send(200, json.dumps({"keys": keys}).encode())

            def answer_nested(self) -> None:
                self.send(200, b"[" * 50_000)  # under the cap, deeper than json can recurse

            def answer_status500(self) -> None:
                self.send(500, owner.good_body())  # a good body does not make a 500 good

            def answer_redirect(self) -> None:
                self.send_response(302)
                self.send_header("Location", "http://127.0.0.1:9/evil.json")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def answer_huge(self) -> None:
                # 50 MB, close-delimited (no Content-Length): only the reader can stop it.
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"keys": [')
                self.stream(50 * 1024 * 1024)

            def answer_huge_declared(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(60 * 1024 * 1024))
                self.end_headers()
                self.stream(60 * 1024 * 1024)

            def stream(self, size: int) -> None:
                """``size`` bytes of blanks in 64 KB writes, counted in ``owner.sent``."""
                owner.sent = 0
                block = b" " * 65536
                while owner.sent < size:
                    self.wfile.write(block)
                    owner.sent += len(block)
                owner.completed.set()

            def answer_drip(self) -> None:
                # A valid, small document, one byte every 20 ms: each read returns data well
                # within any per-read timeout, so only an overall deadline stops it.
                body = owner.good_body()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.drip(body)

            def answer_drip_headers(self) -> None:
                body = owner.good_body()
                head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        f"X-Padding: {'p' * 400}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                self.drip(head + body)

            def drip(self, data: bytes) -> None:
                for index in range(min(len(data), 500)):  # at most ~10 s, then give up
                    self.wfile.write(data[index:index + 1])
                    self.wfile.flush()
                    time.sleep(0.02)
                owner.completed.set()

            def answer_stall(self) -> None:
                owner.release.wait(WAIT)
                self.answer_good()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = start_server(Handler)
        return self

    def stop(self) -> None:
        self.release.set()
        stop_server(self._server)


@pytest.fixture
def hostile(rsa_key: SigningKey, ec_key: SigningKey) -> Iterator[HostileJwks]:
    server = HostileJwks([rsa_key, ec_key]).start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> FakeMonotonic:
    return FakeMonotonic()


BAD_ANSWERS = {
    "html": "not JSON",
    "empty": "no usable signing key",
    "bad_json": "not JSON",
    "not_object": "not a JWKS",
    "enc_only": "no usable signing key",
    "nested": "not JSON",
    "status500": "HTTP 500",
    "redirect": "HTTP 302",
    "huge": "larger than 65536 bytes",
    "huge_declared": "Content-Length 62914560 is over 65536 bytes",
}


# ---------------------------------------------------------------- no good key yet: 503


@pytest.mark.parametrize(("mode", "reason"), sorted(BAD_ANSWERS.items()))
def test_bad_answer_without_good_keys_is_unavailable(
    hostile: HostileJwks, clock: FakeMonotonic, mode: str, reason: str
) -> None:
    hostile.mode = mode
    keys = JwksKeys(hostile.url, clock=clock)
    with pytest.raises(JwksUnavailableError, match=reason):
        keys.key_for("rsa-1", "RS256")
    assert keys.failures == 1 and hostile.requests == 1


@pytest.mark.parametrize("mode", ["html", "empty"])
def test_bad_answer_reaches_the_client_as_503(
    security_env: pytest.MonkeyPatch, management_api: Any, hostile: HostileJwks,
    rsa_key: SigningKey, mode: str,
) -> None:
    """Through the real handler: 503, not an exception (502 locally, 500 on AWS) or 403."""
    from chalice.test import Client

    from app import app
    from tests.conftest import ROOT
    from tests.support.events import connect_event, new_connection_id

    hostile.mode = mode
    security_env.setenv("WS_AUTH_JWKS_URL", hostile.url)
    with Client(app, stage_name="test", project_dir=str(ROOT)) as client:
        event = connect_event(new_connection_id(), query={"token": rsa_key.sign(claims())})
        assert client.lambda_.invoke("connect", event).payload == {"statusCode": 503}


# ---------------------------------------------------------------- good keys survive failures


@pytest.mark.parametrize("mode", sorted(BAD_ANSWERS))
def test_failed_refresh_keeps_the_last_good_keys(
    hostile: HostileJwks, clock: FakeMonotonic, rsa_key: SigningKey, mode: str
) -> None:
    verifier = TokenVerifier(jwks=JwksKeys(hostile.url, clock=clock, lifespan=300, cooldown=30))
    assert verifier.verify(rsa_key.sign(claims(aud=None))) == "alice"

    hostile.mode = mode
    clock.now += 300  # the keys are due for a refresh, which fails
    assert verifier.verify(rsa_key.sign(claims("bob", aud=None))) == "bob"
    assert hostile.requests == 2

    # The failure is cached: no refetch per $connect while backing off (at least the cooldown).
    for _ in range(10):
        clock.now += 2
        assert verifier.verify(rsa_key.sign(claims(aud=None))) == "alice"
    assert hostile.requests == 2

    hostile.mode = "good"
    clock.now += 30
    assert verifier.verify(rsa_key.sign(claims(aud=None))) == "alice"
    assert hostile.requests == 3


def test_unknown_kid_with_a_failed_refresh_is_403_not_503(
    hostile: HostileJwks, clock: FakeMonotonic
) -> None:
    keys = JwksKeys(hostile.url, clock=clock, cooldown=30)
    keys.key_for("rsa-1", "RS256")
    hostile.mode = "html"
    clock.now += 30
    with pytest.raises(AuthError) as refused:
        keys.key_for("stranger", "RS256")
    assert refused.value.status == 403
    assert hostile.requests == 2 and keys.failures == 1


def test_failures_without_keys_back_off_exponentially_and_bounded(
    hostile: HostileJwks, clock: FakeMonotonic, rsa_key: SigningKey
) -> None:
    hostile.mode = "html"
    keys = JwksKeys(hostile.url, clock=clock, backoff_initial=1, backoff_max=8)

    def attempt() -> None:
        with pytest.raises(JwksUnavailableError, match="not JSON"):
            keys.key_for("rsa-1", "RS256")

    attempt()
    attempt()  # cached: answered from the recorded failure, no request
    assert hostile.requests == 1
    gaps = []
    for _ in range(6):
        before, waited = hostile.requests, 0.0
        while hostile.requests == before and waited < 100:  # step until the next attempt
            clock.now += 0.5
            waited += 0.5
            attempt()
        gaps.append(waited)
    assert gaps == [1, 2, 4, 8, 8, 8]

    hostile.mode = "good"
    clock.now += 8
    assert keys.key_for("rsa-1", "RS256") is not None
    assert keys.failures == 0


# ---------------------------------------------------------------- deadline and byte cap


@pytest.mark.parametrize("mode", ["drip", "drip_headers"])
def test_slow_drip_is_abandoned_at_the_overall_deadline(
    hostile: HostileJwks, clock: FakeMonotonic, mode: str
) -> None:
    hostile.mode = mode
    keys = JwksKeys(hostile.url, clock=clock, deadline=0.3)
    with pytest.raises(JwksUnavailableError, match="deadline"):
        keys.key_for("rsa-1", "RS256")
    # The client hung up on the server, which never got to finish its drip.
    assert hostile.abandoned.wait(WAIT)
    assert not hostile.completed.is_set()


def test_huge_document_is_abandoned_past_the_byte_cap(hostile: HostileJwks) -> None:
    hostile.mode = "huge"
    with pytest.raises(JwksFetchError, match="larger than 65536 bytes"):
        download(hostile.url, deadline=WAIT, max_bytes=65536)
    assert hostile.abandoned.wait(WAIT)
    assert not hostile.completed.is_set() and hostile.sent < 50 * 1024 * 1024


def test_small_good_document_within_the_cap_is_read_whole(hostile: HostileJwks) -> None:
    body = download(hostile.url, deadline=WAIT, max_bytes=65536)
    assert body == hostile.good_body()


def test_declared_content_length_over_the_cap_is_refused_unread(hostile: HostileJwks) -> None:
    hostile.mode = "huge_declared"
    with pytest.raises(JwksFetchError, match="Content-Length"):
        download(hostile.url, deadline=WAIT, max_bytes=65536)
    assert hostile.abandoned.wait(WAIT)


def test_unreachable_and_non_http_urls_are_fetch_failures() -> None:
    with pytest.raises(JwksFetchError, match="ConnectionRefusedError"):
        download("http://127.0.0.1:9/jwks.json", deadline=WAIT, max_bytes=65536)
    with pytest.raises(JwksFetchError, match="not an http"):
        download("file:///etc/passwd", deadline=WAIT, max_bytes=65536)


# ---------------------------------------------------------------- no lock during network I/O


def _run(target: Any, *args: Any) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def body() -> None:
        try:
            result["value"] = target(*args)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, result


def test_cached_keys_serve_while_a_refresh_is_stuck_in_the_network(
    hostile: HostileJwks, clock: FakeMonotonic, rsa_key: SigningKey
) -> None:
    keys = JwksKeys(hostile.url, clock=clock, lifespan=300, deadline=WAIT)
    keys.key_for("rsa-1", "RS256")
    hostile.request_seen.clear()
    hostile.mode = "stall"
    clock.now += 300
    refresher, refreshed = _run(keys.key_for, "rsa-1", "RS256")  # becomes the single fetcher
    assert hostile.request_seen.wait(WAIT)
    hostile.request_seen.clear()

    # The fetch is blocked inside the server.  Other callers with a known kid are answered from
    # the cache at once: the lock is not held across the network call ...
    reader, read = _run(keys.key_for, "rsa-1", "RS256")
    reader.join(WAIT)
    assert not reader.is_alive() and "value" in read, read
    assert refresher.is_alive()
    # ... and they did not start fetches of their own (single flight).
    assert hostile.requests == 2

    hostile.release.set()
    refresher.join(WAIT)
    assert "value" in refreshed, refreshed
    assert hostile.requests == 2


def test_callers_without_keys_wait_for_the_one_fetch(
    hostile: HostileJwks, clock: FakeMonotonic
) -> None:
    hostile.mode = "stall"
    keys = JwksKeys(hostile.url, clock=clock, deadline=WAIT)
    first, first_result = _run(keys.key_for, "rsa-1", "RS256")
    assert hostile.request_seen.wait(WAIT)
    waiters = [_run(keys.key_for, "ec-1", "ES256") for _ in range(5)]
    hostile.release.set()
    for thread, result in [(first, first_result), *waiters]:
        thread.join(WAIT)
        assert "value" in result, result
    assert hostile.requests == 1


# ---------------------------------------------------------------- https


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(
            ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def test_https_fetch_verifies_the_certificate(tmp_path: Any, hostile: HostileJwks) -> None:
    import ssl

    cert, key = _self_signed(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    assert hostile._server is not None
    plain = hostile._server.socket
    hostile._server.socket = server_context.wrap_socket(plain, server_side=True)
    url = hostile.url.replace("http://", "https://")
    trusting = ssl.create_default_context(cafile=cert)
    assert download(url, deadline=WAIT, max_bytes=65536, tls=trusting) == hostile.good_body()
    # The system trust store does not know this certificate: a fetch failure, not a crash.
    with pytest.raises(JwksFetchError, match="SSLCertVerificationError"):
        download(url, deadline=WAIT, max_bytes=65536)


def test_tls_handshake_drip_is_abandoned_at_the_deadline() -> None:
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    outcome: dict[str, str] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)  # the ClientHello
            try:
                # A handshake record header announcing 16 KB, then one byte every 20 ms.
                conn.sendall(b"\x16\x03\x03\x40\x00")
                for _ in range(500):
                    conn.sendall(b"\x00")
                    time.sleep(0.02)
                outcome["server"] = "completed"
            except OSError:
                outcome["server"] = "abandoned"

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{listener.getsockname()[1]}/jwks.json"
        with pytest.raises(JwksFetchError, match="deadline"):
            download(url, deadline=0.3, max_bytes=65536)
        thread.join(WAIT)
        assert outcome == {"server": "abandoned"}
    finally:
        listener.close()
