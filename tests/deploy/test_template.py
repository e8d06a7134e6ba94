"""The prod package, built offline, linted and checked: what CI can know without an AWS account.

One ``python -m deploy.package --stage prod`` build per session (a subprocess: Chalice imports
app.py with the stage's environment applied to os.environ), then cfn-lint on the template and
assertions on its resources and IAM policies.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chalicelib import metrics
from chalicelib.errors import ConfigError
from chalicelib.settings import Settings
from chalicelib.store.dynamodb import LAST_SEEN_INDEX, TTL_ATTRIBUTE, table_definition
from deploy import monitoring, policies
from deploy.chalice_cli import ENV_FILE_VARIABLE, load_env_file, overlay_environment
from deploy.names import repo_config
from deploy.package import (
    AUTH_PARAMETERS,
    SECRET_CONDITIONS,
    THROTTLING_PARAMETERS,
    WEBSOCKET_STAGE,
    check_package,
    merge_template,
    reserved_concurrency_parameter,
)

ROOT = Path(__file__).resolve().parents[2]
#: Issue 14: "deployment.zip stays under 100 KB".
MAX_DEPLOYMENT_ZIP = 100_000
#: Actions that may use "Resource": "*".  Empty: nothing the app calls lacks resource-level
#: permissions (X-Ray's PutTraceSegments would, if Tracing were Active; it is PassThrough).
WILDCARD_ALLOWLIST: frozenset[str] = frozenset()
#: The names of the packaged stage.
PROD = repo_config().names("prod")


#: Put in a DEPLOY_ENV_FILE overlay for the package build: deploy.package must ignore it.
OVERLAY_SENTINEL = "overlay-value-that-must-not-reach-the-template"


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    outdir = tmp_path_factory.mktemp("prod-package")
    overlay = tmp_path_factory.mktemp("overlay") / "env.json"
    overlay.write_text(json.dumps({"WS_AUTH_SECRET": OVERLAY_SENTINEL,
                                   "OVERLAY_ONLY": OVERLAY_SENTINEL}))
    result = subprocess.run(
        [sys.executable, "-m", "deploy.package", "--stage", "prod", str(outdir)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, ENV_FILE_VARIABLE: str(overlay)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {"dir": outdir, "template": json.loads((outdir / "sam.json").read_text()),
            "stdout": result.stdout}


@pytest.fixture(scope="module")
def resources(package: dict[str, Any]) -> dict[str, Any]:
    return package["template"]["Resources"]  # type: ignore[no-any-return]


def _of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if v["Type"] == kind}


def _lint(path: Path) -> tuple[list[str], list[str]]:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), "--format", "parseable", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r":E\d{4}:", line)]
    assert result.returncode in (0, 4, 8, 12), result.stdout + result.stderr  # no errors
    return errors, [line for line in lines if line not in errors]


# ---------------------------------------------------------------------------------- lint, size


def test_cfn_lint_packaged_template_has_no_errors_or_warnings(package: dict[str, Any]) -> None:
    errors, warnings = _lint(package["dir"] / "sam.json")
    assert errors == []
    assert warnings == []


def test_cfn_lint_standalone_resources_template_has_no_errors_or_warnings() -> None:
    errors, warnings = _lint(ROOT / "deploy" / "resources.json")
    assert errors == []
    assert warnings == []


def test_deployment_zip_is_small_and_runtime_safe(package: dict[str, Any]) -> None:
    report = check_package(package["dir"], "python3.12")  # raises on any problem
    size = report["sizes"]["deployment.zip"]
    print(f"deployment.zip: {size / 1024:.1f} KiB; layer: "
          f"{report['sizes'].get('layer-deployment.zip', 0) / 1024:.1f} KiB")
    assert size < MAX_DEPLOYMENT_ZIP


def test_package_ships_powertools_in_the_layer_and_nothing_local_only(
    package: dict[str, Any],
) -> None:
    import zipfile

    with zipfile.ZipFile(package["dir"] / "deployment.zip") as app_zip:
        names = app_zip.namelist()
    assert "chalicelib/observability.py" in names and "chalicelib/store/dynamodb.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert "chalicelib/store/sqlite.py" not in names and "chalicelib/store/memory.py" not in names
    with zipfile.ZipFile(package["dir"] / "layer-deployment.zip") as layer:
        tops = {n.split("/")[4] for n in layer.namelist() if n.count("/") > 4}
    assert "aws_lambda_powertools" in tops and "typing_extensions.py" in {
        n.split("/")[-1] for n in layer.namelist()}
    assert not [t for t in tops if t.startswith("jmespath")]  # the runtime provides it


def test_functions_run_on_a_supported_runtime(resources: dict[str, Any]) -> None:
    functions = _of_type(resources, "AWS::Serverless::Function")
    assert set(functions) == set(policies.FUNCTIONS)
    for function in functions.values():
        major, minor = function["Properties"]["Runtime"].removeprefix("python").split(".")
        assert (int(major), int(minor)) >= (3, 12)
    for layer in _of_type(resources, "AWS::Serverless::LayerVersion").values():
        assert layer["Properties"]["CompatibleRuntimes"] == ["python3.12"]


def test_template_names_no_region_or_account(package: dict[str, Any]) -> None:
    text = (package["dir"] / "sam.json").read_text()
    assert "us-east-1" not in text
    assert not re.search(r"\b\d{12}\b", text)


# ---------------------------------------------------------------------------------- resources


def test_connections_table(resources: dict[str, Any]) -> None:
    table = resources["ConnectionsTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    props = table["Properties"]
    expected = table_definition("x")
    for key in ("BillingMode", "AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes"):
        assert props[key] == expected[key], key
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["TimeToLiveSpecification"] == {"AttributeName": TTL_ATTRIBUTE, "Enabled": True}
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["TableName"] == {"Fn::Sub": "${AppName}-${Stage}-connections"}


def test_dev_table_has_no_point_in_time_recovery() -> None:
    props = merge_template("dev")["Resources"]["ConnectionsTable"]["Properties"]
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": False}


def test_app_name_and_stage_parameters_are_pinned(package: dict[str, Any]) -> None:
    parameters = package["template"]["Parameters"]
    assert parameters["Stage"]["AllowedValues"] == ["prod"]
    assert parameters["Stage"]["Default"] == "prod"
    assert parameters["AppName"]["AllowedValues"] == [repo_config().app_name]
    assert parameters["AppName"]["Default"] == repo_config().app_name


@pytest.mark.parametrize("queue_id, consumer_id", [
    ("WelcomeQueue", "WelcomeFollowUp"), ("FanOutQueue", "FanOutWorker")])
def test_each_queue_has_a_dead_letter_queue(
    resources: dict[str, Any], queue_id: str, consumer_id: str
) -> None:
    dlq_id = queue_id.removesuffix("Queue") + "DeadLetterQueue"
    queue, dlq = resources[queue_id], resources[dlq_id]
    assert queue["Type"] == dlq["Type"] == "AWS::SQS::Queue"
    redrive = queue["Properties"]["RedrivePolicy"]
    assert redrive["deadLetterTargetArn"] == {"Fn::GetAtt": [dlq_id, "Arn"]}
    assert 1 <= redrive["maxReceiveCount"] <= 10
    # Lambda's advice: visibility timeout >= 6x the consumer's timeout, or batches redeliver early.
    timeout = resources[consumer_id]["Properties"]["Timeout"]
    assert queue["Properties"]["VisibilityTimeout"] >= 6 * timeout
    # A standard queue's DLQ keeps the original enqueue time: it must retain longer.
    retention = "MessageRetentionPeriod"
    assert dlq["Properties"][retention] > queue["Properties"][retention]


@pytest.mark.parametrize("consumer_id, queue_id, batch", [
    ("WelcomeFollowUp", "WelcomeQueue", 10), ("FanOutWorker", "FanOutQueue", 4)])
def test_consumers_are_bound_to_their_queue_and_report_partial_failures(
    resources: dict[str, Any], consumer_id: str, queue_id: str, batch: int
) -> None:
    events = resources[consumer_id]["Properties"]["Events"]
    sources = [e for e in events.values() if e["Type"] == "SQS"]
    assert len(sources) == 1
    properties = sources[0]["Properties"]
    assert properties["Queue"] == {"Fn::Sub": f"${{{queue_id}.Arn}}"}
    assert properties["BatchSize"] == batch
    assert properties["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_fan_out_worker_has_a_full_vcpu_and_bounded_concurrency(
    package: dict[str, Any], resources: dict[str, Any]
) -> None:
    worker = resources["FanOutWorker"]["Properties"]
    assert worker["MemorySize"] >= 1769
    events = worker["Events"]
    [source] = events.values()
    assert source["Properties"]["ScalingConfig"] == {
        "MaximumConcurrency": {"Ref": "FanOutMaxConcurrency"}}
    parameter = package["template"]["Parameters"]["FanOutMaxConcurrency"]
    assert 2 <= parameter["Default"] <= 10


def test_functions_get_their_configuration_from_the_stack(resources: dict[str, Any]) -> None:
    for logical_id, (name, _role) in policies.FUNCTIONS.items():
        props = resources[logical_id]["Properties"]
        variables = props["Environment"]["Variables"]
        assert variables["CONNECTIONS_STORE"] == {"Fn::Sub": "dynamodb://${ConnectionsTable}"}
        assert variables["WELCOME_QUEUE_URL"] == {"Ref": "WelcomeQueue"}
        assert variables["FANOUT_QUEUE_URL"] == {"Ref": "FanOutQueue"}
        assert variables["FANOUT_QUEUE_NAME"] == {"Fn::GetAtt": ["FanOutQueue", "QueueName"]}
        assert "${WebsocketAPI}" in variables["WS_MANAGEMENT_ENDPOINT"]["Fn::Sub"]
        for key in ("WELCOME_DELAY_SECONDS", "FANOUT_CONCURRENCY", "LOG_LEVEL"):
            assert isinstance(variables[key], str), key
        assert props["FunctionName"] == PROD.function(name)


def test_every_function_gets_auth_from_the_stack_parameters(package: dict[str, Any]) -> None:
    template = package["template"]
    for logical_id in policies.FUNCTIONS:
        variables = template["Resources"][logical_id]["Properties"]["Environment"]["Variables"]
        assert variables["WS_AUTH_JWKS_URL"] == {"Ref": "AuthJwksUrl"}, logical_id
        assert variables["WS_AUTH_AUDIENCE"] == {"Ref": "AuthAudience"}, logical_id
        assert variables["WS_AUTH_ISSUER"] == {"Ref": "AuthIssuer"}, logical_id
        assert variables["WS_AUTH_CLIENT_ID"] == {"Ref": "AuthClientId"}, logical_id
        assert variables["WS_AUTH_TOKEN_USE"] == {"Ref": "AuthTokenUse"}, logical_id
        assert variables["WS_AUTH_MAX_TOKEN_LIFETIME_SECONDS"] == {
            "Ref": "AuthMaxTokenLifetimeSeconds"}, logical_id
        assert variables["WS_ALLOWED_ORIGINS"] == {"Ref": "AllowedOrigins"}, logical_id
        # The secret's name or ARN, never the secret (no plaintext WS_AUTH_SECRET).
        assert variables["WS_AUTH_SECRET_PARAMETER"] == {"Ref": "AuthSecretParameterName"}
        assert variables["WS_AUTH_SECRET_ARN"] == {"Ref": "AuthSecretArn"}, logical_id
        assert "WS_AUTH_SECRET" not in variables, logical_id
    parameters = template["Parameters"]
    jwks = parameters["AuthJwksUrl"]
    # Optional since a secret may be fetched instead; the AuthMode rule wants exactly one mode
    # (test_auth_mode_rule_wants_exactly_one_mode), so there is still no stack without auth.
    assert jwks["Default"] == ""
    pattern = re.compile(jwks["AllowedPattern"])
    assert pattern.fullmatch(
        "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc/.well-known/jwks.json")
    for bad in ("http://idp.example.com/jwks.json", "cognito-idp.amazonaws.com"):
        assert not pattern.fullmatch(bad), bad
    for name in ("AuthAudience", "AuthClientId", "AuthTokenUse", "AllowedOrigins"):
        assert parameters[name]["Default"] == "", name
    # Token scope: the issuer is required, and the TokenScope rule wants an audience or a
    # Cognito client id + token use, so a prod stack cannot admit any token its IdP signed.
    assert "Default" not in parameters["AuthIssuer"], "AuthIssuer must be required"
    issuer = re.compile(parameters["AuthIssuer"]["AllowedPattern"])
    assert issuer.fullmatch("https://idp.example.com")
    assert not issuer.fullmatch("") and not issuer.fullmatch("http://idp.example.com")
    assert parameters["AuthTokenUse"]["AllowedValues"] == ["", "access", "id"]
    [assertion] = template["Rules"]["TokenScope"]["Assertions"]
    refs = json.dumps(assertion["Assert"])
    assert all(f'"Ref": "{name}"' in refs for name in ("AuthAudience", "AuthClientId",
                                                       "AuthTokenUse"))


def test_an_overlay_file_never_reaches_the_template(package: dict[str, Any]) -> None:
    assert OVERLAY_SENTINEL not in (package["dir"] / "sam.json").read_text()


def test_empty_optional_auth_parameters_mean_not_configured() -> None:
    """What the functions see with only AuthJwksUrl given: the other parameters default to "",
    read as not configured -- and a deployed stage without a token scope refuses to run."""
    environ = {"AWS_LAMBDA_FUNCTION_NAME": "ws-rooms-prod-websocket_connect",
               "CONNECTIONS_STORE": "dynamodb://ws-rooms-prod-connections",
               **{variable: "" for variable, _definition in AUTH_PARAMETERS.values()},
               "WS_AUTH_JWKS_URL": "https://idp.example.com/.well-known/jwks.json"}
    with pytest.raises(ConfigError, match="WS_AUTH_ISSUER"):
        Settings.from_env(environ)
    scoped = {**environ, "WS_AUTH_ISSUER": "https://idp.example.com",
              "WS_AUTH_AUDIENCE": "app-client"}
    settings = Settings.from_env(scoped)
    assert settings.auth_enabled
    assert settings.allowed_origins == ()
    # And an empty JWKS URL is "no authentication", which Lambda refuses.
    with pytest.raises(ConfigError, match="WS_AUTH_JWKS_URL"):
        Settings.from_env({**scoped, "WS_AUTH_JWKS_URL": ""})


def _evaluate(node: Any, values: dict[str, str]) -> Any:
    """A Rules assertion or Conditions expression evaluated for parameter ``values``."""
    if isinstance(node, dict) and len(node) == 1:
        [(function, argument)] = node.items()
        if function == "Ref":
            return values[argument]
        if function == "Fn::Equals":
            left, right = (_evaluate(item, values) for item in argument)
            return left == right
        if function == "Fn::Not":
            return not _evaluate(argument[0], values)
        if function == "Fn::And":
            return all(_evaluate(item, values) for item in argument)
        if function == "Fn::Or":
            return any(_evaluate(item, values) for item in argument)
    assert isinstance(node, str), node
    return node


MODES = ("AuthJwksUrl", "AuthSecretParameterName", "AuthSecretArn")


@pytest.mark.parametrize("given", [(), *((m,) for m in MODES),
                                   *((a, b) for a in MODES for b in MODES if a < b), MODES])
def test_auth_mode_rule_wants_exactly_one_mode(
    package: dict[str, Any], given: tuple[str, ...]
) -> None:
    [assertion] = package["template"]["Rules"]["AuthMode"]["Assertions"]
    values = {mode: ("set" if mode in given else "") for mode in MODES}
    assert _evaluate(assertion["Assert"], values) is (len(given) == 1), given


def test_secret_parameters_take_names_and_arns_only(package: dict[str, Any]) -> None:
    parameters = package["template"]["Parameters"]
    cases = {
        "AuthSecretParameterName": (["", "/ws-rooms/prod/auth-secret", "/a"],
                                    ["ws-rooms", "/has space", "arn:aws:ssm:x", "/a*"]),
        "AuthSecretArn": ([
            "", "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ws-rooms/auth-AbC123"],
            ["arn:aws:secretsmanager:eu-west-1:123456789012:secret:auth",
             "arn:aws:ssm:eu-west-1:123456789012:parameter/x", "ws-rooms/auth", "*"]),
        "AuthSecretKmsKeyArn": ([
            "", "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"],
            ["arn:aws:kms:eu-west-1:123456789012:alias/aws/ssm", "*", "alias/mine"]),
        "TableKmsKeyArn": ([
            "", "arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/1234abcd-12ab"],
            ["arn:aws:kms:eu-west-1:123456789012:alias/aws/dynamodb", "*",
             "arn:aws:kms:eu-west-1:123456789012:key/*"]),
    }
    for name, (good, bad) in cases.items():
        parameter = parameters[name]
        assert parameter["Type"] == "String" and parameter["Default"] == "", name
        pattern = re.compile(parameter["AllowedPattern"])
        assert all(pattern.fullmatch(value) for value in good), name
        assert not [value for value in bad if pattern.fullmatch(value)], name
    conditions = package["template"]["Conditions"]
    for condition, parameter_name in {**SECRET_CONDITIONS,
                                      "HasTableKmsKey": "TableKmsKeyArn"}.items():
        for value, holds in (("", False), ("x", True)):
            assert _evaluate(conditions[condition], {parameter_name: value}) is holds


def test_table_is_encrypted_with_kms(package: dict[str, Any], resources: dict[str, Any]) -> None:
    """SSE-KMS always: the AWS managed key (aws/dynamodb) by default, the customer managed key
    TableKmsKeyArn names otherwise; the same in the standalone template."""
    expected = {"SSEEnabled": True, "SSEType": "KMS", "KMSMasterKeyId": {
        "Fn::If": ["HasTableKmsKey", {"Ref": "TableKmsKeyArn"}, {"Ref": "AWS::NoValue"}]}}
    assert resources["ConnectionsTable"]["Properties"]["SSESpecification"] == expected
    standalone = json.loads((ROOT / "deploy" / "resources.json").read_text())
    assert standalone["Resources"]["ConnectionsTable"]["Properties"]["SSESpecification"] == (
        expected)
    assert standalone["Conditions"]["HasTableKmsKey"] == (
        package["template"]["Conditions"]["HasTableKmsKey"])
    assert package["template"]["Parameters"]["TableKmsKeyArn"]["Default"] == ""


def test_reserved_concurrency_is_a_parameter_per_function(
    package: dict[str, Any], resources: dict[str, Any]
) -> None:
    template = package["template"]
    pattern_of = {}
    for logical_id in policies.FUNCTIONS:
        name = reserved_concurrency_parameter(logical_id)
        parameter = template["Parameters"][name]
        assert parameter["Type"] == "String" and parameter["Default"] == "", name
        pattern_of[name] = re.compile(parameter["AllowedPattern"])
        assert resources[logical_id]["Properties"]["ReservedConcurrentExecutions"] == {
            "Fn::If": [f"Has{name}", {"Ref": name}, {"Ref": "AWS::NoValue"}]}
        condition = template["Conditions"][f"Has{name}"]
        assert _evaluate(condition, {name: ""}) is False  # default: unreserved
        assert _evaluate(condition, {name: "10"}) is True
    for pattern in pattern_of.values():
        assert all(pattern.fullmatch(v) for v in ("", "0", "10", "1000"))
        assert not [v for v in ("-1", "1.5", "ten", " 5") if pattern.fullmatch(v)]


def _parameter_value(template: dict[str, Any], value: Any) -> Any:
    """A literal, or the default of the parameter a {"Ref": ...} names."""
    if isinstance(value, dict) and set(value) == {"Ref"}:
        return template["Parameters"][value["Ref"]]["Default"]
    return value


def test_websocket_stage_is_throttled_without_data_trace(package: dict[str, Any]) -> None:
    template = package["template"]
    stage = template["Resources"][WEBSOCKET_STAGE]
    assert stage["Type"] == "AWS::ApiGatewayV2::Stage"
    assert stage["Properties"]["ApiId"] == {"Ref": "WebsocketAPI"}
    default = stage["Properties"]["DefaultRouteSettings"]
    connect = stage["Properties"]["RouteSettings"]["$connect"]
    messages = stage["Properties"]["RouteSettings"]["$default"]
    assert connect["ThrottlingRateLimit"] != messages["ThrottlingRateLimit"]  # separate limits
    limits = {}
    for name, settings in (("default", default), ("$connect", connect), ("$default", messages)):
        assert settings["DataTraceEnabled"] is False, name
        burst = _parameter_value(template, settings["ThrottlingBurstLimit"])
        rate = _parameter_value(template, settings["ThrottlingRateLimit"])
        assert isinstance(burst, int) and isinstance(rate, int) and 0 < rate <= burst, name
        limits[name] = (burst, rate)
    # Sized from the capacity model (docs/capacity.md): inside the account's 10,000 requests/s
    # and 5,000 burst (deliveries share them), $connect inside its 500 new connections/s.
    assert limits["default"][1] <= 10_000 // 4 and limits["default"][0] <= 5_000
    assert limits["$connect"][1] <= 500 and limits["$connect"][0] <= 500
    assert limits["$connect"][1] < limits["default"][1]
    assert limits["$default"][1] <= 10_000 // 4 and limits["$default"][0] <= 5_000
    for parameter in THROTTLING_PARAMETERS:
        assert template["Parameters"][parameter]["Type"] == "Number"
        assert template["Parameters"][parameter]["MinValue"] == 1


def test_env_file_overlay_reaches_every_function_of_a_deploy_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from chalice.cli.factory import CLIFactory

    # Restored after the test: overlay_environment patches the class.
    monkeypatch.setattr(CLIFactory, "create_config_obj", CLIFactory.create_config_obj)
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"WS_AUTH_JWKS_URL": "https://idp.example.com/jwks.json"}))
    overlay_environment(load_env_file(path))
    config = CLIFactory(project_dir=str(ROOT)).create_config_obj(chalice_stage_name="dev")
    for name in ("websocket_connect", policies.QUEUE_CONSUMER):
        env = config.scope("dev", name).environment_variables
        assert env["WS_AUTH_JWKS_URL"] == "https://idp.example.com/jwks.json"
        assert env["CONNECTIONS_STORE"] == f"dynamodb://{repo_config().names('dev').table}"


@pytest.mark.parametrize("content", ['["WS_AUTH_JWKS_URL"]', '{"WS_RATE_LIMIT": 5}', "{"])
def test_env_file_must_be_an_object_of_strings(tmp_path: Path, content: str) -> None:
    path = tmp_path / "env.json"
    path.write_text(content)
    with pytest.raises(SystemExit, match=ENV_FILE_VARIABLE):
        load_env_file(path)


def test_log_groups_have_retention(resources: dict[str, Any]) -> None:
    groups = _of_type(resources, "AWS::Logs::LogGroup")
    assert len(groups) == len(policies.FUNCTIONS)
    names = {g["Properties"]["LogGroupName"] for g in groups.values()}
    assert names == {f"/aws/lambda/{PROD.function(n)}"
                     for n, _ in policies.FUNCTIONS.values()}
    assert all(g["Properties"]["RetentionInDays"] == 30 for g in groups.values())


def test_websocket_api_and_its_three_routes(resources: dict[str, Any]) -> None:
    apis = _of_type(resources, "AWS::ApiGatewayV2::Api")
    assert list(apis) == ["WebsocketAPI"]
    assert apis["WebsocketAPI"]["Properties"]["ProtocolType"] == "WEBSOCKET"
    routes = {r["Properties"]["RouteKey"] for r in
              _of_type(resources, "AWS::ApiGatewayV2::Route").values()}
    assert routes == {"$connect", "$default", "$disconnect"}
    stage = resources["WebsocketAPIStage"]["Properties"]
    assert stage["StageName"] == PROD.api_stage == "prod"


def test_rest_route_uses_the_iam_authorizer(resources: dict[str, Any]) -> None:
    body = resources["RestAPI"]["Properties"]["DefinitionBody"]
    post = body["paths"]["/rooms/{room}/messages"]["post"]
    (scheme,) = (next(iter(s)) for s in post["security"])
    assert body["securityDefinitions"][scheme]["x-amazon-apigateway-authtype"] == "awsSigv4"


# ---------------------------------------------------------------------------------- IAM


def _unconditional(statement: dict[str, Any]) -> dict[str, Any]:
    """A statement, or the statement an ``Fn::If`` grants when its stack condition holds (with
    ``"If": condition`` added); the other branch must be no statement at all."""
    branches = statement.get("Fn::If")
    if branches is None:
        return statement
    condition, granted, otherwise = branches
    assert otherwise == {"Ref": "AWS::NoValue"}, statement
    return {**granted, "If": condition}


def _statements(resources: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::IAM::Role":
            for policy in resource["Properties"].get("Policies", []):
                for statement in policy["PolicyDocument"]["Statement"]:
                    yield logical_id, _unconditional(statement)
            assert not resource["Properties"].get("ManagedPolicyArns"), logical_id
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            for statement in resource["Properties"]["PolicyDocument"]["Statement"]:
                yield logical_id, statement
        elif resource["Type"] == "AWS::Serverless::Function":
            assert "Policies" not in resource["Properties"], logical_id


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _is_wildcard(resource: Any) -> bool:
    """"*", or an ARN whose resource part is "*" (every table, queue, API... of the account)."""
    arn = resource.get("Fn::Sub", "") if isinstance(resource, dict) else resource
    if arn == "*":
        return True
    parts = str(arn).split(":", 5)
    return len(parts) == 6 and parts[5] in ("*", "", "table/*", "log-group:*")


def _assert_no_data_plane_wildcards(where: str, statement: dict[str, Any]) -> None:
    assert statement["Effect"] == "Allow" and "NotAction" not in statement, where
    assert "NotResource" not in statement, where
    actions = _as_list(statement["Action"])
    for action in actions:
        assert "*" not in action, f"{where}: wildcard action {action}"
    for resource in _as_list(statement["Resource"]):
        if _is_wildcard(resource):
            outside = [a for a in actions if not a.startswith("logs:")
                       and a not in WILDCARD_ALLOWLIST]
            assert not outside, f"{where}: {outside} on {resource}"


def test_no_data_plane_wildcard_resources(resources: dict[str, Any]) -> None:
    statements = list(_statements(resources))
    assert statements
    for logical_id, statement in statements:
        _assert_no_data_plane_wildcards(f"{logical_id}/{statement.get('Sid')}", statement)
        assert "*" not in _as_list(statement["Resource"])


def test_static_policy_files_have_no_wildcard_resources() -> None:
    for path in sorted((ROOT / "deploy" / "iam").glob("*.json")):
        for statement in json.loads(path.read_text())["Statement"]:
            _assert_no_data_plane_wildcards(f"{path.name}/{statement.get('Sid')}", statement)
            assert "*" not in _as_list(statement["Resource"])


#: Which function sends to which queue, as tests/deploy/test_function_queues.py observes it by
#: driving each handler: only $connect sends to the welcome queue; every function that can
#: deliver to a room (a presence leave included: $disconnect, the sweep, a follow-up or worker
#: pruning a gone member) may hand a large room to the fan-out queue.
QUEUE_SENDERS = {
    "WelcomeQueueSend": {"websocket_connect"},
    "FanOutQueueSend": {"api_handler", "websocket_message", "fan_out_worker"},
}


def test_queue_senders_are_the_policies_lists() -> None:
    assert set(policies.WELCOME_PRODUCERS) == QUEUE_SENDERS["WelcomeQueueSend"]
    assert set(policies.FANOUT_PRODUCERS) == QUEUE_SENDERS["FanOutQueueSend"]
    assert set(policies.TOKEN_VERIFIERS) == {"websocket_connect"}
    # The handlers (chalicelib/blueprint.py): only $connect builds the gate that verifies tokens.
    source = (ROOT / "chalicelib" / "blueprint.py").read_text()
    assert source.count("connect_gate()") == 1
    assert "def connect(" in source.split("connect_gate()")[0].rsplit("@rooms.", 1)[1]


def test_each_role_grants_exactly_what_the_code_calls(resources: dict[str, Any]) -> None:
    via = "${AWS::Region}.${AWS::URLSuffix}"
    for logical_id, (name, role_id) in policies.FUNCTIONS.items():
        assert resources[logical_id]["Properties"]["Role"] == {"Fn::GetAtt": [role_id, "Arn"]}
        by_sid = {s["Sid"]: s for rid, s in _statements(resources) if rid == role_id}
        granted = {(sid, a) for sid, s in by_sid.items() for a in _as_list(s["Action"])}
        expected = {("Logs", a) for a in policies.LOGS_ACTIONS}
        expected |= {("ConnectionsTable", a) for a in policies.DYNAMODB_TABLE_ACTIONS}
        expected |= {("ConnectionsTableIndex", "dynamodb:Query"),
                     ("ManageConnections", "execute-api:ManageConnections")}
        # The table's customer managed key: every function uses the table; only with a key,
        # only that key, only through DynamoDB.
        expected |= {("TableKey", "kms:Decrypt"), ("TableKey", "kms:GenerateDataKey")}
        key = by_sid["TableKey"]
        assert key["If"] == "HasTableKmsKey"
        assert key["Resource"] == [{"Ref": "TableKmsKeyArn"}]
        assert key["Condition"] == {"StringEquals": {"kms:ViaService": {
            "Fn::Sub": f"dynamodb.{via}"}}}
        unconditional = {sid for sid, s in by_sid.items() if "If" not in s}
        assert unconditional == set(by_sid) - {
            "TableKey", "AuthSecretParameter", "AuthSecret", "AuthSecretKey"}, role_id
        if name in QUEUE_SENDERS["WelcomeQueueSend"]:
            expected |= {("WelcomeQueueSend", "sqs:SendMessage")}
            assert by_sid["WelcomeQueueSend"]["Resource"] == [
                {"Fn::GetAtt": ["WelcomeQueue", "Arn"]}]
        if name == "websocket_connect":
            # The shared secret, when the stack reads one: that parameter or secret only, and
            # its customer managed key only through SSM or Secrets Manager.
            expected |= {("AuthSecretParameter", "ssm:GetParameter"),
                         ("AuthSecret", "secretsmanager:GetSecretValue"),
                         ("AuthSecretKey", "kms:Decrypt")}
            assert by_sid["AuthSecretParameter"]["If"] == "HasAuthSecretParameter"
            assert by_sid["AuthSecretParameter"]["Resource"] == [{"Fn::Sub": (
                "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}"
                ":parameter${AuthSecretParameterName}")}]
            assert by_sid["AuthSecret"]["If"] == "HasAuthSecretArn"
            assert by_sid["AuthSecret"]["Resource"] == [{"Ref": "AuthSecretArn"}]
            assert by_sid["AuthSecretKey"]["If"] == "HasAuthSecretKmsKey"
            assert by_sid["AuthSecretKey"]["Resource"] == [{"Ref": "AuthSecretKmsKeyArn"}]
            assert by_sid["AuthSecretKey"]["Condition"] == {"StringEquals": {"kms:ViaService": [
                {"Fn::Sub": f"ssm.{via}"}, {"Fn::Sub": f"secretsmanager.{via}"}]}}
        if name in QUEUE_SENDERS["FanOutQueueSend"]:
            expected |= {("FanOutQueueSend", "sqs:SendMessage")}
            assert by_sid["FanOutQueueSend"]["Resource"] == [
                {"Fn::GetAtt": ["FanOutQueue", "Arn"]}]
        if name == policies.QUEUE_CONSUMER:
            expected |= {("WelcomeQueueConsume", a) for a in policies.SQS_CONSUMER_ACTIONS}
        if name == policies.FANOUT_CONSUMER:
            expected |= {("FanOutQueueConsume", a) for a in policies.SQS_CONSUMER_ACTIONS}
        assert granted == expected, role_id
        assert by_sid["ConnectionsTable"]["Resource"] == [
            {"Fn::GetAtt": ["ConnectionsTable", "Arn"]}]
        assert by_sid["ConnectionsTableIndex"]["Resource"] == [
            {"Fn::Sub": f"${{ConnectionsTable.Arn}}/index/{LAST_SEEN_INDEX}"}]
        for arn in by_sid["ManageConnections"]["Resource"]:
            assert re.fullmatch(
                r"arn:\$\{AWS::Partition\}:execute-api:\$\{AWS::Region\}:\$\{AWS::AccountId\}:"
                r"\$\{WebsocketAPI\}/prod/(GET|POST)/@connections/\*", arn["Fn::Sub"]), arn
        for arn in by_sid["Logs"]["Resource"]:
            assert f"log-group:/aws/lambda/{PROD.function(name)}" in arn["Fn::Sub"]


def _calls(path: str, receiver: str) -> set[str]:
    source = (ROOT / path).read_text()
    return set(re.findall(rf"{re.escape(receiver)}\.([a-z_]+)\(", source))


def _action(service: str, call: str) -> str:
    return service + ":" + "".join(part.capitalize() for part in call.split("_"))


def test_policies_cover_exactly_the_api_calls_in_the_code() -> None:
    source = (ROOT / "chalicelib/store/dynamodb.py").read_text()
    methods = set(re.findall(r'self\._call\(\s*"([a-z_]+)"', source))
    assert "transact_write_items" in methods
    # A transaction is authorised by the actions of its items (IAM has no TransactWriteItems).
    items = {kind.lower() + "_item" for kind in re.findall(r'\{"(Put|Update|Delete)": \{', source)}
    dynamodb = {_action("dynamodb", c) for c in (methods - {"transact_write_items"}) | items}
    assert dynamodb == set(policies.DYNAMODB_TABLE_ACTIONS)
    assert LAST_SEEN_INDEX == policies.LAST_SEEN_INDEX
    sqs = {_action("sqs", c) for c in _calls("chalicelib/welcome.py", "self.client")}
    sqs |= {_action("sqs", c) for c in _calls("chalicelib/queues.py", "self._client")}
    assert sqs == {"sqs:SendMessage", "sqs:GetQueueUrl"}
    # SendMessageBatch is authorised by the sqs:SendMessage permission (SQS API reference).
    fanout = {_action("sqs", c) for c in _calls("chalicelib/fanout.py", "self.client")}
    assert fanout == {"sqs:SendMessageBatch"}
    management = _calls("chalicelib/delivery.py", "self.client")
    assert management == {"post_to_connection", "get_connection"}  # POST and GET @connections


def test_static_policy_files_grant_per_function_queues() -> None:
    """Chalice's default file is shared by every function without its own (so it sends to both
    queues); the worker's file sends to the fan-out queue only (it re-enqueues), the follow-up's
    to none; none grants KMS, SSM or Secrets Manager (chalice deploy users add those:
    docs/deploy.md)."""
    for stage in repo_config().deployed_stages:
        for filename, sends in ((f"{stage}.json", {"WelcomeQueueSend", "FanOutQueueSend"}),
                                (f"{stage}-welcome_follow_up.json", set()),
                                (f"{stage}-fan_out_worker.json", {"FanOutQueueSend"})):
            statements = json.loads((ROOT / "deploy" / "iam" / filename).read_text())["Statement"]
            sids = {s["Sid"] for s in statements}
            assert {sid for sid in sids if sid.endswith("Send")} == sends, filename
            actions = {a for s in statements for a in _as_list(s["Action"])}
            assert not [a for a in actions if a.split(":")[0] in (
                "kms", "ssm", "secretsmanager")], filename


def test_static_policy_files_are_up_to_date() -> None:
    for filename, document in policies.static_policy_files().items():
        path = ROOT / "deploy" / "iam" / filename
        assert path.read_text() == policies.render(document), (
            f"{path} is stale: run python -m deploy.policies")


# ---------------------------------------------------------------------------------- config


def test_stage_config() -> None:
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    stages = config["stages"]
    assert stages["test"] == {"environment_variables": {}}
    for stage in repo_config().deployed_stages:
        settings = stages[stage]
        env = settings["environment_variables"]
        names = repo_config().names(stage)
        assert env["CONNECTIONS_STORE"] == f"dynamodb://{names.table}"
        assert env["WELCOME_QUEUE_URL"] == names.queue("welcome")
        assert env["WELCOME_QUEUE_NAME"] == names.queue("welcome")
        for key in ("WELCOME_DELAY_SECONDS", "FANOUT_CONCURRENCY", "LOG_LEVEL"):
            assert key in env
        assert settings["autogen_policy"] is False
        assert settings["automatic_layer"] is True
        assert settings["log_retention_in_days"] > 0
        assert settings["iam_policy_file"] == f"../deploy/iam/{stage}.json"
        assert env["FANOUT_QUEUE_URL"] == names.queue("fanout")
        assert env["FANOUT_QUEUE_NAME"] == names.queue("fanout")
        for consumer in policies.CONSUMERS:
            assert (settings["lambda_functions"][consumer]["iam_policy_file"]
                    == f"../deploy/iam/{stage}-{consumer}.json")
        # The fan-out worker gets a full vCPU (1,769 MB): posting is CPU-bound.
        assert settings["lambda_functions"]["fan_out_worker"]["lambda_memory_size"] >= 1769
    text = (ROOT / ".chalice" / "config.json").read_text()
    assert not re.search(r"\b\d{12}\b", text), "no account ids in the repo"
    assert "WS_AUTH_SECRET" not in text, "no auth secret in the repo"
    assert not re.search(r"(?i)secret|password|AKIA[0-9A-Z]{16}", text)


def test_repo_config_holds_no_auth_settings() -> None:
    """No secret in the repo, and the stages the local gateway loads stay auth-off by default:
    deployed stages get WS_AUTH_* from stack parameters or a DEPLOY_ENV_FILE overlay."""
    config = json.loads((ROOT / ".chalice" / "config.json").read_text())
    layers = [config, *config["stages"].values()]
    layers += [f for stage in config["stages"].values()
               for f in stage.get("lambda_functions", {}).values()]
    for layer in layers:
        env = layer.get("environment_variables", {})
        assert not [key for key in env if key.startswith("WS_AUTH_")], env


# ---------------------------------------------------------------------------------- monitoring


def _alarms(resources: dict[str, Any]) -> dict[str, Any]:
    return _of_type(resources, "AWS::CloudWatch::Alarm")


def _alarm_metrics(alarm: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics an alarm reads: its own, or the inputs of its metric math."""
    props = alarm["Properties"]
    if "MetricName" in props:
        return [props]
    return [m["MetricStat"]["Metric"] for m in props["Metrics"] if "MetricStat" in m]


def _find(resources: dict[str, Any], namespace: Any, name: str) -> dict[str, Any]:
    found = [alarm for alarm in _alarms(resources).values()
             if any(m["Namespace"] == namespace and m["MetricName"] == name
                    for m in _alarm_metrics(alarm))]
    assert found, f"no alarm on {namespace} {name}"
    return found[0]


def test_every_alarm_notifies_the_topic(resources: dict[str, Any]) -> None:
    alarms = _alarms(resources)
    # 2 DLQs, Errors and Throttles of 7 functions, Forbidden, the failure rate, 2 API errors,
    # the table's throttling.
    assert len(alarms) == 2 + 2 * len(policies.FUNCTIONS) + 1 + 1 + 2 + 1
    for logical_id, alarm in alarms.items():
        props = alarm["Properties"]
        assert props["AlarmActions"] == [{"Ref": "AlarmTopic"}], logical_id
        assert props["OKActions"] == [{"Ref": "AlarmTopic"}], logical_id
        assert props["TreatMissingData"] == "notBreaching", logical_id
        assert props["ComparisonOperator"] == "GreaterThanThreshold", logical_id
    assert resources["AlarmTopic"]["Type"] == "AWS::SNS::Topic"


def test_alarm_email_may_be_empty(package: dict[str, Any], resources: dict[str, Any]) -> None:
    template = package["template"]
    parameter = template["Parameters"]["AlarmEmail"]
    assert parameter["Default"] == ""
    pattern = re.compile(parameter["AllowedPattern"])
    assert pattern.fullmatch("") and pattern.fullmatch("ops@example.com")
    assert not pattern.fullmatch("not an email")
    subscription = resources["AlarmEmailSubscription"]
    assert subscription["Type"] == "AWS::SNS::Subscription"
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"]["Endpoint"] == {"Ref": "AlarmEmail"}
    assert template["Conditions"]["HasAlarmEmail"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}


@pytest.mark.parametrize("dlq", ["WelcomeDeadLetterQueue", "FanOutDeadLetterQueue"])
def test_each_dead_letter_queue_has_an_alarm(resources: dict[str, Any], dlq: str) -> None:
    props = resources[f"{dlq}Alarm"]["Properties"]
    assert props["Namespace"] == "AWS/SQS"
    assert props["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert props["Dimensions"] == [{"Name": "QueueName",
                                    "Value": {"Fn::GetAtt": [dlq, "QueueName"]}}]
    assert props["Threshold"] == 0


def test_errors_and_throttles_of_every_function_are_alarmed(resources: dict[str, Any]) -> None:
    for logical_id, (name, _role) in policies.FUNCTIONS.items():
        function = resources[logical_id]["Properties"]["FunctionName"]
        for metric_name in ("Errors", "Throttles"):
            props = resources[f"{logical_id}{metric_name}Alarm"]["Properties"]
            assert (props["Namespace"], props["MetricName"]) == ("AWS/Lambda", metric_name)
            assert props["Dimensions"] == [{"Name": "FunctionName", "Value": function}]
            assert function == PROD.function(name)


def test_custom_metric_alarms_use_the_app_names_and_dimensions(
    package: dict[str, Any], resources: dict[str, Any]
) -> None:
    namespace = {"Ref": "MetricsNamespace"}
    assert package["template"]["Parameters"]["MetricsNamespace"]["Default"] == "WsRooms"
    forbidden = _find(resources, namespace, metrics.FORBIDDEN)["Properties"]
    assert forbidden["Threshold"] == 0
    rate = _find(resources, namespace, metrics.DELIVERY_FAILURES)
    names = {m["MetricName"] for m in _alarm_metrics(rate)}
    assert names == {metrics.DELIVERY_FAILURES, metrics.DELIVERIES}
    for alarm in (resources["ForbiddenAlarm"], rate):
        for metric in _alarm_metrics(alarm):
            # The service is the Chalice app's name (chalicelib.observability), AppName here.
            assert metric["Dimensions"] == [{"Name": "service", "Value": {"Ref": "AppName"}},
                                            {"Name": "stage", "Value": {"Ref": "Stage"}}]
    for logical_id in policies.FUNCTIONS:
        variables = resources[logical_id]["Properties"]["Environment"]["Variables"]
        assert variables["METRICS_NAMESPACE"] == namespace
        assert variables["STAGE"] == {"Ref": "Stage"}


def test_websocket_api_and_table_throttling_are_alarmed(resources: dict[str, Any]) -> None:
    for name in ("IntegrationError", "ExecutionError"):
        props = _find(resources, "AWS/ApiGateway", name)["Properties"]
        assert {"Name": "ApiId", "Value": {"Ref": "WebsocketAPI"}} in props["Dimensions"]
    table = _find(resources, "AWS/DynamoDB", "WriteThrottleEvents")
    read = {m["MetricName"] for m in _alarm_metrics(table)}
    assert read == {"ReadThrottleEvents", "WriteThrottleEvents"}
    assert all({"Name": "TableName", "Value": {"Fn::Sub": "${ConnectionsTable}"}}
               in m["Dimensions"] for m in _alarm_metrics(table))


def test_the_dashboard_shows_what_an_operator_needs(resources: dict[str, Any]) -> None:
    dashboard = resources["Dashboard"]
    assert dashboard["Type"] == "AWS::CloudWatch::Dashboard"
    body = json.loads(dashboard["Properties"]["DashboardBody"]["Fn::Sub"])
    rows = [row for widget in body["widgets"] for row in widget["properties"]["metrics"]]
    shown = {(row[0], row[1]) for row in rows}
    ns = "${MetricsNamespace}"
    for expected in [("AWS/ApiGateway", "ConnectCount"), (ns, "MessagesIn"), (ns, "Deliveries"),
                     (ns, "Gone"), (ns, "Forbidden"), (ns, "Throttled"),
                     ("AWS/SQS", "ApproximateNumberOfMessagesVisible"),
                     ("AWS/SQS", "ApproximateAgeOfOldestMessage")]:
        assert expected in shown, expected
    stats = {row[-1].get("stat") for row in rows if row[1] == "FanOutMs"}
    assert stats == {"p50", "p99"}
    errors = {row[3] for row in rows if row[:2] == ["AWS/Lambda", "Errors"]}
    assert errors == {PROD.function(n) for n, _r in policies.FUNCTIONS.values()}
    depth = {row[3] for row in rows if row[1] == "ApproximateNumberOfMessagesVisible"}
    assert depth == {f"${{{queue}.QueueName}}" for queue in monitoring.QUEUES}
    # Every custom metric on the dashboard is one the app emits.
    assert {row[1] for row in rows if row[0] == ns} <= set(metrics.NAMES)
