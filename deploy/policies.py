"""Least-privilege IAM policies for the Lambda functions, in two renderings of one source.

* :func:`cfn_policy` -- for the packaged CloudFormation template (``python -m deploy.package``):
  every ARN is an ``Fn::Sub`` on the stack's own resources (the table, the queue, *this*
  WebSocket API), so nothing is shared with another stack or stage.
* :func:`static_policy` -- the files in ``deploy/iam/`` that ``.chalice/config.json`` names as
  ``iam_policy_file`` for ``chalice deploy`` users.  Chalice copies them verbatim, so they cannot
  reference CloudFormation; the region and account are ``*`` and the WebSocket API id is ``*``
  (``chalice deploy`` creates the API after the role), but every data-plane ARN still names the
  stage's own table, queue, API stage and ``@connections`` path.

What the code calls (keep in sync with ``chalicelib``; ``tests/deploy`` checks the lists):

* DynamoDB (``chalicelib/store/dynamodb.py``): GetItem, PutItem, UpdateItem, DeleteItem, Query,
  BatchWriteItem on the table (TransactWriteItems has no IAM action of its own: it is authorised
  by the Put/Update/Delete actions of its items); Query on the ``by-last-seen`` index (the
  sweep).
* SQS (``chalicelib/welcome.py``, ``chalicelib/fanout.py``): SendMessage on the welcome queue
  for ``$connect`` only (:data:`WELCOME_PRODUCERS`); SendMessage (SendMessageBatch is authorised
  as SendMessage) on the fan-out queue for the functions that hand large rooms' messages to it
  (:data:`FANOUT_PRODUCERS`);
  GetQueueUrl only when a ``*_QUEUE_URL`` is a bare name (the static policies; the template
  passes URLs).  Each queue's event source mapping polls with its consumer's role:
  ReceiveMessage, DeleteMessage, GetQueueAttributes, on that queue, for that function only.
* KMS, template only, when the stack is given a customer managed key: Decrypt and
  GenerateDataKey on the table's key (``TableKmsKeyArn``) through DynamoDB; Decrypt on the
  shared secret's key (``AuthSecretKmsKeyArn``) through SSM or Secrets Manager.
* SSM / Secrets Manager, template only, for :data:`TOKEN_VERIFIERS`: GetParameter on the
  ``AuthSecretParameterName`` parameter, or GetSecretValue on the ``AuthSecretArn`` secret.
* Management API (``chalicelib/delivery.py``): PostToConnection (POST) and GetConnection (GET) on
  ``@connections``: ``execute-api:ManageConnections``.
* CloudWatch Logs: CreateLogGroup, CreateLogStream, PutLogEvents on the function's log group.

Every name comes from ``.chalice/config.json`` (:mod:`deploy.names`: the app name, the stage and
its ``api_gateway_stage``).  Run ``python -m deploy.policies`` to rewrite ``deploy/iam/*.json``
and the derived stage variables of ``.chalice/config.json`` after changing this module, the app
name, or the stages.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from deploy.names import CONFIG_PATH, ChaliceConfig, StageNames, render_config, repo_config

LAST_SEEN_INDEX = "by-last-seen"  # chalicelib.store.dynamodb.LAST_SEEN_INDEX (a test checks)

#: Chalice's CloudFormation logical id of each function -> (Chalice function name, role id).
FUNCTIONS: dict[str, tuple[str, str]] = {
    "APIHandler": ("api_handler", "ApiHandlerRole"),
    "WebsocketConnect": ("websocket_connect", "WebsocketConnectRole"),
    "WebsocketMessage": ("websocket_message", "WebsocketMessageRole"),
    "WebsocketDisconnect": ("websocket_disconnect", "WebsocketDisconnectRole"),
    "WelcomeFollowUp": ("welcome_follow_up", "WelcomeFollowUpRole"),
    "Sweep": ("sweep", "SweepRole"),
    "FanOutWorker": ("fan_out_worker", "FanOutWorkerRole"),
}
#: The one function that consumes the welcome queue.
QUEUE_CONSUMER = "welcome_follow_up"
#: The one function that consumes the fan-out queue.
FANOUT_CONSUMER = "fan_out_worker"
#: Consumer function -> (its queue's logical id, the queue's name suffix).
CONSUMERS = {
    QUEUE_CONSUMER: ("WelcomeQueue", "welcome"),
    FANOUT_CONSUMER: ("FanOutQueue", "fanout"),
}
#: The one function that sends to the welcome queue (``Messaging.on_connect``).
WELCOME_PRODUCERS = ("websocket_connect",)
#: The functions that may hand a large room's message to the fan-out queue: a client's send (and
#: an app action's send to a room), the REST push, and the worker re-enqueueing failed
#: recipients.  Presence announcements never use the queue (large rooms get none), so
#: ``$disconnect``, the sweep and the follow-up, which only announce departures, do not send to
#: it.  tests/deploy/test_function_queues.py drives each function and checks this list.
FANOUT_PRODUCERS = ("api_handler", "websocket_message", "fan_out_worker")
#: The functions that verify tokens (the ``$connect`` gate): the only ones that read a
#: shared-secret parameter or secret (``WS_AUTH_SECRET_PARAMETER`` / ``WS_AUTH_SECRET_ARN``).
TOKEN_VERIFIERS = ("websocket_connect",)
#: Stack conditions (deploy/resources.json and deploy/package.py) guarding optional grants.
TABLE_KEY_CONDITION = "HasTableKmsKey"
SECRET_PARAMETER_CONDITION = "HasAuthSecretParameter"
SECRET_ARN_CONDITION = "HasAuthSecretArn"
SECRET_KEY_CONDITION = "HasAuthSecretKmsKey"

DYNAMODB_TABLE_ACTIONS = [
    "dynamodb:BatchWriteItem",
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
]
DYNAMODB_INDEX_ACTIONS = ["dynamodb:Query"]
SQS_PRODUCER_ACTIONS = ["sqs:SendMessage"]
#: What Lambda's SQS event source mapping needs from the function's role (the AWS managed
#: policy AWSLambdaSQSQueueExecutionRole grants the same three, on "*").
SQS_CONSUMER_ACTIONS = ["sqs:DeleteMessage", "sqs:GetQueueAttributes", "sqs:ReceiveMessage"]
LOGS_ACTIONS = ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]
#: What DynamoDB needs from the caller when the table is encrypted with a customer managed key.
TABLE_KEY_ACTIONS = ["kms:Decrypt", "kms:GenerateDataKey"]
SSM_SECRET_ACTIONS = ["ssm:GetParameter"]
SECRETS_MANAGER_ACTIONS = ["secretsmanager:GetSecretValue"]
#: Reading a SecureString or a secret encrypted with a customer managed key.
SECRET_KEY_ACTIONS = ["kms:Decrypt"]
MANAGE_CONNECTIONS = ["execute-api:ManageConnections"]


def _doc(statements: list[dict[str, Any]]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": statements}


def _stmt(sid: str, actions: list[str], resources: list[Any]) -> dict[str, Any]:
    return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}


def _when(condition: str, statement: dict[str, Any]) -> dict[str, Any]:
    """``statement`` only when the stack ``condition`` holds (otherwise no statement at all)."""
    return {"Fn::If": [condition, statement, {"Ref": "AWS::NoValue"}]}


def _via(service: str) -> dict[str, Any]:
    """A KMS grant usable only through ``service`` in the stack's Region."""
    return {"StringEquals": {"kms:ViaService": {
        "Fn::Sub": f"{service}.${{AWS::Region}}.${{AWS::URLSuffix}}"}}}


def cfn_policy(names: StageNames, name: str) -> dict[str, Any]:
    """The policy document of function ``name`` in the packaged template (Fn::Sub ARNs).

    Optional grants are ``Fn::If`` on a stack condition: the table's customer managed key
    (every function uses the table), and the shared-secret parameter or secret with its key
    (only :data:`TOKEN_VERIFIERS`).
    """
    prefix = "arn:${AWS::Partition}"
    region_account = "${AWS::Region}:${AWS::AccountId}"
    log_group = f"{prefix}:logs:{region_account}:log-group:/aws/lambda/{names.function(name)}"
    connections = f"{prefix}:execute-api:{region_account}:${{WebsocketAPI}}/{names.api_stage}"
    statements = [
        _stmt("Logs", LOGS_ACTIONS, [{"Fn::Sub": log_group}, {"Fn::Sub": log_group + ":*"}]),
        _stmt("ConnectionsTable", DYNAMODB_TABLE_ACTIONS,
              [{"Fn::GetAtt": ["ConnectionsTable", "Arn"]}]),
        _stmt("ConnectionsTableIndex", DYNAMODB_INDEX_ACTIONS,
              [{"Fn::Sub": f"${{ConnectionsTable.Arn}}/index/{LAST_SEEN_INDEX}"}]),
        _when(TABLE_KEY_CONDITION, {
            **_stmt("TableKey", TABLE_KEY_ACTIONS, [{"Ref": "TableKmsKeyArn"}]),
            "Condition": _via("dynamodb"),
        }),
        _stmt("ManageConnections", MANAGE_CONNECTIONS, [
            {"Fn::Sub": f"{connections}/POST/@connections/*"},
            {"Fn::Sub": f"{connections}/GET/@connections/*"},
        ]),
    ]
    if name in WELCOME_PRODUCERS:
        statements.append(_stmt("WelcomeQueueSend", SQS_PRODUCER_ACTIONS,
                                [{"Fn::GetAtt": ["WelcomeQueue", "Arn"]}]))
    if name in TOKEN_VERIFIERS:
        parameter = f"{prefix}:ssm:{region_account}:parameter${{AuthSecretParameterName}}"
        statements += [
            _when(SECRET_PARAMETER_CONDITION, _stmt(
                "AuthSecretParameter", SSM_SECRET_ACTIONS, [{"Fn::Sub": parameter}])),
            _when(SECRET_ARN_CONDITION, _stmt(
                "AuthSecret", SECRETS_MANAGER_ACTIONS, [{"Ref": "AuthSecretArn"}])),
            _when(SECRET_KEY_CONDITION, {
                **_stmt("AuthSecretKey", SECRET_KEY_ACTIONS, [{"Ref": "AuthSecretKmsKeyArn"}]),
                "Condition": {"StringEquals": {"kms:ViaService": [
                    {"Fn::Sub": "ssm.${AWS::Region}.${AWS::URLSuffix}"},
                    {"Fn::Sub": "secretsmanager.${AWS::Region}.${AWS::URLSuffix}"},
                ]}},
            }),
        ]
    if name in FANOUT_PRODUCERS:
        statements.append(_stmt("FanOutQueueSend", SQS_PRODUCER_ACTIONS,
                                [{"Fn::GetAtt": ["FanOutQueue", "Arn"]}]))
    if name in CONSUMERS:
        queue_id = CONSUMERS[name][0]
        statements.append(_stmt(f"{queue_id}Consume", SQS_CONSUMER_ACTIONS,
                                [{"Fn::GetAtt": [queue_id, "Arn"]}]))
    return _doc(statements)


def static_policy(names: StageNames, consumer: str | None) -> dict[str, Any]:
    """The ``iam_policy_file`` for ``chalice deploy`` (``consumer``: that queue consumer's file).

    Chalice names one default file per stage, shared by every function without a file of its
    own (``$connect``, messages, ``$disconnect``, the sweep, the REST handler): it grants what
    any of them calls, so both queues' sends.  Each consumer's file grants what that consumer
    calls: neither consumer sends to the welcome queue.  The static files grant no KMS, SSM or
    Secrets Manager access: ``chalice deploy`` users add those themselves (docs/deploy.md).

    The WebSocket API's id is ``*``, so the ``@connections`` grant is scoped by the stage's own
    ``api_gateway_stage``, which :meth:`ChaliceConfig.problems` keeps distinct per stage.
    """
    functions = ([consumer] if consumer is not None
                 else [n for n, _role in FUNCTIONS.values() if n not in CONSUMERS])
    log_groups = []
    for chalice_name, _role in FUNCTIONS.values():
        group = f"arn:aws:logs:*:*:log-group:/aws/lambda/{names.function(chalice_name)}"
        log_groups += [group, group + ":*"]
    table = f"arn:aws:dynamodb:*:*:table/{names.table}"
    queue = f"arn:aws:sqs:*:*:{names.queue('welcome')}"
    fanout_queue = f"arn:aws:sqs:*:*:{names.queue('fanout')}"
    connections = f"arn:aws:execute-api:*:*:*/{names.api_stage}"
    statements = [
        _stmt("Logs", LOGS_ACTIONS, log_groups),
        _stmt("ConnectionsTable", DYNAMODB_TABLE_ACTIONS, [table]),
        _stmt("ConnectionsTableIndex", DYNAMODB_INDEX_ACTIONS,
              [f"{table}/index/{LAST_SEEN_INDEX}"]),
        _stmt("ManageConnections", MANAGE_CONNECTIONS,
              [f"{connections}/POST/@connections/*", f"{connections}/GET/@connections/*"]),
    ]
    if any(name in WELCOME_PRODUCERS for name in functions):
        statements.append(
            _stmt("WelcomeQueueSend", [*SQS_PRODUCER_ACTIONS, "sqs:GetQueueUrl"], [queue]))
    if any(name in FANOUT_PRODUCERS for name in functions):
        statements.append(
            _stmt("FanOutQueueSend", [*SQS_PRODUCER_ACTIONS, "sqs:GetQueueUrl"], [fanout_queue]))
    if consumer is not None:
        queue_id, suffix = CONSUMERS[consumer]
        statements.append(_stmt(f"{queue_id}Consume", SQS_CONSUMER_ACTIONS,
                                [f"arn:aws:sqs:*:*:{names.queue(suffix)}"]))
    return _doc(statements)


def static_policy_files(config: ChaliceConfig | None = None) -> dict[str, dict[str, Any]]:
    """File name (under deploy/iam/) -> document, for every deployed stage of ``config`` (the
    repository's when None)."""
    config = config or repo_config()
    files = {}
    for stage in config.deployed_stages:
        names = config.names(stage)
        files[f"{stage}.json"] = static_policy(names, consumer=None)
        for consumer in CONSUMERS:
            files[f"{stage}-{consumer}.json"] = static_policy(names, consumer=consumer)
    return files


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with ``--check``, compare) deploy/iam/*.json and the derived stage variables
    of .chalice/config.json; 1 when the config's names cannot be deployed or are stale."""
    parser = argparse.ArgumentParser(
        prog="python -m deploy.policies",
        description="Write deploy/iam/*.json and the derived variables of every deployed stage"
                    " in .chalice/config.json, from its app_name, stages and api_gateway_stage"
                    " (deploy/names.py).")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if any file would change")
    args = parser.parse_args(argv)
    config = ChaliceConfig.load(CONFIG_PATH)
    problems = config.problems()
    if problems:
        print("\n".join(f"{CONFIG_PATH}: {problem}" for problem in problems), file=sys.stderr)
        return 1
    iam_dir = Path(__file__).resolve().parent / "iam"
    wanted = {iam_dir / name: render(document)
              for name, document in static_policy_files(config).items()}
    wanted[CONFIG_PATH] = render_config(config.synced())
    stale = [path for path, text in wanted.items()
             if not path.exists() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"stale: {path} (run python -m deploy.policies)", file=sys.stderr)
        return 1 if stale else 0
    iam_dir.mkdir(exist_ok=True)
    for path in stale:
        path.write_text(wanted[path])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
