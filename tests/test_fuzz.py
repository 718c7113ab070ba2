"""Property-based fuzzing of what takes outside input. POST /hooks/<source>: whatever the bytes,
headers and source name, the answer is never a 5xx, and a 4xx stores nothing. The admin console:
whatever a signed-in user types in a filter, an id, the playground or a form, never a 5xx."""

from __future__ import annotations

import json
from urllib.parse import quote

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hookrelay.auth import sign
from tests.conftest import SECRET, basic_config, sample

V2 = sample("v2-complete.json")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Raw bytes, JSON of any shape (NaN and lone surrogates included), or the sample cut,
    spliced or wrapped: what reaches the parser after a valid signature."""
    kind = draw(st.sampled_from(["bytes", "json", "sample"]))
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    if kind == "json":
        value = draw(json_values | st.dictionaries(st.sampled_from(["id", "state"]), json_values))
        return json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    cut = draw(st.integers(0, len(V2)))
    return V2[:cut] + draw(st.binary(max_size=20)) + V2[cut:]


# What an HTTP client can put in a header value (no line breaks, no leading or trailing space).
header_text = st.text(
    st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f")
).map(str.strip)


@st.composite
def requests_(draw: st.DrawFn) -> tuple[str, bytes, dict[str, str]]:
    body = draw(bodies())
    source = draw(st.sampled_from(["qualifio", "plain", "nope"]) | st.text(min_size=1))
    headers = draw(st.dictionaries(st.sampled_from(["Content-Type", "X-Custom"]), header_text))
    signature = draw(st.sampled_from(["right", "wrong", "garbage", "none"]))
    if signature == "right":
        headers["X-Qualifio-Signature"] = sign(body, SECRET)
    elif signature == "wrong":
        headers["X-Qualifio-Signature"] = sign(body, "another secret")
    elif signature == "garbage":
        headers["X-Qualifio-Signature"] = draw(header_text)
    return source, body, headers


def test_no_request_makes_a_5xx_and_a_4xx_stores_nothing(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url))

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(request=requests_())
    def check(request: tuple[str, bytes, dict[str, str]]) -> None:
        source, body, headers = request
        before = len(relay.events())
        answer = requests.post(
            f"{relay.url}/hooks/{quote(source, safe='')}", data=body, headers=headers, timeout=10
        )
        assert answer.status_code < 500, answer.text
        stored = len(relay.events()) - before
        if answer.status_code >= 400:
            assert stored == 0 and "error" in answer.json()
        else:
            assert stored >= 1 or answer.json().get("duplicate") or "events" in answer.json()

    check()


# --- the admin console: every field a signed-in user (or anyone, for sign-in) can fill -----------

any_text = st.text(max_size=40) | st.sampled_from(
    ["", "0", "-1", "9" * 30, "dead", "0001-01-01T00:00"]
)


def test_no_admin_input_makes_a_5xx(tmp_path, sink, start_relay, monkeypatch):
    from tests.test_admin import PASSWORD, Console, console_config

    monkeypatch.setenv("RELAY_ADMIN_PASSWORD", PASSWORD)
    console = Console(start_relay(console_config(tmp_path, sink.url), worker=False))
    assert console.sign_in().status_code == 302
    console.get("/admin/deliveries")
    filters = ["source", "destination", "status", "since", "until", "q", "before", "after"]

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        query=st.dictionaries(st.sampled_from(filters), any_text, max_size=4),
        event_id=st.text(min_size=1, max_size=40),
        mapping=st.text(max_size=200) | st.just("fields:\n  a: upper(state)\n"),
        payload=st.text(max_size=200) | json_values.map(json.dumps),
        fields=st.dictionaries(st.sampled_from(["name", "format"]), any_text, max_size=2),
        email=any_text,
    )
    def check(query, event_id, mapping, payload, fields, email) -> None:
        answers = [
            console.get("/admin/deliveries", params=query),
            console.get(f"/admin/events/{quote(event_id, safe='')}"),
            console.try_(mapping, payload, **fields),
            console.post("/admin/forget", {"email": email}),
            console.post("/admin/deliveries/replay-dead", {"destination": email}),
        ]
        for answer in answers:
            assert answer.status_code < 500, (answer.request.url, answer.text[:300])

    check()
    stranger = requests.post(f"{console.relay.url}/admin/sign-in", data={"password": "\udcff"[:0]})
    assert stranger.status_code < 500
