"""Alarms, their SNS topic and the CloudWatch dashboard of a packaged stage (issue 14).

:func:`add_monitoring` adds to the merge template of :mod:`deploy.package`:

* parameters ``AlarmEmail`` (may be empty: then no subscription, by the ``HasAlarmEmail``
  condition) and ``MetricsNamespace`` (the app's ``METRICS_NAMESPACE``, default ``WsRooms``);
* ``AlarmTopic`` (SNS) and, with an email, ``AlarmEmailSubscription``;
* the alarms of :func:`alarms` (all notify the topic, on ALARM and on OK);
* ``Dashboard`` (``<app>-<stage>``, :class:`deploy.names.StageNames`).

docs/operations.md is the runbook: what each alarm means and what to do.  The custom metric names
are :mod:`chalicelib.metrics`'s; their dimensions are exactly ``service`` (the Chalice app name,
which :mod:`chalicelib.observability` uses as the service) and ``stage``.
"""

from __future__ import annotations

import json
from typing import Any

from chalicelib import metrics
from chalicelib.metrics import DEFAULT_NAMESPACE
from deploy.names import StageNames
from deploy.policies import FUNCTIONS, LAST_SEEN_INDEX

#: Dead-letter queues (logical ids) and their source queue's consumer.
DEAD_LETTER_QUEUES = ("WelcomeDeadLetterQueue", "FanOutDeadLetterQueue")
QUEUES = ("WelcomeQueue", "FanOutQueue", *DEAD_LETTER_QUEUES)
#: DeliveryFailures as a percentage of the frames posted (delivered + given up), per 5 minutes,
#: over which the DeliveryFailureRate alarm fires (3 periods out of 3).
DELIVERY_FAILURE_PERCENT = 5
#: Chalice's logical id of the WebSocket API.
WEBSOCKET_API = "WebsocketAPI"
TOPIC = "AlarmTopic"


def _custom(name: str) -> dict[str, Any]:
    return {"Namespace": {"Ref": "MetricsNamespace"}, "MetricName": name,
            "Dimensions": [{"Name": "service", "Value": {"Ref": "AppName"}},
                           {"Name": "stage", "Value": {"Ref": "Stage"}}]}


def _alarm(description: str, *, threshold: float, period: int = 300, evaluations: int = 1,
           metric: dict[str, Any] | None = None, statistic: str = "Sum",
           math: tuple[str, dict[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """An alarm ``> threshold`` notifying the topic; either one ``metric`` or ``math``:
    (expression, {id: metric})."""
    properties: dict[str, Any] = {
        "AlarmDescription": description,
        "ComparisonOperator": "GreaterThanThreshold",
        "Threshold": threshold,
        "EvaluationPeriods": evaluations,
        "DatapointsToAlarm": evaluations,
        "TreatMissingData": "notBreaching",
        "AlarmActions": [{"Ref": TOPIC}],
        "OKActions": [{"Ref": TOPIC}],
    }
    if metric is not None:
        properties.update(metric)
        properties.update({"Statistic": statistic, "Period": period})
    else:
        assert math is not None
        expression, inputs = math
        properties["Metrics"] = [
            {"Id": "result", "Expression": expression, "Label": description.split(":")[0],
             "ReturnData": True},
            *({"Id": key, "ReturnData": False,
               "MetricStat": {"Metric": value, "Period": period, "Stat": statistic}}
              for key, value in inputs.items()),
        ]
    return {"Type": "AWS::CloudWatch::Alarm", "Properties": properties}


def _metric(namespace: str, name: str, **dimensions: Any) -> dict[str, Any]:
    return {"Namespace": namespace, "MetricName": name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()]}


def alarms(names: StageNames) -> dict[str, dict[str, Any]]:
    """Logical id -> alarm resource (docs/operations.md has a section for each)."""
    out: dict[str, dict[str, Any]] = {}
    for queue in DEAD_LETTER_QUEUES:
        out[f"{queue}Alarm"] = _alarm(
            f"{queue}: messages are in the dead-letter queue (docs/operations.md)",
            threshold=0, statistic="Maximum",
            metric=_metric("AWS/SQS", "ApproximateNumberOfMessagesVisible",
                           QueueName={"Fn::GetAtt": [queue, "QueueName"]}))
    for logical_id, (name, _role) in FUNCTIONS.items():
        for lambda_metric in ("Errors", "Throttles"):
            out[f"{logical_id}{lambda_metric}Alarm"] = _alarm(
                f"{names.function(name)}: {lambda_metric} (docs/operations.md)",
                threshold=0,
                metric=_metric("AWS/Lambda", lambda_metric,
                               FunctionName=names.function(name)))
    out["ForbiddenAlarm"] = _alarm(
        "Forbidden: @connections answered 403, messages are being lost (docs/operations.md)",
        threshold=0, period=60, metric=_custom(metrics.FORBIDDEN))
    out["DeliveryFailureRateAlarm"] = _alarm(
        f"DeliveryFailureRate: over {DELIVERY_FAILURE_PERCENT}% of posts given up on"
        " (docs/operations.md)",
        threshold=DELIVERY_FAILURE_PERCENT, evaluations=3,
        math=("IF(FILL(ok, 0) + FILL(failed, 0) > 0,"
              " 100 * FILL(failed, 0) / (FILL(ok, 0) + FILL(failed, 0)), 0)",
              {"ok": _custom(metrics.DELIVERIES), "failed": _custom(metrics.DELIVERY_FAILURES)}))
    api = {"ApiId": {"Ref": WEBSOCKET_API}, "Stage": names.api_stage}
    for api_metric in ("IntegrationError", "ExecutionError"):
        out[f"Websocket{api_metric}Alarm"] = _alarm(
            f"Websocket{api_metric}: the WebSocket API could not run a route (docs/operations.md)",
            threshold=0, metric=_metric("AWS/ApiGateway", api_metric, **api))
    table = {"Fn::Sub": "${ConnectionsTable}"}
    out["ConnectionsTableThrottleAlarm"] = _alarm(
        "ConnectionsTableThrottled: DynamoDB throttled reads or writes (docs/operations.md)",
        threshold=0,
        math=("FILL(reads, 0) + FILL(writes, 0) + FILL(index, 0)",
              {"reads": _metric("AWS/DynamoDB", "ReadThrottleEvents", TableName=table),
               "writes": _metric("AWS/DynamoDB", "WriteThrottleEvents", TableName=table),
               "index": _metric("AWS/DynamoDB", "WriteThrottleEvents", TableName=table,
                                GlobalSecondaryIndexName=LAST_SEEN_INDEX)}))
    return out


def dashboard_body(names: StageNames) -> str:
    """The dashboard's JSON, for ``Fn::Sub`` (``${...}`` name the stack's resources)."""
    ns = "${MetricsNamespace}"
    dims = ["service", "${AppName}", "stage", "${Stage}"]
    api = ["ApiId", "${WebsocketAPI}", "Stage", names.api_stage]

    def widget(title: str, rows: list[list[Any]], *, stat: str = "Sum", x: int, y: int,
               width: int = 8) -> dict[str, Any]:
        return {"type": "metric", "x": x, "y": y, "width": width, "height": 6,
                "properties": {"title": title, "region": "${AWS::Region}", "view": "timeSeries",
                               "stacked": False, "stat": stat, "period": 60, "metrics": rows}}

    functions = [["AWS/Lambda", "Errors", "FunctionName", names.function(name),
                  {"label": name}] for name, _role in FUNCTIONS.values()]
    queues = [["AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName",
               f"${{{queue}.QueueName}}", {"label": f"{queue} depth"}] for queue in QUEUES]
    ages = [["AWS/SQS", "ApproximateAgeOfOldestMessage", "QueueName",
             f"${{{queue}.QueueName}}", {"label": f"{queue} oldest (s)", "yAxis": "right"}]
            for queue in ("WelcomeQueue", "FanOutQueue")]
    widgets = [
        widget("Connections (ConnectCount) and inbound messages (API Gateway)",
               [["AWS/ApiGateway", "ConnectCount", *api], ["AWS/ApiGateway", "MessageCount", *api]],
               x=0, y=0),
        widget("Messages in and deliveries",
               [[ns, metrics.MESSAGES_IN, *dims], [ns, metrics.DELIVERIES, *dims],
                [ns, metrics.FANOUT_QUEUED, *dims]], x=8, y=0),
        widget("Gone (410), Forbidden (403), Throttled (429), failures",
               [[ns, metrics.GONE, *dims], [ns, metrics.FORBIDDEN, *dims],
                [ns, metrics.THROTTLED, *dims], [ns, metrics.DELIVERY_FAILURES, *dims]],
               x=16, y=0),
        widget("Fan-out time per message (FanOutMs)",
               [[ns, metrics.FANOUT_MS, *dims, {"stat": "p50", "label": "p50"}],
                [ns, metrics.FANOUT_MS, *dims, {"stat": "p99", "label": "p99"}]],
               stat="p50", x=0, y=6),
        widget("Errors per function", functions, x=8, y=6),
        widget("Queue depth and age", [*queues, *ages], stat="Maximum", x=16, y=6),
        widget("Refusals and welcomes",
               [[ns, metrics.RATE_LIMITED, *dims], [ns, metrics.AUTH_REFUSED, *dims],
                [ns, metrics.WELCOMES_FIRST_MESSAGE, *dims],
                [ns, metrics.WELCOMES_FOLLOW_UP, *dims]], x=0, y=12),
        widget("WebSocket API errors",
               [["AWS/ApiGateway", "IntegrationError", *api],
                ["AWS/ApiGateway", "ExecutionError", *api],
                ["AWS/ApiGateway", "ClientError", *api]], x=8, y=12),
        widget("DynamoDB throttling",
               [["AWS/DynamoDB", "ReadThrottleEvents", "TableName", "${ConnectionsTable}"],
                ["AWS/DynamoDB", "WriteThrottleEvents", "TableName", "${ConnectionsTable}"]],
               x=16, y=12),
    ]
    return json.dumps({"widgets": widgets}, separators=(",", ":"))


def add_monitoring(template: dict[str, Any], names: StageNames) -> None:
    """Add the topic, the alarms and the dashboard to ``template`` (the merge template)."""
    template["Parameters"]["AlarmEmail"] = {
        "Type": "String", "Default": "",
        "AllowedPattern": r"^$|^[^@\s]+@[^@\s]+\.[^@\s]+$",
        "ConstraintDescription": "an email address, or empty for no subscription",
        "Description": "Who the alarm topic emails (confirm the subscription); empty: nobody,"
                       " subscribe to the AlarmTopic output yourself",
    }
    template["Parameters"]["MetricsNamespace"] = {
        "Type": "String", "Default": DEFAULT_NAMESPACE, "AllowedPattern": r"^[^\s:][^:]{0,254}$",
        "Description": "CloudWatch namespace of the app's metrics (METRICS_NAMESPACE)",
    }
    template.setdefault("Conditions", {})["HasAlarmEmail"] = {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}
    resources = template["Resources"]
    resources[TOPIC] = {"Type": "AWS::SNS::Topic", "Properties": {
        "DisplayName": f"{names.app} {names.stage} alarms",
        "Tags": [{"Key": "app", "Value": {"Ref": "AppName"}},
                 {"Key": "stage", "Value": {"Ref": "Stage"}}],
    }}
    resources["AlarmEmailSubscription"] = {
        "Type": "AWS::SNS::Subscription", "Condition": "HasAlarmEmail",
        "Properties": {"TopicArn": {"Ref": TOPIC}, "Protocol": "email",
                       "Endpoint": {"Ref": "AlarmEmail"}},
    }
    resources.update(alarms(names))
    resources["Dashboard"] = {"Type": "AWS::CloudWatch::Dashboard", "Properties": {
        "DashboardName": names.dashboard,
        "DashboardBody": {"Fn::Sub": dashboard_body(names)},
    }}
    template["Outputs"]["AlarmTopic"] = {"Description": "SNS topic every alarm notifies",
                                         "Value": {"Ref": TOPIC}}
    template["Outputs"]["DashboardUrl"] = {"Value": {"Fn::Sub": (
        "https://console.aws.amazon.com/cloudwatch/home?region=${AWS::Region}"
        f"#dashboards:name={names.dashboard}")}}
