"""Who may open a connection: the ``$connect`` gate (Origin allowlist, then a JWT).

Browsers cannot set headers on a WebSocket, so the client presents its JWT as the ``token``
query-string parameter.  :class:`ConnectGate` decides, from the raw ``$connect`` event, whether
the connection is admitted and as which user (the token's ``sub``):

* no token -> 401; a token that does not verify (bad signature, ``alg: none``, an algorithm
  other than the one pinned for the mode, expired, not yet valid, wrong ``aud``/``iss``, no
  ``sub``/``exp``) -> 403; an ``Origin`` not in ``WS_ALLOWED_ORIGINS`` -> 403;
* HS256 with ``WS_AUTH_SECRET`` (or the secret fetched from ``WS_AUTH_SECRET_PARAMETER`` /
  ``WS_AUTH_SECRET_ARN`` at the first token: :mod:`chalicelib.secret_source`), or RS256/ES256
  with keys from ``WS_AUTH_JWKS_URL`` -- never the algorithm the token's header asks for;
* with neither configured, authentication is off (the local default; :mod:`chalicelib.settings`
  refuses that inside Lambda).

PyJWT is imported on first verification, not at import time, to keep cold starts low.  The JWKS
keys are cached per container (the gate is cached by :mod:`chalicelib.runtime`), refreshed every
:data:`JWKS_LIFESPAN_SECONDS`, and an unknown ``kid`` triggers at most one refetch per
:data:`JWKS_REFRESH_COOLDOWN_SECONDS` (tokens with random ``kid``s cannot hammer the IdP).  The
fetch has one overall deadline and a byte cap, runs without holding the lock, and a failed fetch
never replaces the last good keys (:class:`JwksKeys`).

Reasons for refusals are logged; tokens never are (and :mod:`chalicelib.redaction` scrubs any
that would be).  See docs/security.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from chalicelib.capabilities import EVERYTHING, Capabilities, CapabilityError
from chalicelib.errors import WsAppError
from chalicelib.redaction import loggable
from chalicelib.settings import Settings, normalize_origin

if TYPE_CHECKING:
    import ssl

    from jwt import PyJWK

logger = logging.getLogger(__name__)

#: The query-string parameter that carries the token.
TOKEN_PARAMETER = "token"
#: Longer tokens are refused unparsed (a real one is well under 4 KB).
MAX_TOKEN_CHARS = 8192
HS_ALGORITHMS = ("HS256",)
JWKS_ALGORITHMS = ("RS256", "ES256")
REQUIRED_CLAIMS = ("exp", "sub")
JWKS_LIFESPAN_SECONDS = 300.0
JWKS_REFRESH_COOLDOWN_SECONDS = 30.0
#: One deadline for a whole JWKS fetch (connect, headers, body), not per read.
JWKS_DEADLINE_SECONDS = 5.0
#: JWKS documents are a few KB; a bigger body is refused as soon as it passes this.
JWKS_MAX_BYTES = 64 * 1024
#: Keys beyond this many in one document are ignored.
MAX_JWKS_KEYS = 100
#: After a failed fetch: first retry after this long, doubling per failure up to the maximum.
JWKS_BACKOFF_INITIAL_SECONDS = 1.0
JWKS_BACKOFF_MAX_SECONDS = 60.0
MAX_SUB_CHARS = 256


class AuthError(WsAppError):
    """A refused ``$connect``: ``status`` is the HTTP status, ``reason`` is for the log only."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Admission:
    """An admitted connection; ``user`` is the token's ``sub`` (None when auth is off)."""

    user: str | None
    #: What the connection may do in which rooms (None: everything, authentication is off).
    capabilities: Capabilities | None = None
    #: The token's verified claims (None when auth is off), for the app's join authoriser.
    claims: Mapping[str, Any] | None = field(default=None, repr=False)


class TokenVerifier:
    """Verifies one token string and returns its ``sub``; raises :class:`AuthError` (403)."""

    def __init__(
        self,
        *,
        secret: str | Callable[[], str] | None = None,
        jwks: JwksKeys | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30,
        client_id: str | None = None,
        token_use: str | None = None,
        max_lifetime: float | None = None,
    ) -> None:
        if (secret is None) == (jwks is None):
            raise ValueError("exactly one of secret and jwks is required")
        self._secret = secret
        self._jwks = jwks
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._client_id = client_id
        self._token_use = token_use
        self._max_lifetime = max_lifetime or None

    @property
    def algorithms(self) -> tuple[str, ...]:
        return HS_ALGORITHMS if self._secret is not None else JWKS_ALGORITHMS

    def verify(self, token: str) -> str:
        """The token's ``sub`` if it verifies and is in scope; call once per ``$connect``.

        Raises :class:`AuthError` (403) for any refusal (its reason is escaped for logging),
        :class:`JwksUnavailableError` when no JWKS key can be had (503).
        """
        return self.verify_claims(token)[0]

    def verify_claims(self, token: str) -> tuple[str, dict[str, Any]]:
        """Like :meth:`verify`, also returning every verified claim (for capabilities)."""
        claims = self._decode(token)
        return str(claims["sub"]), claims

    def _decode(self, token: str) -> dict[str, Any]:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            # Pinned per mode: the header's choice is only checked against the allowed list
            # (PyJWT checks again in decode); "none" and every other algorithm are refused.
            if alg not in self.algorithms:
                raise AuthError(403, f"token algorithm '{loggable(alg, 16)}' is not allowed")
            # A fetched secret (chalicelib/secret_source.py) is read here, on first use; it
            # raises SecretUnavailableError (503), never caught as a token problem below.
            key: Any = self._secret() if callable(self._secret) else self._secret
            if self._jwks is not None:
                kid = header.get("kid")
                if not isinstance(kid, str) or not kid:
                    raise AuthError(403, "token has no 'kid' header")
                key = self._jwks.key_for(kid, alg)
            required = list(REQUIRED_CLAIMS)
            if self._max_lifetime is not None:
                required.append("iat")  # a lifetime cannot be bounded without it
            options: Any = {
                "require": required,
                "verify_aud": self._audience is not None,
                "verify_iss": self._issuer is not None,
            }
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=options,
            )
        except jwt.PyJWTError as exc:
            # PyJWT's text may quote the token's header (a crit value holding a newline could
            # forge a log line): escaped and truncated.
            raise AuthError(403, f"token rejected: {type(exc).__name__}: {loggable(exc)}"
                            ) from None
        self._check_scope(claims)
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS:
            raise AuthError(403, "token 'sub' must be a non-empty string")
        return dict(claims)

    def _check_scope(self, claims: Mapping[str, Any]) -> None:
        """Lifetime, Cognito ``token_use`` and ``client_id``; raises :class:`AuthError` (403)."""
        if self._max_lifetime is not None:
            # PyJWT has checked both are integers (or numeric strings) and iat is not ahead.
            lifetime = int(claims["exp"]) - int(claims["iat"])
            if lifetime > self._max_lifetime:
                raise AuthError(
                    403,
                    f"token lifetime exp - iat = {lifetime} s is over the maximum"
                    f" {self._max_lifetime:g} s (WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS)",
                )
        if self._token_use is not None and claims.get("token_use") != self._token_use:
            raise AuthError(
                403,
                f"token_use '{loggable(claims.get('token_use'), 16)}' is not"
                f" {self._token_use!r} (WS_AUTH_TOKEN_USE)",
            )
        if self._client_id is not None and claims.get("client_id") != self._client_id:
            raise AuthError(
                403,
                f"client_id '{loggable(claims.get('client_id'), 128)}' is not the configured"
                " WS_AUTH_CLIENT_ID",
            )


class JwksUnavailableError(WsAppError):
    """No usable JWKS key exists (never fetched, or every fetch so far failed): a server-side
    problem (503), not the client's fault."""


class JwksFetchError(WsAppError):
    """One JWKS fetch failed: network error, timeout, non-200, over the byte cap, not a JWKS,
    or no usable signing key.  Internal to :class:`JwksKeys`, which keeps its last good keys."""


def download(
    url: str, *, deadline: float, max_bytes: int, tls: ssl.SSLContext | None = None
) -> bytes:
    """GET ``url`` and return the body; raises :class:`JwksFetchError` for any failure.

    Call it from a thread that may block for up to ``deadline`` seconds, holding no lock.
    ``deadline`` bounds the **whole** exchange (connect, TLS handshake, request, headers, body),
    not each read: a watchdog shuts the socket down when it passes, so a server dripping a byte
    at a time is abandoned.  The body is read incrementally and the fetch stops as soon as it
    exceeds ``max_bytes`` (a declared ``Content-Length`` over the cap is refused before reading).
    Redirects are not followed (a 3xx is a failure) and proxies from the environment are not
    used.  ``tls`` defaults to the system trust store with hostname checking.  Name resolution
    happens before the socket exists and is only bounded by the resolver.
    """
    import http.client  # here, not at import: cold starts of the message handlers stay low
    import socket
    import ssl

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise JwksFetchError(f"not an http(s) URL: {loggable(url)}")
    expired = threading.Event()
    opened: list[socket.socket] = []  # sockets the watchdog shuts down (the response may own one)

    class Plain(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            opened.append(self.sock)

    class Secure(http.client.HTTPSConnection):
        # HTTPSConnection.connect without tunnels, and with the handshake after registration,
        # so the deadline also covers a server that drips the TLS handshake.
        def connect(self) -> None:
            http.client.HTTPConnection.connect(self)
            opened.append(self.sock)
            context = tls or ssl.create_default_context()
            self.sock = context.wrap_socket(
                self.sock, server_hostname=self.host, do_handshake_on_connect=False
            )
            opened.append(self.sock)
            if expired.is_set():
                raise JwksFetchError(f"could not connect within the {deadline:g} s deadline")
            self.sock.do_handshake()

    connection = (Secure if parts.scheme == "https" else Plain)(
        parts.hostname, parts.port, timeout=deadline
    )

    def abandon() -> None:
        expired.set()
        for sock in opened:
            # The plain socket's shutdown (not SSLSocket's, which is not thread-safe): the
            # blocked read in the fetching thread returns at once.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    watchdog = threading.Timer(deadline, abandon)
    watchdog.daemon = True
    watchdog.start()
    body = bytearray()
    response: http.client.HTTPResponse | None = None
    try:
        connection.connect()
        if expired.is_set():
            raise JwksFetchError(f"could not connect within the {deadline:g} s deadline")
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", path, headers={"Accept": "application/json"})
        response = connection.getresponse()
        if response.status != 200:
            raise JwksFetchError(f"HTTP {response.status} (expected 200)")
        declared = response.getheader("Content-Length")
        if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
            raise JwksFetchError(f"Content-Length {int(declared)} is over {max_bytes} bytes")
        while True:
            chunk = response.read1(16384)
            if not chunk:
                break
            body += chunk
            if len(body) > max_bytes:
                raise JwksFetchError(f"body larger than {max_bytes} bytes; abandoned")
        if expired.is_set():
            raise JwksFetchError(f"not complete within the {deadline:g} s deadline; abandoned")
        return bytes(body)
    except (OSError, http.client.HTTPException) as exc:
        if expired.is_set():
            raise JwksFetchError(
                f"not complete within the {deadline:g} s deadline ({len(body)} bytes read);"
                " abandoned"
            ) from None
        raise JwksFetchError(f"{type(exc).__name__}: {loggable(exc)}") from None
    finally:
        watchdog.cancel()
        for sock in opened:  # stop the server at once, whatever state the exchange is in
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
        if response is not None:
            response.close()
        connection.close()


def parse_jwks(body: bytes) -> dict[str, PyJWK]:
    """The usable signing keys of a JWKS document, by ``kid``.

    Keeps keys with a ``kid``, ``use`` absent or ``sig``, and an algorithm this app accepts
    (:data:`JWKS_ALGORITHMS`).  Raises :class:`JwksFetchError` when ``body`` is not JSON, not a
    JWKS, or holds no such key (an empty set is a failure, never "trust nothing").
    """
    import jwt

    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise JwksFetchError(f"not JSON ({type(exc).__name__}): {loggable(body[:60])}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchError('not a JWKS: expected a JSON object with a "keys" list')
    keys: dict[str, PyJWK] = {}
    for entry in document["keys"][:MAX_JWKS_KEYS]:
        if not isinstance(entry, dict):
            continue
        kid, use = entry.get("kid"), entry.get("use")
        if not isinstance(kid, str) or not kid or use not in (None, "sig"):
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            continue  # a key type or curve we do not use; the others still count
        if jwk.algorithm_name in JWKS_ALGORITHMS:
            keys[kid] = jwk
    if not keys:
        raise JwksFetchError(
            f"no usable signing key ({len(document['keys'])} listed; need a kid, use=sig and"
            f" one of {', '.join(JWKS_ALGORITHMS)})"
        )
    return keys


class JwksKeys:
    """Signing keys from a JWKS URL, cached for the container's lifetime (thread-safe).

    Call :meth:`key_for` for each token.  Policy:

    * the set is fetched on first use, refreshed every ``lifespan`` seconds, and refetched for
      an unknown ``kid`` at most once per ``cooldown`` seconds (forged ``kid``s cannot turn
      every ``$connect`` into a call to the IdP);
    * **a failed fetch never replaces good keys**: HTML with 200, ``{"keys": []}``, bad JSON,
      non-200, the ``deadline`` passing, a body over ``max_bytes`` -- all are failures; the last
      good keys stay in use, and the failure is cached: the next attempt waits
      ``backoff_initial`` seconds, doubling per consecutive failure up to ``backoff_max`` (and
      at least ``cooldown`` while good keys exist);
    * :class:`JwksUnavailableError` (503) is raised only when no good key exists at all;
    * the lock is never held during network I/O: one caller fetches (single flight), callers
      that can be served from the cache are, and callers that need the result (no keys yet,
      unknown ``kid``) wait for it, at most ``deadline`` + 1 seconds.

    ``clock`` (monotonic seconds) drives lifespan, cooldown and backoff; ``fetch`` is
    :func:`download` unless a test passes another transport.
    """

    def __init__(
        self,
        url: str,
        *,
        lifespan: float = JWKS_LIFESPAN_SECONDS,
        cooldown: float = JWKS_REFRESH_COOLDOWN_SECONDS,
        deadline: float = JWKS_DEADLINE_SECONDS,
        max_bytes: int = JWKS_MAX_BYTES,
        backoff_initial: float = JWKS_BACKOFF_INITIAL_SECONDS,
        backoff_max: float = JWKS_BACKOFF_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._lifespan = lifespan
        self._cooldown = cooldown
        self._deadline = deadline
        self._max_bytes = max_bytes
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._clock = clock
        self._lock = threading.Lock()
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._not_before: float | None = None  # no fetch attempt before this time
        self._failures = 0  # consecutive failed fetches
        self._last_error: str | None = None
        self._inflight: threading.Event | None = None

    @property
    def failures(self) -> int:
        """Consecutive failed fetches (0 after a success)."""
        return self._failures

    def key_for(self, kid: str, alg: str) -> Any:
        """The verification key for ``kid``.

        Raises :class:`AuthError` (403) when the ``kid`` is unknown or the JWK's own algorithm
        does not match ``alg``, and :class:`JwksUnavailableError` (503) when no good key exists.
        May block while fetching (bounded by the deadline), never while holding the lock.
        """
        fetch, wait_for = self._plan(kid)
        if fetch is not None:
            self._fetch(fetch)
        elif wait_for is not None:
            wait_for.wait(self._deadline + 1.0)
        with self._lock:
            jwk = self._keys.get(kid)
            have_keys = bool(self._keys)
            last_error = self._last_error
        if jwk is None:
            if not have_keys:
                raise JwksUnavailableError(
                    f"no JWKS keys from {loggable(self._url)}: last fetch failed:"
                    f" {last_error or 'still in progress'}"
                )
            raise AuthError(403, f"no JWKS key with kid '{loggable(kid, 64)}'")
        # A JWK without "alg" gets one from its kty/crv (RSA -> RS256, EC P-256 -> ES256).
        if jwk.algorithm_name != alg:
            raise AuthError(
                403,
                f"JWKS key '{loggable(kid, 64)}' is for {jwk.algorithm_name},"
                f" token says {loggable(alg, 16)}",
            )
        return jwk.key

    def _plan(self, kid: str) -> tuple[threading.Event | None, threading.Event | None]:
        """Under the lock: (event to fetch under, event to wait on); at most one is set."""
        with self._lock:
            now = self._clock()
            known = kid in self._keys
            stale = self._fetched_at is None or now - self._fetched_at >= self._lifespan
            wanted = stale or not known
            if not wanted:
                return None, None
            if self._inflight is not None:
                # Someone is fetching: wait only if the cache cannot answer this token.
                return None, (None if known else self._inflight)
            if self._not_before is not None and now < self._not_before:
                return None, None  # backing off, or within the unknown-kid cooldown
            if not known and not stale:
                logger.info("unknown JWKS kid '%s'; refreshing the key set", loggable(kid, 64))
            self._inflight = threading.Event()
            return self._inflight, None

    def _fetch(self, done: threading.Event) -> None:
        """Fetch and parse outside the lock, then record the outcome under it."""
        keys: dict[str, PyJWK] | None = None
        error = ""
        backoff = 0.0
        try:
            keys = parse_jwks(download(self._url, deadline=self._deadline,
                                       max_bytes=self._max_bytes))
        except JwksFetchError as exc:
            error = str(exc)
        finally:
            with self._lock:
                now = self._clock()
                if keys is not None:
                    self._keys = keys
                    self._fetched_at = now
                    self._failures = 0
                    self._last_error = None
                    self._not_before = now + self._cooldown
                else:
                    self._failures += 1
                    self._last_error = error or "interrupted"
                    backoff = min(
                        self._backoff_initial * 2 ** min(self._failures - 1, 30),
                        self._backoff_max,
                    )
                    if self._keys:
                        backoff = max(backoff, self._cooldown)
                    self._not_before = now + backoff
                self._inflight = None
                failures, have_keys = self._failures, bool(self._keys)
            done.set()
        if keys is not None:
            logger.info("JWKS loaded from %s: %d signing key(s)", loggable(self._url), len(keys))
        else:
            logger.error(
                "JWKS fetch from %s failed (%d in a row; %s; next attempt in %g s): %s",
                loggable(self._url), failures,
                "keeping the cached keys" if have_keys else "no keys: $connect answers 503",
                backoff, error,
            )


class ConnectGate:
    """The ``$connect`` decision: :meth:`admit` returns an :class:`Admission` or raises
    :class:`AuthError` carrying the status to refuse with."""

    def __init__(
        self,
        verifier: TokenVerifier | None,
        allowed_origins: tuple[str, ...] = (),
        *,
        capability_claim: str = "rooms",
        default_capability: Capabilities = EVERYTHING,
    ) -> None:
        self._verifier = verifier
        self._allowed_origins = frozenset(allowed_origins)
        self._capability_claim = capability_claim
        self._default_capability = default_capability

    @property
    def auth_enabled(self) -> bool:
        return self._verifier is not None

    def admit(self, event: Mapping[str, Any]) -> Admission:
        """Decide one raw ``$connect`` event: Origin first, then the token.

        Raises :class:`AuthError` (401/403, reason escaped for logging),
        :class:`JwksUnavailableError` or
        :class:`~chalicelib.secret_source.SecretUnavailableError` (answer 503); never lets a
        PyJWT or network error out.
        """
        if self._allowed_origins:
            origin = _header(event, "origin")
            if origin is None or normalize_origin(origin) not in self._allowed_origins:
                shown = "none" if origin is None else f"'{loggable(origin, 100)}'"
                raise AuthError(403, f"origin {shown} is not in WS_ALLOWED_ORIGINS")
        if self._verifier is None:
            return Admission(user=None)
        token = _token(event)
        if token is None:
            raise AuthError(401, "no token in the query string")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError(403, f"token longer than {MAX_TOKEN_CHARS} characters")
        user, claims = self._verifier.verify_claims(token)
        return Admission(user=user, capabilities=self._capabilities(claims), claims=claims)

    def _capabilities(self, claims: Mapping[str, Any]) -> Capabilities:
        """The token's capability claim, or the default when it has none; a claim of the wrong
        shape refuses the connection (403) and the log says why."""
        if self._capability_claim not in claims:
            return self._default_capability
        try:
            return Capabilities.parse(claims[self._capability_claim])
        except CapabilityError as exc:
            raise AuthError(
                403, f"capability claim '{loggable(self._capability_claim, 64)}' {loggable(exc)}"
            ) from None


def build_gate(settings: Settings) -> ConnectGate:
    """The ``$connect`` gate for ``settings`` (auth off when neither mode is configured).

    Call once per container and keep it (:func:`chalicelib.runtime.connect_gate` does): the JWKS
    cache lives in it.  Raises nothing; settings were validated by :class:`Settings`.
    """
    from chalicelib.secret_source import secret_for

    jwks = None
    if settings.auth_secret is None and settings.auth_jwks_url is not None:
        jwks = JwksKeys(settings.auth_jwks_url)
    # WS_AUTH_SECRET_PARAMETER / WS_AUTH_SECRET_ARN: fetched at the first token, not here.
    fetched = secret_for(settings)
    secret: str | Callable[[], str] | None = (
        settings.auth_secret if fetched is None else fetched.value)
    if secret is None and jwks is None:
        return ConnectGate(None, settings.allowed_origins)
    verifier = TokenVerifier(
        secret=secret,
        jwks=jwks,
        audience=settings.auth_audience,
        issuer=settings.auth_issuer,
        leeway=settings.auth_leeway_seconds,
        client_id=settings.auth_client_id,
        token_use=settings.auth_token_use,
        max_lifetime=settings.auth_max_token_lifetime_seconds,
    )
    return ConnectGate(verifier, settings.allowed_origins,
                       capability_claim=settings.capability_claim,
                       default_capability=Capabilities.parse_json(settings.default_capability))


def _header(event: Mapping[str, Any], name: str) -> str | None:
    headers = event.get("headers")
    if not isinstance(headers, Mapping):
        return None
    for key, value in headers.items():
        if str(key).lower() == name:
            return str(value)
    return None


def _token(event: Mapping[str, Any]) -> str | None:
    """The ``token`` query parameter; refuses (403) a query string that repeats it."""
    multi = event.get("multiValueQueryStringParameters")
    if isinstance(multi, Mapping):
        values = multi.get(TOKEN_PARAMETER)
        if isinstance(values, list) and len(values) > 1:
            raise AuthError(403, "more than one token in the query string")
    params = event.get("queryStringParameters")
    if not isinstance(params, Mapping):
        return None
    token = params.get(TOKEN_PARAMETER)
    if not isinstance(token, str) or not token.strip():
        return None
    return token.strip()
