"""Who may open a connection: the ``$connect`` gate (Origin allowlist, then a JWT).

Browsers cannot set headers on a WebSocket, so the client presents its JWT as the ``token``
query-string parameter.  :class:`ConnectGate` decides, from the raw ``$connect`` event, whether
the connection is admitted and as which user (the token's ``sub``):

* no token -> 401; a token that does not verify (bad signature, ``alg: none``, an algorithm
  other than the one pinned for the mode, expired, not yet valid, wrong ``aud``/``iss``, no
  ``sub``/``exp``) -> 403; an ``Origin`` not in ``WS_ALLOWED_ORIGINS`` -> 403;
* HS256 with ``WS_AUTH_SECRET``, or RS256/ES256 with keys from ``WS_AUTH_JWKS_URL`` -- never the
  algorithm the token's header asks for;
* with neither configured, authentication is off (the local default; :mod:`chalicelib.settings`
  refuses that inside Lambda).

PyJWT is imported on first verification, not at import time, to keep cold starts low.  The JWKS
keys are cached per container (the gate is cached by :mod:`chalicelib.runtime`), refreshed every
:data:`JWKS_LIFESPAN_SECONDS`, and an unknown ``kid`` triggers at most one refetch per
:data:`JWKS_REFRESH_COOLDOWN_SECONDS` (tokens with random ``kid``s cannot hammer the IdP).

Reasons for refusals are logged; tokens never are (and :mod:`chalicelib.redaction` scrubs any
that would be).  See docs/security.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chalicelib.errors import WsAppError
from chalicelib.settings import Settings, normalize_origin

if TYPE_CHECKING:
    from jwt import PyJWK, PyJWKClient

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
JWKS_TIMEOUT_SECONDS = 5.0
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


class TokenVerifier:
    """Verifies one token string and returns its ``sub``; raises :class:`AuthError` (403)."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        jwks: JwksKeys | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30,
    ) -> None:
        if (secret is None) == (jwks is None):
            raise ValueError("exactly one of secret and jwks is required")
        self._secret = secret
        self._jwks = jwks
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway

    @property
    def algorithms(self) -> tuple[str, ...]:
        return HS_ALGORITHMS if self._secret is not None else JWKS_ALGORITHMS

    def verify(self, token: str) -> str:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
            alg = header.get("alg")
            # Pinned per mode: the header's choice is only checked against the allowed list
            # (PyJWT checks again in decode); "none" and every other algorithm are refused.
            if alg not in self.algorithms:
                raise AuthError(403, f"token algorithm {str(alg)[:16]!r} is not allowed")
            key: Any = self._secret
            if self._jwks is not None:
                kid = header.get("kid")
                if not isinstance(kid, str) or not kid:
                    raise AuthError(403, "token has no 'kid' header")
                key = self._jwks.key_for(kid, alg)
            options: Any = {
                "require": list(REQUIRED_CLAIMS),
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
            raise AuthError(403, f"token rejected: {type(exc).__name__}: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUB_CHARS:
            raise AuthError(403, "token 'sub' must be a non-empty string")
        return sub


class JwksUnavailableError(WsAppError):
    """The JWKS could not be fetched: a server-side problem (503), not the client's fault."""


class JwksKeys:
    """Signing keys from a JWKS URL, cached for the container's lifetime (thread-safe).

    ``key_for(kid, alg)`` serves from the cache; an unknown ``kid`` refetches the set once, at
    most once per ``cooldown`` seconds (measured on ``clock``), so key rotation is picked up
    without letting forged ``kid``s turn every ``$connect`` into an HTTP call.
    """

    def __init__(
        self,
        url: str,
        *,
        lifespan: float = JWKS_LIFESPAN_SECONDS,
        cooldown: float = JWKS_REFRESH_COOLDOWN_SECONDS,
        timeout: float = JWKS_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._lifespan = lifespan
        self._cooldown = cooldown
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._client: PyJWKClient | None = None
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None

    def key_for(self, kid: str, alg: str) -> Any:
        """The verification key for ``kid``; raises :class:`AuthError` (403) when unknown or
        when the JWK's own ``alg``/``kty`` does not match the token's algorithm."""
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self._lifespan:
                self._fetch(now)
            jwk = self._keys.get(kid)
            if jwk is None and self._fetched_at is not None and (
                now - self._fetched_at >= self._cooldown
            ):
                logger.info("unknown JWKS kid; refreshing the key set")
                self._fetch(now)
                jwk = self._keys.get(kid)
        if jwk is None:
            raise AuthError(403, f"no JWKS key with kid {kid[:64]!r}")
        # A JWK without "alg" gets one from its kty/crv (RSA -> RS256, EC P-256 -> ES256).
        if jwk.algorithm_name != alg:
            raise AuthError(
                403, f"JWKS key {kid[:64]!r} is for {jwk.algorithm_name}, token says {alg}"
            )
        return jwk.key

    def _fetch(self, now: float) -> None:
        import jwt

        if self._client is None:
            # PyJWKClient does the HTTP and parsing; caching and the refresh policy are ours.
            self._client = jwt.PyJWKClient(self._url, cache_jwk_set=False, timeout=self._timeout)
        try:
            jwk_set = self._client.get_jwk_set(refresh=True)
        except jwt.PyJWKClientError as exc:
            if self._fetched_at is not None:
                # Keep serving the keys we have; try again after the cooldown.
                logger.error("JWKS refresh from %s failed (keeping cached keys): %s",
                             self._url, exc)
                self._fetched_at = now - self._lifespan + self._cooldown
                return
            raise JwksUnavailableError(f"cannot fetch JWKS from {self._url}: {exc}") from None
        keys: dict[str, PyJWK] = {}
        for jwk in jwk_set.keys:
            use = getattr(jwk, "_jwk_data", {}).get("use")
            if jwk.key_id and use in (None, "sig"):
                keys[jwk.key_id] = jwk
        self._keys = keys
        self._fetched_at = now
        logger.info("JWKS loaded from %s: %d signing key(s)", self._url, len(keys))


class ConnectGate:
    """The ``$connect`` decision: :meth:`admit` returns an :class:`Admission` or raises
    :class:`AuthError` carrying the status to refuse with."""

    def __init__(
        self, verifier: TokenVerifier | None, allowed_origins: tuple[str, ...] = ()
    ) -> None:
        self._verifier = verifier
        self._allowed_origins = frozenset(allowed_origins)

    @property
    def auth_enabled(self) -> bool:
        return self._verifier is not None

    def admit(self, event: Mapping[str, Any]) -> Admission:
        if self._allowed_origins:
            origin = _header(event, "origin")
            if origin is None or normalize_origin(origin) not in self._allowed_origins:
                shown = "none" if origin is None else repr(origin[:100])
                raise AuthError(403, f"origin {shown} is not in WS_ALLOWED_ORIGINS")
        if self._verifier is None:
            return Admission(user=None)
        token = _token(event)
        if token is None:
            raise AuthError(401, "no token in the query string")
        if len(token) > MAX_TOKEN_CHARS:
            raise AuthError(403, f"token longer than {MAX_TOKEN_CHARS} characters")
        return Admission(user=self._verifier.verify(token))


def build_gate(settings: Settings) -> ConnectGate:
    verifier: TokenVerifier | None = None
    if settings.auth_secret is not None:
        verifier = TokenVerifier(
            secret=settings.auth_secret,
            audience=settings.auth_audience,
            issuer=settings.auth_issuer,
            leeway=settings.auth_leeway_seconds,
        )
    elif settings.auth_jwks_url is not None:
        verifier = TokenVerifier(
            jwks=JwksKeys(settings.auth_jwks_url),
            audience=settings.auth_audience,
            issuer=settings.auth_issuer,
            leeway=settings.auth_leeway_seconds,
        )
    return ConnectGate(verifier, settings.allowed_origins)


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
