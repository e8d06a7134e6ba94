"""Lambda's execution model on this machine: every function in worker processes of its own.

:class:`ContainerInvoker` implements :class:`localgateway.invoker.Invoker`:

* each Lambda function (Chalice handler name, or ``api_handler`` for REST) has a
  :class:`FunctionPool` of containers (:mod:`localgateway.worker` processes);
* a warm container is reused (most recently used first); concurrent invocations get separate
  containers up to ``max_containers`` per function, past which they queue (bounded wait), like
  reserved concurrency;
* a new container is a cold start: it imports the app, timed as Lambda's ``Init Duration``;
* after every invocation a ``REPORT`` line is logged (logger ``localgateway.lambda``) and handed
  to ``on_report`` (the live view's counters);
* a container's stdout and stderr are read line by line (unbuffered: ``python -u``) and handed
  to ``output(function, line)`` when one is given (the live view renders the app's JSON logs and
  sums its EMF metrics), else inherited;
* an invocation past the function's timeout is killed with its container
  (:class:`InvocationTimeout`);
* containers idle longer than ``idle_seconds`` are reaped;
* :meth:`ContainerInvoker.rollover` starts a new code generation (reload): the old containers
  keep serving until one container of each given function of the new generation imports
  cleanly.

Blocking calls: :meth:`ContainerInvoker.invoke` blocks the calling thread (the gateway calls it
from its bounded thread pool, never on the event loop).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import select
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from localgateway.invoker import InvocationError, UnknownFunctionError
from localgateway.worker import MessageReader, ProtocolError, write_message

LOG = logging.getLogger("localgateway.containers")
REPORT_LOG = logging.getLogger("localgateway.lambda")

WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")
#: Lambda's defaults when ``.chalice/config.json`` sets nothing (as ``chalice deploy``).
DEFAULT_TIMEOUT_SECONDS = 60
DEFAULT_MEMORY_MB = 128
#: Lambda gives the init phase 10 s; a loaded laptop gets more before we call it a failure.
INIT_TIMEOUT_SECONDS = 30.0
#: How long after SIGTERM a stopped container gets before SIGKILL.
STOP_GRACE_SECONDS = 2.0
#: Containers stopped at once when the gateway shuts down.
MAX_PARALLEL_STOPS = 8


def default_max_containers(cpu_count: int | None = None) -> int:
    """Containers per function by default: the CPU count, at least 2, at most 4.

    Handlers mostly wait on I/O (the management API, the store), so a second container per
    function pays off even on one core; more than four per function only adds memory.
    """
    cpus = cpu_count if cpu_count is not None else (os.cpu_count() or 2)
    return max(2, min(4, cpus))


class InvocationTimeout(InvocationError):
    """The invocation ran past the function's timeout; its container was killed."""


class ContainerInitError(InvocationError):
    """A new container failed to import the app (or did not report ready in time)."""


class ThrottledError(InvocationError):
    """Every container of the function stayed busy for the whole queueing bound."""


@dataclass(frozen=True)
class FunctionSettings:
    """What Lambda knows about one function: its limits and its environment."""

    name: str
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    memory_mb: int = DEFAULT_MEMORY_MB
    environment: Mapping[str, str] = field(default_factory=dict)
    #: Chalice's ``reserved_concurrency``: caps the function's containers (0 = throttled).
    reserved_concurrency: int | None = None


@dataclass(frozen=True)
class Generation:
    """One version of the code: containers are started from it, and retired when it is old."""

    number: int
    project_dir: str
    settings: Callable[[str], FunctionSettings]


@dataclass(frozen=True)
class Report:
    """What one invocation cost, as in Lambda's ``REPORT`` line."""

    function: str
    request_id: str
    duration_ms: float
    memory_mb: int
    max_memory_used_mb: int
    init_duration_ms: float | None = None
    timed_out: bool = False

    def line(self) -> str:
        """``REPORT RequestId: ... Duration: ... Max Memory Used: ... [Init Duration: ...]``."""
        billed = max(1, math.ceil(self.duration_ms))
        text = (
            f"REPORT RequestId: {self.request_id}\tFunction: {self.function}\t"
            f"Duration: {self.duration_ms:.2f} ms\tBilled Duration: {billed} ms\t"
            f"Memory Size: {self.memory_mb} MB\tMax Memory Used: {self.max_memory_used_mb} MB"
        )
        if self.init_duration_ms is not None:
            text += f"\tInit Duration: {self.init_duration_ms:.2f} ms"
        if self.timed_out:
            text += "\tStatus: timeout"
        return text


class ContainerDied(Exception):
    """The worker process exited or closed its pipe."""


class _Deadline(Exception):
    pass


class Container:
    """One worker process running one function. Used by one thread at a time."""

    _numbers = itertools.count(1)

    def __init__(self, function: FunctionSettings, generation: Generation,
                 log_level: str = "INFO", output: Callable[[str, str], None] | None = None
                 ) -> None:
        self.function = function
        self.output = output
        self._output_thread: threading.Thread | None = None
        self.generation = generation
        self.number = next(self._numbers)
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self.init_ms: float | None = None
        self.import_ms: float | None = None
        self.cold = True
        self.last_used = time.monotonic()
        self.max_rss_mb = 0
        self._read_fd = -1
        self._reader = MessageReader()

    @property
    def label(self) -> str:
        return f"{self.function.name}#{self.number}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self, timeout: float = INIT_TIMEOUT_SECONDS) -> float:
        """Start the process and wait until it imported the app; returns the init time (ms):
        from spawning the interpreter to ready, like Lambda's ``Init Duration`` (runtime start
        plus the handler module's import; :attr:`import_ms` is the import alone).

        Raises :class:`ContainerInitError` when the import fails or takes longer than
        ``timeout`` seconds (the process is stopped).
        """
        started = time.perf_counter()
        read_fd, write_fd = os.pipe()
        env = dict(self.function.environment)
        env["PYTHONUNBUFFERED"] = "1"
        captured = self.output is not None
        cmd = [sys.executable, "-u", "-P", WORKER_PATH,
               "--project-dir", self.generation.project_dir,
               "--function", self.function.name,
               "--response-fd", str(write_fd),
               "--log-level", self.log_level]
        try:
            self.process = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE if captured else None,
                stderr=subprocess.STDOUT if captured else None, env=env,
                cwd=self.generation.project_dir, pass_fds=(write_fd,), close_fds=True,
            )
        finally:
            os.close(write_fd)
        if captured and self.process.stdout is not None:
            self._output_thread = threading.Thread(
                target=self._pump_output, args=(self.process.stdout,),
                name=f"output-{self.label}", daemon=True)
            self._output_thread.start()
        self._read_fd = read_fd
        try:
            message = self._receive(time.monotonic() + timeout)
        except _Deadline:
            self.kill()
            raise ContainerInitError(
                self.function.name, f"init did not finish within {timeout:.0f} s", ""
            ) from None
        except ContainerDied:
            self.kill()
            raise ContainerInitError(self.function.name, "the container exited during init",
                                     "") from None
        if message.get("type") != "ready":
            self.kill()
            error = f"{message.get('errorType', 'Error')}: {message.get('errorMessage', '')}"
            raise ContainerInitError(self.function.name, error, error)
        self.import_ms = float(message.get("init_ms", 0.0))
        self.init_ms = (time.perf_counter() - started) * 1000
        self.max_rss_mb = int(message.get("max_rss_mb", 0))
        return self.init_ms

    def _pump_output(self, stream: Any) -> None:
        """Hand every line the container prints to ``output`` until it exits."""
        output = self.output
        assert output is not None
        name = self.function.name
        try:
            while True:
                raw = stream.readline(1 << 16)
                if not raw:
                    return
                try:
                    output(name, raw.decode("utf-8", errors="replace"))
                except Exception:  # a broken sink must not stop the container's output
                    LOG.exception("rendering the output of %s failed", self.label)
        except (OSError, ValueError):
            return
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _receive(self, deadline: float | None) -> dict[str, Any]:
        while True:
            try:
                message = self._reader.next()
            except ProtocolError as exc:
                raise ContainerDied(str(exc)) from None
            if message is not None:
                return message
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise _Deadline
            # poll(), not select(): the gateway may hold more than FD_SETSIZE (1024) sockets.
            poller = select.poll()
            poller.register(self._read_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            timeout_ms = None if remaining is None else max(1, math.ceil(remaining * 1000))
            if not poller.poll(timeout_ms):
                raise _Deadline
            chunk = os.read(self._read_fd, 1 << 16)
            if not chunk:
                raise ContainerDied("the container closed its pipe")
            self._reader.feed(chunk)

    def invoke(self, request_id: str, event: Any) -> tuple[bool, dict[str, Any]]:
        """Run one invocation; returns ``(ok, reply)``.

        Raises :class:`InvocationTimeout` (after killing the process) past the function's
        timeout, :class:`ContainerDied` when the process went away.
        """
        process = self.process
        if process is None or process.stdin is None:
            raise ContainerDied("not started")
        timeout = self.function.timeout_seconds
        request = {"type": "invoke", "request_id": request_id, "event": event,
                   "timeout_ms": int(timeout * 1000), "memory_mb": self.function.memory_mb}
        deadline = time.monotonic() + timeout
        try:
            write_message(process.stdin.fileno(), request)
            reply = self._receive(deadline)
        except _Deadline:
            self.kill()
            raise InvocationTimeout(
                self.function.name,
                f"Task timed out after {timeout:.2f} seconds",
                f"{request_id} Task timed out after {timeout:.2f} seconds",
            ) from None
        except OSError as exc:
            self.kill()
            raise ContainerDied(str(exc)) from None
        except ContainerDied:
            self.kill()
            raise
        self.cold = False
        self.max_rss_mb = int(reply.get("max_rss_mb", self.max_rss_mb))
        return bool(reply.get("ok")), reply

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Close stdin (the worker exits), then SIGTERM/SIGKILL if it lingers. Idempotent."""
        process = self.process
        if process is None:
            return
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_GRACE_SECONDS)
        self._close_fd()

    def kill(self) -> None:
        """SIGKILL the process at once (timeouts, broken protocol). Idempotent."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_GRACE_SECONDS)
        if process is not None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        self._close_fd()

    def _close_fd(self) -> None:
        if self._read_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._read_fd)
            self._read_fd = -1


ContainerFactory = Callable[[FunctionSettings, Generation], Container]
#: ``output(function, line)``: one line a container printed.
OutputSink = Callable[[str, str], None]
#: ``on_report(function, duration_ms, outcome, cold)``; outcome: ok, error, timeout, throttled.
ReportSink = Callable[[str, float, str, bool], None]


class FunctionPool:
    """The containers of one function: warm reuse, a concurrency cap, queueing past it."""

    def __init__(self, name: str, max_containers: int) -> None:
        if max_containers < 1:
            raise ValueError("max_containers must be at least 1")
        self.name = name
        self.max_containers = max_containers
        self._cond = threading.Condition()
        self._idle: list[Container] = []
        self._busy: set[Container] = set()
        self._starting = 0

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"idle": len(self._idle), "busy": len(self._busy), "starting": self._starting}

    def acquire(self, generation: Generation, start: Callable[[], Container],
                wait_seconds: float) -> Container:
        """A warm container of ``generation``, or a new one (cold start) under the cap.

        Blocks up to ``wait_seconds`` when all ``max_containers`` are busy; raises
        :class:`ThrottledError` after that, :class:`ContainerInitError` if a cold start fails.
        """
        deadline = time.monotonic() + wait_seconds
        stale: list[Container] = []
        try:
            with self._cond:
                while True:
                    while self._idle:
                        container = self._idle.pop()
                        if container.generation.number == generation.number and container.alive():
                            self._busy.add(container)
                            return container
                        stale.append(container)
                    if len(self._busy) + self._starting < self.max_containers:
                        self._starting += 1
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise ThrottledError(
                            self.name,
                            f"all {self.max_containers} containers stayed busy for "
                            f"{wait_seconds:.0f} s",
                            "",
                        )
                    self._cond.wait(remaining)
        finally:
            for container in stale:
                container.stop()
        try:
            container = start()
        except BaseException:
            with self._cond:
                self._starting -= 1
                self._cond.notify()
            raise
        with self._cond:
            self._starting -= 1
            self._busy.add(container)
        return container

    def adopt(self, container: Container) -> bool:
        """Add an already started container as idle (pre-warming); False when at the cap."""
        with self._cond:
            if len(self._busy) + self._starting + len(self._idle) >= self.max_containers:
                return False
            container.last_used = time.monotonic()
            self._idle.append(container)
            self._cond.notify()
            return True

    def release(self, container: Container, current: Generation) -> None:
        """Return a container after an invocation: kept warm, or stopped when dead or old."""
        keep = container.alive() and container.generation.number == current.number
        with self._cond:
            self._busy.discard(container)
            if keep:
                container.last_used = time.monotonic()
                self._idle.append(container)
            self._cond.notify()
        if not keep and container.alive():
            container.stop()  # an old generation's: let it exit cleanly
        elif not keep:
            container.kill()  # already dead: reap it and close its pipes

    def retire(self, current: Generation) -> int:
        """Stop idle containers of older generations (busy ones stop when released)."""
        with self._cond:
            old = [c for c in self._idle if c.generation.number != current.number]
            self._idle = [c for c in self._idle if c.generation.number == current.number]
        for container in old:
            container.stop()
        return len(old)

    def reap(self, idle_seconds: float, now: float) -> list[Container]:
        """Stop and return the containers idle for at least ``idle_seconds``."""
        with self._cond:
            expired = [c for c in self._idle if now - c.last_used >= idle_seconds]
            self._idle = [c for c in self._idle if c not in expired]
        for container in expired:
            container.stop()
        return expired

    def close(self) -> list[Container]:
        """Kill the busy containers (the gateway is shutting down) and hand back the idle ones,
        for the caller to :meth:`Container.stop` (all pools' at once: see
        :meth:`ContainerInvoker.close`)."""
        with self._cond:
            idle, busy = self._idle, list(self._busy)
            self._idle = []
        for container in busy:
            container.kill()
        return idle


class ContainerInvoker:
    """Runs every invocation in a container of its function (see the module docstring).

    ``settings(function)`` gives a function's timeout, memory and environment (called when a
    container starts). Call :meth:`close` at shutdown.
    """

    def __init__(
        self,
        project_dir: str,
        settings: Callable[[str], FunctionSettings],
        known_functions: Callable[[], Iterable[str]],
        max_containers: int | None = None,
        idle_seconds: float = 300.0,
        log_level: str = "INFO",
        factory: ContainerFactory | None = None,
        output: OutputSink | None = None,
        on_report: ReportSink | None = None,
    ) -> None:
        self.max_containers = max_containers or default_max_containers()
        self.on_report = on_report
        self.idle_seconds = idle_seconds
        self.log_level = log_level
        self._known_functions = known_functions
        self._factory = factory or (
            lambda fn, gen: Container(fn, gen, self.log_level, output))
        self._lock = threading.Lock()
        self._generation = Generation(1, os.path.abspath(project_dir), settings)
        self._pools: dict[str, FunctionPool] = {}
        self._closed = threading.Event()
        self._reaper: threading.Thread | None = None

    @property
    def generation(self) -> Generation:
        with self._lock:
            return self._generation

    def pool(self, function: str, settings: FunctionSettings | None = None) -> FunctionPool:
        """The function's pool: ``max_containers``, or its ``reserved_concurrency`` if lower."""
        with self._lock:
            pool = self._pools.get(function)
            if pool is None:
                cap = self.max_containers
                reserved = settings.reserved_concurrency if settings is not None else None
                if reserved:
                    cap = min(cap, reserved)
                pool = self._pools[function] = FunctionPool(function, cap)
            return pool

    def stats(self) -> dict[str, dict[str, int]]:
        with self._lock:
            pools = dict(self._pools)
        return {name: pool.stats() for name, pool in sorted(pools.items())}

    # ----- lifecycle -------------------------------------------------------------------------

    def start_reaper(self) -> None:
        """Start the thread that stops containers idle for ``idle_seconds``."""
        if self._reaper is None and self.idle_seconds > 0:
            self._reaper = threading.Thread(target=self._reap_loop, name="container-reaper",
                                            daemon=True)
            self._reaper.start()

    def _reap_loop(self) -> None:
        interval = min(1.0, max(0.05, self.idle_seconds / 4))
        while not self._closed.wait(interval):
            with self._lock:
                pools = list(self._pools.values())
            now = time.monotonic()
            for pool in pools:
                for container in pool.reap(self.idle_seconds, now):
                    LOG.info("reaped container %s (pid %s) after %.0f s idle", container.label,
                             container.pid, now - container.last_used)

    def close(self) -> None:
        """Stop the reaper and every container.

        Idle containers stop in parallel: each takes its interpreter's exit time (tens of ms),
        and a gateway with a dozen warm containers would otherwise stop one after the other.
        """
        self._closed.set()
        with self._lock:
            pools = list(self._pools.values())
        idle = [container for pool in pools for container in pool.close()]
        if idle:
            with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_STOPS, len(idle)),
                                    thread_name_prefix="container-stop") as executor:
                list(executor.map(Container.stop, idle))

    def _start(self, function: str, generation: Generation) -> Container:
        container = self._factory(generation.settings(function), generation)
        init_ms = container.start()
        LOG.info("cold start: %s (pid %s) ready in %.0f ms (importing the app: %.0f ms)",
                 container.label, container.pid, init_ms, container.import_ms or 0.0)
        return container

    def prewarm(self, functions: Iterable[str], generation: Generation | None = None
                ) -> list[Container]:
        """Start one container of each function in parallel and return them (not pooled).

        Raises :class:`ContainerInitError` for the first that fails (the others are stopped).
        """
        generation = generation or self.generation
        names = list(dict.fromkeys(functions))
        if not names:
            return []
        with ThreadPoolExecutor(max_workers=min(4, len(names)),
                                thread_name_prefix="prewarm") as executor:
            futures = [executor.submit(self._start, name, generation) for name in names]
        started: list[Container] = []
        failure: BaseException | None = None
        for future in futures:
            try:
                started.append(future.result())
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            for container in started:
                container.stop()
            raise failure
        return started

    def start(self, functions: Iterable[str]) -> None:
        """Fail fast: one warm container of each function before the gateway says ready.

        Raises :class:`ContainerInitError` when the app does not import.
        """
        generation = self.generation
        for container in self.prewarm(functions, generation):
            if not self.pool(container.function.name, container.function).adopt(container):
                container.stop()
        self.start_reaper()

    def rollover(self, settings: Callable[[str], FunctionSettings],
                 functions: Iterable[str]) -> Generation:
        """Switch to new code once one container of each of ``functions`` imports cleanly.

        On :class:`ContainerInitError` nothing changes (the old containers keep serving) and
        the error propagates. On success idle old containers are stopped, busy ones after
        their invocation.
        """
        current = self.generation
        candidate = Generation(current.number + 1, current.project_dir, settings)
        warmed = self.prewarm(functions, candidate)
        with self._lock:
            self._generation = candidate
            pools = list(self._pools.values())
        for pool in pools:
            pool.retire(candidate)
        for container in warmed:
            if not self.pool(container.function.name, container.function).adopt(container):
                container.stop()
        return candidate

    # ----- invocations -----------------------------------------------------------------------

    def _report(self, function: str, duration_ms: float, outcome: str, cold: bool) -> None:
        if self.on_report is not None:
            try:
                self.on_report(function, duration_ms, outcome, cold)
            except Exception:
                LOG.exception("on_report failed")

    def invoke(self, function: str, event: dict[str, Any]) -> dict[str, Any]:
        """Run ``function`` with ``event`` in one of its containers (blocking).

        Raises :class:`UnknownFunctionError` for a name the app does not have,
        :class:`InvocationTimeout` past the timeout, :class:`ContainerInitError` when a cold
        start fails, :class:`ThrottledError` when no container frees up in time, and
        :class:`InvocationError` when the handler raised (its traceback is in the container's
        log).
        """
        if function not in set(self._known_functions()):
            raise UnknownFunctionError(function)
        generation = self.generation
        settings = generation.settings(function)
        if settings.reserved_concurrency == 0:
            self._report(function, 0.0, "throttled", False)
            raise ThrottledError(function, "Rate Exceeded: reserved_concurrency is 0", "")
        pool = self.pool(function, settings)
        wait = max(settings.timeout_seconds, 10.0) * 2
        try:
            container = pool.acquire(generation, lambda: self._start(function, generation),
                                     wait)
        except ThrottledError:
            self._report(function, 0.0, "throttled", False)
            raise
        except ContainerInitError:
            self._report(function, 0.0, "error", True)
            raise
        request_id = str(uuid.uuid4())
        init_ms = container.init_ms if container.cold else None
        try:
            ok, reply = container.invoke(request_id, event)
        except InvocationTimeout as exc:
            REPORT_LOG.error("%s", exc.details)
            REPORT_LOG.info("%s", Report(function, request_id, settings.timeout_seconds * 1000,
                                         settings.memory_mb, container.max_rss_mb, init_ms,
                                         timed_out=True).line())
            self._report(function, settings.timeout_seconds * 1000, "timeout", init_ms is not None)
            raise
        except ContainerDied as exc:
            self._report(function, 0.0, "error", init_ms is not None)
            raise InvocationError(function, f"Runtime.ExitError: the container died ({exc})",
                                  f"RequestId: {request_id} Error: Runtime exited") from None
        finally:
            pool.release(container, self.generation)
        duration_ms = float(reply.get("duration_ms", 0.0))
        REPORT_LOG.info("%s", Report(function, request_id, duration_ms,
                                     settings.memory_mb, container.max_rss_mb, init_ms).line())
        self._report(function, duration_ms, "ok" if ok else "error", init_ms is not None)
        if not ok:
            error = f"{reply.get('errorType', 'Error')}"
            raise InvocationError(
                function, error,
                f"{error} (RequestId: {request_id}; traceback in the {container.label} log)",
            )
        result = reply.get("result")
        if result is None:
            return {}
        if isinstance(result, dict):
            return result
        return {"result": result}
