"""The gateway's live view (``/_gateway/`` on the WebSocket port, issue 14 part 5) in a real
Chromium, against the real app; and a page on another origin that tries to drive the gateway
(issue 15 item 4)."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator

import pytest
from playwright.sync_api import Page, expect

from localgateway.testing import Gateway, running_gateway, wait_until
from tests.support.http import start_server, stop_server

from .conftest import ROOT, page_url
from .test_demo_page import connect, connection_id, join, open_demo, send

NewPage = Callable[[], Page]


def stats(gateway: Gateway) -> dict[str, object]:
    with urllib.request.urlopen(f"{gateway.gateway_url}/_gateway/stats", timeout=10) as response:
        loaded: dict[str, object] = json.loads(response.read())
        return loaded


@pytest.fixture
def stale_gateway(gateway_env: dict[str, str]) -> Iterator[Gateway]:
    """The real app where every ``$disconnect`` is dropped (chaos): a member whose connection
    goes away stays in its rooms, so the next send in the room meets a 410."""
    with running_gateway(str(ROOT), env=gateway_env,
                         extra_args=["--static", str(ROOT / "web"),
                                     "--drop-disconnect-rate", "1"]) as gw:
        yield gw


def test_live_view_shows_a_410_after_a_stale_send(stale_gateway: Gateway,
                                                  new_page: NewPage) -> None:
    gw = stale_gateway
    view = new_page()
    view.goto(f"{gw.gateway_url}/_gateway/")
    expect(view).to_have_title("Local gateway: live view")
    expect(view.locator("#management tbody")).to_contain_text("No calls yet")
    expect(view.locator("#management tr[data-status='410']")).to_have_count(0)

    alice, bob = (open_demo(new_page(), page_url(gw)) for _ in range(2))
    for page in (alice, bob):
        connect(page)
        join(page, "lobby")
    alice_id, bob_id = connection_id(alice), connection_id(bob)
    # Open connections appear with their frame counts.
    expect(view.locator(f"#connections tr[data-connection='{alice_id}']")).to_have_count(1)
    expect(view.locator(f"#connections tr[data-connection='{bob_id}']")).to_have_count(1)

    # API Gateway drops bob (DELETE @connections); his $disconnect never runs.
    gw.management_client().delete_connection(ConnectionId=bob_id)
    wait_until(lambda: f"dropping $disconnect for {bob_id}" in gw.log(), 20, "the drop")
    expect(view.locator(f"#connections tr[data-connection='{bob_id}']")).to_have_count(0)
    with contextlib.suppress(AssertionError):
        bob.close()

    send(alice, "anyone there?")
    # The send's POST to bob. (Bob's welcome follow-up may also meet the 410 first, with its
    # GetConnection, when it runs after the drop: a GET row of its own.)
    gone_row = view.locator("#management tr[data-status='410'][data-method='POST']")
    expect(gone_row).to_have_count(1)
    expect(gone_row).to_have_class("alert")
    expect(gone_row.locator("th")).to_have_text("410")
    expect(gone_row.locator("td").nth(0)).to_have_text("POST")
    expect(gone_row.locator("td").nth(1)).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(view.locator("#management tr[data-status='204']")).to_have_count(1)  # the DELETE
    gone_metric = view.locator("#metrics tr[data-metric='Gone']")
    expect(gone_metric.locator("td")).to_have_text(re.compile(r"^[1-9]\d*$"))
    expect(gone_metric).to_have_class("alert")
    expect(view.locator("#metrics tr[data-metric='MessagesIn'] td")).to_have_text(
        re.compile(r"^[1-9]\d*$"))
    # Invocations per function from the containers' REPORT data.
    message_row = view.locator("#functions tr[data-function='message']")
    expect(message_row.locator("td").nth(0)).to_have_text(re.compile(r"^[1-9]\d*$"))
    # The queues of the app, none dead-lettering.
    expect(view.locator("#queues tr[data-queue]")).not_to_have_count(0)
    expect(view.locator("#queues tr.alert")).to_have_count(0)
    # The last frames include alice's message.
    expect(view.locator("#frames tbody")).to_contain_text("anyone there?")

    # The gateway's own output: EMF documents as one compact METRICS line each, never raw.
    log = gw.log()
    assert re.search(r"METRICS \[message\] .*Gone=1", log), log[-3000:]
    assert '"_aws"' not in log and "CloudWatchMetrics" not in log
    # The JSON the page polls says the same.
    data = stats(gw)
    assert data["management_by_status"]["410"] >= 1  # type: ignore[index]
    assert data["metrics"]["Gone"] >= 1  # type: ignore[index]


def test_live_view_markup_is_accessible(gateway: Gateway, new_page: NewPage) -> None:
    view = new_page()
    view.goto(f"{gateway.gateway_url}/_gateway/")
    expect(view.locator("#updated")).not_to_have_text("never")
    expect(view.locator("#status")).to_have_attribute("aria-live", "polite")
    assert view.locator("script[src], link[rel='stylesheet']").count() == 0  # self-contained
    # Every table has a caption and column headers; every section a heading.
    assert view.evaluate("""() => [...document.querySelectorAll('table')]
        .every((t) => t.caption && t.tHead.querySelectorAll('th[scope=col]').length > 0)""")
    assert view.evaluate("""() => [...document.querySelectorAll('section')]
        .every((s) => s.getAttribute('aria-labelledby')
                      && document.getElementById(s.getAttribute('aria-labelledby')))""")


ATTACK_PAGE = """<!doctype html><html><head><title>attack</title></head><body><script>
window.results = {};
const gw = "GATEWAY";
const ws = new WebSocket(gw.replace("http", "ws") + "/api");
ws.onopen = () => { window.results.ws = "open"; };
ws.onerror = () => { window.results.ws = "error"; };
const victim = new URLSearchParams(location.search).get("victim");
async function attack() {
  const target = gw + "/api/@connections/" + encodeURIComponent(victim);
  const attempts = [
    [target, "POST", "no-cors", "text/plain"],           // a form post
    [target, "DELETE", "cors", "text/plain"],            // needs a preflight
    [gw + "/_gateway/schedule/sweep", "POST", "no-cors", "text/plain"],
    [gw + "/_gateway/schedule/sweep", "POST", "cors", "application/json"],
  ];
  window.results.fetches = [];
  for (const [url, method, mode, type] of attempts) {
    try {
      await fetch(url, {method, mode, body: method === "POST" ? "{}" : undefined,
                        headers: {"Content-Type": type}});
      window.results.fetches.push("sent");
    } catch (e) { window.results.fetches.push("failed"); }
  }
  try {
    const r = await fetch(gw + "/_gateway/stats");
    window.results.read = "read " + r.status;
  } catch (e) { window.results.read = "blocked"; }
  window.results.done = true;
}
attack();
</script></body></html>"""


@pytest.fixture
def attacker_site(stale_gateway: Gateway) -> Iterator[str]:
    """A page on another origin (another port on this machine) that attacks the gateway."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = ATTACK_PAGE.replace("GATEWAY", stale_gateway.gateway_url).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = start_server(Handler)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        stop_server(server)


def test_a_page_on_another_origin_cannot_drive_the_gateway(
    stale_gateway: Gateway, attacker_site: str, new_page: NewPage
) -> None:
    gw = stale_gateway
    victim = open_demo(new_page(), page_url(gw))
    connect(victim)
    join(victim, "lobby")
    victim_id = connection_id(victim)

    attack = new_page()
    attack.goto(attacker_site + "?victim=" + urllib.parse.quote(victim_id, safe=""))
    attack.wait_for_function("() => window.results && window.results.done && window.results.ws")
    results = attack.evaluate("() => window.results")
    assert results["ws"] == "error"  # the upgrade was refused
    assert results["read"] == "blocked"  # no CORS: the stats are not readable cross-origin
    log = gw.log()
    assert "refused GET /api with 403: Origin 'http://127.0.0.1:" in log
    assert f"refused POST /api/@connections/{victim_id} with 403" in log
    # The DELETE needs a CORS preflight: refused, so the DELETE itself is never sent.
    assert f"refused OPTIONS /api/@connections/{victim_id} with 403" in log
    assert f"@connections DELETE {victim_id}" not in log
    assert "refused POST /_gateway/schedule/sweep with 403" in log  # form post (Origin)
    assert "refused OPTIONS /_gateway/schedule/sweep with 403" in log  # JSON: preflight
    assert "schedule: invoking sweep" not in log
    # The victim is still connected and works.
    send(victim, "still here")
    expect(victim.locator("#messages li.mine", has_text="still here")).to_have_count(1)
    expect(victim.locator("#state")).to_have_text("Connected")
