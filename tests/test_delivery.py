"""chalicelib.delivery: one call per delivery, typed outcomes, bounded retries, fan-out.

The exact AWS error shapes come from botocore's Stubber; fan-out concurrency and pooling are
exercised over real HTTP against the local management API.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber

from chalicelib.delivery import Deliverer, Liveness, Outcome, RetryPolicy, fan_out
from chalicelib.protocol import MAX_MESSAGE_BYTES
from tests.support.management_api import FakeManagementApi


def _client(endpoint: str = "https://abc.execute-api.us-east-1.amazonaws.com/api"):  # type: ignore[no-untyped-def]
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(retries={"total_max_attempts": 1}),
    )


class _Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def _stubbed(errors: list[tuple[str, int]], then_ok: bool, operation: str = "post_to_connection"):  # type: ignore[no-untyped-def]
    client = _client()
    stubber = Stubber(client)
    for code, status in errors:
        stubber.add_client_error(operation, service_error_code=code, http_status_code=status)
    if then_ok:
        response = {} if operation == "post_to_connection" else {
            "ConnectedAt": "2024-01-01T00:00:00Z", "LastActiveAt": "2024-01-01T00:00:00Z",
            "Identity": {"SourceIp": "1.2.3.4", "UserAgent": "ua"},
        }
        stubber.add_response(operation, response)
    stubber.activate()
    sleeps = _Sleeps()
    deliverer = Deliverer(client, retry=RetryPolicy(max_attempts=4), sleep=sleeps, rng=lambda: 1.0)
    return deliverer, stubber, sleeps


@pytest.mark.parametrize(
    ("code", "status", "outcome"),
    [
        ("GoneException", 410, Outcome.GONE),
        ("ForbiddenException", 403, Outcome.FORBIDDEN),
        ("PayloadTooLargeException", 413, Outcome.TOO_LARGE),
        ("BadRequestException", 400, Outcome.FAILED),
        # A peer that answers a bare 410 (no x-amzn-ErrorType) is still a gone connection.
        ("410", 410, Outcome.GONE),
    ],
)
def test_final_errors_are_not_retried(code: str, status: int, outcome: Outcome) -> None:
    deliverer, stubber, sleeps = _stubbed([(code, status)], then_ok=False)
    assert deliverer.post("c1", b"{}") is outcome
    stubber.assert_no_pending_responses()
    assert deliverer.calls.posts == 1
    assert sleeps.delays == []


@pytest.mark.parametrize(
    "errors",
    [
        [("LimitExceededException", 429)],
        [("InternalServerError", 500), ("ServiceUnavailable", 503)],
        [("LimitExceededException", 429)] * 3,
    ],
)
def test_throttling_and_5xx_retry_with_growing_jittered_backoff(
    errors: list[tuple[str, int]],
) -> None:
    deliverer, stubber, sleeps = _stubbed(errors, then_ok=True)
    assert deliverer.post("c1", b"{}") is Outcome.DELIVERED
    stubber.assert_no_pending_responses()
    assert deliverer.calls.posts == len(errors) + 1
    assert sleeps.delays == [0.05, 0.1, 0.2][: len(errors)]


def test_retries_stop_at_the_bound_and_report_failed() -> None:
    deliverer, stubber, sleeps = _stubbed([("LimitExceededException", 429)] * 4, then_ok=False)
    assert deliverer.post("c1", b"{}") is Outcome.FAILED
    stubber.assert_no_pending_responses()
    assert deliverer.calls.posts == 4
    assert len(sleeps.delays) == 3


def test_oversized_payload_is_refused_without_a_call() -> None:
    deliverer, _, _ = _stubbed([], then_ok=False)
    assert deliverer.post("c1", b"x" * (MAX_MESSAGE_BYTES + 1)) is Outcome.TOO_LARGE
    assert deliverer.calls.posts == 0


@pytest.mark.parametrize(
    ("errors", "then_ok", "liveness"),
    [
        ([], True, Liveness.ALIVE),
        ([("GoneException", 410)], False, Liveness.GONE),
        ([("ForbiddenException", 403)], False, Liveness.UNKNOWN),
        ([("LimitExceededException", 429)], True, Liveness.ALIVE),
    ],
)
def test_verify_maps_get_connection(
    errors: list[tuple[str, int]], then_ok: bool, liveness: Liveness
) -> None:
    deliverer, stubber, _ = _stubbed(errors, then_ok, operation="get_connection")
    assert deliverer.verify("c1") is liveness
    stubber.assert_no_pending_responses()
    assert deliverer.calls.posts == 0


def test_network_errors_are_retried_then_fail() -> None:
    # Nothing listens on port 9: every attempt is a connection error.
    deliverer = Deliverer(_client("http://127.0.0.1:9/api"), retry=RetryPolicy(max_attempts=2),
                          sleep=_Sleeps())
    assert deliverer.post("c1", b"{}") is Outcome.FAILED
    assert deliverer.calls.posts == 2


def test_fan_out_over_real_http_reports_each_recipient() -> None:
    api = FakeManagementApi().start()
    try:
        live = [f"live{i}" for i in range(40)]
        api.open(*live)
        api.script("forbidden", 403)
        client = _client(api.endpoint)
        with ThreadPoolExecutor(max_workers=8) as pool:
            report = fan_out(Deliverer(client), [*live, "gone1", "forbidden"], b'{"n":1}', pool)
        assert sorted(report.delivered) == sorted(live)
        assert report.gone == ["gone1"]
        assert report.forbidden == ["forbidden"]
        assert report.failed == []
        assert all(api.received(cid) == [{"n": 1}] for cid in live)
        assert len(api.calls) == len(live) + 2  # exactly one call per recipient
    finally:
        api.stop()


def test_fan_out_of_an_oversized_payload_makes_no_call() -> None:
    deliverer, _, _ = _stubbed([], then_ok=False)
    report = fan_out(deliverer, ["a", "b"], b"x" * (MAX_MESSAGE_BYTES + 1), None)
    assert report.too_large == ["a", "b"]
    assert deliverer.calls.posts == 0
