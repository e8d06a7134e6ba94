"""Loading a Chalice project the way ``chalice local`` does, plus the local environment."""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chalice.app import Chalice, ScheduledEventConfig, SQSEventConfig
from chalice.cli.factory import CLIFactory
from chalice.config import Config
from chalice.local import LocalChalice

from localgateway.containers import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_SECONDS, FunctionSettings
from localgateway.worker import REST_FUNCTION

LOG = logging.getLogger("localgateway")

QUEUE_URL_SUFFIX = "_QUEUE_URL"
#: The variable every app gets: the local management API (``@connections``) endpoint.
MANAGEMENT_ENDPOINT_VARIABLE = "WS_MANAGEMENT_ENDPOINT"


def queue_name_of(value: str) -> str:
    """``name`` for a bare queue name or a queue URL (last path segment)."""
    return value.rstrip("/").rsplit("/", 1)[-1]


def _optional_int(value: object) -> int | None:
    return None if value is None else int(str(value))


class EnvFileError(ValueError):
    """An ``--env-file`` line that is not ``NAME=VALUE`` (the message names file and line)."""


def parse_env_file(text: str, source: str = "env file") -> dict[str, str]:
    """``NAME=VALUE`` lines (``export`` prefix, ``#`` comments, blank lines and matching quotes
    allowed), like docker's and dotenv's files. Raises :class:`EnvFileError`."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise EnvFileError(f"{source}:{number}: expected NAME=VALUE, got {raw.strip()!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name] = value
    return values


def read_env_files(paths: Sequence[str], project_dir: str) -> dict[str, str]:
    """The variables of ``--env-file`` files (relative to ``project_dir``), later files winning.

    Raises :class:`EnvFileError` for a missing or unreadable file, or a bad line.
    """
    values: dict[str, str] = {}
    for path in paths:
        try:
            with open(os.path.join(project_dir, path), encoding="utf-8") as f:
                values.update(parse_env_file(f.read(), path))
        except OSError as exc:
            raise EnvFileError(f"{path}: {exc.strerror}") from None
    return values


@dataclass(frozen=True)
class LocalEnvironment:
    """Where the variables an app sees come from, lowest precedence first:

    1. the gateway's own environment (``process``: credentials, ``PATH``...), inherited;
    2. the configuration's ``environment_variables`` (stage, then the function's own);
    3. ``--env-file`` (``env_file``);
    4. a variable set in the gateway's own environment overrides 2 and 3 (an explicit
       ``NAME=value make run`` wins over the files);
    5. what the gateway provides (``provided``: ``WS_MANAGEMENT_ENDPOINT``, the local service
       endpoints), and every ``*_QUEUE_URL`` that names a local queue, rewritten to its URL.
    """

    process: Mapping[str, str]
    provided: Mapping[str, str]
    env_file: Mapping[str, str] = field(default_factory=dict)
    local_queue_urls: Mapping[str, str] = field(default_factory=dict)

    def variables(self, config_env: Mapping[str, str]) -> dict[str, str]:
        """The variables set on top of the inherited environment, for ``config_env``."""
        env = {**config_env, **self.env_file}
        for name in env:
            if name in self.process:
                env[name] = self.process[name]
        for name, value in list(env.items()):
            if name.endswith(QUEUE_URL_SUFFIX) and queue_name_of(value) in self.local_queue_urls:
                env[name] = self.local_queue_urls[queue_name_of(value)]
        env.update(self.provided)
        return env

    def full(self, config_env: Mapping[str, str]) -> dict[str, str]:
        """The complete environment of a container for ``config_env``."""
        return {**self.process, **self.variables(config_env)}


def compute_environment(
    stage_env: Mapping[str, str],
    process_env: Mapping[str, str],
    provided: Mapping[str, str],
    env_file: Mapping[str, str] | None = None,
    local_queue_urls: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables the app sees on top of the inherited environment (see
    :class:`LocalEnvironment` for the precedence)."""
    return LocalEnvironment(process_env, provided, env_file or {},
                            local_queue_urls or {}).variables(stage_env)


def offline_aws_defaults(environ: MutableMapping[str, str]) -> dict[str, str]:
    """Dummy credentials and a region when none are configured, so boto3 works offline."""
    added: dict[str, str] = {}
    has_credentials = (
        "AWS_ACCESS_KEY_ID" in environ
        or "AWS_PROFILE" in environ
        or os.path.exists(
            environ.get(
                "AWS_SHARED_CREDENTIALS_FILE", os.path.expanduser("~/.aws/credentials")
            )
        )
    )
    if not has_credentials:
        added["AWS_ACCESS_KEY_ID"] = "testing"
        added["AWS_SECRET_ACCESS_KEY"] = "testing"
    if "AWS_DEFAULT_REGION" not in environ and "AWS_REGION" not in environ:
        added["AWS_DEFAULT_REGION"] = "us-east-1"
    environ.update(added)
    return added


_GATEWAY_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _installed_dirs() -> list[str]:
    import site
    import sysconfig

    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages()}
    dirs.update(p for p in sysconfig.get_paths().values() if p)
    return [os.path.abspath(d) + os.sep for d in dirs if d]


def is_project_module(path: str, project_dir: str) -> bool:
    """True for a module file of the project (not the gateway, not installed packages)."""
    if not path.startswith(os.path.abspath(project_dir) + os.sep):
        return False
    if path.startswith(_GATEWAY_DIR) or "site-packages" in path.split(os.sep):
        return False
    return not any(path.startswith(d) for d in _installed_dirs())


def _localize(app: Chalice) -> Chalice:
    """What ``chalice.local.create_local_server`` does: a thread-local ``current_request``."""
    if not isinstance(app, LocalChalice):
        app.__class__ = type("LocalGatewayChalice", (LocalChalice, app.__class__), {})
    return app


@dataclass(frozen=True)
class Functions:
    """The handler names (Lambda functions) of an app, by trigger."""

    connect: str | None
    message: str | None
    disconnect: str | None
    sqs: dict[str, list[str]]  # queue name -> handler names
    sqs_batch_size: dict[str, int]
    schedules: list[str]
    #: Whether the app has REST routes (Chalice deploys them all as one ``api_handler``).
    rest: bool = False
    #: Other handlers (``@app.lambda_function``, S3/SNS/... event sources), by name.
    others: tuple[str, ...] = ()

    def websocket(self) -> list[str]:
        """The WebSocket functions (``$connect``, ``$default``, ``$disconnect``) present."""
        return [n for n in (self.connect, self.message, self.disconnect) if n]

    def all_names(self) -> list[str]:
        """Every Lambda function of the app, ``api_handler`` included when it has routes."""
        names = [*self.websocket(), *(n for ns in self.sqs.values() for n in ns),
                 *self.schedules]
        names.extend(self.others)
        if self.rest:
            names.append(REST_FUNCTION)
        return list(dict.fromkeys(names))

    @classmethod
    def of(cls, app: Chalice) -> Functions:
        ws: dict[str, Any] = app.websocket_handlers
        sqs: dict[str, list[str]] = {}
        batch: dict[str, int] = {}
        schedules: list[str] = []
        for source in app.event_sources:
            if isinstance(source, SQSEventConfig):
                queue = source.queue or queue_name_of((source.queue_arn or "").replace(":", "/"))
                sqs.setdefault(queue, []).append(source.name)
                batch[source.name] = source.batch_size
            elif isinstance(source, ScheduledEventConfig):
                schedules.append(source.name)

        def name(route: str) -> str | None:
            entry = ws.get(route)
            return entry.name if entry is not None else None

        return cls(
            connect=name("$connect"),
            message=name("$default"),
            disconnect=name("$disconnect"),
            sqs=sqs,
            sqs_batch_size=batch,
            schedules=schedules,
            rest=bool(app.routes),
            others=tuple(
                n for n in app.handler_map
                if n not in {name("$connect"), name("$default"), name("$disconnect"),
                             *batch, *schedules}
            ),
        )


class Project:
    """A Chalice project loaded for one stage; the app can be reloaded in place."""

    def __init__(self, project_dir: str, stage: str = "dev") -> None:
        self.project_dir = os.path.abspath(project_dir)
        self.stage = stage
        self.factory = CLIFactory(self.project_dir, environ=os.environ)
        self.config: Config = self.factory.create_config_obj(chalice_stage_name=stage)
        self._lock = threading.Lock()
        self._app: Chalice | None = None
        self._functions: tuple[Chalice, Functions] | None = None
        self.environment: dict[str, str] = {}
        self.local_environment = LocalEnvironment(dict(os.environ), {})

    @property
    def api_gateway_stage(self) -> str:
        return str(self.config.api_gateway_stage)

    @property
    def stage_environment(self) -> dict[str, str]:
        return dict(self.config.environment_variables)

    @property
    def app(self) -> Chalice:
        with self._lock:
            if self._app is None:
                raise RuntimeError("app not loaded")
            return self._app

    def _purge_modules(self) -> dict[str, Any]:
        """Forget the app's own modules so the next import re-reads them; returns them.

        Only modules of the project itself: never the gateway, nor anything installed (a
        virtualenv inside the project directory is common).
        """
        purged: dict[str, Any] = {}
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None) or ""
            if name == "app" or (path and is_project_module(os.path.abspath(path),
                                                            self.project_dir)):
                purged[name] = sys.modules.pop(name)
        return purged

    def load(self, local_environment: LocalEnvironment) -> Chalice:
        """(Re)import ``app.py`` with the stage's variables applied to ``os.environ`` first.

        Raises whatever the import raises; the previous app and its modules are then restored,
        so its handlers' lazy imports keep working.
        """
        self.local_environment = local_environment
        self.environment = local_environment.variables(self.stage_environment)
        os.environ.update(self.environment)
        purged = self._purge_modules()
        # The project's app.py, never one in the current directory (python -m puts it first).
        if not sys.path or sys.path[0] != self.project_dir:
            sys.path.insert(0, self.project_dir)
        try:
            loaded = self.factory.load_chalice_app(environment_variables=self.environment)
        except BaseException:
            self._purge_modules()
            sys.modules.update(purged)
            raise
        app = _localize(loaded)
        # Chalice's own app.websocket_api would otherwise build an execute-api URL from apiId.
        endpoint = local_environment.provided.get(MANAGEMENT_ENDPOINT_VARIABLE)
        ws_api = getattr(app, "websocket_api", None)
        if ws_api is not None and endpoint:
            ws_api._endpoint = endpoint
            ws_api._client = None
        with self._lock:
            self._app = app
        return app

    def reload(self) -> Chalice:
        """Re-read the configuration and re-import the app (old app kept on failure)."""
        previous = self.config
        self.config = self.factory.create_config_obj(chalice_stage_name=self.stage)
        try:
            return self.load(self.local_environment)
        except BaseException:
            self.config = previous
            raise

    def functions(self) -> Functions:
        """The current app's functions (computed once per loaded app: called per event)."""
        app = self.app
        cached = self._functions
        if cached is None or cached[0] is not app:
            cached = self._functions = (app, Functions.of(app))
        return cached[1]

    def function_settings(self, name: str) -> FunctionSettings:
        """Timeout, memory and environment of the Lambda function ``name``, scoped the Chalice
        way: top level, then the stage, then the stage's ``lambda_functions.NAME``."""
        scoped = self.config.scope(self.stage, name)
        timeout = scoped.lambda_timeout
        memory = scoped.lambda_memory_size
        return FunctionSettings(
            name=name,
            timeout_seconds=float(timeout) if timeout else DEFAULT_TIMEOUT_SECONDS,
            memory_mb=int(memory) if memory else DEFAULT_MEMORY_MB,
            environment=self.local_environment.full(dict(scoped.environment_variables)),
            reserved_concurrency=_optional_int(scoped.reserved_concurrency),
        )
