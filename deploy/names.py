"""Every name a deployed stage uses, derived from ``.chalice/config.json``: its ``app_name``, the
stage, and the stage's ``api_gateway_stage``.

Chalice already derives its own names this way (``{app}-{stage}`` for the REST handler's
function, ``{app}-{stage}-{handler}`` for the others, ``{app}-{stage}-websocket-api``); the
table, the queues, the dashboard and the IAM files follow the same rule, so renaming the app or
adding a stage is a config change plus ``python -m deploy.policies``, which rewrites
``deploy/iam/*.json`` and the derived variables of each deployed stage
(:meth:`ChaliceConfig.derived_environment`).

A *deployed stage* is a stage that names an ``iam_policy_file`` (the ones ``chalice deploy`` and
``python -m deploy.package`` build).  Deployed stages must have distinct ``api_gateway_stage``
values: the static IAM files cannot name the WebSocket API's id (``chalice deploy`` creates the
API after the role), so the API stage in the ``@connections`` ARN is what keeps one stage's role
off another stage's connections (:meth:`ChaliceConfig.problems` refuses a repeat).

What stays fixed on purpose: the metrics' ``service`` dimension and namespace
(:mod:`chalicelib.metrics`: dashboards and alarms outside this repo query them) and the local
gateway's URL path (the ``dev`` stage's ``api_gateway_stage``, ``api``).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PATH = ROOT / ".chalice" / "config.json"
#: Chalice's default when neither the stage nor the top level sets ``api_gateway_stage``.
CHALICE_DEFAULT_API_STAGE = "api"
#: What an app name may hold so that every derived name is valid (DynamoDB tables allow ``.``,
#: SQS queues and Lambda functions do not).
APP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
#: Lambda's limit on function names, and SQS's on queue names.
MAX_FUNCTION_NAME = 64
MAX_QUEUE_NAME = 80
#: Queue name suffixes (each queue has a ``-dlq`` twin).
QUEUE_SUFFIXES = ("welcome", "fanout")


@dataclass(frozen=True)
class StageNames:
    """The names of one deployed stage (``chalice deploy`` and the packaged template agree)."""

    app: str
    stage: str
    #: The API Gateway stage: the last path segment of the stage's URLs and @connections ARNs.
    api_stage: str

    @property
    def prefix(self) -> str:
        return f"{self.app}-{self.stage}"

    def function(self, name: str) -> str:
        """The Lambda function name Chalice gives handler ``name`` (``api_handler``: REST)."""
        return self.prefix if name == "api_handler" else f"{self.prefix}-{name}"

    @property
    def table(self) -> str:
        return f"{self.prefix}-connections"

    def queue(self, suffix: str = "welcome") -> str:
        return f"{self.prefix}-{suffix}"

    @property
    def dashboard(self) -> str:
        return self.prefix


@dataclass(frozen=True)
class ChaliceConfig:
    """A parsed ``.chalice/config.json``; :meth:`load` reads one."""

    data: dict[str, Any]

    @classmethod
    def load(cls, path: Path = CONFIG_PATH) -> ChaliceConfig:
        """Read ``path``; raises ``SystemExit`` naming the file when it is missing or not JSON."""
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"{path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("app_name"), str):
            raise SystemExit(f"{path}: expected a Chalice config with an app_name")
        return cls(data)

    @property
    def app_name(self) -> str:
        return str(self.data["app_name"])

    @property
    def deployed_stages(self) -> tuple[str, ...]:
        """Stages that name an ``iam_policy_file``, in file order."""
        return tuple(name for name, stage in self.data.get("stages", {}).items()
                     if "iam_policy_file" in stage)

    def api_stage(self, stage: str) -> str:
        """``api_gateway_stage`` as Chalice resolves it: the stage's, else the top level's."""
        settings = self.data.get("stages", {}).get(stage, {})
        return str(settings.get("api_gateway_stage")
                   or self.data.get("api_gateway_stage") or CHALICE_DEFAULT_API_STAGE)

    def names(self, stage: str) -> StageNames:
        """The names of deployed ``stage``; raises ``SystemExit`` for any other stage."""
        if stage not in self.deployed_stages:
            raise SystemExit(f"unknown stage {stage!r}: expected one of {self.deployed_stages}"
                             " (stages in .chalice/config.json with an iam_policy_file)")
        return StageNames(self.app_name, stage, self.api_stage(stage))

    def problems(self) -> list[str]:
        """Why these names could not be deployed; empty when they can."""
        out = []
        if not APP_NAME_PATTERN.match(self.app_name):
            out.append(f"app_name {self.app_name!r}: use letters, digits, '-' and '_' (it"
                       " prefixes table, queue and function names)")
        seen: dict[str, str] = {}
        for stage in self.deployed_stages:
            names = self.names(stage)
            if names.api_stage in seen:
                out.append(f"stages {seen[names.api_stage]!r} and {stage!r} share"
                           f" api_gateway_stage {names.api_stage!r}: give each deployed stage its"
                           " own, or one stage's role could manage the other's connections")
            seen.setdefault(names.api_stage, stage)
            longest = names.function("websocket_disconnect")
            if len(longest) > MAX_FUNCTION_NAME:
                out.append(f"{longest}: longer than Lambda's {MAX_FUNCTION_NAME} characters")
            if len(names.queue("welcome") + "-dlq") > MAX_QUEUE_NAME:
                out.append(f"{names.queue('welcome')}-dlq: longer than SQS's {MAX_QUEUE_NAME}")
        return out

    def derived_environment(self, stage: str) -> dict[str, str]:
        """The stage variables that follow from the names (bare queue names: the code resolves
        them with GetQueueUrl; the packaged template passes full URLs instead)."""
        names = self.names(stage)
        return {
            "STAGE": stage,
            "CONNECTIONS_STORE": f"dynamodb://{names.table}",
            "WELCOME_QUEUE_URL": names.queue("welcome"),
            "WELCOME_QUEUE_NAME": names.queue("welcome"),
            "FANOUT_QUEUE_URL": names.queue("fanout"),
            "FANOUT_QUEUE_NAME": names.queue("fanout"),
        }

    def synced(self) -> dict[str, Any]:
        """A copy of the config with every deployed stage's :meth:`derived_environment`
        rewritten (other keys and their order kept)."""
        data = json.loads(json.dumps(self.data))
        for stage in self.deployed_stages:
            env = data["stages"][stage].setdefault("environment_variables", {})
            env.update(self.derived_environment(stage))
        return data  # type: ignore[no-any-return]


@functools.cache
def repo_config() -> ChaliceConfig:
    """This repository's ``.chalice/config.json`` (read once per process)."""
    return ChaliceConfig.load()


def render_config(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2) + "\n"
