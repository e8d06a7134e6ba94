"""Read what the app needs out of raw API Gateway WebSocket events.

Shapes follow the events AWS delivers (see ../shared/aws-events/).  Anything required that is
missing raises :class:`BadEventError` instead of a bare ``KeyError`` deep in a handler.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from chalicelib.errors import BadEventError


@dataclass(frozen=True)
class ConnectionContext:
    """The connection an event is about, and where its management API lives."""

    connection_id: str
    domain_name: str
    stage: str
    api_id: str
    request_id: str
    source_ip: str
    #: Epoch seconds (AWS sends milliseconds).
    connected_at: float
    user_agent: str = ""


def connection_context(event: Mapping[str, Any]) -> ConnectionContext:
    """Extract the :class:`ConnectionContext` of a ``$connect``/``$default``/``$disconnect`` event.

    Raises :class:`BadEventError` naming the missing key.
    """
    ctx = event.get("requestContext") if isinstance(event, Mapping) else None
    if not isinstance(ctx, Mapping):
        raise BadEventError("event has no 'requestContext' object")
    connection_id = _required_str(ctx, "connectionId")
    identity = ctx.get("identity")
    source_ip = identity.get("sourceIp", "") if isinstance(identity, Mapping) else ""
    headers = event.get("headers")
    user_agent = ""
    if isinstance(headers, Mapping):
        # Header names arrive as the client sent them; compare case-insensitively.
        user_agent = next(
            (str(v) for k, v in headers.items() if str(k).lower() == "user-agent"), ""
        )
    connected_at_ms = ctx.get("connectedAt")
    connected_at = (
        connected_at_ms / 1000.0
        if isinstance(connected_at_ms, int | float) and not isinstance(connected_at_ms, bool)
        else 0.0
    )
    return ConnectionContext(
        connection_id=connection_id,
        domain_name=str(ctx.get("domainName") or ""),
        stage=str(ctx.get("stage") or ""),
        api_id=str(ctx.get("apiId") or ""),
        request_id=str(ctx.get("requestId") or ""),
        source_ip=str(source_ip or ""),
        connected_at=connected_at,
        user_agent=user_agent,
    )


def _required_str(mapping: Mapping[str, Any], key: str) -> str:
    value = mapping.get(key)
    if not isinstance(value, str) or not value:
        raise BadEventError(f"event's requestContext has no '{key}' string")
    return value


def management_endpoint(
    ctx: ConnectionContext, *, override: str | None, region: str | None
) -> str:
    """The management-API endpoint for this connection's API and stage.

    ``override`` (``WS_MANAGEMENT_ENDPOINT``) wins: the local gateway and tests set it.  For an
    ``execute-api`` domain the endpoint is ``https://{domain}/{stage}``.  A custom domain does not
    serve ``@connections`` under the stage path, so the API's own execute-api domain is used,
    built from ``apiId`` and the region.  Raises :class:`BadEventError` when neither works.
    """
    if override:
        return override.rstrip("/")
    if ".execute-api." in ctx.domain_name and ctx.stage:
        return f"https://{ctx.domain_name}/{ctx.stage}"
    if ctx.api_id and ctx.stage and region:
        suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
        return f"https://{ctx.api_id}.execute-api.{region}.{suffix}/{ctx.stage}"
    raise BadEventError(
        "cannot derive the management endpoint: set WS_MANAGEMENT_ENDPOINT, or send events "
        "with an execute-api domainName, or apiId and stage with AWS_REGION set"
    )


#: ``https://{api}.execute-api.{region}.amazonaws.com[.cn]/{stage}``, nothing else: API ids are
#: 10 lower-case alphanumerics; no user info, port, further path, query or fragment.
_EXECUTE_API_ENDPOINT = re.compile(
    r"https://(?P<api>[a-z0-9]{10})\.execute-api\.(?P<region>[a-z]{2}(?:-[a-z]+)+-[0-9])"
    r"\.amazonaws\.com(?P<cn>\.cn)?/(?P<stage>[A-Za-z0-9_-]{1,128})/?"
)


def execute_api_endpoint(url: str, *, region: str | None) -> str:
    """``url`` (without a trailing slash) if it is an API Gateway management endpoint.

    Call it before signing requests to an endpoint that came from a message rather than from
    configuration or API Gateway itself.  Accepts only the
    ``https://{api}.execute-api.{region}.amazonaws.com/{stage}`` shape (``.com.cn`` in China
    regions) and, when ``region`` is known, only that region.  Raises :class:`BadEventError`
    (with the value escaped for logging) for anything else, loopback and custom domains included.
    """
    from chalicelib.redaction import loggable

    match = _EXECUTE_API_ENDPOINT.fullmatch(url) if isinstance(url, str) else None
    if match is None:
        raise BadEventError(
            f"endpoint '{loggable(url, 120)}' is not an execute-api management endpoint"
            " (https://{api}.execute-api.{region}.amazonaws.com/{stage})"
        )
    if bool(match["cn"]) != match["region"].startswith("cn-"):
        raise BadEventError(f"endpoint '{loggable(url, 120)}' has the wrong domain for its region")
    if region and match["region"] != region:
        raise BadEventError(
            f"endpoint '{loggable(url, 120)}' is in {match['region']}, not this deployment's"
            f" region {region}"
        )
    return url.rstrip("/")
