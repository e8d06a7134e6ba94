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
