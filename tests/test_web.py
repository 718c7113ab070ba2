"""POST /hooks/<source> and the status endpoints, through real HTTP (DESIGN §4)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import pytest
import requests
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    PASS_MAPPING,
    SECRET,
    RunningRelay,
    basic_config,
    participation,
    sample,
    write_config,
)

V2 = sample("v2-complete.json")


def test_signed_participation_is_stored_and_answered_202(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url))
    answer = relay.post(V2)
    assert answer.status_code == 202
    assert answer.json() == {"event_id": answer.json()["event_id"], "duplicate": False}
    assert relay.wait_settled() == ["delivered"]


def test_qualifio_retry_is_a_duplicate_and_delivered_once(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url))
    first = relay.post(V2)
    again = relay.post(V2)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json() == {"event_id": first.json()["event_id"], "duplicate": True}
    assert relay.wait_settled() == ["delivered"]
    assert len(sink.requests) == 1


def test_incomplete_then_complete_are_two_events(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url))
    assert relay.post(sample("v2-incomplete.json")).status_code == 202
    assert relay.post(V2).status_code == 202
    relay.wait_settled()
    assert sorted(r.json()["state"] for r in sink.requests) == ["COMPLETED", "INCOMPLETE"]


def test_json_array_becomes_one_event_per_element(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url))
    body = sample("loyalty-earning-ILLUSTRATIVE.json")
    answer = relay.post(body)
    assert answer.status_code == 202
    events = answer.json()["events"]
    assert [e["duplicate"] for e in events] == [False, False]
    assert relay.post(body).json()["events"] == [dict(e, duplicate=True) for e in events]
    assert relay.wait_settled() == ["delivered", "delivered"]


@contextmanager
def storage_locked(storage):
    """Another connection holding the write lock: storage that cannot commit."""
    if storage.startswith("sqlite:///"):
        conn = sqlite3.connect(storage[len("sqlite:///") :], isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.rollback()
        conn.close()
        return
    engine = sa.create_engine(storage.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as conn:
        conn.exec_driver_sql("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        yield
    engine.dispose()


# DESIGN §4, one row each: what is sent, and the answer it must get.
@pytest.mark.parametrize(
    ("request_kind", "status", "message"),
    [
        ("malformed JSON", 400, "body is not valid JSON"),
        ("JSON that is not an object", 400, "expected a JSON object"),
        ("participation without id", 400, "has an 'id'"),
        ("empty array", 400, "expected a JSON object"),
        ("UTF-16 body", 400, "not UTF-8"),
        ("Latin-1 body", 400, "not UTF-8"),
        ("NaN", 400, "NaN is not a JSON number"),
        ("Infinity", 400, "Infinity is not a JSON number"),
        ("nesting deeper than 64", 400, "nested deeper than 64"),
        ("100,000 nested brackets", 400, "nested deeper than 64"),
        ("missing signature", 401, "missing or wrong credentials"),
        ("wrong signature", 401, "missing or wrong credentials"),
        ("signature with another secret", 401, "missing or wrong credentials"),
        ("garbage signature header", 401, "missing or wrong credentials"),
        ("unknown source", 404, "no source named"),
        ("body over max_body_bytes", 413, "over the limit"),
        ("chunked body over max_body_bytes", 413, "over the limit"),
        # "unavailable", or "busy" when another writer of the relay's (the metrics flush, a
        # worker's record) got the relay's lock first and is the one waiting on SQLite
        ("storage unavailable", 503, "storage is "),
    ],
)
def test_bad_requests_get_a_precise_answer(
    tmp_path, sink, start_relay, storage, request_kind, status, message
):
    relay = start_relay(basic_config(tmp_path, sink.url, storage_timeout="300ms"))
    bodies = {
        "malformed JSON": b'{"id": ',
        "JSON that is not an object": b'"hello"',
        "participation without id": b'{"state": "COMPLETED"}',
        "empty array": b"[]",
        "UTF-16 body": V2.decode().encode("utf-16"),
        "Latin-1 body": V2.decode().encode("latin-1", "replace"),
        "NaN": b'{"id": "x", "score": NaN}',
        "Infinity": b'{"id": "x", "score": -Infinity}',
        "nesting deeper than 64": b'{"id": "x", "a": ' + b"[" * 64 + b"]" * 64 + b"}",
        "100,000 nested brackets": b"[" * 100_000 + b"]" * 100_000,
    }
    url, headers, body = f"{relay.url}/hooks/qualifio", {}, bodies.get(request_kind, V2)
    sig = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers["X-Qualifio-Signature"] = {
        "missing signature": "",
        "wrong signature": sig[:-4] + "0000",
        "signature with another secret": "sha256="
        + hmac.new(b"x", body, hashlib.sha256).hexdigest(),
        "garbage signature header": "sha256=zzz\u00e9".encode().decode("latin-1"),
    }.get(request_kind, sig)
    if request_kind == "unknown source":
        url = f"{relay.url}/hooks/typo"
    if request_kind.endswith("over max_body_bytes"):
        body = b'{"id": "x", "pad": "' + b"a" * (1 << 20) + b'"}'
    locked = storage_locked(storage) if request_kind == "storage unavailable" else nullcontext()
    data = iter([body]) if request_kind.startswith("chunked") else body
    with locked:
        answer = requests.post(url, data=data, headers=headers, timeout=10)
    assert answer.status_code == status
    assert message in answer.json()["error"]
    if status == 503:
        assert answer.headers["Retry-After"].isdigit()
        # Recovers by itself once storage is back. The commit that timed out may still have
        # landed after the 503: Qualifio's retry is then answered as a duplicate, never lost.
        assert relay.post(V2).status_code in (200, 202)
        assert len(relay.events()) == 1
    else:
        assert relay.statuses() == []  # nothing stored


def test_a_utf8_bom_is_dropped_and_nesting_of_64_accepted(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url))
    assert relay.post(b"\xef\xbb\xbf" + V2).status_code == 202
    deep = participation(2, deep=json.loads("[" * 63 + "]" * 63))  # 64 with the object itself
    assert relay.post(deep).status_code == 202
    assert relay.wait_settled() == ["delivered", "delivered"]
    assert sorted(r.json()["id"] for r in sink.requests) == sorted(
        [json.loads(V2)["id"], json.loads(deep)["id"]]
    )


def test_unknown_route_is_a_json_404(tmp_path, start_relay):
    relay = start_relay(basic_config(tmp_path))
    answer = requests.get(f"{relay.url}/nope", timeout=5)
    assert answer.status_code == 404 and "error" in answer.json()
    assert requests.get(f"{relay.url}/hooks/qualifio", timeout=5).status_code == 405


def test_rotated_secrets_are_all_accepted_hex_and_base64(tmp_path, sink, start_relay):
    relay = start_relay(
        basic_config(
            tmp_path, sink.url, auth='{signature: {secrets: ["new-secret", "old-secret"]}}'
        )
    )
    old = participation(1)
    assert relay.post(old, secret="old-secret").status_code == 202
    new = participation(2)
    b64 = base64.b64encode(hmac.new(b"new-secret", new, hashlib.sha256).digest()).decode()
    assert (
        relay.post(new, secret=None, **{"X-Qualifio-Signature": f"sha256={b64}"}).status_code == 202
    )
    assert relay.post(participation(3), secret="retired").status_code == 401


@pytest.mark.parametrize(
    ("auth", "good", "bad"),
    [
        (
            '{header: {name: X-Relay-Token, value: "s3cr3t-token"}}',
            {"X-Relay-Token": "s3cr3t-token"},
            {"X-Relay-Token": "s3cr3t-tokem"},
        ),
        (
            '{header: {name: Authorization, value: "Bearer s3cr3t-token"}}',
            {"Authorization": "Bearer s3cr3t-token"},
            {"Authorization": "Bearer nope"},
        ),
        (
            "{basic: {username: qualifio, password: basic-pass}}",
            {"Authorization": "Basic " + base64.b64encode(b"qualifio:basic-pass").decode()},
            {"Authorization": "Basic " + base64.b64encode(b"qualifio:wrong").decode()},
        ),
    ],
    ids=["custom header", "bearer", "basic"],
)
def test_header_bearer_and_basic_auth(tmp_path, sink, start_relay, auth, good, bad):
    relay = start_relay(basic_config(tmp_path, sink.url, auth=auth))
    assert relay.post(participation(1), secret=None, **good).status_code == 202
    assert relay.post(participation(2), secret=None, **bad).status_code == 401
    assert relay.post(participation(3), secret=None).status_code == 401


def test_every_configured_check_must_pass(tmp_path, sink, start_relay):
    auth = (
        "{header: {name: X-Relay-Token, value: s3cr3t-token},"
        f' signature: {{secrets: ["{SECRET}"]}}}}'
    )
    relay = start_relay(basic_config(tmp_path, sink.url, auth=auth))
    token = {"X-Relay-Token": "s3cr3t-token"}
    assert relay.post(participation(1), **token).status_code == 202
    assert relay.post(participation(2)).status_code == 401  # signature alone is not enough
    assert relay.post(participation(3), secret="nope", **token).status_code == 401


def _ip_config(tmp_path, sink, hops):
    return write_config(
        tmp_path,
        f"""
        storage: ${{RELAY_TEST_STORAGE}}
        trusted_proxy_hops: {hops}
        sources:
          qualifio: {{format: qualifio, auth: {{allow_ips: [203.0.113.0/24, "127.0.0.1"]}}}}
          strict: {{format: qualifio, auth: {{allow_ips: [203.0.113.0/24]}}}}
        destinations:
          sink: {{type: http, url: "{sink.url}"}}
        routes:
          - {{from: qualifio, mapping: pass, to: [sink]}}
    """,
        {"pass": PASS_MAPPING},
    )


def test_allow_list_without_proxy_uses_the_peer_address(tmp_path, sink, start_relay):
    relay = start_relay(_ip_config(tmp_path, sink, 0))
    assert relay.post(participation(1), secret=None).status_code == 202  # from 127.0.0.1
    spoofed = relay.post(
        participation(2), source="strict", secret=None, **{"X-Forwarded-For": "203.0.113.7"}
    )
    assert spoofed.status_code == 403  # a forwarded header is not trusted without a proxy


def test_allow_list_behind_one_trusted_proxy_uses_its_hop(tmp_path, sink, start_relay):
    relay = start_relay(_ip_config(tmp_path, sink, 1))
    # The proxy appends the real client; anything before it was written by the client.
    via_proxy = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    assert (
        relay.post(participation(1), source="strict", secret=None, **via_proxy).status_code == 202
    )
    forged = {"X-Forwarded-For": "203.0.113.7, 198.51.100.1"}
    assert relay.post(participation(2), source="strict", secret=None, **forged).status_code == 403


def _metrics(url):
    text = requests.get(f"{url}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_healthz_readyz_and_metrics(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url))
    assert requests.get(f"{relay.url}/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(f"{relay.url}/readyz", timeout=5).json() == {"status": "ready"}
    before = _metrics(relay.url)  # counters are per process: compare with what was there
    relay.post(V2)
    relay.post(V2)
    relay.post(b"{", secret=None)
    relay.wait_settled()
    after = _metrics(relay.url)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    events = "hookrelay_events_received_total"
    assert grew(events, source="qualifio", outcome="stored") == 1
    assert grew(events, source="qualifio", outcome="duplicate") == 1
    assert grew(events, source="qualifio", outcome="rejected_401") == 1
    assert grew("hookrelay_delivery_attempts_total", destination="sink", outcome="delivered") == 1
    assert grew("hookrelay_delivery_latency_seconds_count", destination="sink") == 1
    assert after[("hookrelay_deliveries", (("destination", "sink"), ("status", "delivered")))] == 1


def test_readyz_says_why_storage_is_not_ready(tmp_path, sink):
    """On SQLite; PostgreSQL's readiness is tested by restarting its server (test_postgres).
    Without its worker: a polling worker would create the file again between unlink and mkdir."""
    relay = RunningRelay(basic_config(tmp_path, sink.url), worker=False)
    try:
        relay.relay.store.engine.dispose()
        (tmp_path / "relay.db").unlink()
        (tmp_path / "relay.db").mkdir()  # the database path is a directory: SQLite cannot open it
        answer = requests.get(f"{relay.url}/readyz", timeout=5)
    finally:
        relay.stop()
    assert answer.status_code == 503
    assert answer.json()["problems"] == ["storage does not answer (OperationalError)"]
    assert json.dumps(answer.json()).count("relay.db") == 0


def test_sqlite_on_a_dyno_warns_that_its_disk_is_ephemeral(
    tmp_path, sink, start_relay, storage, monkeypatch, caplog
):
    monkeypatch.setenv("DYNO", "web.1")
    start_relay(basic_config(tmp_path, sink.url))
    warned = [r.message for r in caplog.records if "dyno" in r.message]
    if storage.startswith("sqlite"):
        assert warned and "set DATABASE_URL to a PostgreSQL database" in warned[0]
    else:
        assert warned == []


def test_a_dedupe_expression_that_fails_still_stores_the_participation(tmp_path, sink, start_relay):
    config = write_config(
        tmp_path,
        f"""
        storage: ${{RELAY_TEST_STORAGE}}
        sources:
          qualifio: {{format: qualifio, auth: none, dedupe: "lower(campaign)"}}
        destinations:
          sink: {{type: http, url: "{sink.url}"}}
        routes:
          - {{from: qualifio, mapping: pass, to: [sink]}}
        """,
        {"pass": PASS_MAPPING},
    )
    relay = start_relay(config)
    first = relay.post(V2, secret=None)
    assert first.status_code == 202  # lower() of an object fails: the body's hash dedupes
    assert relay.post(V2, secret=None).json() == {
        "event_id": first.json()["event_id"],
        "duplicate": True,
    }
    assert relay.wait_settled() == ["delivered"]


def test_participations_whose_id_and_state_join_alike_are_two_events(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url))
    first = relay.post(participation(1, id="X/x", state="y"))
    second = relay.post(participation(1, id="X", state="x/y"))
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["event_id"] != second.json()["event_id"]
    assert relay.wait_settled() == ["delivered", "delivered"]


def test_requests_beside_ones_with_a_nul_or_a_huge_id_are_all_stored(tmp_path, sink, start_relay):
    """PostgreSQL refuses a NUL in text, and indexes at most ~2.7 KB: neither reaches it, and
    nothing one request holds can fail the group commit it shares with others."""
    relay = start_relay(basic_config(tmp_path, sink.url))
    bodies = [participation(n) for n in range(60)]
    bodies += [participation(100 + n, id=f"nul\x00{n}") for n in range(5)]
    bodies += [participation(200 + n, id=f"{n}" + "x" * 10_000) for n in range(5)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(relay.post, bodies))
    assert [a.status_code for a in answers] == [202] * 70
    assert relay.wait_settled(30) == ["delivered"] * 70
