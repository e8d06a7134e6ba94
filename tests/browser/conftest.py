"""Browser tests: Playwright (sync API) driving Debian's Chromium against the real local gateway.

Chromium is not downloaded by Playwright (``playwright install`` needs the internet): the tests
use the system browser at ``CHROMIUM`` (default ``/usr/bin/chromium``, installed by
``scripts/install-browser.sh``). A missing browser fails the tests with that instruction; it
never skips them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from localgateway.testing import Gateway, free_port, running_gateway

ROOT = Path(__file__).resolve().parents[2]
ECHO = ROOT / "tests" / "fixtures" / "echo"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Upper bound for any single wait on the page (Playwright expect timeout), in ms.
WAIT_MS = 20_000

expect.set_options(timeout=WAIT_MS)


@dataclass(frozen=True)
class Ports:
    rest: int
    ws: int


def page_url(gateway: Gateway) -> str:
    """The demo page: ``GET /`` on the WebSocket port."""
    return f"{gateway.gateway_url}/"


StartGateway = Callable[..., contextlib.AbstractContextManager[Gateway]]


@pytest.fixture
def ports() -> Ports:
    rest, ws = free_port(), free_port()
    while ws == rest:
        ws = free_port()
    return Ports(rest, ws)


@pytest.fixture
def gateway_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment: its own SQLite connection store."""
    return {**os.environ, "CONNECTIONS_STORE": f"sqlite:///{tmp_path}/connections.db"}


@pytest.fixture
def start_gateway(ports: Ports, gateway_env: dict[str, str]) -> StartGateway:
    """``start_gateway(project_dir=ROOT, **env)``: a gateway on this test's fixed ports, so that
    a new one can be started where the page's client will find it again."""

    def start(project_dir: Path = ROOT, **env: str) -> contextlib.AbstractContextManager[Gateway]:
        return running_gateway(str(project_dir), env={**gateway_env, **env},
                               extra_args=["--static", str(ROOT / "web")],
                               port=ports.rest, ws_port=ports.ws)

    return start


@pytest.fixture
def gateway(start_gateway: StartGateway) -> Iterator[Gateway]:
    """The real app (the repository root) behind its own gateway."""
    with start_gateway() as gw:
        yield gw


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module; each test gets its own context (cookies, storage, pages).
    Not session-scoped: the sync API keeps an asyncio loop running in this thread while
    Playwright is started, which breaks ``asyncio.run()`` in the worker's later test files (the
    browser modules themselves use none)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: run scripts/install-browser.sh "
            "(apt-get install chromium) or set CHROMIUM=/path/to/chromium",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1100, "height": 800})
    ctx.set_default_timeout(WAIT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def new_page(context: BrowserContext) -> Iterator[Callable[[], Page]]:
    """Open another page (tab) in this test's browser context; page errors fail the test."""
    errors: list[str] = []

    def open_page() -> Page:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        return page

    yield open_page
    assert not errors, f"JavaScript errors on the page: {errors}"
