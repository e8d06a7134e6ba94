"""Configuration from environment variables, validated once, with clear errors.

Every variable is documented in README.md ("Configuration").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from chalicelib.errors import ConfigError
from chalicelib.welcome import MAX_DELAY_SECONDS

DEFAULT_STORE = "sqlite:///.local/connections.db"


@dataclass(frozen=True)
class Settings:
    connections_store: str
    management_endpoint: str | None
    welcome_queue_url: str | None
    welcome_delay_seconds: int
    fanout_concurrency: int
    delivery_max_attempts: int
    sweep_idle_seconds: int
    sweep_batch: int
    region: str | None
    in_lambda: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Read and validate the environment; raises :class:`ConfigError` naming the variable."""
        in_lambda = bool(environ.get("AWS_LAMBDA_FUNCTION_NAME"))
        store = environ.get("CONNECTIONS_STORE", "")
        if not store:
            if in_lambda:
                raise ConfigError(
                    "CONNECTIONS_STORE is not set: deployed stages need dynamodb://TABLE"
                )
            store = DEFAULT_STORE
        return cls(
            connections_store=store,
            management_endpoint=environ.get("WS_MANAGEMENT_ENDPOINT") or None,
            welcome_queue_url=environ.get("WELCOME_QUEUE_URL") or None,
            welcome_delay_seconds=_int(environ, "WELCOME_DELAY_SECONDS", 1, 0, MAX_DELAY_SECONDS),
            fanout_concurrency=_int(environ, "FANOUT_CONCURRENCY", 32, 1, 512),
            delivery_max_attempts=_int(environ, "DELIVERY_MAX_ATTEMPTS", 4, 1, 10),
            sweep_idle_seconds=_int(environ, "SWEEP_IDLE_SECONDS", 300, 0, 86400),
            sweep_batch=_int(environ, "SWEEP_BATCH", 500, 1, 10000),
            region=environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or None,
            in_lambda=in_lambda,
        )


def _int(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is outside {low}..{high}")
    return value
