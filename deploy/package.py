"""Build a stage's CloudFormation package: Chalice's template + deploy/resources.json, checked.

    python -m deploy.package --stage prod OUTDIR

1. Builds the merge template: ``deploy/resources.json`` (table, queues, dead-letter queues) with its
   ``Stage`` parameter pinned to ``--stage``, plus the changes to Chalice's own resources that
   only CloudFormation can express: each function's role policy on this stack's ARNs
   (:func:`deploy.policies.cfn_policy`), the follow-up's event source bound to the queue's
   ``Arn``, ``CONNECTIONS_STORE``/``WELCOME_QUEUE_URL``/``WS_MANAGEMENT_ENDPOINT`` from the stack's
   resources, and the function and log group names ``chalice deploy`` would use.
   It also adds the stack parameters of :data:`AUTH_PARAMETERS` (authentication is mandatory in
   Lambda: the ``AuthMode`` rule wants exactly one of ``AuthJwksUrl``, the recommended mode, or
   ``AuthSecretParameterName`` / ``AuthSecretArn``, the HS256 secret's SSM parameter or Secrets
   Manager secret, read by ``$connect`` only; each is passed to every function as its
   ``WS_AUTH_*`` variable), of :data:`THROTTLING_PARAMETERS` (the WebSocket stage's default and
   ``$connect`` throttling, with data trace logging off), a reserved concurrency parameter per
   function (empty: unreserved) and the optional customer managed keys (``TableKmsKeyArn`` from
   deploy/resources.json, ``AuthSecretKmsKeyArn``), whose grants are conditional; and the
   alarms, their SNS topic and the dashboard (:mod:`deploy.monitoring`; ``METRICS_NAMESPACE``
   and ``STAGE`` of every function).
2. Runs ``chalice package --stage STAGE --merge-template OUTDIR/merge-template.json OUTDIR`` with
   the Lambda runtime pinned (:mod:`deploy.chalice_cli`, default python3.12).
3. Checks the result (:func:`check_package`) and prints the artifact sizes.

Then deploy it (see docs/deploy.md)::

    aws cloudformation package --template-file OUTDIR/sam.json --s3-bucket BUCKET \\
        --output-template-file OUTDIR/packaged.yaml
    aws cloudformation deploy --template-file OUTDIR/packaged.yaml --stack-name ws-rooms-prod \\
        --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND \\
        --parameter-overrides AuthJwksUrl=https://cognito-idp.REGION.amazonaws.com/POOL/.well-known/jwks.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from deploy.chalice_cli import ENV_FILE_VARIABLE, runtime_from_env
from deploy.monitoring import add_monitoring
from deploy.names import ChaliceConfig, repo_config
from deploy.policies import (
    FUNCTIONS,
    SECRET_ARN_CONDITION,
    SECRET_KEY_CONDITION,
    SECRET_PARAMETER_CONDITION,
    cfn_policy,
)

ROOT = Path(__file__).resolve().parent.parent
RESOURCES = Path(__file__).resolve().parent / "resources.json"
#: The Lambda runtime provides these; vendoring them would pin stale copies into the package.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer", "jmespath")

#: Stack parameter -> (environment variable of every function, parameter definition).  Settings
#: reads an empty value as "not configured" (``environ.get(...) or None``), so the optional ones
#: default to "".  No default for AuthJwksUrl: a stack without authentication cannot be created
#: (the functions would refuse to run anyway; see chalicelib/settings.py and docs/security.md).
AUTH_PARAMETERS: dict[str, tuple[str, dict[str, Any]]] = {
    "AuthJwksUrl": ("WS_AUTH_JWKS_URL", {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^(https://.+)?$",
        "ConstraintDescription": "an https:// URL",
        "Description": "JWKS URL the $connect tokens are verified against (RS256/ES256; the"
                       " recommended mode), e.g. https://cognito-idp.REGION.amazonaws.com/POOL_ID"
                       "/.well-known/jwks.json; empty: AuthSecretParameterName or AuthSecretArn"
                       " (the AuthMode rule wants exactly one)",
    }),
    "AuthSecretParameterName": ("WS_AUTH_SECRET_PARAMETER", {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^(/[a-zA-Z0-9_.\\-/]{1,1010})?$",
        "ConstraintDescription": "empty, or an SSM parameter name starting with / in this stack's"
                                 " account and Region",
        "Description": "HS256 shared secret instead of a JWKS: name of a SecureString parameter"
                       " (e.g. /my-app/prod/auth-secret), read by $connect only",
    }),
    "AuthSecretArn": ("WS_AUTH_SECRET_ARN", {
        "Type": "String",
        "Default": "",
        "AllowedPattern": "^(arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:"
                          "[a-zA-Z0-9/_+=.@-]+-[a-zA-Z0-9]{6})?$",
        "ConstraintDescription": "empty, or a Secrets Manager secret's full ARN (with its"
                                 " six-character suffix)",
        "Description": "HS256 shared secret instead of a JWKS: full ARN of a Secrets Manager"
                       " secret whose SecretString is the secret, read by $connect only",
    }),
    "AuthIssuer": ("WS_AUTH_ISSUER", {
        "Type": "String",
        "AllowedPattern": "^https://.+",
        "ConstraintDescription": "an https:// URL",
        "Description": "Required 'iss' of tokens (Cognito:"
                       " https://cognito-idp.REGION.amazonaws.com/POOL_ID)",
    }),
    "AuthAudience": ("WS_AUTH_AUDIENCE", {
        "Type": "String",
        "Default": "",
        "Description": "Required 'aud' of tokens (Cognito ID tokens: the app client id); empty:"
                       " use AuthClientId + AuthTokenUse instead (the TokenScope rule wants one)",
    }),
    "AuthClientId": ("WS_AUTH_CLIENT_ID", {
        "Type": "String",
        "Default": "",
        "Description": "Required 'client_id' of tokens (Cognito access tokens carry no 'aud')",
    }),
    "AuthTokenUse": ("WS_AUTH_TOKEN_USE", {
        "Type": "String",
        "Default": "",
        "AllowedValues": ["", "access", "id"],
        "Description": "Required 'token_use' (Cognito: access or id), with AuthClientId",
    }),
    "AuthMaxTokenLifetimeSeconds": ("WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS", {
        "Type": "String",
        "Default": "86400",
        "AllowedPattern": "^[0-9]{1,7}$",
        "ConstraintDescription": "seconds, 0..2592000 (0: no maximum)",
        "Description": "Longest accepted token lifetime (exp - iat), in seconds",
    }),
    "AllowedOrigins": ("WS_ALLOWED_ORIGINS", {
        "Type": "String",
        "Default": "",
        "Description": "Comma-separated Origin allowlist for $connect (e.g."
                       " https://app.example.com); empty: any origin",
    }),
}
#: Optional stack conditions: condition -> the parameter that must be non-empty.
SECRET_CONDITIONS = {
    SECRET_PARAMETER_CONDITION: "AuthSecretParameterName",
    SECRET_ARN_CONDITION: "AuthSecretArn",
    SECRET_KEY_CONDITION: "AuthSecretKmsKeyArn",
}
#: Customer managed key of the shared secret (SSM SecureString or Secrets Manager): empty when
#: the secret uses the AWS managed key (aws/ssm, aws/secretsmanager), which needs no grant.
SECRET_KEY_PARAMETER: dict[str, Any] = {
    "Type": "String",
    "Default": "",
    "AllowedPattern": "^(arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[a-zA-Z0-9-]+)?$",
    "ConstraintDescription": "empty, or a KMS key ARN (not an alias)",
    "Description": "Customer managed KMS key of AuthSecretParameterName/AuthSecretArn; empty:"
                   " the AWS managed key (aws/ssm or aws/secretsmanager)",
}


def reserved_concurrency_parameter(logical_id: str) -> str:
    """The stack parameter of a function's reserved concurrency (empty: unreserved)."""
    return f"{logical_id}ReservedConcurrency"


#: WebSocket stage throttling (requests per second, steady rate and burst), refused by API
#: Gateway before any Lambda runs.  ``$connect`` gets its own, tighter limits.  Defaults come from
#: the capacity model (docs/capacity.md): every inbound message and every delivery it causes
#: count against the account's 10,000 requests/s (5,000 burst) per Region, so inbound messages
#: get 2,000/s (a room of 4 already turns that into the account's rate) and ``$connect`` gets
#: the account's default new-connection rate of 500/s.
THROTTLING_PARAMETERS: dict[str, tuple[str, int]] = {
    "WebsocketThrottlingBurstLimit": ("burst of requests, every route (default settings)", 4000),
    "WebsocketThrottlingRateLimit": ("steady requests per second, every route", 2000),
    "ConnectThrottlingBurstLimit": ("burst of $connect requests", 500),
    "ConnectThrottlingRateLimit": ("steady $connect requests per second", 500),
    "MessageThrottlingBurstLimit": ("burst of client messages ($default)", 4000),
    "MessageThrottlingRateLimit": ("steady client messages ($default) per second", 2000),
}
#: Concurrent fan-out workers (the event source mapping's MaximumConcurrency, 2..1000).  A worker
#: with a full vCPU is bound by its CPU per post (``make bench`` measures it; docs/capacity.md
#: turns it into posts/s): three deliver a 100,000-member room within the 30 s target and stay
#: below the account's 10,000 API Gateway requests/s (docs/capacity.md has the figures).
FANOUT_MAX_CONCURRENCY = 3
#: Chalice's logical id of the WebSocket API's stage.
WEBSOCKET_STAGE = "WebsocketAPIStage"


def merge_template(stage: str, config: ChaliceConfig | None = None) -> dict[str, Any]:
    """The template ``chalice package --merge-template`` deep-merges into Chalice's own.

    Names come from ``config`` (the repository's .chalice/config.json when None): the app name
    and ``stage`` are pinned as the ``AppName`` and ``Stage`` parameters, which name the table and
    queues; functions, log groups and the dashboard use :class:`deploy.names.StageNames`.
    Raises ``SystemExit`` for a stage that is not deployed, or names that cannot be.
    """
    config = config or repo_config()
    names = config.names(stage)
    problems = config.problems()
    if problems:
        raise SystemExit(".chalice/config.json: " + "; ".join(problems))
    template: dict[str, Any] = json.loads(RESOURCES.read_text())
    # The package is built for one app and Chalice stage: the stack cannot be deployed as another.
    for parameter, value in (("AppName", names.app), ("Stage", stage)):
        template["Parameters"][parameter]["AllowedValues"] = [value]
        template["Parameters"][parameter]["Default"] = value
    resources = template["Resources"]
    endpoint = ("https://${WebsocketAPI}.execute-api.${AWS::Region}.${AWS::URLSuffix}"
                f"/{names.api_stage}")
    for logical_id, (name, role_id) in FUNCTIONS.items():
        concurrency = reserved_concurrency_parameter(logical_id)
        template["Parameters"][concurrency] = {
            "Type": "String", "Default": "", "AllowedPattern": "^[0-9]{0,5}$",
            "ConstraintDescription": "empty (unreserved) or a whole number",
            "Description": f"Reserved concurrency of {name}; empty: unreserved (the account's"
                           " shared pool); 0 stops the function",
        }
        template["Conditions"][f"Has{concurrency}"] = _not_empty(concurrency)
        resources[logical_id] = {"Properties": {
            "FunctionName": names.function(name),
            "ReservedConcurrentExecutions": {"Fn::If": [
                f"Has{concurrency}", {"Ref": concurrency}, {"Ref": "AWS::NoValue"}]},
            "Environment": {"Variables": {
                "CONNECTIONS_STORE": {"Fn::Sub": "dynamodb://${ConnectionsTable}"},
                "WELCOME_QUEUE_URL": {"Ref": "WelcomeQueue"},
                "WELCOME_QUEUE_NAME": {"Fn::GetAtt": ["WelcomeQueue", "QueueName"]},
                "FANOUT_QUEUE_URL": {"Ref": "FanOutQueue"},
                "FANOUT_QUEUE_NAME": {"Fn::GetAtt": ["FanOutQueue", "QueueName"]},
                "WS_MANAGEMENT_ENDPOINT": {"Fn::Sub": endpoint},
                "METRICS_NAMESPACE": {"Ref": "MetricsNamespace"},
                "STAGE": {"Ref": "Stage"},
                **{variable: {"Ref": parameter}
                   for parameter, (variable, _definition) in AUTH_PARAMETERS.items()},
            }},
        }}
        # Chalice creates these from log_retention_in_days (required in .chalice/config.json).
        # Naming the group literally fixes Chalice's ${ApiHandler} (the function is APIHandler)
        # and creates the group before the function, so Lambda never creates it without
        # retention.
        log_group_id = role_id.removesuffix("Role") + "LogGroup"
        resources[log_group_id] = {"Properties": {
            "LogGroupName": f"/aws/lambda/{names.function(name)}",
        }}
        resources[role_id] = {"Properties": {"Policies": [{
            "PolicyName": f"{role_id}Policy",
            "PolicyDocument": cfn_policy(names, name),
        }]}}
    # Chalice writes the queue as {"Fn::Sub": "arn:...:<name>"}; the merge is a deep merge, so
    # the override must use the same key (a GetAtt would end up next to the Sub).
    # Both consumers return {"batchItemFailures": [...]}: only those records are redelivered.
    resources["WelcomeFollowUp"]["Properties"]["Events"] = {"WelcomeFollowUpSqsEventSource": {
        "Properties": {"Queue": {"Fn::Sub": "${WelcomeQueue.Arn}"},
                       "FunctionResponseTypes": ["ReportBatchItemFailures"]},
    }}
    resources["FanOutWorker"]["Properties"]["Events"] = {"FanOutWorkerSqsEventSource": {
        "Properties": {"Queue": {"Fn::Sub": "${FanOutQueue.Arn}"},
                       "FunctionResponseTypes": ["ReportBatchItemFailures"],
                       "ScalingConfig": {"MaximumConcurrency": {"Ref": "FanOutMaxConcurrency"}}},
    }}
    template["Outputs"]["ManagementEndpoint"] = {"Value": {"Fn::Sub": endpoint}}
    template["Parameters"].update(
        {parameter: definition for parameter, (_variable, definition) in AUTH_PARAMETERS.items()})
    template["Parameters"]["AuthSecretKmsKeyArn"] = SECRET_KEY_PARAMETER
    for condition, parameter in SECRET_CONDITIONS.items():
        template["Conditions"][condition] = _not_empty(parameter)
    # Exactly one way to verify tokens: a stack without authentication cannot be created (the
    # functions would refuse to run anyway), nor one with two modes (Settings refuses that).
    modes = [{"Fn::Equals": [{"Ref": name}, ""]}
             for name in ("AuthJwksUrl", "AuthSecretParameterName", "AuthSecretArn")]
    one_mode = {"Fn::Or": [
        {"Fn::And": [{"Fn::Not": [mode]}, *[other for other in modes if other is not mode]]}
        for mode in modes]}
    # A stack cannot be created without a token scope: any token the IdP signed (another app
    # client, another tenant) would otherwise be admitted.  The functions refuse it too.
    template["Rules"] = {"AuthMode": {"Assertions": [{
        "Assert": one_mode,
        "AssertDescription": "set exactly one of AuthJwksUrl (recommended),"
                             " AuthSecretParameterName, AuthSecretArn",
    }]}, "TokenScope": {"Assertions": [{
        "Assert": {"Fn::Or": [
            {"Fn::Not": [{"Fn::Equals": [{"Ref": "AuthAudience"}, ""]}]},
            {"Fn::And": [
                {"Fn::Not": [{"Fn::Equals": [{"Ref": "AuthClientId"}, ""]}]},
                {"Fn::Not": [{"Fn::Equals": [{"Ref": "AuthTokenUse"}, ""]}]},
            ]},
        ]},
        "AssertDescription": "set AuthAudience, or AuthClientId and AuthTokenUse (Cognito access"
                             " tokens): tokens must be scoped to this app",
    }]}}
    template["Parameters"].update({
        parameter: {"Type": "Number", "Default": default, "MinValue": 1, "Description": text}
        for parameter, (text, default) in THROTTLING_PARAMETERS.items()})
    template["Parameters"]["FanOutMaxConcurrency"] = {
        "Type": "Number", "Default": FANOUT_MAX_CONCURRENCY, "MinValue": 2, "MaxValue": 1000,
        "Description": "concurrent fan-out workers (posts/s per worker: docs/capacity.md); all"
                       " @connections calls share the account's 10,000 requests/s",
    }
    # Data trace logging stays off: it would log full requests, token query strings included.
    resources[WEBSOCKET_STAGE] = {"Properties": {
        "DefaultRouteSettings": {
            "ThrottlingBurstLimit": {"Ref": "WebsocketThrottlingBurstLimit"},
            "ThrottlingRateLimit": {"Ref": "WebsocketThrottlingRateLimit"},
            "DataTraceEnabled": False,
        },
        # Connections and messages get separate limits: a $connect flood cannot starve
        # messages, nor the other way round.
        "RouteSettings": {
            "$connect": {
                "ThrottlingBurstLimit": {"Ref": "ConnectThrottlingBurstLimit"},
                "ThrottlingRateLimit": {"Ref": "ConnectThrottlingRateLimit"},
                "DataTraceEnabled": False,
            },
            "$default": {
                "ThrottlingBurstLimit": {"Ref": "MessageThrottlingBurstLimit"},
                "ThrottlingRateLimit": {"Ref": "MessageThrottlingRateLimit"},
                "DataTraceEnabled": False,
            },
        },
    }}
    # The stage is fixed: resolve the IsProd condition so the template says what it does.
    is_prod = stage == "prod"
    del template["Conditions"]["IsProd"]
    if not template["Conditions"]:
        del template["Conditions"]
    # Alarms (all notifying one SNS topic) and the dashboard: deploy/monitoring.py.
    add_monitoring(template, names)
    resolved: dict[str, Any] = _resolve_if(template, "IsProd", is_prod)
    return resolved


def _not_empty(parameter: str) -> dict[str, Any]:
    return {"Fn::Not": [{"Fn::Equals": [{"Ref": parameter}, ""]}]}


def _resolve_if(node: Any, condition: str, value: bool) -> Any:
    if isinstance(node, dict):
        branches = node.get("Fn::If")
        if len(node) == 1 and isinstance(branches, list) and branches[0] == condition:
            return _resolve_if(branches[1] if value else branches[2], condition, value)
        return {key: _resolve_if(item, condition, value) for key, item in node.items()}
    if isinstance(node, list):
        return [_resolve_if(item, condition, value) for item in node]
    return node


def build(stage: str, outdir: Path) -> dict[str, Any]:
    """Run ``chalice package`` for ``stage`` into ``outdir``; returns :func:`check_package`."""
    runtime = runtime_from_env()
    outdir.mkdir(parents=True, exist_ok=True)
    merge_file = outdir / "merge-template.json"
    merge_file.write_text(json.dumps(merge_template(stage), indent=2) + "\n")
    env = dict(os.environ, LAMBDA_RUNTIME=runtime)
    # The template takes its settings as stack parameters; a chalice-deploy overlay (which may
    # hold a secret) must never be written into it.
    env.pop(ENV_FILE_VARIABLE, None)
    # Packaging makes no AWS call and writes ${AWS::Region} into the template, but Chalice wants
    # a region to create its (unused) client; any value does.
    env.setdefault("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION") or "us-east-1")
    # A separate process: Chalice imports app.py with the stage's environment applied to
    # os.environ, which must not leak into the caller (the test suite).
    subprocess.run(
        [sys.executable, "-m", "deploy.chalice_cli", "--project-dir", str(ROOT), "package",
         "--stage", stage, "--merge-template", str(merge_file), str(outdir)],
        check=True, cwd=ROOT, env=env,
    )
    prune_zip(outdir / "deployment.zip", _not_for_lambda)
    minify_zip(outdir / "deployment.zip")
    prune_zip(outdir / "layer-deployment.zip", _runtime_provided_dependency)
    return check_package(outdir, runtime)


#: Local-only store backends: ``open_store`` refuses them inside Lambda before importing them.
LOCAL_ONLY_MODULES = ("chalicelib/store/memory.py", "chalicelib/store/sqlite.py")
#: Dependencies of layer packages that the Lambda runtime provides with boto3 (Powertools
#: requires jmespath>=1.0.1,<2, the python3.12 runtime ships 1.0.1).  Chalice vendors them anyway.
RUNTIME_PROVIDED_DEPENDENCIES = ("jmespath",)


def _not_for_lambda(name: str) -> bool:
    """Bytecode caches of the working tree and the local-only store backends."""
    return "__pycache__/" in name or name.endswith(".pyc") or name in LOCAL_ONLY_MODULES


def _runtime_provided_dependency(name: str) -> bool:
    parts = name.split("/")
    top = parts[4] if name.startswith("python/lib/") and len(parts) > 4 else parts[0]
    return any(top == dep or top.startswith(dep + "-") for dep in RUNTIME_PROVIDED_DEPENDENCIES)


def prune_zip(path: Path, drop: Any) -> list[str]:
    """Rewrite ``path`` without the entries ``drop(name)`` selects; returns the dropped names."""
    if not path.exists():
        return []
    with zipfile.ZipFile(path) as source:
        dropped = [info.filename for info in source.infolist() if drop(info.filename)]
        if not dropped:
            return []
        kept = [(info, source.read(info)) for info in source.infolist()
                if not drop(info.filename)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as target:
        for info, data in kept:
            target.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return dropped


def minify_zip(path: Path) -> None:
    """Rewrite the app's own sources in ``path`` without docstrings and comments (line numbers
    kept: deploy/minify.py); Chalice's runtime module and anything else stay as they are."""
    from deploy.minify import strip_source

    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as target:
        for info, data in entries:
            if info.filename == "app.py" or (info.filename.startswith("chalicelib/")
                                             and info.filename.endswith(".py")):
                data = strip_source(data.decode("utf-8")).encode("utf-8")
            target.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)


def check_package(outdir: Path, runtime: str) -> dict[str, Any]:
    """Fail (SystemExit) on a package that would not run on ``runtime``; return its sizes.

    * every function's ``Runtime`` and the layer's ``CompatibleRuntimes`` are ``runtime``;
    * every function Chalice generated has an entry in :data:`deploy.policies.FUNCTIONS` (else it
      would run with the static file policy, and the merge would have created a partial
      resource), and no merged resource lacks a ``Type``;
    * no extension module in either zip is built for another interpreter (``cpython-311`` on a
      3.12 runtime), and no wheel carries another interpreter's tag;
    * boto3/botocore are not vendored (the runtime provides them);
    * every dependency a packaged distribution requires (markers evaluated for ``runtime`` on
      Linux x86_64) is packaged too: Chalice only warns when it cannot get a wheel.
    """
    template = json.loads((outdir / "sam.json").read_text())
    problems: list[str] = []
    resources = template["Resources"]
    functions = {k: v for k, v in resources.items() if v.get("Type") == "AWS::Serverless::Function"}
    for logical_id, resource in resources.items():
        if "Type" not in resource:
            problems.append(f"{logical_id}: merged into the template but Chalice did not create it")
    if set(functions) != set(FUNCTIONS):
        problems.append(f"functions {sorted(functions)} != deploy.policies.FUNCTIONS "
                        f"{sorted(FUNCTIONS)}: update deploy/policies.py")
    for logical_id, resource in functions.items():
        if resource["Properties"].get("Runtime") != runtime:
            problems.append(f"{logical_id}: Runtime {resource['Properties'].get('Runtime')}")
    for logical_id, resource in resources.items():
        layer = resource.get("Type") == "AWS::Serverless::LayerVersion"
        if layer and resource["Properties"].get("CompatibleRuntimes") != [runtime]:
            problems.append(f"{logical_id}: CompatibleRuntimes "
                                f"{resource['Properties'].get('CompatibleRuntimes')}")
    abi = "cp" + runtime.removeprefix("python").replace(".", "")
    sizes: dict[str, int] = {}
    for name in ("deployment.zip", "layer-deployment.zip"):
        path = outdir / name
        if path.exists():
            sizes[name] = path.stat().st_size
            problems += _check_zip(path, abi, runtime)
    if problems:
        raise SystemExit("package check failed:\n  " + "\n  ".join(problems))
    return {"runtime": runtime, "sizes": sizes, "functions": sorted(functions)}


_EXT_TAG = re.compile(r"\.cpython-(\d+)[^/]*\.so$")
_WHEEL_TAG = re.compile(r"^Tag:\s*(\S+)-(\S+)-(\S+)\s*$", re.MULTILINE)


def _check_zip(path: Path, abi: str, runtime: str) -> list[str]:
    problems = []
    with zipfile.ZipFile(path) as zipped:
        names = zipped.namelist()
        for name in names:
            match = _EXT_TAG.search(name)
            if match and f"cp{match.group(1)}" != abi:
                problems.append(f"{path.name}: {name} is built for another Python than {runtime}")
            if name.endswith(".dist-info/WHEEL"):
                tags = _WHEEL_TAG.findall(zipped.read(name).decode())
                for python_tag, abi_tag, _platform in tags:
                    if abi_tag not in ("none", "abi3", abi) or (
                        abi_tag == abi and python_tag != abi
                    ):
                        problems.append(f"{path.name}: {name}: wheel tag "
                                        f"{python_tag}-{abi_tag} does not fit {runtime}")
        tops = {n.split("/")[0] for n in names} | {
            n.split("/")[4] for n in names if n.startswith("python/lib/") and n.count("/") > 4
        }
        for vendored in RUNTIME_PROVIDED:
            if vendored in tops:
                problems.append(f"{path.name}: vendors {vendored} (the Lambda runtime provides it)")
        problems += _check_closure(zipped, names, path.name, runtime)
    return problems


def _check_closure(zipped: zipfile.ZipFile, names: list[str], label: str,
                   runtime: str) -> list[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    environment = {
        "python_version": runtime.removeprefix("python"),
        "python_full_version": runtime.removeprefix("python") + ".0",
        "implementation_name": "cpython", "platform_python_implementation": "CPython",
        "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
        "os_name": "posix", "extra": "",
    }
    metadata = [n for n in names if n.endswith(".dist-info/METADATA")]
    present = {canonicalize_name(n.split("/")[-2].split("-")[0]) for n in metadata}
    present |= {canonicalize_name(name) for name in RUNTIME_PROVIDED}
    problems = []
    for name in metadata:
        for line in zipped.read(name).decode().splitlines():
            if not line.startswith("Requires-Dist:"):
                continue
            requirement = Requirement(line.split(":", 1)[1].strip())
            if requirement.marker and not requirement.marker.evaluate(environment):
                continue
            if canonicalize_name(requirement.name) not in present:
                problems.append(f"{label}: {name.split('/')[-2]} requires {requirement.name},"
                                " which is not packaged")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.package", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True)
    parser.add_argument("outdir", type=Path)
    args = parser.parse_args(argv)
    report = build(args.stage, args.outdir.resolve())
    for name, size in report["sizes"].items():
        print(f"{name}: {size / 1024:.1f} KiB")
    print(f"runtime: {report['runtime']}; template: {args.outdir / 'sam.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
