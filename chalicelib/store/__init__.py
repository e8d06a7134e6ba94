"""Connection stores. ``open_store(url)`` picks the backend named by ``CONNECTIONS_STORE``."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from chalicelib.errors import ConfigError
from chalicelib.store.base import (
    Admission,
    Claim,
    Clock,
    ConnectionRecord,
    ConnectionStore,
    IdleConnection,
    TransientStoreError,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

__all__ = [
    "Admission",
    "Claim",
    "ConnectionRecord",
    "ConnectionStore",
    "IdleConnection",
    "TransientStoreError",
    "open_store",
]

# DynamoDB's own rule for table names.
_TABLE_NAME = re.compile(r"[A-Za-z0-9_.-]{3,255}")


def open_store(
    url: str,
    *,
    environ: Mapping[str, str] = os.environ,
    clock: Clock = time.time,
    dynamodb_client: DynamoDBClient | None = None,
) -> ConnectionStore:
    """Open the store named by ``url`` (the value of ``CONNECTIONS_STORE``).

    Call once per process (module level of ``app.py``) and share the result: stores are
    thread-safe.  Accepted URLs:

    * ``memory://`` -- a new, empty in-process store on every call (unit tests only);
    * ``sqlite:///relative/path.db`` (relative to the working directory) or
      ``sqlite:////absolute/path.db`` -- three slashes, then the path; the file and its directory
      are created if missing;
    * ``dynamodb://TABLE`` -- the table in the region of the environment; ``dynamodb_client``
      replaces the lazily created default client (tests, DynamoDB Local).

    Raises :class:`~chalicelib.errors.ConfigError` for an unknown scheme, a missing path or table
    name, or ``memory://``/``sqlite://`` inside Lambda (``AWS_LAMBDA_FUNCTION_NAME`` is set), where
    each container would see only its own state.  Opening SQLite may raise
    :class:`~chalicelib.errors.StoreError` when the file cannot be created.
    """
    raw = url
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigError(
            f"connection store URL {raw!r} has no scheme; use memory://, sqlite:///PATH"
            " or dynamodb://TABLE"
        )
    in_lambda = bool(environ.get("AWS_LAMBDA_FUNCTION_NAME"))

    if scheme in ("memory", "sqlite") and in_lambda:
        raise ConfigError(
            f"connection store {raw!r} cannot work in Lambda: API Gateway runs $connect, messages"
            " and the welcome in different containers, each with its own memory and disk."
            " Use dynamodb://TABLE"
        )

    # Backends are imported on demand: a process loads only the one it uses (and its drivers).
    if scheme == "memory":
        if rest:
            raise ConfigError(f"connection store URL {raw!r}: memory:// takes no path")
        from chalicelib.store.memory import MemoryStore

        return MemoryStore(clock=clock)

    if scheme == "sqlite":
        if not rest.startswith("/") or len(rest) < 2:
            raise ConfigError(
                f"connection store URL {raw!r}: expected sqlite:///relative/path.db or"
                " sqlite:////absolute/path.db (three slashes, then the path)"
            )
        path = rest[1:]  # "/rel.db" -> "rel.db"; "//abs.db" -> "/abs.db"
        from chalicelib.store.sqlite import SqliteStore

        return SqliteStore(path, clock=clock)

    if scheme == "dynamodb":
        if not _TABLE_NAME.fullmatch(rest):
            raise ConfigError(
                f"connection store URL {raw!r}: expected dynamodb://TABLE with a valid table name"
                " (3-255 characters: letters, digits, '_', '-', '.')"
            )
        from chalicelib.store.dynamodb import DynamoDbStore

        return DynamoDbStore(rest, dynamodb_client, clock=clock)

    raise ConfigError(
        f"connection store URL {raw!r}: unknown scheme {scheme!r}; use memory://,"
        " sqlite:///PATH or dynamodb://TABLE"
    )
