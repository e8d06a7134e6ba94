"""Reload the app in-process when project files change (open WebSocket connections stay open)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

LOG = logging.getLogger("localgateway.reload")

IGNORED_PARTS = {".local", "__pycache__", ".git", ".venv", "venv", "deployments", ".mypy_cache",
                 ".pytest_cache", ".ruff_cache", "node_modules", ".hypothesis"}
WATCHED_SUFFIXES = (".py", ".json")


def is_relevant(path: str) -> bool:
    parts = set(path.replace("\\", "/").split("/"))
    return path.endswith(WATCHED_SUFFIXES) and not parts & IGNORED_PARTS


class Reloader:
    """Watches ``root`` with watchdog and calls ``on_change`` (debounced) after edits."""

    def __init__(self, root: str, on_change: Callable[[], None], debounce: float = 0.3) -> None:
        self.root = os.path.abspath(root)
        self.on_change = on_change
        self.debounce = debounce
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._observer: Any = None

    def start(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        reloader = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
                if not event.is_directory and any(p and is_relevant(p) for p in paths):
                    reloader.schedule()

        self._observer = Observer()  # type: ignore[no-untyped-call]
        handler = Handler()
        # The root itself non-recursively, then each subfolder worth watching: a recursive watch
        # of the root would also cover a virtualenv inside the project (thousands of folders).
        self._observer.schedule(handler, self.root, recursive=False)
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.is_dir() and entry.name not in IGNORED_PARTS and (
                not entry.name.startswith(".") or entry.name == ".chalice"
            ):
                self._observer.schedule(handler, entry.path, recursive=True)
        self._observer.daemon = True
        self._observer.start()

    def schedule(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.debounce, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        try:
            self.on_change()
        except Exception:
            LOG.exception("reload failed; keeping the previous app")

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
