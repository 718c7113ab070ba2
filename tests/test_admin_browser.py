"""The admin console in a real browser (Chromium, tests/browser.py) against the relay under
gunicorn on loopback, delivering to a sink in this process that the tests break and fix.

Locators are the accessible names DESIGN §9 promises (`Password`, `Sign in`, `Replay`,
`Replay all dead`, `Mapping`, `Payload`, `Result`, `Sign out`), so these tests also check that a
screen reader finds them; where §9 names none, the page's own (the list's `Status` and `Filter`).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Locator, Page, expect

from tests.conftest import PASS_MAPPING, SECRET, participation, write_config
from tests.fakes.server import Answer, FakeServer, Received
from tests.processes import post_signed, processes, wait_until

pytest_plugins = ["tests.browser"]

PASSWORD = "browser-test-password"
SCRIPT = "<script>alert(1)</script>"
REFUSAL = "no such list"  # what the broken sink answers, to find on the event page


@dataclass
class Console:
    """The relay under gunicorn with the console on, and its sink: the participations whose id
    is in `refused` are answered 400 (dead at once) until a test removes them."""

    url: str
    db: Path
    sink: FakeServer
    refused: set[str] = field(default_factory=set)

    def send(self, n: int, broken: bool = False, body: bytes | None = None) -> str:
        """Post participation `n` (or `body`), refused by the sink when `broken`; waits until its
        delivery has ended; its event id."""
        body = body or participation(n)
        if broken:
            self.refused.add(json.loads(body)["id"])
        answer = post_signed(self.url, body)
        assert answer.status_code == 202, answer.text
        event_id: str = answer.json()["event_id"]
        wait_until(lambda: self.status(event_id) in ("delivered", "dead"))
        return event_id

    def status(self, event_id: str) -> str:
        with closing(sqlite3.connect(self.db)) as conn:
            row = conn.execute(
                "SELECT status FROM deliveries WHERE event_id = ?", (event_id,)
            ).fetchone()
        return str(row[0]) if row else ""

    def statuses(self) -> list[str]:
        with closing(sqlite3.connect(self.db)) as conn:
            return sorted(s for (s,) in conn.execute("SELECT status FROM deliveries"))


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    refused: set[str] = set()

    def check(request: Received) -> Answer | None:
        return Answer(400, {"error": REFUSAL}) if request.json()["id"] in refused else None

    with FakeServer(check=check) as sink:
        config = write_config(
            tmp_path,
            f"""
            storage: sqlite:///relay.db
            sources:
              qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["{SECRET}"]}}}}}}
            destinations:
              sink: {{type: http, url: "{sink.url}/hook"}}
            routes:
              - {{from: qualifio, mapping: pass, to: [sink]}}
            delivery: {{max_attempts: 2, backoff: {{initial: 50ms, max: 200ms}}, timeout: 2s}}
            """,
            {"pass": PASS_MAPPING},
        )
        # Two gunicorn processes, as WEB_CONCURRENCY's default: a session and its CSRF token
        # must hold in whichever process answers.
        url, started = processes(tmp_path, config, webs=2, RELAY_ADMIN_PASSWORD=PASSWORD)
        try:
            yield Console(url, tmp_path / "relay.db", sink, refused)
        finally:
            for process in started:
                process.stop()
        for process in started:
            assert PASSWORD not in process.log.read_text(errors="replace")


def sign_in(page: Page, console: Console, path: str = "/admin") -> None:
    page.goto(console.url + path)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_label("Password")).to_have_count(0)
    # The new page may be committed but its script not yet run: typing before that is lost.
    page.wait_for_load_state("load")


def reload_until(page: Page, locator: Locator, timeout: float = 15.0) -> None:
    """Reload the page until `locator` is on it (a delivery the worker is still sending)."""
    deadline = time.monotonic() + timeout
    while not locator.count():
        assert time.monotonic() < deadline, f"not on {page.url} after {timeout}s: {locator}"
        time.sleep(0.1)
        page.reload()


def status_word(page: Page, word: str) -> Locator:
    """A status written as a word (DESIGN §9: not a colour only), on the page, not in a list of
    options."""
    return page.get_by_text(re.compile(rf"^\s*{word}\s*$")).filter(visible=True)


def row_of(page: Page, event_id: str) -> Locator:
    """The list's row of an event, which links to it."""
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=event_id))


def test_a_page_without_the_session_goes_to_sign_in(console: Console, page: Page) -> None:
    event_id = console.send(1)
    for path in ("/admin", "/admin/deliveries", f"/admin/events/{event_id}", "/admin/playground"):
        page.goto(console.url + path)
        expect(page.get_by_label("Password")).to_be_visible()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        expect(page.get_by_text(event_id)).to_have_count(0)


def test_sign_in_then_sign_out(console: Console, page: Page) -> None:
    console.send(1)
    page.goto(console.url + "/admin")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_label("Password")).to_be_visible()  # still outside

    sign_in(page, console)
    expect(page.get_by_text("sink").first).to_be_visible()  # the overview, per destination
    assert PASSWORD not in page.content()
    cookies = page.context.cookies()
    assert cookies and all(c["httpOnly"] and c["sameSite"] == "Lax" for c in cookies), cookies

    page.get_by_role("button", name="Sign out").click()
    page.goto(console.url + "/admin")
    expect(page.get_by_label("Password")).to_be_visible()


def test_deliveries_list_shows_each_status_and_filters_to_dead(
    console: Console, page: Page
) -> None:
    delivered, dead = console.send(1), console.send(2, broken=True)
    sign_in(page, console, "/admin/deliveries")
    expect(
        row_of(page, delivered).get_by_role("cell", name="delivered", exact=True)
    ).to_be_visible()
    expect(row_of(page, dead).get_by_role("cell", name="dead", exact=True)).to_be_visible()

    page.get_by_label("Status").select_option("dead")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("link", name=dead)).to_be_visible()
    expect(page.get_by_role("link", name=delivered)).to_have_count(0)


def test_event_page_shows_the_attempt_and_replay_delivers_it(console: Console, page: Page) -> None:
    event_id = console.send(1, broken=True)
    sign_in(page, console, "/admin/deliveries")
    page.get_by_role("link", name=event_id).click()
    expect(page).to_have_url(re.compile(rf"/admin/events/{event_id}$"))
    expect(page.get_by_role("cell", name="400", exact=True)).to_be_visible()  # its HTTP status
    expect(page.get_by_text(REFUSAL).first).to_be_visible()  # the answer's excerpt, the error
    expect(status_word(page, "dead").first).to_be_visible()

    console.refused.clear()  # the sink is fixed
    page.get_by_role("button", name="Replay").click()
    reload_until(page, status_word(page, "delivered"))
    assert console.status(event_id) == "delivered"
    assert [r.json()["id"] for r in console.sink.requests] == [json.loads(participation(1))["id"]]


def test_replay_all_dead(console: Console, page: Page, dialogs: list[str]) -> None:
    console.send(1)
    for n in (2, 3, 4):
        console.send(n, broken=True)
    assert console.statuses() == ["dead", "dead", "dead", "delivered"]
    console.refused.clear()
    sign_in(page, console, "/admin/deliveries")
    page.get_by_role("button", name="Replay all dead").click()
    confirm_replay_all(page, dialogs, count=3)
    wait_until(lambda: console.statuses() == ["delivered"] * 4)
    assert len(console.sink.requests) == 4


def confirm_replay_all(page: Page, dialogs: list[str], count: int) -> None:
    """The confirmation shows how many deliveries will be replayed: a dialog (accepted by the
    page fixture) or a page with a button of the same name."""
    if dialogs:
        assert str(count) in dialogs[-1], dialogs
        return
    expect(page.get_by_role("main")).to_contain_text(re.compile(rf"\b{count}\b"))
    page.get_by_role("button", name="Replay all dead").click()


def test_playground_result_follows_the_mapping(console: Console, page: Page) -> None:
    sign_in(page, console, "/admin/playground")
    result = page.get_by_role("region", name="Result")
    page.get_by_label("Payload").fill(participation(1).decode())
    page.get_by_label("Mapping").fill("fields:\n  state: state\n")
    expect(result).to_contain_text("COMPLETED", timeout=10_000)

    page.get_by_label("Mapping").fill("fields:\n  state: lower(state)\n")
    expect(result).to_contain_text("completed", timeout=10_000)

    page.get_by_label("Mapping").fill("fields:\n  state: lower(state\n")
    expect(result).to_contain_text("fields.state", timeout=10_000)  # the key
    expect(result).to_contain_text(re.compile(r"\b2\b"))  # and its line


def answering_a_script() -> bytes:
    """A participation whose first form answer is a script."""
    data = json.loads(participation(1))
    data["form"][0]["responses"][0]["value"] = SCRIPT
    return json.dumps(data).encode()


def test_a_payload_answer_is_shown_as_text(
    console: Console, page: Page, dialogs: list[str]
) -> None:
    event_id = console.send(1, body=answering_a_script())
    sign_in(page, console)
    answer = page.goto(f"{console.url}/admin/events/{event_id}")
    assert answer is not None
    assert "no-store" in answer.headers["cache-control"]
    assert own_only(answer.headers["content-security-policy"]), answer.headers
    expect(page.get_by_text(SCRIPT).first).to_be_visible()  # the payload and the variables
    expect(page.locator("script", has_text="alert(1)")).to_have_count(0)

    page.goto(console.url + "/admin/playground")
    page.get_by_label("Payload").fill(answering_a_script().decode())
    page.get_by_label("Mapping").fill("fields:\n  name: variables.firstname\n")
    expect(page.get_by_role("region", name="Result")).to_contain_text(SCRIPT, timeout=10_000)
    expect(page.locator("script", has_text="alert(1)")).to_have_count(0)
    assert dialogs == []


def own_only(csp: str) -> bool:
    """Whether a Content-Security-Policy lets scripts and styles come from the relay only."""
    parts = [d.split() for d in csp.split(";") if d.strip()]
    directives = {name: " ".join(sources) for name, *sources in parts}
    default = directives.get("default-src")
    return all(
        directives.get(d, default) in ("'self'", "'none'") for d in ("script-src", "style-src")
    )


def test_an_action_without_the_csrf_token_is_refused(console: Console, page: Page) -> None:
    event_id = console.send(1, broken=True)
    console.refused.clear()
    sign_in(page, console, f"/admin/events/{event_id}")
    action, fields = form_of(page.get_by_role("button", name="Replay"))
    without = {k: v for k, v in fields.items() if not re.search("csrf|token", k, re.I)}
    assert without != fields, f"no CSRF token in the Replay form: {fields}"

    refused = page.request.post(action, form=without, max_redirects=0)
    assert refused.status == 403
    no_session = requests.post(action, data=fields, allow_redirects=False, timeout=10)
    assert no_session.status_code in (401, 403)
    # A replay re-queues the delivery before it answers: nothing changed.
    assert console.status(event_id) == "dead" and not console.sink.requests

    accepted = page.request.post(action, form=fields, max_redirects=0)
    assert accepted.status < 400  # the same form with its token does replay
    wait_until(lambda: console.status(event_id) == "delivered")


def form_of(button: Locator) -> tuple[str, dict[str, str | float | bool]]:
    """The action and the fields of the form a button submits."""
    found = button.evaluate(
        """b => [b.form.action, Object.fromEntries(new FormData(b.form, b).entries())]"""
    )
    return found[0], found[1]


def test_screenshots_at_360_and_1280(
    console: Console, page: Page, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    console.send(1)
    event_id = console.send(2, broken=True)
    sign_in(page, console)
    shots = tmp_path / "screenshots"
    pages = {
        "overview": "/admin",
        "deliveries": "/admin/deliveries",
        "event": f"/admin/events/{event_id}",
        "playground": "/admin/playground",
    }
    for width in (360, 1280):
        page.set_viewport_size({"width": width, "height": 800})
        for name, path in pages.items():
            page.goto(console.url + path)
            page.screenshot(path=shots / f"{name}-{width}.png", full_page=True)
            wide = page.evaluate("document.documentElement.scrollWidth")
            assert wide <= width, f"{name} is {wide} px wide in a {width} px window"
    assert len(list(shots.glob("*.png"))) == 8
    with capsys.disabled():
        print(f"\nadmin console screenshots: {shots}")
