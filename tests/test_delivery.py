"""The worker against a real sink: retries, Retry-After, dead and replay, idempotency ids."""

from __future__ import annotations

import json
import time
from pathlib import Path

from standardwebhooks import Webhook

from tests.conftest import basic_config, participation, relay_command, sample
from tests.fakes import openapi
from tests.fakes.server import Answer


def test_500_then_200_delivers_the_record_once(tmp_path, sink, start_relay):
    sink.fail(Answer(500, {"error": "boom"}))
    relay = start_relay(basic_config(tmp_path, sink.url))
    relay.post(participation(1))
    assert relay.wait_settled() == ["delivered"]
    assert len(sink.seen) == 2 and len(sink.requests) == 1
    assert sink.seen[0].headers["Webhook-Id"] == sink.seen[1].headers["Webhook-Id"]
    delivery = relay.deliveries()[0]
    assert [a["outcome"] for a in relay.attempts(delivery["id"])] == [
        "pending",
        "delivered",
    ]
    assert [a["http_status"] for a in relay.attempts(delivery["id"])] == [
        500,
        None,
    ]


def test_429_retry_after_wins_over_the_backoff(tmp_path, sink, start_relay):
    # Backoff alone would wait an hour; Retry-After: 1 must bring the retry within seconds.
    sink.fail(Answer(429, {"error": "slow down"}, {"Retry-After": "1"}))
    relay = start_relay(basic_config(tmp_path, sink.url, initial="1h", max="1h"))
    relay.post(participation(1))
    assert relay.wait_settled(timeout=10) == ["delivered"]
    assert [r.method for r in sink.seen] == ["POST", "POST"]
    gap = sink_times(relay)
    assert gap >= 0.9  # it did wait for Retry-After


def sink_times(relay) -> float:
    delivery = relay.deliveries()[0]
    tried = relay.attempts(delivery["id"])
    return tried[1]["started_at"] - tried[0]["started_at"]


def test_400_is_dead_at_once_and_replay_dead_delivers_it(tmp_path, sink, start_relay):
    sink.default = Answer(400, {"error": "field 'id' is not accepted"})
    config = basic_config(tmp_path, sink.url)
    relay = start_relay(config)
    relay.post(participation(1))
    assert relay.wait_settled() == ["dead"]
    assert len(sink.seen) == 1  # not retried
    listed = relay_command("events", "--status", "dead", "--config", str(config))
    assert listed.returncode == 0
    assert "dead" in listed.stdout and "answered 400" in listed.stdout

    sink.default = Answer(200, {"ok": True})  # the receiver is fixed
    replayed = relay_command("replay", "--dead", "--config", str(config))
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.strip() == "1 delivery scheduled again"
    relay.relay.worker.wake()
    assert relay.wait_settled() == ["delivered"]
    assert len(sink.requests) == 1
    assert sink.requests[0].headers["Webhook-Id"] == sink.seen[0].headers["Webhook-Id"]


def test_replay_one_event_sends_it_again_with_the_same_webhook_id(tmp_path, sink, start_relay):
    config = basic_config(tmp_path, sink.url)
    relay = start_relay(config)
    event_id = relay.post(participation(1)).json()["event_id"]
    relay.post(participation(2))
    relay.wait_settled()
    assert relay_command("replay", event_id, "--all", "--config", str(config)).returncode == 0
    relay.relay.worker.wake()
    sink.wait_for(3)
    assert relay.wait_settled() == ["delivered", "delivered"]
    ids = [r.json()["id"] for r in sink.requests]
    assert sorted(ids) == sorted([ids[0], ids[1], json.loads(participation(1))["id"]])
    assert sink.requests[2].headers["Webhook-Id"] in {
        r.headers["Webhook-Id"] for r in sink.requests[:2]
    }


def test_timeouts_are_retried_with_the_same_webhook_id(tmp_path, sink, start_relay):
    sink.fail(Answer(200, {"ok": True}, delay=1.0))  # processed, but answers too late
    relay = start_relay(basic_config(tmp_path, sink.url, timeout="300ms"))
    relay.post(participation(1))
    assert relay.wait_settled() == ["delivered"]
    assert len(sink.requests) == 2  # the late one counted too: a receiver must dedupe...
    assert len({r.headers["Webhook-Id"] for r in sink.requests}) == 1  # ...and it can


def test_gives_up_after_max_attempts_and_keeps_the_reason(tmp_path, sink, start_relay):
    sink.default = Answer(503, "maintenance")
    relay = start_relay(basic_config(tmp_path, sink.url, max_attempts="3"))
    relay.post(participation(1))
    assert relay.wait_settled() == ["dead"]
    assert len(sink.seen) == 3
    delivery = relay.deliveries()[0]
    assert delivery["last_error"].startswith("gave up after 3 attempts: ")
    assert "answered 503: maintenance" in delivery["last_error"]


def test_unreachable_destination_is_retried_then_dead(tmp_path, start_relay):
    relay = start_relay(basic_config(tmp_path, "http://127.0.0.1:9/hook", max_attempts="2"))
    relay.post(participation(1))
    assert relay.wait_settled() == ["dead"]
    assert "could not be reached" in relay.deliveries()[0]["last_error"]


def test_redirects_are_not_followed(tmp_path, sink, start_relay):
    sink.default = Answer(301, "", {"Location": "https://elsewhere.example/hook"})
    relay = start_relay(basic_config(tmp_path, sink.url))
    relay.post(participation(1))
    assert relay.wait_settled() == ["dead"]
    assert "set the final address" in relay.deliveries()[0]["last_error"]


WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_standard_webhooks_signature_verifies_with_the_reference_library(
    tmp_path, sink, start_relay
):
    relay = start_relay(basic_config(tmp_path, sink.url, sink_options=f'secret: "{WHSEC}"'))
    relay.post(participation(1))
    relay.wait_settled()
    received = sink.requests[0]
    headers = {k.lower(): v for k, v in received.headers.items()}
    assert Webhook(WHSEC).verify(received.body, headers) == received.json()
    assert headers["webhook-id"].startswith("msg_")


def test_signature_matches_the_known_answer_vector():
    vectors = openapi.SPECS / "standard-webhooks.vectors.json"
    from hookrelay.destinations import Context
    from hookrelay.destinations.http import Http

    vector = json.loads(vectors.read_text())["vectors"][0]
    http = Http("v", Context(Path("."), 1.0), url="http://127.0.0.1:9", secret=vector["secret"])
    headers = http.signed_headers(
        vector["webhook-id"][len("msg_") :],
        vector["body"].encode(),
        now=float(vector["webhook-timestamp"]),
    )
    assert headers["webhook-signature"] == vector["webhook-signature"]


NEWSLETTER = """
when: "state == 'COMPLETED' && variables.newsletter_optin == '1'"
fields:
  id: id
  merge_fields:
    NEWSLETTER: variables.newsletter_optin
    PARTNERS: variables.partners_optin
    SMS: variables.sms_optin
    CITY: variables.city
drop:
  values: ["0"]
  fields: [merge_fields.PARTNERS, merge_fields.SMS]
omit_empty: true
"""


def test_opt_in_zero_is_left_out_one_kept_and_empty_omitted(tmp_path, sink, start_relay):
    relay = start_relay(basic_config(tmp_path, sink.url, mapping=NEWSLETTER))
    relay.post(sample("v2-complete.json"))  # newsletter "1", partners "0", sms ""
    relay.post(sample("v2-incomplete.json"))
    assert sorted(relay.wait_settled()) == ["delivered", "skipped"]
    assert sink.requests[0].json() == {
        "id": "7F3C2A91-5B4E-4D2A-9C1E-2B8F6A0D4E11",
        "merge_fields": {"NEWSLETTER": "1"},
    }
    skipped = [d for e in relay.events() for d in e["deliveries"] if d["status"] == "skipped"]
    assert skipped[0]["last_error"].startswith("when: state == 'COMPLETED'")


def test_a_fixed_mapping_applies_on_replay(tmp_path, sink, start_relay):
    broken = "fields:\n  id: id\n  bad: to_number(state)\n  upper_state: upper(campaign)\n"
    config = basic_config(tmp_path, sink.url, mapping=broken)
    relay = start_relay(config)
    event_id = relay.post(participation(1)).json()["event_id"]
    assert relay.wait_settled() == ["dead"]  # upper() of an object: a mapping bug, not a retry
    error = relay.deliveries()[0]["last_error"]
    assert error.startswith("field upper_state: ") and "example" not in error

    (tmp_path / "mappings" / "pass.yaml").write_text("fields:\n  id: id\n")
    from hookrelay.config import load_config

    relay.relay.config = load_config(config)  # what a reload does
    assert relay_command("replay", event_id, "--config", str(config)).returncode == 0
    relay.relay.worker.wake()
    assert relay.wait_settled() == ["delivered"]
    assert sink.requests[0].json() == {"id": json.loads(participation(1))["id"]}


def test_worker_keeps_going_while_a_destination_is_down(tmp_path, sink, start_relay):
    sink.default = Answer(500, "down")
    relay = start_relay(basic_config(tmp_path, sink.url, initial="10s", max="10s"))
    for n in range(5):
        relay.post(participation(n))
    time.sleep(0.3)
    assert relay.statuses() == ["pending"] * 5  # waiting out their backoff, not dead
