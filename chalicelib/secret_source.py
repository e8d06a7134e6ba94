"""The HS256 secret from SSM Parameter Store or Secrets Manager, fetched once per container.

``WS_AUTH_SECRET_PARAMETER`` (an SSM parameter name or ARN; a SecureString is decrypted) or
``WS_AUTH_SECRET_ARN`` (a Secrets Manager secret; its ``SecretString`` is the secret) keeps the
secret out of the Lambda configuration, where anyone with ``lambda:GetFunctionConfiguration``
reads a plaintext ``WS_AUTH_SECRET``.  A JWKS (``WS_AUTH_JWKS_URL``) remains the recommended
mode: no shared secret at all.

* Lazily: nothing is fetched at import or while settings are read; the first ``$connect`` that
  presents a token fetches (:meth:`FetchedSecret.value`), and the value is kept for the
  container's life (a rotated secret reaches a container only when Lambda starts a new one:
  publish a new version or update the function's configuration).
* Bounded: one boto3 client with a :data:`CONNECT_TIMEOUT_SECONDS` connect and
  :data:`READ_TIMEOUT_SECONDS` read timeout and :data:`MAX_ATTEMPTS` attempts in all, so one
  fetch takes at most about ``MAX_ATTEMPTS * (connect + read)`` seconds plus botocore's short
  retry backoff.
* Checked: a value shorter than :data:`~chalicelib.settings.MIN_SECRET_BYTES` bytes is refused
  like a short ``WS_AUTH_SECRET``.
* Failures: any failure (network, timeout, throttling, not found, access denied, too short, a
  binary secret) raises :class:`SecretUnavailableError`, whose text names the variable and the
  cause but never the value; ``$connect`` answers 503 and logs it.  Failures are remembered:
  the next attempt waits :data:`BACKOFF_INITIAL_SECONDS`, doubling up to
  :data:`BACKOFF_MAX_SECONDS` (a connect flood cannot hammer SSM), so a fixed parameter is
  picked up without a redeploy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from chalicelib.errors import WsAppError
from chalicelib.redaction import loggable
from chalicelib.settings import MIN_SECRET_BYTES, Settings

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 2.0
#: Attempts in all (the first one included), botocore's standard retry mode.
MAX_ATTEMPTS = 2
BACKOFF_INITIAL_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 60.0


class SecretUnavailableError(WsAppError):
    """The HS256 secret could not be had (fetch failed, or the value is unusable): a server-side
    problem, answered 503 at ``$connect``.  The text never holds the secret."""


class FetchedSecret:
    """A secret fetched on first use, then kept; failures are backed off, never cached as a
    value.  Thread-safe: one fetch at a time (callers wait for it, bounded by the client's
    timeouts, then share its result)."""

    def __init__(
        self, variable: str, source: str, fetch: Callable[[], str],
        *, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._variable = variable
        self._source = source
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()
        self._value: str | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""

    @property
    def failures(self) -> int:
        """Failed fetches in a row (0 once a fetch succeeded)."""
        return self._failures

    def value(self) -> str:
        """The secret; raises :class:`SecretUnavailableError`."""
        value = self._value
        if value is not None:
            return value
        with self._lock:
            if self._value is not None:
                return self._value
            now = self._clock()
            if now < self._retry_at:
                raise SecretUnavailableError(
                    f"{self._last_error} (next attempt in {self._retry_at - now:.1f} s)")
            try:
                fetched = self._fetch()
                if len(fetched.encode("utf-8")) < MIN_SECRET_BYTES:
                    raise SecretUnavailableError(
                        f"the secret is shorter than {MIN_SECRET_BYTES} bytes: store a random"
                        " secret of at least 256 bits")
            except SecretUnavailableError as exc:
                self._failed(now, str(exc))
                raise SecretUnavailableError(self._last_error) from None
            self._value = fetched
            self._failures = 0
            return fetched

    def _failed(self, now: float, reason: str) -> None:
        self._failures += 1
        backoff = min(BACKOFF_MAX_SECONDS,
                      BACKOFF_INITIAL_SECONDS * 2 ** (self._failures - 1))
        self._retry_at = now + backoff
        self._last_error = (f"{self._variable}={loggable(self._source, 300)}: {reason}"
                            f" ({self._failures} failure(s) in a row)")


def secret_for(settings: Settings) -> FetchedSecret | None:
    """The :class:`FetchedSecret` the settings name, or None (no fetched secret configured)."""
    if settings.auth_secret_parameter is not None:
        name = settings.auth_secret_parameter
        return FetchedSecret("WS_AUTH_SECRET_PARAMETER", name,
                             lambda: fetch_parameter(name, settings.region))
    if settings.auth_secret_arn is not None:
        arn = settings.auth_secret_arn
        return FetchedSecret("WS_AUTH_SECRET_ARN", arn, lambda: fetch_secret(arn, settings.region))
    return None


def fetch_parameter(name: str, region: str | None) -> str:
    """The decrypted value of SSM parameter ``name`` (a name or an ARN)."""
    client = _client("ssm", _region(name, region))
    response = _call(lambda: client.get_parameter(Name=name, WithDecryption=True))
    value = response.get("Parameter", {}).get("Value")
    if not isinstance(value, str):
        raise SecretUnavailableError("the parameter has no value")
    return value


def fetch_secret(arn: str, region: str | None) -> str:
    """The ``SecretString`` of Secrets Manager secret ``arn``."""
    client = _client("secretsmanager", _region(arn, region))
    response = _call(lambda: client.get_secret_value(SecretId=arn))
    value = response.get("SecretString")
    if not isinstance(value, str):
        raise SecretUnavailableError("the secret has no SecretString (binary secrets are not"
                                     " supported)")
    return value


def _region(name: str, region: str | None) -> str:
    """The ARN's Region when ``name`` is an ARN, else the function's."""
    parts = name.split(":")
    if name.startswith("arn:") and len(parts) > 3 and parts[3]:
        return parts[3]
    return region or "us-east-1"


def _client(service: str, region: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"total_max_attempts": MAX_ATTEMPTS, "mode": "standard"},
    )
    # Typed Any: the stubs' overloads want a literal service name (no ssm/secretsmanager stubs
    # are installed either).
    session: Any = boto3.session.Session()
    return session.client(service, region_name=region, config=config)


def _call(call: Callable[[], Any]) -> Any:
    """Run one AWS call; every botocore failure becomes :class:`SecretUnavailableError`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise SecretUnavailableError(
            f"{loggable(error.get('Code', 'error'), 100)}:"
            f" {loggable(error.get('Message', ''), 300)}"
        ) from None
    except BotoCoreError as exc:
        raise SecretUnavailableError(f"{type(exc).__name__}: {loggable(exc, 300)}") from None
