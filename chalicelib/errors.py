"""The app's exception hierarchy: everything raised on purpose derives from WsAppError."""

from __future__ import annotations


class WsAppError(Exception):
    """Root of every error this package raises deliberately."""


class ConfigError(WsAppError):
    """The environment asks for something that cannot work (bad store URL, sqlite in Lambda...)."""


class StoreError(WsAppError):
    """The connection store failed after its own bounded retries; the operation did not happen."""


class BadEventError(WsAppError):
    """A Lambda event lacks a key API Gateway always sends (for example ``requestContext``)."""


class VerificationError(WsAppError):
    """API Gateway could not say whether a connection is open (GetConnection failed past its
    retries): nothing was decided, so the SQS message behind the request is redelivered."""


class PushError(WsAppError):
    """A server push was refused before any delivery (bad room or data); ``str`` says why."""


class TooManyConnections(WsAppError):
    """A user already has ``WS_MAX_CONNECTIONS_PER_USER`` connections open: ``$connect`` is
    refused with 429, and nothing is registered."""
