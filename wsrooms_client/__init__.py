"""A small asyncio client for ws-rooms (protocol v2, docs/protocol.md), with resume built in.

See :class:`wsrooms_client.client.RoomsClient` and docs/python-client.md.
"""

from wsrooms_client.client import (
    ConnectionRefused,
    Reconnect,
    RequestError,
    RoomsClient,
    RoomsError,
)
from wsrooms_client.resume import Cursor, Gap, Verdict

__all__ = [
    "ConnectionRefused",
    "Cursor",
    "Gap",
    "Reconnect",
    "RequestError",
    "RoomsClient",
    "RoomsError",
    "Verdict",
]
