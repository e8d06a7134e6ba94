"""deploy/names.py: every deployed name derives from the Chalice app name and stage, and no
stage's static IAM policy reaches another stage's connections."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from deploy import policies
from deploy.names import CONFIG_PATH, ChaliceConfig, StageNames, render_config, repo_config
from deploy.package import merge_template

ROOT = Path(__file__).resolve().parents[2]


def _config(app: str = "notes", **stages: dict[str, Any]) -> ChaliceConfig:
    """A config shaped like an adopter's: a top-level API stage, deployed stages with policy
    files, and a local-only stage."""
    deployed = stages or {"dev": {}, "staging": {"api_gateway_stage": "staging"},
                          "prod": {"api_gateway_stage": "v1"}}
    return ChaliceConfig({
        "version": "2.0", "app_name": app, "api_gateway_stage": "api",
        "stages": {**{name: {"iam_policy_file": f"../deploy/iam/{name}.json",
                             "environment_variables": {"LOG_LEVEL": "INFO"}, **extra}
                      for name, extra in deployed.items()},
                   "test": {"environment_variables": {}}},
    })


def _connection_arn(api_stage: str) -> str:
    """A real @connections ARN of some API (the static policies cannot know its id)."""
    return (f"arn:aws:execute-api:eu-west-1:123456789012:a1b2c3d4e5/{api_stage}"
            "/POST/@connections/L0SM9cOFvHcCIhw=")


def _allows(document: dict[str, Any], action: str, arn: str) -> bool:
    """IAM's matching for Allow statements: ``*`` and ``?`` wildcards, case-sensitive ARNs."""
    for statement in document["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [
            statement["Action"]]
        if action in actions and any(fnmatchcase(arn, resource)
                                     for resource in statement["Resource"]):
            return True
    return False


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in [key, *_strings(value)]]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def test_names_follow_chalice_s_rule() -> None:
    names = StageNames("notes", "staging", "staging")
    assert names.function("api_handler") == "notes-staging"  # Chalice's REST handler
    assert names.function("websocket_connect") == "notes-staging-websocket_connect"
    assert names.table == "notes-staging-connections"
    assert names.queue("fanout") == "notes-staging-fanout"
    assert names.dashboard == "notes-staging"


def test_api_stage_resolves_like_chalice() -> None:
    config = _config()
    assert config.deployed_stages == ("dev", "staging", "prod")  # not "test": no policy file
    assert config.api_stage("dev") == "api"  # inherited from the top level
    assert config.api_stage("prod") == "v1"
    assert ChaliceConfig({"app_name": "x", "stages": {}}).api_stage("dev") == "api"


def test_unknown_stage_is_refused_by_name() -> None:
    with pytest.raises(SystemExit, match=r"unknown stage 'test'.*'dev', 'staging', 'prod'"):
        _config().names("test")


def test_repo_stages_have_distinct_api_stages_and_dev_keeps_the_local_path() -> None:
    """Issue 15: dev and prod shared the stage name ``api``, so the dev role could manage prod
    connections.  dev keeps ``api``: it is the local gateway's URL path (ws://.../api)."""
    config = repo_config()
    assert config.problems() == []
    assert config.api_stage("dev") == "api"
    assert config.api_stage("prod") == "prod"


def test_repo_static_policies_do_not_reach_the_other_stage_s_connections() -> None:
    files = policies.static_policy_files()
    config = repo_config()
    for stage in config.deployed_stages:
        for other in config.deployed_stages:
            arn = _connection_arn(config.api_stage(other))
            for filename in (f"{stage}.json", f"{stage}-welcome_follow_up.json",
                             f"{stage}-fan_out_worker.json"):
                allowed = _allows(files[filename], "execute-api:ManageConnections", arn)
                assert allowed == (stage == other), (filename, arn)


def test_shared_api_stage_is_a_problem() -> None:
    config = _config(dev={}, prod={})  # both inherit "api"
    [problem] = config.problems()
    assert "'dev' and 'prod' share api_gateway_stage 'api'" in problem
    with pytest.raises(SystemExit, match="share api_gateway_stage"):
        merge_template("prod", config)


@pytest.mark.parametrize("app, expected", [
    ("my.app", "app_name 'my.app'"),
    ("-x", "app_name '-x'"),
    ("a" * 50, "longer than Lambda's 64 characters"),
])
def test_names_that_cannot_be_deployed_are_problems(app: str, expected: str) -> None:
    assert any(expected in problem for problem in _config(app).problems())


def test_another_app_s_static_policies_name_only_its_own_resources() -> None:
    config = _config()
    files = policies.static_policy_files(config)
    assert sorted(files) == sorted(
        f"{stage}{suffix}.json" for stage in ("dev", "staging", "prod")
        for suffix in ("", "-welcome_follow_up", "-fan_out_worker"))
    for filename, document in files.items():
        stage = filename.split("-")[0].removesuffix(".json")
        resources = [r for s in document["Statement"] for r in s["Resource"]]
        assert resources
        for resource in resources:
            assert "ws-rooms" not in resource
            if ":execute-api:" in resource:
                assert f"*/{config.api_stage(stage)}/" in resource
            else:
                assert f"notes-{stage}" in resource, (filename, resource)
    assert _allows(files["staging.json"], "dynamodb:PutItem",
                   "arn:aws:dynamodb:eu-west-1:123456789012:table/notes-staging-connections")
    assert not _allows(files["staging.json"], "dynamodb:PutItem",
                       "arn:aws:dynamodb:eu-west-1:123456789012:table/notes-prod-connections")


def test_another_app_s_template_is_named_after_it() -> None:
    template = merge_template("staging", _config())
    assert template["Parameters"]["AppName"]["AllowedValues"] == ["notes"]
    assert template["Parameters"]["Stage"]["AllowedValues"] == ["staging"]
    resources = template["Resources"]
    assert resources["WebsocketConnect"]["Properties"]["FunctionName"] == (
        "notes-staging-websocket_connect")
    assert resources["Dashboard"]["Properties"]["DashboardName"] == "notes-staging"
    assert resources["AlarmTopic"]["Properties"]["DisplayName"] == "notes staging alarms"
    endpoint = resources["WebsocketMessage"]["Properties"]["Environment"]["Variables"][
        "WS_MANAGEMENT_ENDPOINT"]["Fn::Sub"]
    assert endpoint.endswith(".${AWS::URLSuffix}/staging")
    # Literal names are the app's; the data resources' names are Fn::Sub on AppName and Stage.
    text = _strings(template)
    assert not [s for s in text if "ws-rooms" in s]
    table = resources["ConnectionsTable"]["Properties"]["TableName"]
    assert table == {"Fn::Sub": "${AppName}-${Stage}-connections"}


def test_synced_config_fills_a_new_stage_and_keeps_everything_else() -> None:
    config = _config()
    synced = config.synced()
    env = synced["stages"]["staging"]["environment_variables"]
    assert env == {"LOG_LEVEL": "INFO", "STAGE": "staging",
                   "CONNECTIONS_STORE": "dynamodb://notes-staging-connections",
                   "WELCOME_QUEUE_URL": "notes-staging-welcome",
                   "WELCOME_QUEUE_NAME": "notes-staging-welcome",
                   "FANOUT_QUEUE_URL": "notes-staging-fanout",
                   "FANOUT_QUEUE_NAME": "notes-staging-fanout"}
    assert synced["stages"]["test"] == {"environment_variables": {}}
    assert list(synced) == list(config.data)
    assert "STAGE" not in config.data["stages"]["staging"]["environment_variables"]  # a copy


def test_repo_config_is_in_sync_with_its_names() -> None:
    assert CONFIG_PATH.read_text() == render_config(repo_config().synced()), (
        "the derived variables in .chalice/config.json are stale: run python -m deploy.policies")


def test_policies_check_passes_on_the_repo_and_help_writes_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert policies.main(["--check"]) == 0
    before = {path: path.read_text() for path in (ROOT / "deploy" / "iam").glob("*.json")}
    with pytest.raises(SystemExit) as exit_info:
        policies.main(["--help"])
    assert exit_info.value.code == 0
    assert "--check" in capsys.readouterr().out
    assert before == {path: path.read_text() for path in (ROOT / "deploy" / "iam").glob("*.json")}


def test_no_deploy_module_hard_codes_the_app_name() -> None:
    for path in [*sorted((ROOT / "deploy").glob("*.py")), ROOT / "deploy" / "resources.json"]:
        text = path.read_text()
        code = re.sub(r'"""[\s\S]*?"""', "", text) if path.suffix == ".py" else text
        assert repo_config().app_name not in code, (
            f"{path.name} names the app instead of deriving it")


def test_the_app_s_name_is_the_config_s() -> None:
    """Chalice names deployed resources after the config's app_name, while the metrics' service
    dimension and the logger come from app.py's ``Chalice(app_name=...)``: they must agree, or
    the alarms would watch a service that never reports."""
    import app

    assert app.app.app_name == repo_config().app_name


def test_load_reports_a_broken_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(SystemExit, match=r"config\.json"):
        ChaliceConfig.load(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps({"version": "2.0"}))
    with pytest.raises(SystemExit, match="expected a Chalice config with an app_name"):
        ChaliceConfig.load(tmp_path / "config.json")
