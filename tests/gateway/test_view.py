"""The live view's pieces without a gateway: rendering the app's output, summing EMF, counters;
and one real container whose output is captured line by line."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

from localgateway.containers import Container, FunctionSettings, Generation
from localgateway.view import ContainerOutput, LiveStats, emf_values, render_line

POWERTOOLS_LINE = json.dumps({
    "level": "WARNING", "location": "deliver:120", "message": "delivery refused",
    "timestamp": "2026-11-26 07:41:02,123+0000", "service": "ws-rooms", "cold_start": False,
    "function_name": "message", "connection_id": "abc=", "request_id": "r-1",
    "route": "$default", "outcome": 403,
})
EMF = json.dumps({
    "_aws": {"Timestamp": 1795678989000, "CloudWatchMetrics": [{
        "Namespace": "WsRooms", "Dimensions": [["service", "stage"]],
        "Metrics": [{"Name": "Deliveries", "Unit": "Count"}, {"Name": "Gone", "Unit": "Count"},
                    {"Name": "FanOutMs", "Unit": "Milliseconds"}]}]},
    "service": "ws-rooms", "stage": "dev", "Deliveries": 2, "Gone": 1, "FanOutMs": [1.5, 2.5],
})


def test_powertools_line_is_one_compact_line() -> None:
    rendered = render_line(POWERTOOLS_LINE + "\n", "fallback")
    assert rendered.kind == "log" and rendered.level == "WARNING"
    assert rendered.text == "07:41:02.123 WARNING [message] abc= delivery refused"
    coloured = render_line(POWERTOOLS_LINE, "fallback", colour=True)
    assert coloured.text.startswith("\033[33m") and coloured.text.endswith("\033[0m")


def test_exception_and_newlines_stay_on_one_line() -> None:
    line = json.dumps({"level": "ERROR", "message": "boom\nforged line", "timestamp": "x",
                       "exception_name": "ValueError",
                       "exception": "Traceback (most recent call last):\n  ...\nValueError: bad"})
    text = render_line(line, "connect").text
    assert "\n" not in text
    assert "[connect] boom\\nforged line [ValueError: ValueError: bad]" in text


def test_emf_is_summed_not_printed_raw() -> None:
    assert emf_values(json.loads(EMF)) == {"Deliveries": 2.0, "Gone": 1.0, "FanOutMs": 4.0}
    rendered = render_line(EMF, "message")
    assert rendered.kind == "metrics"
    assert "METRICS [message] Deliveries=2 FanOutMs=4 Gone=1" in rendered.text
    assert "_aws" not in rendered.text
    assert emf_values({"level": "INFO"}) is None


def test_other_lines_pass_through_without_query_values() -> None:
    line = "GET ws://127.0.0.1:8001/api?token=eyJsecret&room=a HTTP/1.1\n"
    assert render_line(line, "f").text == "GET ws://127.0.0.1:8001/api?token=...&room=... HTTP/1.1"
    assert render_line("{not json", "f").text == "{not json"
    assert render_line('{"a": 1}', "f").kind == "text"


def test_container_output_feeds_the_stats() -> None:
    stats = LiveStats()
    out = io.StringIO()
    sink = ContainerOutput(stats, out, colour=False)
    sink("message", POWERTOOLS_LINE)
    sink("message", EMF)
    sink("message", EMF)
    sink("message", "plain print\n")
    snapshot = stats.snapshot()
    assert snapshot["metrics"] == {"Deliveries": 4.0, "FanOutMs": 8.0, "Gone": 2.0}
    assert [p["level"] for p in snapshot["problems"]] == ["WARNING"]
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1] == "plain print"


def test_live_stats_counts_and_bounds() -> None:
    now = [1000.0]
    stats = LiveStats(clock=lambda: now[0])
    stats.record_invocation("message", 10.0, "ok", cold=True)
    stats.record_invocation("message", 30.0, "error")
    stats.record_invocation("message", 0.0, "throttled")
    stats.record_management("post", 410)
    stats.record_management("POST", 410)
    stats.record_management("DELETE", 204)
    for n in range(100):
        stats.record_frame("c1", "in" if n % 2 else "out", f"frame {n}")
    stats.record_frame("c2", "in", b"\xff\xfe")
    snapshot = stats.snapshot()
    message = snapshot["functions"]["message"]
    assert (message["invocations"], message["errors"], message["throttles"],
            message["cold_starts"], message["avg_ms"], message["max_ms"]) == (2, 1, 1, 1, 20.0,
                                                                               30.0)
    assert snapshot["management_by_status"] == {"204": 1, "410": 2}
    assert len(snapshot["recent_frames"]) == 40
    assert snapshot["recent_frames"][-1]["data"] == "<2 bytes of binary>"
    assert (stats.frames("c1").frames_in, stats.frames("c1").frames_out) == (50, 50)
    stats.forget_connection("c1")
    assert stats.frames("c1").frames_in == 0


APP = '''
import sys
from chalice import Chalice
app = Chalice(app_name="printer")
print('{"level": "INFO", "message": "imported", "timestamp": "2026-01-01 00:00:01,5"}')

@app.lambda_function(name="plain")
def plain(event, context):
    print("plain from the handler")
    sys.stderr.write("to stderr\\n")
    return {"ok": True}
'''


def test_a_container_output_is_captured_line_by_line(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / ".chalice").mkdir()
    (tmp_path / ".chalice" / "config.json").write_text('{"app_name": "printer"}')
    lines: list[tuple[str, str]] = []
    seen = threading.Condition()

    def output(function: str, line: str) -> None:
        with seen:
            lines.append((function, line))
            seen.notify_all()

    settings = FunctionSettings("plain", timeout_seconds=30)
    container = Container(settings, Generation(1, str(tmp_path), lambda _n: settings),
                          output=output)
    try:
        container.start()
        ok, reply = container.invoke("r-1", {})
        assert ok and reply["result"] == {"ok": True}
        with seen:
            assert seen.wait_for(lambda: len(lines) >= 3, timeout=15), lines
    finally:
        container.stop()
    texts = [line for _f, line in lines]
    assert all(f == "plain" for f, _l in lines)
    assert '"message": "imported"' in texts[0]
    assert "plain from the handler\n" in texts and "to stderr\n" in texts
