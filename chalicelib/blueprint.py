"""WebSocket rooms as a Chalice blueprint: mount them in any Chalice app.

::

    from chalice import Chalice
    from chalicelib.blueprint import rooms

    app = Chalice(app_name="my-app")
    app.experimental_feature_flags.update(["WEBSOCKETS"])
    app.register_blueprint(rooms)

The blueprint holds every handler of the feature: the three WebSocket routes (``$connect``,
``$default``, ``$disconnect``), the SQS consumers (the welcome follow-up and the fan-out worker),
the sweep and the REST push route, plus the observability middleware.  Each handler is a few
lines: it reads the event and hands it to :mod:`chalicelib.service`.  The library is imported on
first use, so importing this module needs no credentials or network; so is Powertools, installed
by the middleware on the first invocation.  docs/blueprint.md is the guide for an existing app
(only one ``$default`` can exist, so the app must not define WebSocket handlers of its own).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from chalice.app import (
    BadRequestError,
    Blueprint,
    Chalice,
    IAMAuthorizer,
    Rate,
    SQSEvent,
    WebsocketAPI,
    WebsocketEvent,
)

if TYPE_CHECKING:
    from chalicelib.service import Messaging

#: The queues' names, read at import (the handlers bind to them); deployment resources and the
#: local gateway use the same ones.
WELCOME_QUEUE_NAME = os.environ.get("WELCOME_QUEUE_NAME", "ws-rooms-welcome")
FANOUT_QUEUE_NAME = os.environ.get("FANOUT_QUEUE_NAME", "ws-rooms-fanout")
#: The REST push route (IAM-authorised when deployed).
PUSH_ROUTE = "/rooms/{room}/messages"

#: What Chalice reads from ``requestContext`` before any handler or middleware runs.
_WS_CONTEXT_KEYS = ("apiId", "stage", "domainName", "connectionId")

LOG = logging.getLogger("chalicelib.rooms")


def validate_settings() -> None:
    """At cold start (importing the blueprint): a bad setting fails the import naming the
    variable (ConfigError), once, instead of failing every invocation; the effective security
    mode is logged."""
    from chalicelib.settings import Settings

    settings = Settings.from_env(os.environ)
    if settings.auth_secret is not None:
        auth = "HS256 shared secret"
    elif settings.auth_secret_parameter is not None or settings.auth_secret_arn is not None:
        auth = "HS256 secret from SSM Parameter Store or Secrets Manager"
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


validate_settings()


class RoomsBlueprint(Blueprint):
    """A blueprint whose WebSocket handlers work like an app's.

    Chalice 1.34 leaves a blueprint's WebSocket handlers unwrapped (no ``WebsocketEvent``) and
    without the app's middleware; this class gives the blueprint a ``WebsocketAPI`` so the
    decorators wrap them, and on registration hands them the app's WebSocket middleware and
    puts the malformed-event guard in the app's handler map (Lambda calls the module's guarded
    functions directly).
    """

    def __init__(self, import_name: str) -> None:
        super().__init__(import_name)
        self.websocket_api = WebsocketAPI()
        self.guarded: dict[str, Any] = {}

    def register(self, app: Chalice, options: dict[str, Any]) -> None:
        super().register(app, options)
        prefix = options.get("name_prefix") or ""
        for name, guarded in self.guarded.items():
            wrapped: Any = app.handler_map[prefix + name]
            wrapped.middleware_handlers = app._get_middleware_handlers("websocket")
            app.handler_map[prefix + name] = guarded


rooms = RoomsBlueprint(__name__)


def _guarded(handler: Any) -> Any:
    """Answer a malformed WebSocket event with 400 instead of raising.

    API Gateway never sends one, but Chalice would raise KeyError building the event (before
    any middleware) and :mod:`chalicelib.events` raises BadEventError: Lambda would report an
    error (502 on ``$connect``, "Internal server error" to a client).  Logged, never raised.
    Wraps the handler Chalice returns, so the module attribute Lambda calls is the guard.
    """
    name = handler.func.__name__

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

            LOG.error("malformed WebSocket event for %s: %s", name, loggable(exc))
            return {"statusCode": 400}

    guarded.__name__ = name
    rooms.guarded[name] = guarded
    return guarded


@rooms.middleware("all")
def _observed(event: Any, get_response: Any) -> Any:
    """Every invocation: correlated JSON log lines, and one EMF metrics document at the end."""
    from chalicelib.observability import observe
    from chalicelib.runtime import recorder

    return observe(rooms.log, recorder(), event, get_response)


def _messaging() -> Messaging:
    from chalicelib.runtime import messaging

    return messaging()


def _endpoint(event: dict[str, Any]) -> tuple[Any, str]:
    from chalicelib.events import connection_context, management_endpoint

    ctx = connection_context(event)
    settings_endpoint = os.environ.get("WS_MANAGEMENT_ENDPOINT")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return ctx, management_endpoint(ctx, override=settings_endpoint, region=region)


@_guarded
@rooms.on_ws_connect()
def connect(event: WebsocketEvent) -> dict[str, Any]:
    from chalicelib.auth import AuthError, JwksUnavailableError
    from chalicelib.errors import ConfigError, TooManyConnections
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
        rooms.log.error("refusing every $connect: configuration error: %s", exc)
        raise
    except AuthError as exc:
        # Nothing is registered for a refused connection; the reason is logged, never the token.
        # Every client-controlled part is escaped (one log line per refusal, whatever it holds).
        recorder().count(AUTH_REFUSED)
        rooms.log.info("$connect %s from %s refused with %d: %s", loggable(ctx.connection_id),
                       loggable(ctx.source_ip), exc.status, loggable(exc.reason, 500))
        return {"statusCode": exc.status}
    except (JwksUnavailableError, SecretUnavailableError) as exc:
        # No key to verify with (JWKS, or the HS256 secret from SSM/Secrets Manager): a
        # server-side problem, retried with backoff; the text never holds the secret.
        rooms.log.error("$connect %s refused with 503: %s", loggable(ctx.connection_id),
                        loggable(exc, 500))
        return {"statusCode": 503}
    try:
        _messaging().on_connect(ctx, endpoint, user=admission.user,
                                capabilities=admission.capabilities, claims=admission.claims)
    except TooManyConnections as exc:
        rooms.log.info("$connect %s refused with 429: %s", loggable(ctx.connection_id), exc)
        return {"statusCode": 429}
    return {"statusCode": 200}


@_guarded
@rooms.on_ws_message()
def message(event: WebsocketEvent) -> None:
    raw = event.to_dict()
    ctx, endpoint = _endpoint(raw)
    _messaging().on_message(ctx, endpoint, raw.get("body"), bool(raw.get("isBase64Encoded")))


@_guarded
@rooms.on_ws_disconnect()
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
            rooms.log.error("dropping malformed message %s: %s", loggable(message_id),
                            loggable(exc, 400))
        except WsAppError as exc:
            rooms.log.warning("message %s will be redelivered: %s", loggable(message_id),
                              loggable(exc, 400))
            failures.append({"itemIdentifier": message_id})
    return {"batchItemFailures": failures}


@rooms.on_sqs_message(queue=WELCOME_QUEUE_NAME, batch_size=10)
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


@rooms.on_sqs_message(queue=FANOUT_QUEUE_NAME, batch_size=4)
def fan_out_worker(event: SQSEvent) -> dict[str, list[dict[str, str]]]:
    from chalicelib.fanout import FanOutBatch

    service = _messaging()
    return _each_record(event, lambda body: service.on_fan_out_batch(FanOutBatch.from_json(body)))


@rooms.schedule(Rate(5, unit=Rate.MINUTES))
def sweep(event: Any) -> dict[str, int]:
    from chalicelib.settings import Settings

    settings = Settings.from_env(os.environ)
    report = _messaging().sweep(settings.sweep_idle_seconds, settings.sweep_batch)
    return {"checked": report.checked, "pruned": report.pruned, "unknown": report.unknown,
            "expired": report.expired}


@rooms.route(PUSH_ROUTE, methods=["POST"], authorizer=IAMAuthorizer())
def push_to_room(room: str) -> dict[str, Any]:
    from chalicelib.errors import PushError

    request = rooms.current_request
    body = request.json_body if request else None
    if not isinstance(body, dict) or "data" not in body:
        raise BadRequestError('body must be a JSON object with a "data" field')
    try:
        counts = _messaging().push(room, body["data"])
    except PushError as exc:
        raise BadRequestError(str(exc)) from None
    return counts.as_dict()


def _ensure_registered() -> None:
    """Register the blueprint when Lambda imports this module on its own.

    A blueprint function's Lambda handler is this module's attribute
    (``chalicelib.blueprint.connect``), so Lambda imports this module, not app.py: nothing would
    register the blueprint to the app, and its log and middleware would be missing.  Importing
    the app (Chalice's entry module, ``app``) registers it; when app.py is what imported us, the
    import returns the module being initialised and changes nothing.
    """
    if rooms._current_app is not None:
        return
    import importlib

    try:
        importlib.import_module("app")
    except ModuleNotFoundError as exc:
        if exc.name != "app":
            raise


_ensure_registered()
