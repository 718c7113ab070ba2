"""The admin console's server side (DESIGN §9), through real HTTP on loopback, on both backends:
off without a password, sign-in and its limit, the session and CSRF on every action, the pages,
Replay, Replay all dead, forget, the playground, escaping and the headers. The browser's view of
the same console is tests/test_admin_browser.py."""

from __future__ import annotations

import json
import re
import time

import itsdangerous
import pytest
import requests

from tests.conftest import PASS_MAPPING, SECRET, participation, write_config
from tests.fakes.server import Answer

PASSWORD = "admin-test-password"
OUT_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the http destination's signing secret
REFUSAL = {"error": "no such list"}
SCRIPT = "<script>alert(1)</script>"


def console_config(tmp_path, sink_url, extra=""):
    """Participations to two http destinations on the sink (`sink` signs with OUT_SECRET), and a
    json source without a route."""
    return write_config(
        tmp_path,
        f"""
        storage: ${{RELAY_TEST_STORAGE}}
        trusted_proxy_hops: 1
        sources:
          qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["{SECRET}"]}}}}}}
          plain: {{format: json, auth: none}}
        destinations:
          sink: {{type: http, url: "{sink_url}/sink", secret: "{OUT_SECRET}"}}
          other: {{type: http, url: "{sink_url}/other"}}
        routes:
          - {{from: qualifio, mapping: pass, to: [sink, other]}}
        delivery: {{max_attempts: 2, backoff: {{initial: 50ms, max: 200ms}}, timeout: 2s}}
        {extra}
        """,
        {"pass": PASS_MAPPING},
    )


class Console:
    """A browser's part, played with requests: its cookies, the CSRF token of the last page."""

    def __init__(self, relay):
        self.relay, self.http, self.token = relay, requests.Session(), ""

    def get(self, path, **kwargs):
        answer = self.http.get(self.relay.url + path, timeout=10, allow_redirects=False, **kwargs)
        found = re.search(r'name="csrf_token" value="([^"]+)"', answer.text)
        self.token = found.group(1) if found else self.token
        return answer

    def post(self, path, data=None, token=True, **kwargs):
        data = {**(data or {}), **({"csrf_token": self.token} if token else {})}
        return self.http.post(
            self.relay.url + path, data=data, timeout=10, allow_redirects=False, **kwargs
        )

    def sign_in(self, password=PASSWORD, **headers):
        self.get("/admin/sign-in")
        return self.post("/admin/sign-in", {"password": password}, headers=headers)

    def try_(self, mapping, payload, **fields):
        return self.http.post(
            self.relay.url + "/admin/playground/try",
            json={"mapping": mapping, "payload": payload, **fields},
            headers={"X-CSRF-Token": self.token},
            timeout=10,
        )


@pytest.fixture
def open_console(tmp_path, sink, start_relay, monkeypatch):
    """A relay with the console on, and a Console signed in to it. A relay whose worker delivers
    to `sink` takes a second to stop; tests that deliver nothing start one without."""
    monkeypatch.setenv("RELAY_ADMIN_PASSWORD", PASSWORD)

    def start(worker=False, extra=""):
        signed_in = Console(start_relay(console_config(tmp_path, sink.url, extra), worker))
        assert signed_in.sign_in().status_code == 302
        signed_in.get("/admin")
        return signed_in

    return start


@pytest.fixture
def console(open_console):
    """Signed in to a relay that does not deliver."""
    return open_console()


@pytest.fixture
def live(open_console):
    """Signed in to a relay whose worker delivers to `sink`."""
    return open_console(worker=True)


def dead_event(console, sink, count=1):
    """`count` participations, both deliveries of each refused by the sink (dead at once); the
    first one's event id."""
    sink.default = Answer(400, REFUSAL)
    ids = [console.relay.post(participation(n)).json()["event_id"] for n in range(1, count + 1)]
    assert console.relay.wait_settled() == ["dead", "dead"] * count
    return ids[0]


def statuses(relay, event_id):
    return {
        d["destination"]: d["status"]
        for e in relay.events()
        if e["id"] == event_id
        for d in e["deliveries"]
    }


def wait_for(condition, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- off, sign-in, session -----------------------------------------------------------------------


def test_without_a_password_admin_answers_404(tmp_path, sink, start_relay, monkeypatch):
    monkeypatch.delenv("RELAY_ADMIN_PASSWORD", raising=False)
    off = Console(start_relay(console_config(tmp_path, sink.url), worker=False))
    for path in ("/admin", "/admin/", "/admin/sign-in", "/admin/deliveries", "/admin/static/a.css"):
        assert off.get(path).status_code == 404, path
    assert off.post("/admin/sign-in", {"password": ""}).status_code == 404


def test_sign_in_wrong_then_right_password(tmp_path, sink, start_relay, monkeypatch):
    monkeypatch.setenv("RELAY_ADMIN_PASSWORD", PASSWORD)
    console = Console(start_relay(console_config(tmp_path, sink.url), worker=False))
    wrong = console.sign_in("not-it")
    assert wrong.status_code == 401 and 'id="password"' in wrong.text
    assert console.get("/admin").status_code == 302  # still outside

    right = console.sign_in()
    assert (right.status_code, right.headers["Location"]) == (302, "/admin")
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/admin" in cookie
    assert "Secure" not in cookie  # plain HTTP: a Secure cookie would never come back
    assert console.get("/admin").status_code == 200
    assert PASSWORD not in cookie


def test_the_cookie_is_secure_behind_https(console):
    console.http.cookies.clear()
    answer = console.sign_in(**{"X-Forwarded-Proto": "https"})
    assert answer.status_code == 302 and "; Secure" in answer.headers["Set-Cookie"]


def test_sign_in_goes_back_to_the_page_asked_for_never_elsewhere(console):
    console.post("/admin/sign-out")
    asked = console.get("/admin/deliveries?status=dead")
    assert asked.headers["Location"] == "/admin/sign-in?next=/admin/deliveries?status%3Ddead"
    console.get(asked.headers["Location"])
    back = console.post("/admin/sign-in", {"password": PASSWORD, "next": "/admin/deliveries"})
    assert back.headers["Location"] == "/admin/deliveries"
    for elsewhere in ("https://evil.example/admin", "//evil.example/admin", "/hooks/x"):
        console.get("/admin")  # the new session's token
        console.post("/admin/sign-out")
        console.get("/admin/sign-in")
        answer = console.post("/admin/sign-in", {"password": PASSWORD, "next": elsewhere})
        assert answer.headers["Location"] == "/admin", elsewhere


def test_five_wrong_passwords_a_minute_then_429_for_that_address(
    tmp_path, sink, start_relay, monkeypatch
):
    monkeypatch.setenv("RELAY_ADMIN_PASSWORD", PASSWORD)
    console = Console(start_relay(console_config(tmp_path, sink.url), worker=False))
    guesser = {"X-Forwarded-For": "203.0.113.5"}  # trusted_proxy_hops: 1 reads it
    assert [console.sign_in("guess", **guesser).status_code for _ in range(5)] == [401] * 5
    limited = console.sign_in(PASSWORD, **guesser)  # even the right one: no more tries
    assert limited.status_code == 429 and 0 < int(limited.headers["Retry-After"]) <= 60
    assert console.get("/admin").status_code == 302
    assert console.sign_in(PASSWORD, **{"X-Forwarded-For": "203.0.113.6"}).status_code == 302


def test_pages_without_the_session_go_to_sign_in_and_actions_answer_401(live, sink):
    event_id = dead_event(live, sink)
    [delivery] = [d["id"] for d in live.relay.deliveries() if d["destination"] == "sink"]
    outside = Console(live.relay)
    pages = ["/admin", "/admin/deliveries", f"/admin/events/{event_id}", "/admin/playground"]
    pages += ["/admin/forget", "/admin/deliveries/replay-dead?destination=sink"]
    for path in pages:
        answer = outside.get(path)
        assert answer.status_code == 302, path
        assert answer.headers["Location"].startswith("/admin/sign-in?next=/admin"), path
        assert "no such list" not in answer.text and "Payload" not in answer.text
    actions = [f"/admin/deliveries/{delivery}/replay", "/admin/deliveries/replay-dead"]
    actions += ["/admin/forget/erase", "/admin/playground/try", "/admin/sign-out"]
    for path in actions:
        assert outside.post(path, {"destination": "sink", "email": "a@b.c"}).status_code == 401
    assert set(statuses(live.relay, event_id).values()) == {"dead"}


def test_sign_out_ends_the_session(console):
    assert console.post("/admin/sign-out").headers["Location"] == "/admin/sign-in"
    assert console.get("/admin").status_code == 302


def test_a_session_unused_for_12_hours_is_over(console):
    app = console.relay.app
    serializer = app.session_interface.get_signing_serializer(app)
    session = {"_permanent": True, "signed_in": True, "csrf_token": console.token}

    class SignedLongAgo(itsdangerous.TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - 12 * 3600 - 60)

    fresh = serializer.dumps(session)
    serializer.signer = SignedLongAgo
    stale = serializer.dumps(session)
    for cookie, status in ((fresh, 200), (stale, 302)):
        console.http.cookies.clear()
        console.http.cookies.set("hookrelay_admin", cookie, path="/admin")
        assert console.get("/admin").status_code == status


# --- CSRF, headers, escaping, secrets -------------------------------------------------------------


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(live, sink):
    event_id = dead_event(live, sink)
    sink.default = Answer(200, {"ok": True})
    [delivery] = [d["id"] for d in live.relay.deliveries() if d["destination"] == "sink"]
    for token in (False, "forged"):
        data = {"destination": "sink", "email": "zoe.lefevre@example.com"}
        if token:
            data["csrf_token"] = token
        for path in (f"/admin/deliveries/{delivery}/replay", "/admin/deliveries/replay-dead"):
            assert live.post(path, data, token=False).status_code == 403
        assert live.post("/admin/forget/erase", data, token=False).status_code == 403
    refused = live.http.post(
        live.relay.url + "/admin/playground/try", json={"mapping": "", "payload": ""}
    )
    assert refused.status_code == 403 and refused.json() == {"error": refused.json()["error"]}
    time.sleep(0.3)  # what a replay would take to be sent
    assert statuses(live.relay, event_id) == {"sink": "dead", "other": "dead"}
    assert sink.requests == []


def test_every_admin_answer_has_the_csp_no_store_and_no_framing(console):
    for path in ("/admin", "/admin/sign-in", "/admin/deliveries", "/admin/events/nope"):
        answer = console.get(path)
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'self'"), path
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["Cache-Control"] == "no-store", path
        assert answer.headers["X-Frame-Options"] == "DENY"
    assert console.get("/admin/events/nope").status_code == 404
    html = console.get("/admin/playground").text
    assert "<style" not in html and "style=" not in html and "<script>" not in html
    assert 'src="/admin/static/admin.js"' in html
    assert console.get("/admin/static/admin.js").status_code == 200


def test_a_script_in_a_payload_shows_as_text(console, sink):
    data = json.loads(participation(1))
    data["form"][0]["responses"][0]["value"] = SCRIPT
    event_id = console.relay.post(json.dumps(data).encode()).json()["event_id"]
    page = console.get(f"/admin/events/{event_id}").text
    assert SCRIPT not in page
    assert "&#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34;" in page  # the payload and variables
    tried = console.try_("fields: {name: variables.firstname}", json.dumps(data))
    assert tried.json()["results"] == [{"outcome": "record", "record": {"name": SCRIPT}}]
    assert SCRIPT not in tried.json()["html"] and "&lt;script&gt;" in tried.json()["html"]


def test_no_secret_appears_on_any_page(live, sink):
    event_id = dead_event(live, sink)
    pages = ["/admin", "/admin/deliveries", f"/admin/events/{event_id}", "/admin/forget"]
    pages += ["/admin/playground", "/admin/playground?file=pass&sample=x"]
    pages += ["/admin/deliveries/replay-dead?destination=sink", "/admin/events/nope"]
    for path in pages + ["/admin/sign-in"]:
        answer = (Console(live.relay) if path == "/admin/sign-in" else live).get(path)
        assert answer.status_code == (404 if path.endswith("nope") else 200), path
        for secret in (PASSWORD, SECRET, OUT_SECRET, OUT_SECRET.removeprefix("whsec_")):
            assert secret not in answer.text, (path, secret)
    # A mapping typed in the playground reads no environment variable, so none can show there.
    tried = live.try_("fields: {x: \"'${RELAY_ADMIN_PASSWORD}'\"}", "{}", format="json")
    assert PASSWORD not in tried.text
    assert tried.json()["errors"][0]["message"].startswith("environment variable")


# --- pages ---------------------------------------------------------------------------------------


def test_overview_per_destination_sources_chart_and_state(live, sink):
    dead_event(live, sink)
    sink.default = Answer(200, {"ok": True})
    live.relay.post(participation(2))
    wait_for(lambda: live.relay.statuses().count("delivered") == 2)
    page = live.get("/admin").text
    for text in ("sink", "other", "qualifio", "plain", "<svg", "deliveries delivered: 2"):
        assert text in page
    assert "events received: 2" in page and "no such list" in page  # the last error
    assert '<span class="status status-ok">ok</span>' in page  # storage and worker


def test_deliveries_list_filters_and_searches(live, sink):
    dead = dead_event(live, sink)
    sink.default = Answer(200, {"ok": True})
    delivered = live.relay.post(participation(2)).json()["event_id"]
    wait_for(lambda: live.relay.statuses().count("delivered") == 2)
    everything = live.get("/admin/deliveries").text
    assert dead in everything and delivered in everything
    only_dead = live.get("/admin/deliveries?status=dead&destination=sink").text
    assert dead in only_dead and delivered not in only_dead
    found = live.get("/admin/deliveries?q=" + json.loads(participation(2))["id"]).text
    assert delivered in found and dead not in found
    later = time.strftime("%Y-%m-%dT%H:%M", time.localtime(time.time() + 120))
    assert dead not in live.get(f"/admin/deliveries?since={later}").text
    assert dead in live.get(f"/admin/deliveries?until={later}").text


def test_event_page_shows_payload_variables_records_and_attempts(live, sink):
    event_id = dead_event(live, sink)
    page = live.get(f"/admin/events/{event_id}").text
    assert "<td>400</td>" in page and "no such list" in page  # HTTP status, the answer's excerpt
    assert page.count('<span class="status status-dead">dead</span>') == 2
    assert "&#34;newsletter_optin&#34;: &#34;1&#34;" in page  # the variables
    assert "&#34;state&#34;: &#34;COMPLETED&#34;" in page  # the record the mapping makes now
    assert page.count(">Replay</button>") == 2


# --- actions -------------------------------------------------------------------------------------


def test_replay_sends_that_delivery_only(live, sink):
    event_id = dead_event(live, sink)
    sink.default = Answer(200, {"ok": True})
    [delivery] = [d["id"] for d in live.relay.deliveries() if d["destination"] == "sink"]
    live.get(f"/admin/events/{event_id}")
    answer = live.post(f"/admin/deliveries/{delivery}/replay")
    assert answer.headers["Location"] == f"/admin/events/{event_id}"
    wait_for(lambda: statuses(live.relay, event_id)["sink"] == "delivered")
    time.sleep(0.2)
    assert statuses(live.relay, event_id) == {"sink": "delivered", "other": "dead"}
    assert [r.path for r in sink.requests] == ["/sink"]
    assert "scheduled again" in live.get(f"/admin/events/{event_id}").text
    again = live.post(f"/admin/deliveries/{delivery}/replay")  # delivered: not sent again
    assert again.status_code == 302 and len(sink.requests) == 1
    assert live.post(f"/admin/deliveries/{'0' * 32}/replay").status_code == 404


def test_replay_all_dead_shows_the_count_then_sends_that_destination_again(live, sink):
    dead_event(live, sink, 3)
    sink.default = Answer(200, {"ok": True})
    listed = live.get("/admin/deliveries").text
    assert "sink: 3 dead" in listed and ">Replay all dead</button>" in listed
    confirm = live.get("/admin/deliveries/replay-dead?destination=sink")
    assert "3 dead deliveries to" in confirm.text and ">Replay all dead</button>" in confirm.text
    assert live.relay.statuses().count("dead") == 6  # the confirmation changed nothing
    done = live.post("/admin/deliveries/replay-dead", {"destination": "sink"})
    assert done.headers["Location"] == "/admin/deliveries?destination=sink"
    wait_for(lambda: live.relay.statuses().count("delivered") == 3)
    time.sleep(0.2)
    assert sorted(live.relay.statuses()) == ["dead"] * 3 + ["delivered"] * 3
    assert {r.path for r in sink.requests} == {"/sink"}
    assert "3 dead deliveries to sink scheduled again" in live.get(done.headers["Location"]).text


def test_forget_shows_the_count_then_erases_those_events(console, sink):
    kept = console.relay.post(b'{"email": "jan.peeters@example.com"}', "plain", None)
    console.relay.post(b'{"contact": {"email": "Jane.Doe@example.com"}}', "plain", None)
    asked = console.post("/admin/forget", {"email": "jane.doe@example.com"})
    assert "1 stored event holds" in asked.text and ">Erase 1 event</button>" in asked.text
    assert len(console.relay.events()) == 2  # asking erased nothing
    erased = console.post("/admin/forget/erase", {"email": "jane.doe@example.com"})
    assert erased.headers["Location"] == "/admin/forget"
    assert [e["id"] for e in console.relay.events()] == [kept.json()["event_id"]]
    assert "Erased 1 event" in console.get("/admin/forget").text
    assert "No stored event holds" in console.post("/admin/forget", {"email": "x@y.z"}).text


# --- playground ----------------------------------------------------------------------------------

NEWSLETTER = """\
when: "state == 'COMPLETED'"
fields:
  id: id
  optin: variables.newsletter_optin
tests:
  - payload: ../samples/v2-complete.json
    expect: {optin: "1"}
"""


def test_the_playground_gives_the_record_skipped_or_each_error_with_line_and_key(console):
    payload = participation(1).decode()
    record = console.try_(NEWSLETTER, payload).json()
    assert record["errors"] == [] and record["results"] == [
        {"outcome": "record", "record": {"id": json.loads(payload)["id"], "optin": "1"}}
    ]
    skipped = console.try_(NEWSLETTER, participation(1, state="INCOMPLETE").decode()).json()
    assert skipped["results"] == [{"outcome": "skipped", "reason": "when: state == 'COMPLETED'"}]
    broken = console.try_("fields:\n  id: id\n  state: lower(state\n", payload).json()
    [error] = broken["errors"]
    assert (error["where"], error["line"], error["key"]) == ("mapping", 3, "fields.state")
    assert broken["results"] == [] and "fields.state" in broken_html(console)
    failing = console.try_("fields:\n  n: length(state)\n  m: abs(state)\n", payload).json()
    [result] = failing["results"]
    assert (result["outcome"], result["key"], result["line"]) == ("error", "fields.m", 3)
    not_json = console.try_("fields: {id: id}", '{\n  "id": 1,\n}').json()
    assert not_json["errors"][0]["where"] == "payload" and not_json["errors"][0]["line"] == 3


def broken_html(console):
    return console.try_("fields:\n  state: lower(state\n", "{}").json()["html"]


def test_the_playground_runs_the_mappings_own_tests(console, tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "one.json").write_bytes(participation(1))
    mapping = NEWSLETTER.replace("v2-complete", "one") + (
        '  - payload: ../samples/one.json\n    expect: {optin: "0"}\n'
        "  - payload: ../../outside.json\n    expect: skipped\n"
    )
    tests = console.try_(mapping, "{}").json()["tests"]
    assert [(t["passed"], t["ran"]) for t in tests] == [(True, True), (False, True), (False, False)]
    assert tests[1]["differences"] == ['optin: expected "0", got "1"']
    assert "outside the relay's folder" in tests[2]["differences"][0]


def test_the_playground_page_loads_a_mapping_file_sample_or_event(live, sink, tmp_path):
    (tmp_path / "samples").mkdir()
    (tmp_path / "samples" / "one.json").write_bytes(participation(1))
    page = live.get("/admin/playground?file=pass&sample=one.json").text
    assert "\n\nfields:\n  id: id\n" in page  # its first blank line kept (see the template)
    assert "&#34;COMPLETED&#34;" in page and 'aria-labelledby="result-title"' in page
    assert '<span class="status status-delivered">record</span>' in page  # tried at once
    event_id = dead_event(live, sink)
    assert (
        "00000000-0000-4000-8000-000000000001"
        in live.get(f"/admin/playground?event={event_id}").text
    )
    assert live.get("/admin/playground?file=../config").status_code == 200  # not read
    posted = live.post("/admin/playground", {"mapping": "fields: {id: id}", "payload": "{}"})
    assert posted.status_code == 200 and "record</span>" in posted.text  # without JavaScript


def test_download_always_save_only_when_allowed(console, tmp_path):
    download = console.post("/admin/playground/download", {"name": "x", "mapping": "fields: {"})
    assert download.headers["Content-Disposition"] == 'attachment; filename="x.yaml"'
    assert download.text == "fields: {"
    refused = console.post("/admin/playground/save", {"name": "x", "mapping": "fields: {id: id}"})
    assert refused.status_code == 403 and not (tmp_path / "mappings" / "x.yaml").exists()


def test_save_validates_first_then_writes_and_the_relay_runs_it(
    open_console, tmp_path, monkeypatch
):
    monkeypatch.setenv("RELAY_RELOAD_SECONDS", "0")  # the save reloads this process itself
    console = open_console(extra="admin: {edit_mappings: true}")
    console.get("/admin/playground")
    target = tmp_path / "mappings" / "pass.yaml"
    before = target.read_text()
    invalid = console.post("/admin/playground/save", {"name": "pass", "mapping": "fields: {"})
    assert invalid.status_code == 200 and "Not saved" in invalid.text
    assert target.read_text() == before
    saved = console.post("/admin/playground/save", {"name": "pass", "mapping": "fields: {x: id}"})
    assert saved.headers["Location"] == "/admin/playground?file=pass"
    assert target.read_text() == "fields: {x: id}"
    assert list((tmp_path / "mappings").glob(".*")) == []  # no temporary file left
    assert console.relay.relay.config.mappings["pass"].explain({"id": 7}) == [("x", "id", 7)]
    assert (
        console.post("/admin/playground/save", {"name": "../x", "mapping": ""}).status_code == 400
    )


def test_overview_says_where_alerts_go_what_fires_and_what_a_channel_did_not_take(
    open_console, sink
):
    assert "off: no channel under <code>alerts:</code>" in open_console().get("/admin").text
    extra = f'alerts: [{{type: slack, url: "{sink.url}/slack"}}]\n        alert_wait: 0s'
    live = open_console(worker=True, extra=extra)
    dead_event(live, sink)  # the sink refuses the alert too
    wait_for(lambda: "not taken after 1 tries" in live.get("/admin").text, timeout=20)
    page = live.get("/admin").text
    assert "to slack (127.0.0.1)" in page and "dead sink:" in page and "firing since" in page
    assert "slack (127.0.0.1) answered 400: no such list" in page
    assert sink.url not in page  # a webhook's address is a secret
