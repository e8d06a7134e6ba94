"""The one interface through which the gateway runs Lambda handlers.

Everything that runs app code (WebSocket routes, SQS, schedules) goes through :class:`Invoker`.
The in-process implementation calls the handler in the calling thread (the server calls it from a
bounded thread pool); a later implementation may run each Lambda function in worker processes.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from chalice.app import Chalice
from chalice.local import LambdaContext


class InvocationError(Exception):
    """The handler raised. ``details`` holds the formatted traceback."""

    def __init__(self, function: str, message: str, details: str) -> None:
        super().__init__(f"{function}: {message}")
        self.function = function
        self.details = details


class UnknownFunctionError(LookupError):
    pass


class Invoker(Protocol):
    def invoke(self, function: str, event: dict[str, Any]) -> dict[str, Any]:
        """Run the Lambda handler ``function`` (its Chalice handler name) with ``event``.

        Returns the handler's response (``{}`` when it returned nothing); raises
        :class:`InvocationError` when the handler raised, :class:`UnknownFunctionError` when no
        such function exists.
        """
        ...


class ReloadLock:
    """Invocations share it; a reload holds it alone (writers first, so reloads never starve).

    In-process, a reload swaps the app's modules in ``sys.modules``: a handler running at that
    moment could import a half-replaced module (``KeyError: 'chalicelib.errors'``).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @property
    def writers_waiting(self) -> int:
        """Reloads waiting for running handlers to return."""
        with self._cond:
            return self._waiting_writers

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Held while a handler runs; waits while a reload is pending or running."""
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Held during a reload; waits for running handlers to return."""
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class InProcessInvoker:
    """Calls handlers of the current app object in the calling thread.

    ``app_source`` returns the current app, so a reloaded app takes effect on the next call;
    reloads take ``reload_lock.writing()`` so they never run beside a handler.
    """

    def __init__(
        self,
        app_source: Callable[[], Chalice],
        memory_size: int = 128,
        timeout_ms: int = 60_000,
        reload_lock: ReloadLock | None = None,
    ) -> None:
        self._app_source = app_source
        self._memory_size = memory_size
        self._timeout_ms = timeout_ms
        self.reload_lock = reload_lock or ReloadLock()

    def invoke(self, function: str, event: dict[str, Any]) -> dict[str, Any]:
        with self.reload_lock.reading():
            return self._invoke(function, event)

    def _invoke(self, function: str, event: dict[str, Any]) -> dict[str, Any]:
        app = self._app_source()
        handler = app.handler_map.get(function)
        if handler is None:
            raise UnknownFunctionError(function)
        context = LambdaContext(function, self._memory_size, self._timeout_ms)
        try:
            result = handler(event, context)
        except Exception as exc:
            raise InvocationError(function, repr(exc), traceback.format_exc()) from exc
        if result is None:
            return {}
        if isinstance(result, dict):
            return result
        return {"result": result}
