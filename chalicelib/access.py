"""Private rooms without a token change: the app's join authoriser.

Capabilities in the token (chalicelib/capabilities.py) cover rooms known when the token is
issued.  Rooms whose membership lives in the app's own database (a support ticket, a document's
collaborators) need the app to decide at join time::

    from chalicelib.access import authorize_joins

    @authorize_joins
    def may_join(request):  # a JoinRequest; called for every join, in the joining Lambda
        if request.room.startswith("ticket:"):
            return my_db.is_participant(request.user, request.room.split(":", 1)[1])
        return True  # other rooms: what the token grants

Return True to keep the operations the token grants in the room (or, when it grants none there,
every operation: subscribe, publish, history, presence), False to refuse the join (``forbidden``),
or an iterable of operation names to grant exactly those.  The decision is recorded on the
membership; sends, history and presence then follow it without asking again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from chalicelib.capabilities import ALL_OPERATIONS


@dataclass(frozen=True)
class JoinRequest:
    """What the authoriser is asked about."""

    #: The token's ``sub`` (with authentication off: None).
    user: str | None
    room: str
    #: What the token's capabilities grant in this room (may be empty).
    operations: frozenset[str]
    #: The token's verified claims ({} with authentication off).
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False)
    connection_id: str = ""


JoinAuthorizer = Callable[[JoinRequest], bool | Iterable[str]]

_registered: list[JoinAuthorizer] = []


def authorize_joins(authorizer: JoinAuthorizer) -> JoinAuthorizer:
    """Register the app's join authoriser (a decorator; at most one, the last one wins).

    Register it at import time of app.py so every Lambda container has it.
    """
    _registered[:] = [authorizer]
    return authorizer


def registered() -> JoinAuthorizer | None:
    """The registered authoriser, or None."""
    return _registered[0] if _registered else None


def clear() -> None:
    """Forget the registered authoriser (tests)."""
    _registered.clear()


def decide(authorizer: JoinAuthorizer, request: JoinRequest) -> frozenset[str]:
    """The operations the join gets (empty: refused).  Raises ValueError for an answer of the
    wrong kind (an app bug, reported as ``internal``)."""
    answer = authorizer(request)
    if answer is True:
        return request.operations or ALL_OPERATIONS
    if answer is False or answer is None:
        return frozenset()
    if isinstance(answer, str | bytes) or not isinstance(answer, Iterable):
        raise ValueError("a join authoriser returns True, False or an iterable of operations")
    granted = frozenset(str(op) for op in answer)
    unknown = granted - ALL_OPERATIONS
    if unknown:
        raise ValueError(f"a join authoriser granted unknown operations {sorted(unknown)}")
    return granted
