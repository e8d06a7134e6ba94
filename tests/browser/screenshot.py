"""Regenerate docs/screenshot.png from a real session (not a test)::

    .venv/bin/python -m tests.browser.screenshot [OUTPUT]

Starts the real app behind the local gateway (temporary SQLite store), opens two pages, joins two
rooms, exchanges a few messages and captures the first page at 1100 px wide.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from localgateway.testing import running_gateway

from .conftest import CHROMIUM, CHROMIUM_ARGS, ROOT, WAIT_MS, page_url


def main(output: Path) -> None:
    expect.set_options(timeout=WAIT_MS)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as playwright:
        env = {**os.environ, "CONNECTIONS_STORE": f"sqlite:///{tmp}/connections.db"}
        with running_gateway(str(ROOT), env=env, extra_args=["--static", "web"]) as gateway:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            context = browser.new_context(viewport={"width": 1100, "height": 800})
            alice, bob = context.new_page(), context.new_page()
            for page in (alice, bob):
                page.goto(page_url(gateway))
                page.click("#connect")
                expect(page.locator("#welcome")).to_contain_text("protocol 1")
                for room in ("lobby", "support"):
                    page.fill("#join-room", room)
                    page.click("#join")
                    expect(page.locator("#room-title")).to_have_text(f"Messages in {room}")

            def say(page: object, room: str, text: str) -> None:
                page.click(f"#room-list button:text-matches('^{room}')")  # type: ignore[attr-defined]
                page.fill("#message", text)  # type: ignore[attr-defined]
                page.click("#send")  # type: ignore[attr-defined]
                expect(page.locator("#messages li.mine", has_text=text)).to_have_count(1)  # type: ignore[attr-defined]

            say(bob, "support", "Is the staging gateway up?")
            say(alice, "lobby", "Morning, everyone!")
            say(bob, "lobby", "Hi Alice, welcome back.")
            say(alice, "lobby", "Deploying the new build in 5 minutes.")
            alice.click("#whoami")
            expect(alice.locator("#tool-result")).to_contain_text("whoami:")
            # An error reply, to show how errors stand out in the frame log.
            alice.evaluate("() => roomsDemo.client.join('no spaces allowed').catch(() => {})")
            expect(alice.locator("#log tr.is-error")).to_have_count(1)
            alice.click("#ping")
            expect(alice.locator("#tool-result")).to_contain_text("pong")
            alice.evaluate("() => document.activeElement.blur()")
            alice.screenshot(path=str(output), full_page=True)
            browser.close()
    print(f"wrote {output}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshot.png")
