"""WebSocket rooms on API Gateway + Lambda, safe against the "410 Gone" family of bugs.

Each handler is a few lines: it reads the event and hands it to :mod:`chalicelib.service`.
The library is imported on first use, not at import time, so cold starts stay close to a bare
Chalice app and importing this module needs no credentials or network.  So is Powertools: the
middleware below installs JSON logs and EMF metrics (chalicelib/observability.py) on the first
invocation.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from chalice.app import (
    BadRequestError,
    Chalice,
    IAMAuthorizer,
    Rate,
    SQSEvent,
    WebsocketEvent,
)

if TYPE_CHECKING:
    from chalicelib.service import Messaging

from chalicelib.redaction import install as _install_log_redaction

# Before anything logs: tokens in query strings and credential headers never reach a log line.
_install_log_redaction()

app = Chalice(app_name="ws-rooms")
app.experimental_feature_flags.update(["WEBSOCKETS"])
app.log.setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())
logging.getLogger("chalicelib").setLevel(os.environ.get("LOG_LEVEL", "INFO").upper())



def _validate_settings() -> None:
    """At cold start: a bad setting fails the import naming the variable (ConfigError), once,
    instead of failing every invocation; the effective security mode is logged."""
    from chalicelib.settings import Settings

    settings = Settings.from_env(os.environ)
    if settings.auth_secret is not None:
        auth = "HS256 shared secret"
    elif settings.auth_jwks_url is not None:
        auth = f"JWKS {settings.auth_jwks_url}"
    else:
        auth = "OFF (no WS_AUTH_SECRET or WS_AUTH_JWKS_URL; local development only)"
    # chalicelib's logger: the runtime's log in Lambda and in local containers, never stdout.
    logging.getLogger("chalicelib.security").info(
        "security: authentication %s; origins %s; rate limit %s; %d rooms per connection;"
        " data up to %d bytes",
        auth,
        ", ".join(settings.allowed_origins) or "not checked",
        f"{settings.rate_limit} per {settings.rate_window_seconds} s"
        if settings.rate_limit else "off",
        settings.max_rooms_per_connection,
        settings.max_data_bytes,
    )


_validate_settings()

#: The queues' names; deployment resources and the local gateway use the same ones.
WELCOME_QUEUE_NAME = os.environ.get("WELCOME_QUEUE_NAME", "ws-rooms-welcome")
FANOUT_QUEUE_NAME = os.environ.get("FANOUT_QUEUE_NAME", "ws-rooms-fanout")


@app.middleware("all")
def _observed(event: Any, get_response: Any) -> Any:
    """Every invocation: correlated JSON log lines, and one EMF metrics document at the end."""
    from chalicelib.observability import observe
    from chalicelib.runtime import recorder

    return observe(app.log, recorder(), event, get_response)


def _messaging() -> Messaging:
    from chalicelib.runtime import messaging

    return messaging()


def _endpoint(event: dict[str, Any]) -> tuple[Any, str]:
    from chalicelib.events import connection_context, management_endpoint

    ctx = connection_context(event)
    settings_endpoint = os.environ.get("WS_MANAGEMENT_ENDPOINT")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return ctx, management_endpoint(ctx, override=settings_endpoint, region=region)


#: What Chalice reads from ``requestContext`` before any handler or middleware runs.
_WS_CONTEXT_KEYS = ("apiId", "stage", "domainName", "connectionId")


def _well_formed_only(handler: Any) -> Any:
    """Answer a malformed WebSocket event with 400 instead of raising.

    API Gateway never sends one, but Chalice would raise KeyError building the event (before
    any middleware) and :mod:`chalicelib.events` raises BadEventError: Lambda would report an
    error (502 on ``$connect``, "Internal server error" to a client).  Logged, never raised.
    """
    name = next(key for key, value in app.handler_map.items() if value is handler)

    def guarded(event: Any, context: Any) -> Any:
        from chalicelib.errors import BadEventError

        ctx = event.get("requestContext") if isinstance(event, dict) else None
        try:
            if not isinstance(ctx, dict) or not all(
                isinstance(ctx.get(key), str) and ctx[key] for key in _WS_CONTEXT_KEYS
            ):
                raise BadEventError(f"requestContext lacks one of {', '.join(_WS_CONTEXT_KEYS)}")
            return handler(event, context)
        except BadEventError as exc:
            from chalicelib.redaction import loggable

            app.log.error("malformed WebSocket event for %s: %s", name, loggable(exc))
            return {"statusCode": 400}

    app.handler_map[name] = guarded
    return guarded


@_well_formed_only
@app.on_ws_connect()
def connect(event: WebsocketEvent) -> dict[str, Any]:
    from chalicelib.auth import AuthError, JwksUnavailableError
    from chalicelib.errors import ConfigError
    from chalicelib.metrics import AUTH_REFUSED
    from chalicelib.redaction import loggable
    from chalicelib.runtime import connect_gate, recorder
    from chalicelib.secret_source import SecretUnavailableError

    raw = event.to_dict()
    ctx, endpoint = _endpoint(raw)
    try:
        admission = connect_gate().admit(raw)
    except ConfigError as exc:
        # A deployed stage without authentication (or with a broken auth setting) never admits.
        app.log.error("refusing every $connect: configuration error: %s", exc)
        raise
    except AuthError as exc:
        # Nothing is registered for a refused connection; the reason is logged, never the token.
        # Every client-controlled part is escaped (one log line per refusal, whatever it holds).
        recorder().count(AUTH_REFUSED)
        app.log.info("$connect %s from %s refused with %d: %s", loggable(ctx.connection_id),
                     loggable(ctx.source_ip), exc.status, loggable(exc.reason, 500))
        return {"statusCode": exc.status}
    except (JwksUnavailableError, SecretUnavailableError) as exc:
        # No key to verify with (JWKS, or the HS256 secret from SSM/Secrets Manager): a
        # server-side problem, retried with backoff; the text never holds the secret.
        app.log.error("$connect %s refused with 503: %s", loggable(ctx.connection_id),
                      loggable(exc, 500))
        return {"statusCode": 503}
    _messaging().on_connect(ctx, endpoint, user=admission.user,
                            capabilities=admission.capabilities, claims=admission.claims)
    return {"statusCode": 200}


@_well_formed_only
@app.on_ws_message()
def message(event: WebsocketEvent) -> None:
    raw = event.to_dict()
    ctx, endpoint = _endpoint(raw)
    _messaging().on_message(ctx, endpoint, raw.get("body"), bool(raw.get("isBase64Encoded")))


@_well_formed_only
@app.on_ws_disconnect()
def disconnect(event: WebsocketEvent) -> None:
    ctx, endpoint = _endpoint(event.to_dict())
    _messaging().on_disconnect(ctx, endpoint)


def _each_record(event: SQSEvent, handle: Any) -> dict[str, list[dict[str, str]]]:
    """Run ``handle(body)`` on every record; report the ones to redeliver (partial batch failure).

    A malformed body never gets better: it is logged and dropped rather than redelivered forever.
    A :class:`~chalicelib.errors.WsAppError` (could not verify, store or queue failure) leaves the
    record for SQS to redeliver, and after its retries to move to the dead-letter queue; the other
    records of the batch are not redelivered.  Needs ``ReportBatchItemFailures`` on the event
    source mapping (deploy/package.py sets it).
    """
    from chalicelib.errors import BadEventError, WsAppError
    from chalicelib.observability import correlate
    from chalicelib.redaction import loggable

    failures = []
    for record in event:
        message_id = str(record.to_dict().get("messageId", ""))
        correlate(message_id=message_id)
        try:
            handle(record.body)
        except BadEventError as exc:
            app.log.error("dropping malformed message %s: %s", loggable(message_id),
                          loggable(exc, 400))
        except WsAppError as exc:
            app.log.warning("message %s will be redelivered: %s", loggable(message_id),
                            loggable(exc, 400))
            failures.append({"itemIdentifier": message_id})
    return {"batchItemFailures": failures}


@app.on_sqs_message(queue=WELCOME_QUEUE_NAME, batch_size=10)
def welcome_follow_up(event: SQSEvent) -> dict[str, list[dict[str, str]]]:
    from chalicelib.welcome import FollowUp

    service = _messaging()
    configured = os.environ.get("WS_MANAGEMENT_ENDPOINT") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None

    def handle(body: str) -> None:
        # A body naming a foreign endpoint is a BadEventError: dropped, never redelivered.
        follow_up = FollowUp.from_json(body).trusted(configured=configured, region=region)
        service.on_welcome_follow_up(follow_up)

    return _each_record(event, handle)


@app.on_sqs_message(queue=FANOUT_QUEUE_NAME, batch_size=4)
def fan_out_worker(event: SQSEvent) -> dict[str, list[dict[str, str]]]:
    from chalicelib.fanout import FanOutBatch

    service = _messaging()
    return _each_record(event, lambda body: service.on_fan_out_batch(FanOutBatch.from_json(body)))


@app.schedule(Rate(5, unit=Rate.MINUTES))
def sweep(event: Any) -> dict[str, int]:
    from chalicelib.settings import Settings

    settings = Settings.from_env(os.environ)
    report = _messaging().sweep(settings.sweep_idle_seconds, settings.sweep_batch)
    return {"checked": report.checked, "pruned": report.pruned, "unknown": report.unknown,
            "expired": report.expired}


@app.route("/rooms/{room}/messages", methods=["POST"], authorizer=IAMAuthorizer())
def push_to_room(room: str) -> dict[str, Any]:
    from chalicelib.errors import PushError

    body = app.current_request.json_body if app.current_request else None
    if not isinstance(body, dict) or "data" not in body:
        raise BadRequestError('body must be a JSON object with a "data" field')
    try:
        counts = _messaging().push(room, body["data"])
    except PushError as exc:
        raise BadRequestError(str(exc)) from None
    return counts.as_dict()
