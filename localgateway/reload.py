"""Reload the app when the content of the project's source or configuration changes.

watchdog only *triggers* a check: Chalice pins watchdog 2.3.1, which also reports file opens,
and a reload's own imports open files. A check hashes every watched file (``*.py``, ``*.json``
outside ignored folders) and calls ``on_change`` only when the hashes differ from the last
reload's, after a debounce, so an editor's burst of writes is one reload and an import, a
``touch`` or an unchanged save is none.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

LOG = logging.getLogger("localgateway.reload")

IGNORED_PARTS = {".local", "__pycache__", ".git", ".venv", "venv", "deployments", ".mypy_cache",
                 ".pytest_cache", ".ruff_cache", "node_modules", ".hypothesis"}
WATCHED_SUFFIXES = (".py", ".json")
#: watchdog event types that can change content (not "opened"/"closed").
CHANGE_EVENTS = frozenset({"modified", "created", "deleted", "moved"})


def is_relevant(path: str) -> bool:
    parts = set(path.replace("\\", "/").split("/"))
    return path.endswith(WATCHED_SUFFIXES) and not parts & IGNORED_PARTS


def _watched_dir(name: str) -> bool:
    return name not in IGNORED_PARTS and (not name.startswith(".") or name == ".chalice")


def watched_files(root: str) -> Iterator[str]:
    """Every file whose content a reload depends on, in a stable order."""
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if _watched_dir(d))
        for name in sorted(files):
            path = os.path.join(current, name)
            if is_relevant(path):
                yield path


def content_digest(root: str) -> str:
    """One hash over the paths and contents of :func:`watched_files` (unreadable files count
    as absent)."""
    digest = hashlib.sha256()
    for path in watched_files(root):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


class Reloader:
    """Watches ``root`` and calls ``on_change`` (debounced) after real content changes.

    Call :meth:`start` once and :meth:`stop` at shutdown. ``on_change`` runs in a timer thread;
    an exception it raises is logged and the next change is checked as usual.
    """

    def __init__(self, root: str, on_change: Callable[[], None], debounce: float = 0.3) -> None:
        self.root = os.path.abspath(root)
        self.on_change = on_change
        self.debounce = debounce
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        self._observer: Any = None
        self._digest = content_digest(self.root)
        self.reloads = 0
        self.checks = 0

    def start(self) -> None:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        reloader = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory or event.event_type not in CHANGE_EVENTS:
                    return
                paths = [str(event.src_path), str(getattr(event, "dest_path", "") or "")]
                if any(p and is_relevant(p) for p in paths):
                    reloader.schedule()

        self._observer = Observer()  # type: ignore[no-untyped-call]
        handler = Handler()
        # The root itself non-recursively, then each subfolder worth watching: a recursive watch
        # of the root would also cover a virtualenv inside the project (thousands of folders).
        self._observer.schedule(handler, self.root, recursive=False)
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.is_dir() and _watched_dir(entry.name):
                self._observer.schedule(handler, entry.path, recursive=True)
        self._observer.daemon = True
        self._observer.start()

    def schedule(self) -> None:
        """Check for a content change ``debounce`` seconds after the last call."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self.debounce, self.check)
            self._timer.daemon = True
            self._timer.start()

    def check(self) -> bool:
        """Hash the watched files; call ``on_change`` if they changed. True when it did."""
        with self._check_lock:
            self.checks += 1
            digest = content_digest(self.root)
            if digest == self._digest:
                LOG.info("files touched but their content is unchanged; not reloading")
                return False
            self._digest = digest
            self.reloads += 1
            try:
                self.on_change()
            except Exception:
                LOG.exception("reload failed; keeping the previous app")
            return True

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
