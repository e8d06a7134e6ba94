"""The demo page (``GET /`` on the WebSocket port) and ``client.js`` in a real Chromium, against
the real app behind the local gateway."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable

from playwright.sync_api import Browser, Page, expect

from localgateway.testing import Gateway
from localgateway.token import mint

from .conftest import ECHO, WAIT_MS, StartGateway, page_url

NewPage = Callable[[], Page]


def open_demo(page: Page, url: str, ws_url: str | None = None) -> Page:
    page.goto(url)
    expect(page.locator("#state")).to_have_text("Not connected")
    if ws_url is not None:
        page.fill("#url", ws_url)
    return page


def connect(page: Page) -> None:
    page.click("#connect")
    expect(page.locator("#state")).to_have_text("Connected")


def join(page: Page, room: str) -> None:
    page.fill("#join-room", room)
    page.click("#join")
    expect(page.locator("#room-list button", has_text=re.compile(f"^{re.escape(room)}"))
           ).to_have_attribute("aria-pressed", "true")


def send(page: Page, text: str) -> None:
    page.fill("#message", text)
    page.click("#send")


def connection_id(page: Page) -> str:
    page.click("#whoami")
    result = page.locator("#tool-result")
    expect(result).to_have_text(re.compile(r"^whoami: \S+ in \["))
    return result.inner_text().split()[1]


def test_serves_the_page_and_its_modules(gateway: Gateway) -> None:
    with urllib.request.urlopen(page_url(gateway), timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/html")
        assert b'src="static/app.js"' in response.read()
    for name in ("app.js", "client.js"):
        with urllib.request.urlopen(f"{page_url(gateway)}static/{name}", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/javascript")


def test_welcome_appears(gateway: Gateway, new_page: NewPage) -> None:
    page = open_demo(new_page(), page_url(gateway))
    assert page.input_value("#url") == gateway.ws_url  # derived from location
    connect(page)
    # Nothing is sent: the welcome comes from the delayed SQS follow-up.
    expect(page.locator("#welcome")).to_have_text(re.compile(r"^connection \S+, protocol 2$"))
    welcome_id = page.locator("#connection-id").inner_text()
    assert connection_id(page) == welcome_id
    expect(page.locator("#log tr", has_text="welcome")).to_have_count(1)


def test_two_pages_in_one_room_exchange_messages(
    gateway: Gateway, new_page: NewPage
) -> None:
    alice, bob = (open_demo(new_page(), page_url(gateway)) for _ in range(2))
    for page in (alice, bob):
        connect(page)
        join(page, "lobby")
    alice_id, bob_id = connection_id(alice), connection_id(bob)

    send(alice, "hello from alice")
    bob_sees = bob.locator("#messages li", has_text="hello from alice")
    expect(bob_sees).to_have_count(1)
    expect(bob_sees.locator(".from")).to_have_text(alice_id)
    expect(bob_sees.locator("time")).to_have_text(re.compile(r"^\d\d:\d\d:\d\d$"))
    expect(alice.locator("#messages li.mine", has_text="hello from alice")).to_contain_text(
        "delivered 1")

    send(bob, "hi alice")
    alice_sees = alice.locator("#messages li", has_text="hi alice")
    expect(alice_sees.locator(".from")).to_have_text(bob_id)

    # Messages are kept per room: a second room has its own list and an unread count.
    join(alice, "side")
    join(bob, "side")
    send(bob, "only in side")
    expect(alice.locator("#messages li", has_text="only in side")).to_have_count(1)
    alice.click("#room-list button:text-matches('^lobby')")
    expect(alice.locator("#room-title")).to_have_text("Messages in lobby")
    expect(alice.locator("#messages li", has_text="only in side")).to_have_count(0)
    send(bob, "back in side")
    expect(alice.locator("#room-list button", has_text="side")).to_have_text("side (1 new)")
    expect(alice.locator("#log tr.dir-in", has_text="message").first).to_be_visible()


def test_reconnects_after_the_gateway_restarts(
    start_gateway: StartGateway, new_page: NewPage
) -> None:
    with start_gateway() as first:
        page = open_demo(new_page(), page_url(first))
        connect(page)
        join(page, "lobby")
        first_id = connection_id(page)
    # The gateway is gone: the page says so and retries with backoff.
    expect(page.locator("#state")).to_have_text(re.compile(r"^Reconnecting… \(attempt \d+"))
    expect(page.locator("#log tr.is-error", has_text="1001 going away")).to_have_count(1)
    expect(page.locator("#notice")).to_contain_text("reconnecting in")
    with start_gateway():  # same ports
        expect(page.locator("#state")).to_have_text("Connected", timeout=2 * WAIT_MS)
        expect(page.locator("#notice")).to_have_text("Reconnected and re-joined lobby.")
        page.click("#ping")
        expect(page.locator("#tool-result")).to_have_text(re.compile(r"^pong in \d+ ms$"))
        page.click("#whoami")
        expect(page.locator("#tool-result")).to_have_text(re.compile(r"^whoami: \S+ in \[lobby\]$"))
        assert connection_id(page) != first_id


def test_oversize_message_shows_close_1009(gateway: Gateway, new_page: NewPage) -> None:
    page = open_demo(new_page(), page_url(gateway))
    connect(page)
    join(page, "lobby")
    send(page, "x" * 40_000)  # one frame over API Gateway's 32 KB limit
    expect(page.locator("#last-close")).to_contain_text("1009 message too big")
    expect(page.locator("#log tr.is-warning")).to_contain_text("expect close 1009")
    expect(page.locator("#log tr.is-error", has_text="1009")).to_have_count(1)
    # An unexpected close: the page reconnects on its own and re-joins.
    expect(page.locator("#notice")).to_have_text("Reconnected and re-joined lobby.")
    expect(page.locator("#state")).to_have_text("Connected")


def test_refused_upgrade_shows_the_http_status(
    start_gateway: StartGateway, new_page: NewPage
) -> None:
    # The echo fixture's $connect refuses with 401 when the query string has deny=1.
    with start_gateway(ECHO) as echo:
        page = open_demo(new_page(), page_url(echo), f"{echo.ws_url}?deny=1")
        page.fill("#token", "secret")
        page.click("#connect")
        expect(page.locator("#last-close")).to_contain_text("refused with HTTP 401 (close 1006)")
        expect(page.locator("#state")).to_have_text("Disconnected")
        expect(page.locator("#notice")).to_contain_text("Connection refused: HTTP 401")
        expect(page.locator("#connect")).to_be_enabled()


SECRET = "browser-tests-secret-0123456789abcdef"


def test_token_auth_with_the_real_app(start_gateway: StartGateway, new_page: NewPage) -> None:
    """With WS_AUTH_SECRET set: no token -> 401, a bad one -> 403, a good one connects."""
    with start_gateway(WS_AUTH_SECRET=SECRET) as gw:
        page = open_demo(new_page(), page_url(gw))
        page.click("#connect")
        expect(page.locator("#last-close")).to_contain_text("refused with HTTP 401")
        expect(page.locator("#state")).to_have_text("Disconnected")

        page.fill("#token", "not-a-jwt")
        page.click("#connect")
        expect(page.locator("#last-close")).to_contain_text("refused with HTTP 403")
        expect(page.locator("#notice")).to_contain_text("Connection refused: HTTP 403")

        page.fill("#token", mint(SECRET, "alice"))
        connect(page)
        expect(page.locator("#last-close")).to_have_text("none")
        expect(page.locator("#welcome")).to_contain_text("protocol 2")


def test_phone_width_keyboard_only_and_labels(gateway: Gateway, new_page: NewPage) -> None:
    page = new_page()
    page.set_viewport_size({"width": 375, "height": 740})
    open_demo(page, page_url(gateway))
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, textarea, select')]
              .filter((c) => c.labels.length === 0).map((c) => c.id)"""
    )
    assert unlabelled == []
    for live in ("#status", "#messages", "#notice"):
        expect(page.locator(live)).to_have_attribute("aria-live", "polite")

    # Keyboard only: Enter in a field submits its form; Tab moves in document order.
    page.focus("#url")
    page.keyboard.press("Enter")
    expect(page.locator("#state")).to_have_text("Connected")
    page.focus("#join-room")
    page.keyboard.press("Control+A")
    page.keyboard.type("lobby")
    page.keyboard.press("Enter")
    expect(page.locator("#message")).to_be_focused()
    page.keyboard.type("typed with the keyboard")
    page.keyboard.press("Enter")
    expect(page.locator("#messages li.mine")).to_contain_text("typed with the keyboard")
    page.keyboard.press("Tab")
    expect(page.locator("#send")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#leave")).to_be_focused()

    # Fill the page the way a session does, then check there is no horizontal scroll.
    for i in range(5):
        page.fill("#message", f"message {i} " + "long-word-" * 12)
        page.keyboard.press("Enter")
    expect(page.locator("#messages li.mine")).to_have_count(6)
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 375, f"horizontal scroll at 375 px: scrollWidth {width}"


def test_client_module_api(gateway: Gateway, new_page: NewPage) -> None:
    """client.js on its own: request/reply correlation, error replies, backoff bounds."""
    page = open_demo(new_page(), page_url(gateway))
    result = page.evaluate(
        """async (url) => {
          const { RoomsClient, RequestError, backoffDelay, judge } = await import(
            './static/client.js');
          let tokenCalls = 0;
          // token may be an async function, called on every (re)connect.
          const client = new RoomsClient(url, {token: async () => { tokenCalls += 1; return ""; }});
          const presence = [];
          client.on('presence', (d) => presence.push(d));
          const states = [];
          client.addEventListener('state', (e) => states.push(e.detail.state));
          const welcome = new Promise(
            (r) => client.addEventListener('welcome', (e) => r(e.detail)));
          await client.connect();
          // Concurrent requests resolve with their own replies.
          const [pong, joined, who] = await Promise.all(
            [client.ping(), client.join('room-a'), client.whoami()]);
          let error = null;
          try { await client.send('not-joined', {text: 'x'}); } catch (e) {
            error = {isRequestError: e instanceof RequestError, code: e.code};
          }
          const w = await welcome;
          // Another client joins: a presence frame reaches this one through on('presence').
          const other = new RoomsClient(url);
          await other.connect();
          await other.join('room-a');
          const sent = await other.send('room-a', {text: 'numbered'});
          await new Promise((r) => setTimeout(r, 200));
          const history = await client.history('room-a');
          const members = await client.members('room-a');
          other.close();
          client.close();
          await new Promise((r) => setTimeout(r, 50));
          const policy = {baseMs: 250, capMs: 5000};
          const delays = [0, 1, 2, 3, 4, 5, 10, 50].map(
            (n) => backoffDelay(n, policy, () => 0.999999));
          return {pong: pong.type, pongId: pong.id, joined: joined.data, rooms: client.rooms,
                  whoId: who.data.connectionId, error, welcome: w.protocol, states, delays,
                  finalState: client.state, tokenCalls, presence: presence.map((p) => p.event),
                  lastSeq: client.lastSeq('room-a'), sentSeq: sent.data.seq,
                  historySeqs: history.data.messages.map((m) => m.seq),
                  memberCount: members.data.count,
                  judged: [judge(5, 6), judge(5, 5), judge(5, 9), judge(undefined, 3)]};
        }""",
        gateway.ws_url,
    )
    assert result["pong"] == "pong" and result["pongId"]
    assert result["joined"] == {"room": "room-a", "members": 1, "seq": 0}
    assert result["rooms"] == ["room-a"]
    assert result["error"] == {"isRequestError": True, "code": "not_member"}
    assert result["welcome"] == 2
    assert result["tokenCalls"] == 1
    assert result["presence"] == ["join"]
    assert result["lastSeq"] == result["sentSeq"] == 1
    assert result["historySeqs"] == [1] and result["memberCount"] == 2
    assert result["judged"] == [{"verdict": "deliver"}, {"verdict": "duplicate"},
                                {"verdict": "gap", "from": 6, "to": 8}, {"verdict": "deliver"}]
    assert result["whoId"]
    assert result["states"] == ["connecting", "open", "closed"]
    assert result["delays"] == [249, 499, 999, 1999, 3999, 4999, 4999, 4999]
    assert result["finalState"] == "closed"


def test_a_page_that_was_offline_shows_every_message_once(
    gateway: Gateway, new_page: NewPage, browser: Browser
) -> None:
    """Protocol v2 in the browser: the page loses its connection, the other page sends, the page
    comes back, resumes with `since` and shows each missed message exactly once, in order."""
    away_context = browser.new_context(viewport={"width": 1100, "height": 800})
    away_context.set_default_timeout(WAIT_MS)
    try:
        away = open_demo(away_context.new_page(), page_url(gateway))
        sender = open_demo(new_page(), page_url(gateway))
        for page in (away, sender):
            connect(page)
            join(page, "lobby")
        send(sender, "before")
        expect(away.locator("#messages li", has_text="before")).to_have_count(1)
        # The network goes: no reconnect can succeed, and API Gateway drops the connection.
        away_context.set_offline(True)
        gateway.management_client().delete_connection(ConnectionId=connection_id_of(away))
        expect(away.locator("#state")).not_to_have_text("Connected")
        for n in range(3):
            send(sender, f"missed {n}")
            expect(sender.locator("#messages li.mine", has_text=f"missed {n}")).to_have_count(1)
        away_context.set_offline(False)
        expect(away.locator("#state")).to_have_text("Connected", timeout=3 * WAIT_MS)
        for n in range(3):
            seen = away.locator("#messages li", has_text=f"missed {n}")
            expect(seen).to_have_count(1)
            expect(seen).to_contain_text("missed while away")
        send(sender, "afterwards")
        expect(away.locator("#messages li", has_text="afterwards")).to_have_count(1)
        texts = [t for t in away.locator("#messages li:not(.system) .text").all_inner_texts()]
        assert texts == ["before", "missed 0", "missed 1", "missed 2", "afterwards"]
        # Presence: the member list shows both users.
        expect(away.locator("#member-count")).to_have_text("2 users")
    finally:
        away_context.close()


def connection_id_of(page: Page) -> str:
    """The page's current connection id, from its client (no request sent)."""
    value = page.evaluate("() => window.roomsDemo.client.connectionId")
    assert isinstance(value, str) and value
    return value
