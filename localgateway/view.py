"""The live view of a running gateway: the app's output made readable, and the counters that
feed the ``/_gateway/`` page.

Transport-free: nothing here touches sockets. Three parts:

* :func:`render_line` turns one line a container printed into what the gateway prints: a
  Powertools JSON log line becomes ``time LEVEL [function] connection_id message`` (coloured on
  a TTY), an EMF document (``_aws.CloudWatchMetrics``) becomes one compact ``METRICS`` line and
  its values are summed, anything else passes through. URLs in what is printed lose their
  query-string values (tokens travel there).
* :class:`LiveStats` counts, thread-safely and bounded: invocations per function (from the
  containers' ``REPORT`` data), ``@connections`` calls by method and status, frames in and out
  per connection plus the last frames, the app's EMF metrics summed, and recent warnings.
* :class:`ContainerOutput` is the sink the containers' stdout readers feed, line by line.
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

#: How many recent frames and warnings the page shows.
RECENT_FRAMES = 40
RECENT_PROBLEMS = 30
#: Characters of a frame shown on the page.
FRAME_PREVIEW = 160
#: Longest line a container may print that is rendered as one line (longer ones are cut).
MAX_LINE = 64 * 1024
#: Durations kept per function for the percentiles.
DURATION_WINDOW = 500

COLOURS = {
    "DEBUG": "\033[2m",
    "INFO": "\033[36m",
    "WARNING": "\033[33m",
    "ERROR": "\033[31m",
    "CRITICAL": "\033[1;31m",
    "METRICS": "\033[35m",
}
RESET = "\033[0m"
_URL_QUERY = re.compile(r"((?:https?|wss?)://[^\s?\"']*)\?([^\s\"']*)")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def hide_query_values(text: str) -> str:
    """Every URL's query-string values replaced by ``...`` (names kept)."""

    def hide(match: re.Match[str]) -> str:
        query = "&".join(part.split("=", 1)[0] + ("=..." if "=" in part else "")
                         for part in match.group(2).split("&"))
        return f"{match.group(1)}?{query}"

    return _URL_QUERY.sub(hide, text)


def clean(text: str) -> str:
    """One printable line: control characters escaped, query values hidden."""
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", " ")
    return hide_query_values(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text))


def emf_values(document: Mapping[str, Any]) -> dict[str, float] | None:
    """The metric values of an EMF document, summed per name; None when it is not EMF."""
    aws = document.get("_aws")
    if not isinstance(aws, dict) or not isinstance(aws.get("CloudWatchMetrics"), list):
        return None
    values: dict[str, float] = {}
    for directive in aws["CloudWatchMetrics"]:
        metrics = directive.get("Metrics") if isinstance(directive, dict) else None
        for metric in metrics if isinstance(metrics, list) else []:
            name = metric.get("Name") if isinstance(metric, dict) else None
            if not isinstance(name, str) or name in values:
                continue
            raw = document.get(name)
            numbers = raw if isinstance(raw, list) else [raw]
            total = sum(float(n) for n in numbers
                        if isinstance(n, int | float) and not isinstance(n, bool))
            values[name] = total
    return values


def _clock(timestamp: object) -> str:
    """``HH:MM:SS.mmm`` of a Powertools timestamp (``2026-11-26 07:41:02,123+0000``)."""
    if isinstance(timestamp, str):
        match = re.search(r"(\d{2}:\d{2}:\d{2})(?:[.,](\d{1,3}))?", timestamp)
        if match:
            return f"{match.group(1)}.{(match.group(2) or '000').ljust(3, '0')}"
    if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
        seconds = timestamp / 1000 if timestamp > 1e11 else float(timestamp)
        millis = int(seconds * 1000) % 1000
        return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{millis:03d}"
    return time.strftime("%H:%M:%S") + ".000"


@dataclass(frozen=True)
class Rendered:
    """What one line of a container's output became."""

    kind: str  # "log", "metrics" or "text"
    text: str
    level: str = ""
    metrics: dict[str, float] | None = None


def render_line(line: str, function: str, colour: bool = False) -> Rendered:
    """Render one line a container printed (see the module docstring)."""
    stripped = line.rstrip("\r\n")
    document: Any = None
    if stripped.startswith("{") and stripped.endswith("}"):
        try:
            document = json.loads(stripped)
        except ValueError:
            document = None
    if not isinstance(document, dict):
        return Rendered("text", clean(stripped))
    metrics = emf_values(document)
    if metrics is not None:
        when = _clock(document.get("_aws", {}).get("Timestamp"))
        shown = " ".join(f"{name}={value:g}" for name, value in sorted(metrics.items()))
        return Rendered("metrics", _paint(f"{when} METRICS [{function}] {shown}", "METRICS",
                                          colour), "METRICS", metrics)
    if "level" not in document or "message" not in document:
        return Rendered("text", clean(stripped))
    level = str(document.get("level", "INFO")).upper()
    name = str(document.get("function_name") or function)
    message = document.get("message")
    text = message if isinstance(message, str) else json.dumps(message, default=str)
    parts = [_clock(document.get("timestamp")), f"{level:<7}", f"[{name}]"]
    cid = document.get("connection_id")
    if isinstance(cid, str) and cid:
        parts.append(cid)
    parts.append(text)
    exception = document.get("exception_name")
    if exception:
        detail = str(document.get("exception", "")).strip().splitlines()
        parts.append(f"[{exception}: {detail[-1] if detail else ''}]")
    return Rendered("log", _paint(clean(" ".join(parts)), level, colour), level)


def _paint(text: str, level: str, colour: bool) -> str:
    code = COLOURS.get(level)
    return f"{code}{text}{RESET}" if colour and code else text


def use_colour(stream: TextIO) -> bool:
    """Colour on a TTY, unless ``NO_COLOR`` is set."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("NO_COLOR")


@dataclass
class FunctionStats:
    invocations: int = 0
    errors: int = 0
    timeouts: int = 0
    throttles: int = 0
    cold_starts: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    last_ms: float = 0.0
    durations: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=DURATION_WINDOW))

    def as_dict(self) -> dict[str, Any]:
        ordered = sorted(self.durations)

        def percentile(p: float) -> float:
            if not ordered:
                return 0.0
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

        return {
            "invocations": self.invocations, "errors": self.errors, "timeouts": self.timeouts,
            "throttles": self.throttles, "cold_starts": self.cold_starts,
            "avg_ms": round(self.total_ms / self.invocations, 2) if self.invocations else 0.0,
            "p50_ms": round(percentile(0.5), 2), "p99_ms": round(percentile(0.99), 2),
            "max_ms": round(self.max_ms, 2), "last_ms": round(self.last_ms, 2),
        }


@dataclass
class FrameCounts:
    frames_in: int = 0
    frames_out: int = 0


def preview(data: str | bytes) -> str:
    """A short printable preview of a frame (binary frames by size only)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return f"<{len(data)} bytes of binary>"
    text = clean(data)
    return text if len(text) <= FRAME_PREVIEW else text[:FRAME_PREVIEW] + "..."


class LiveStats:
    """Everything the page shows that the gateway learns as it runs. Thread-safe, bounded."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self._functions: dict[str, FunctionStats] = {}
        self._management: collections.Counter[tuple[str, int]] = collections.Counter()
        self._metrics: dict[str, float] = {}
        self._frames: dict[str, FrameCounts] = {}
        self._recent_frames: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECENT_FRAMES)
        self._problems: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=RECENT_PROBLEMS)

    def _function(self, name: str) -> FunctionStats:
        stats = self._functions.get(name)
        if stats is None:
            stats = self._functions[name] = FunctionStats()
        return stats

    def record_invocation(self, function: str, duration_ms: float, outcome: str = "ok",
                          cold: bool = False) -> None:
        """One invocation: ``outcome`` is ``ok``, ``error``, ``timeout`` or ``throttled``."""
        with self._lock:
            stats = self._function(function)
            if outcome == "throttled":
                stats.throttles += 1
                return
            stats.invocations += 1
            stats.errors += outcome in ("error", "timeout")
            stats.timeouts += outcome == "timeout"
            stats.cold_starts += cold
            stats.total_ms += duration_ms
            stats.max_ms = max(stats.max_ms, duration_ms)
            stats.last_ms = duration_ms
            stats.durations.append(duration_ms)

    def record_management(self, method: str, status: int) -> None:
        with self._lock:
            self._management[(method.upper(), status)] += 1

    def record_metrics(self, values: Mapping[str, float]) -> None:
        with self._lock:
            for name, value in values.items():
                self._metrics[name] = self._metrics.get(name, 0.0) + value

    def record_frame(self, connection_id: str, direction: str, data: str | bytes) -> None:
        """A frame ``in`` (client to gateway) or ``out`` (delivered by ``@connections``)."""
        with self._lock:
            counts = self._frames.setdefault(connection_id, FrameCounts())
            if direction == "in":
                counts.frames_in += 1
            else:
                counts.frames_out += 1
            self._recent_frames.append({"time": self._clock(), "connection_id": connection_id,
                                        "direction": direction, "data": preview(data)})

    def forget_connection(self, connection_id: str) -> None:
        with self._lock:
            self._frames.pop(connection_id, None)

    def frames(self, connection_id: str) -> FrameCounts:
        with self._lock:
            counts = self._frames.get(connection_id)
            return FrameCounts(counts.frames_in, counts.frames_out) if counts else FrameCounts()

    def record_problem(self, level: str, text: str) -> None:
        """A WARNING or worse line of the app's log (shown on the page without reading logs)."""
        with self._lock:
            self._problems.append({"time": self._clock(), "level": level, "text": text})

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            management = [
                {"method": method, "status": status, "count": count}
                for (method, status), count in sorted(self._management.items())
            ]
            by_status: collections.Counter[int] = collections.Counter()
            for (_method, status), count in self._management.items():
                by_status[status] += count
            return {
                "uptime_s": round(self._clock() - self.started, 1),
                "functions": {name: stats.as_dict()
                              for name, stats in sorted(self._functions.items())},
                "management": management,
                "management_by_status": {str(s): c for s, c in sorted(by_status.items())},
                "metrics": dict(sorted(self._metrics.items())),
                "recent_frames": list(self._recent_frames),
                "problems": list(self._problems),
            }


class ContainerOutput:
    """Where the containers' stdout goes, one line at a time: rendered to ``stream`` (the
    gateway's stderr by default), EMF values summed into ``stats``."""

    def __init__(self, stats: LiveStats, stream: TextIO | None = None,
                 colour: bool | None = None) -> None:
        self.stats = stats
        self.stream = stream if stream is not None else sys.stderr
        self.colour = use_colour(self.stream) if colour is None else colour
        self._lock = threading.Lock()

    def __call__(self, function: str, line: str) -> None:
        rendered = render_line(line[:MAX_LINE], function, self.colour)
        if rendered.metrics is not None:
            self.stats.record_metrics(rendered.metrics)
        elif rendered.level in ("WARNING", "ERROR", "CRITICAL"):
            self.stats.record_problem(rendered.level, render_line(line[:MAX_LINE], function).text)
        with self._lock:
            try:
                self.stream.write(rendered.text + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass
