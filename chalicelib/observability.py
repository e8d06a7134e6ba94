"""Structured logs and metrics with Powertools for AWS Lambda, installed on the first invocation.

app.py registers a Chalice middleware for every event type; on the first invocation it calls
:func:`observe`, which imports Powertools (about 30 ms; never at import time, so importing app.py
stays a cheap cold start that loads neither Powertools nor botocore), and from then on, per
invocation:

* **Logs.** One JSON object per line (Powertools ``Logger`` on Chalice's ``app.log`` logger,
  ``ws-rooms``, and on the ``chalicelib`` loggers).  Every line of the invocation carries the
  correlation keys: ``connection_id``, ``request_id`` and ``route`` for WebSocket events;
  ``message_ids`` (and, per record, ``message_id``) and ``queue`` for SQS; ``event_id`` for the
  schedule; ``request_id`` and ``route`` for REST; plus ``cold_start``, ``function_name`` and
  ``function_request_id`` everywhere.  ``LOG_LEVEL`` sets the level; Powertools' debug sampling
  (``POWERTOOLS_LOGGER_SAMPLE_RATE``) turns a fraction of invocations to DEBUG, which is where
  per-message detail is.  :class:`RedactingFormatter` scrubs every string of the JSON document
  (message, exception, extra keys) with :func:`chalicelib.redaction.redact`.
* **Metrics.** What the decision code recorded on the process-wide
  :class:`~chalicelib.metrics.Tally` is drained at the end of the invocation into **one** EMF
  document (Powertools ``Metrics``): namespace ``METRICS_NAMESPACE`` (default ``WsRooms``),
  dimensions ``service`` and ``stage`` only.  Nothing is printed when nothing was recorded.

The Lambda runtime runs one invocation at a time per container.  The local gateway may run
several at once in threads: their keys and metrics then mix (sums stay right).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.logging.types import LogRecord
from aws_lambda_powertools.metrics import MetricUnit

from chalicelib.errors import ConfigError
from chalicelib.metrics import COUNTERS, DEFAULT_NAMESPACE, SERVICE, TIMINGS, Tally
from chalicelib.redaction import REDACTED, redact

#: Loggers that get the JSON handler besides ``app.log`` (the library's module loggers).
LIBRARY_LOGGERS = ("chalicelib",)
_NAMESPACE = re.compile(r"[^\s:][^:]{0,254}")
_STAGE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: A key whose string value is a secret whatever it looks like (``extra={"token": ...}``).
_SECRET_KEY = re.compile(r"(?i)(token|jwt|authorization|password|secret|signature|credential)s?$")


@dataclass(frozen=True)
class Config:
    namespace: str
    stage: str
    level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Config:
        """``METRICS_NAMESPACE``, ``STAGE`` and ``LOG_LEVEL``; raises ConfigError naming one."""
        namespace = (environ.get("METRICS_NAMESPACE") or "").strip() or DEFAULT_NAMESPACE
        if not _NAMESPACE.fullmatch(namespace):
            raise ConfigError(f"METRICS_NAMESPACE={namespace!r} is not a CloudWatch namespace"
                              " (1 to 255 characters, no ':' and no leading space)")
        stage = (environ.get("STAGE") or "").strip() or "local"
        if not _STAGE.fullmatch(stage):
            raise ConfigError(f"STAGE={stage!r} must be 1 to 64 of A-Z a-z 0-9 _ . -")
        level = (environ.get("LOG_LEVEL") or "").strip().upper() or "INFO"
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"LOG_LEVEL={level!r} must be DEBUG, INFO, WARNING or ERROR")
        return cls(namespace=namespace, stage=stage, level=level)


def scrub(value: Any, key: str = "") -> Any:
    """``value`` with every string redacted, every string under a secret-named key replaced and
    every other object turned into redacted text; numbers, booleans and the structure are kept."""
    if isinstance(value, str):
        return REDACTED if key and _SECRET_KEY.search(key) else redact(value)
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item, key) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    # Anything else is written with str() (Powertools' stack_trace holds the exception itself).
    return scrub(str(value), key)


class RedactingFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON formatter, with :func:`scrub` applied to the whole document.

    The record factory of :func:`chalicelib.redaction.install` already scrubs the message; this
    covers what Powertools formats on its own: the exception it re-formats from ``exc_info``,
    the stack and the ``extra`` keys.
    """

    def serialize(self, log: LogRecord) -> str:
        scrubbed: dict[str, Any] = scrub(dict(log))
        return super().serialize(scrubbed)


class Observability:
    """The installed logging and metrics of this process (see :func:`install`)."""

    def __init__(self, app_logger: logging.Logger, config: Config, tally: Tally) -> None:
        self.config = config
        self._tally = tally
        self._app_logger = app_logger
        self._saved = _LoggingState.save(app_logger)
        # The service is the Chalice app's name (app.log is the logger of that name): Powertools
        # then logs through app.log itself, whatever app mounts the rooms blueprint.
        self.service = app_logger.name or SERVICE
        self.logger = Logger(service=self.service, level=config.level, stream=sys.stdout,
                             logger_formatter=RedactingFormatter())
        if logging.getLogger(self.service) is not app_logger:
            raise RuntimeError(f"app.log must be the {self.service!r} logger")
        # Chalice's plain-text stdout handler would print every line a second time.
        for handler in list(app_logger.handlers):
            if _is_chalice_handler(handler):
                app_logger.removeHandler(handler)
        # The library's loggers get the same JSON handler, and only that one (Powertools'
        # copy_config_to_registered_loggers would copy every handler of app.log, test captures
        # included); they stop propagating, so the Lambda runtime's root handler adds no copy.
        for name in LIBRARY_LOGGERS:
            library = logging.getLogger(name)
            library.addHandler(self.logger.logger_handler)
            library.propagate = False
        self.metrics = Metrics(namespace=config.namespace, service=self.service)
        self.metrics.set_default_dimensions(stage=config.stage)
        self.cold = True
        self._lock = threading.Lock()

    @contextmanager
    def invocation(self, keys: Mapping[str, Any], context: Any) -> Iterator[None]:
        """Correlate every line logged inside with ``keys``; flush the metrics at the end."""
        with self._lock:
            cold, self.cold = self.cold, False
        self.logger.refresh_sample_rate_calculation()
        level = self.logger.log_level
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(level)
        self.logger.clear_state()
        self.logger.append_keys(cold_start=cold, **_lambda_keys(context), **keys)
        try:
            yield
        finally:
            self.flush()
            self.logger.clear_state()

    def correlate(self, **keys: Any) -> None:
        """Add keys to every later line of this invocation (e.g. one SQS record's id)."""
        self.logger.append_keys(**keys)

    def flush(self) -> None:
        """Print what was recorded since the last flush as one EMF document (none if nothing)."""
        counts, timings = self._tally.drain()
        if not counts and not timings:
            return
        for name in COUNTERS:
            if counts.get(name):
                self.metrics.add_metric(name=name, unit=MetricUnit.Count, value=counts[name])
        for name in TIMINGS:
            for value in timings.get(name, ()):
                self.metrics.add_metric(name=name, unit=MetricUnit.Milliseconds, value=value)
        self.metrics.flush_metrics()

    def uninstall(self) -> None:
        # Powertools keeps metrics and default dimensions on the class: start the next clean.
        self.metrics.clear_default_dimensions()
        self.metrics.clear_metrics()
        self._saved.restore(self._app_logger, self.logger.logger_handler)


#: Chalice.FORMAT_STRING: the plain-text handler Chalice puts on app.log.
_CHALICE_FORMAT = "%(name)s - %(levelname)s - %(message)s"


def _is_chalice_handler(handler: logging.Handler) -> bool:
    fmt = getattr(handler.formatter, "_fmt", None)
    return type(handler) is logging.StreamHandler and fmt == _CHALICE_FORMAT


@dataclass
class _LoggingState:
    """What installing changes on the loggers, so :meth:`Observability.uninstall` can undo it."""

    app_handlers: list[logging.Handler]
    app_level: int
    libraries: dict[str, tuple[list[logging.Handler], int, bool]]

    @classmethod
    def save(cls, app_logger: logging.Logger) -> _LoggingState:
        libraries = {}
        for name in LIBRARY_LOGGERS:
            lib = logging.getLogger(name)
            libraries[name] = (list(lib.handlers), lib.level, lib.propagate)
        return cls(list(app_logger.handlers), app_logger.level, libraries)

    def restore(self, app_logger: logging.Logger, added: logging.Handler) -> None:
        app_logger.removeHandler(added)
        for handler in self.app_handlers:
            if handler not in app_logger.handlers:
                app_logger.addHandler(handler)
        app_logger.setLevel(self.app_level)
        for name, (handlers, level, propagate) in self.libraries.items():
            lib = logging.getLogger(name)
            for handler in list(lib.handlers):
                if handler not in handlers:
                    lib.removeHandler(handler)
            lib.setLevel(level)
            lib.propagate = propagate
        # Powertools marks the logger configured; a later install must configure it afresh.
        for attribute in ("init", "powertools_handler", "powertools_buffer_config",
                          "powertools_buffer_cache"):
            if hasattr(app_logger, attribute):
                delattr(app_logger, attribute)
        for handler in logging.root.handlers:
            for filt in list(handler.filters):
                if type(filt).__name__ == "SuppressFilter":
                    handler.removeFilter(filt)


def _lambda_keys(context: Any) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    name = getattr(context, "function_name", None)
    if isinstance(name, str):
        keys["function_name"] = name
    request_id = getattr(context, "aws_request_id", None)
    if isinstance(request_id, str):
        keys["function_request_id"] = request_id
    return keys


def correlation_keys(event: Any) -> dict[str, Any]:
    """The correlation keys of a Chalice event object (WebSocket, SQS, schedule or REST)."""
    kind = type(event).__name__
    if kind == "Request":
        ctx = event.context if isinstance(event.context, dict) else {}
        return {"request_id": ctx.get("requestId"),
                "route": f"{event.method} {ctx.get('resourcePath', event.path)}"}
    raw = event.to_dict() if hasattr(event, "to_dict") else {}
    raw = raw if isinstance(raw, dict) else {}
    if kind == "WebsocketEvent":
        ctx = raw.get("requestContext") or {}
        return {"connection_id": ctx.get("connectionId"), "request_id": ctx.get("requestId"),
                "route": ctx.get("routeKey")}
    if kind == "SQSEvent":
        records = [r for r in raw.get("Records") or [] if isinstance(r, dict)]
        arn = str(records[0].get("eventSourceARN", "")) if records else ""
        return {"message_ids": [str(r.get("messageId", "")) for r in records],
                "queue": arn.rsplit(":", 1)[-1]}
    if kind == "CloudWatchEvent":
        resources = raw.get("resources") or [""]
        return {"event_id": raw.get("id"), "rule": str(resources[0]).rsplit("/", 1)[-1]}
    return {"event_type": kind}


def _context_of(event: Any) -> Any:
    return getattr(event, "lambda_context", None) or getattr(event, "context", None)


_lock = threading.Lock()
_installed: Observability | None = None


def install(app_logger: logging.Logger, tally: Tally,
            environ: Mapping[str, str] | None = None) -> Observability:
    """The process's :class:`Observability`, created on first use (again if the configuration
    changed, e.g. ``LOG_LEVEL``); raises ConfigError for bad settings."""
    global _installed
    config = Config.from_env(os.environ if environ is None else environ)
    with _lock:
        if _installed is not None and _installed.config != config:
            _installed.uninstall()
            _installed = None
        if _installed is None:
            _installed = Observability(app_logger, config, tally)
        return _installed


def uninstall() -> None:
    """Undo :func:`install` (tests, and a reloading local gateway); idempotent."""
    global _installed
    with _lock:
        if _installed is not None:
            _installed.uninstall()
            _installed = None


def installed() -> Observability | None:
    return _installed


def observe(app_logger: logging.Logger, tally: Tally, event: Any,
            get_response: Callable[[Any], Any]) -> Any:
    """Run one invocation (``get_response(event)``) with correlated logs and one EMF flush."""
    observability = install(app_logger, tally)
    with observability.invocation(correlation_keys(event), _context_of(event)):
        return get_response(event)


def correlate(**keys: Any) -> None:
    """Add keys to the current invocation's lines (no-op when nothing is installed)."""
    current = _installed
    if current is not None:
        current.correlate(**keys)
