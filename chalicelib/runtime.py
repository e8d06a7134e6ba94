"""Wiring: build the :class:`Messaging` service from the environment, lazily and once.

Importing the app must work with no credentials and no network (cold start), so nothing here
runs at import time: the first handler invocation builds the service, later invocations in the
same container reuse it, with one boto3 client per management endpoint.  The cache is keyed by
the settings, so a test (or a reloaded local gateway) that changes the environment gets a
service built for the new values rather than a stale one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from chalicelib import access, actions
from chalicelib.access import JoinAuthorizer
from chalicelib.auth import ConnectGate, build_gate
from chalicelib.delivery import Deliverer, RetryPolicy
from chalicelib.fanout import FanOutQueue
from chalicelib.limits import Limits
from chalicelib.metrics import Tally
from chalicelib.rooms import RoomFeatures
from chalicelib.service import Messaging
from chalicelib.settings import Settings
from chalicelib.store import open_store
from chalicelib.welcome import WelcomeQueue

if TYPE_CHECKING:
    from mypy_boto3_apigatewaymanagementapi import ApiGatewayManagementApiClient
    from mypy_boto3_sqs import SQSClient

_lock = threading.Lock()
_services: dict[tuple[Settings, JoinAuthorizer | None, int], Messaging] = {}
_gates: dict[Settings, ConnectGate] = {}
#: The container's metrics: every service and deliverer counts here, and the observability
#: middleware (chalicelib/observability.py) drains it into one EMF blob per invocation.
_tally = Tally()


def recorder() -> Tally:
    """The process-wide metrics tally (see :mod:`chalicelib.metrics`)."""
    return _tally


K = TypeVar("K")
V = TypeVar("V")


def _once(cache: dict[K, V], key: K, create: Callable[[K], V], lock: threading.Lock) -> V:
    """``cache[key]``, created by ``create(key)`` exactly once even when threads race."""
    value = cache.get(key)
    if value is None:
        with lock:
            value = cache.get(key)
            if value is None:
                value = create(key)
                cache[key] = value
    return value


def messaging(environ: Mapping[str, str] | None = None) -> Messaging:
    """The service for the current environment (built on first use, then reused)."""
    settings = Settings.from_env(os.environ if environ is None else environ)
    # Keyed by the join authoriser and the actions too: app.py registers them at import, tests
    # may swap them.
    key = (settings, access.registered(), actions.registry.version)
    return _once(_services, key, lambda k: build(k[0], k[1]), _lock)


def connect_gate(environ: Mapping[str, str] | None = None) -> ConnectGate:
    """The ``$connect`` gate for the current environment, cached per container so JWKS keys
    and a fetched HS256 secret survive across invocations (raises ConfigError, e.g. in Lambda
    without authentication)."""
    settings = Settings.from_env(os.environ if environ is None else environ)
    return _once(_gates, settings, build_gate, _lock)


def build(settings: Settings, join_authorizer: JoinAuthorizer | None = None) -> Messaging:
    """A fresh :class:`Messaging` for ``settings`` (raises ConfigError for bad settings)."""
    store = open_store(settings.connections_store, environ=_store_environ(settings))
    deliverers = _DelivererCache(settings)
    executor = (
        ThreadPoolExecutor(max_workers=settings.fanout_concurrency, thread_name_prefix="fanout")
        if settings.fanout_concurrency > 1
        else None
    )
    # One SQS client for both queues (creating a boto3 client costs tens of ms of cold start).
    sqs = _sqs_client(settings) if settings.welcome_queue_url or settings.fanout_queue_url else None
    welcome_queue = None
    if sqs is not None and settings.welcome_queue_url:
        welcome_queue = WelcomeQueue(
            sqs, settings.welcome_queue_url, settings.welcome_delay_seconds
        )
    fanout_queue = None
    if sqs is not None and settings.fanout_queue_url:
        fanout_queue = FanOutQueue(
            sqs, settings.fanout_queue_url, max_recipients=settings.fanout_batch_size
        )
    return Messaging(
        store,
        deliverers.get,
        executor=executor,
        welcome_queue=welcome_queue,
        default_endpoint=settings.management_endpoint,
        limits=Limits(
            rate_limit=settings.rate_limit,
            rate_window_seconds=settings.rate_window_seconds,
            max_rooms=settings.max_rooms_per_connection,
            max_data_bytes=settings.max_data_bytes,
            max_connections_per_user=settings.max_connections_per_user,
            max_room_members=settings.max_room_members,
        ),
        auth_required=settings.auth_enabled,
        fanout_queue=fanout_queue,
        inline_max=settings.fanout_inline_max,
        join_authorizer=join_authorizer,
        actions=actions.registry,
        features=RoomFeatures(
            history_max=settings.history_max_messages,
            history_ttl=settings.history_ttl_seconds,
            presence=settings.presence,
            dedupe_seconds=settings.dedupe_seconds,
        ),
        recorder=_tally,
    )


def _store_environ(settings: Settings) -> dict[str, str]:
    return {"AWS_LAMBDA_FUNCTION_NAME": "lambda"} if settings.in_lambda else {}


class _DelivererCache:
    """One management-API client per endpoint, created on first use (never one per send)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._deliverers: dict[str, Deliverer] = {}

    def get(self, endpoint: str) -> Deliverer:
        return _once(self._deliverers, endpoint, self._create, self._lock)

    def _create(self, endpoint: str) -> Deliverer:
        return Deliverer(
            management_client(endpoint, self._settings),
            retry=RetryPolicy(max_attempts=self._settings.delivery_max_attempts),
            recorder=_tally,
        )


def management_client(endpoint: str, settings: Settings) -> ApiGatewayManagementApiClient:
    """A management-API client tuned for fan-out.

    The pool holds as many connections as the fan-out has threads (botocore's default of 10
    would serialise a wide fan-out), and botocore's own retries are off because
    :class:`Deliverer` retries with its own bound and knows 410/403 must not be retried.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        max_pool_connections=max(10, settings.fanout_concurrency),
        retries={"total_max_attempts": 1},
        connect_timeout=3,
        read_timeout=10,
        tcp_keepalive=True,
    )
    kwargs: dict[str, Any] = {"endpoint_url": endpoint, "config": config}
    if settings.region:
        kwargs["region_name"] = settings.region
    else:
        kwargs["region_name"] = "us-east-1"
    client: ApiGatewayManagementApiClient = boto3.session.Session().client(
        "apigatewaymanagementapi", **kwargs
    )
    return client


def _sqs_client(settings: Settings) -> SQSClient:
    import boto3

    client: SQSClient = boto3.session.Session().client(
        "sqs", region_name=settings.region or "us-east-1"
    )
    return client
