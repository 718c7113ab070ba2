"""A real browser for the admin console's tests: Debian's Chromium driven by Playwright.

Playwright's own browser download cannot work here, so the browser is the system's `chromium`
(.ci/run installs it with apt when it is missing). A missing browser fails the test with what to
do, never skips it: the suite must find everything it needs, as with PostgreSQL.

One browser per test module (a launch takes about a second), a fresh context per test, so no
cookie or session passes from one test to the next. A page fixture also fails its test when the
page fetched anything from another host, raised an uncaught script error or broke the
Content-Security-Policy: the console must work offline and behind a firewall.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Dialog,
    Page,
    Request,
    ViewportSize,
    sync_playwright,
)

from tests.conftest import DEAD_PROXY

CHROMIUM = "/usr/bin/chromium"
WIDE: ViewportSize = {"width": 1280, "height": 800}
LOCAL_HOSTS = ("127.0.0.1", "localhost")
_CSP = re.compile(r"Content.Security.Policy", re.IGNORECASE)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"no browser at {CHROMIUM}: install Debian's chromium "
            "(apt-get install --no-install-recommends chromium; .ci/run does)",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM,
            # Chromium's sandbox refuses to start as root (CI containers).
            args=["--no-sandbox"] if os.geteuid() == 0 else [],
            # The tests' dead proxy for anything but loopback, as conftest sets for everything
            # else: a page that reaches for another host fails at once instead of leaving.
            proxy={"server": DEAD_PROXY, "bypass": ",".join(LOCAL_HOSTS)},
        )
        yield launched
        launched.close()


@pytest.fixture
def dialogs() -> list[str]:
    """The message of every dialog (alert, confirm, prompt) the test's pages opened; each was
    accepted."""
    return []


@pytest.fixture
def page(browser: Browser, dialogs: list[str]) -> Iterator[Page]:
    """A page 1280 px wide in a context of its own (no cookies); fails the test when a page
    fetched from another host, raised a script error or broke the Content-Security-Policy."""
    context = browser.new_context(viewport=WIDE)
    foreign: list[str] = []
    errors: list[str] = []

    def on_request(request: Request) -> None:
        if urlsplit(request.url).hostname not in LOCAL_HOSTS and request.url.startswith("http"):
            foreign.append(request.url)

    def on_console(message: ConsoleMessage) -> None:
        if _CSP.search(message.text):
            errors.append(message.text)

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    context.on("request", on_request)
    context.on("console", on_console)
    context.on("weberror", lambda error: errors.append(str(error.error)))
    context.on("dialog", on_dialog)
    opened = context.new_page()
    yield opened
    context.close()
    assert not foreign, f"the console fetched from another host: {foreign}"
    assert not errors, f"script errors or Content-Security-Policy violations: {errors}"
