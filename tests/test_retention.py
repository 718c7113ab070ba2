"""Retention and erasure: what purge and forget erase and keep, on each backend; `relay purge`,
`relay forget`, and the worker's own purge of what `retention_days` no longer keeps."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from hookrelay import history
from hookrelay.claims import Outcome
from hookrelay.database import attempts, deliveries
from hookrelay.retention import forget, purge
from hookrelay.sources import Incoming
from tests.conftest import TARGETS, basic_config, ingest, participation, relay_command
from tests.processes import wait_until

DAY = 86400


def deliver_due(store, clock):
    batch = store.claim_due(100, lease=30)
    store.record([Outcome(d, "delivered", clock.now, 5) for d in batch])


def rows(store, table):
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()


def test_purge_erases_events_whose_deliveries_all_ended_before_the_cutoff(store, clock):
    ingest(store, *[f"done{i}" for i in range(5)])
    deliver_due(store, clock)
    [late] = ingest(store, "delivered-late")
    [waiting] = ingest(store, "still-pending")
    clock.now += 40 * DAY
    deliver_due(store, clock)  # late's deliveries end now, and waiting's...
    store.replay([waiting.event_id], states=["delivered"])  # ...are due again: pending, 40 days on
    assert rows(store, attempts) == 14
    assert purge(store, clock.now - 30 * DAY, chunk=2) == 5
    assert {e["id"] for e in history.list_events(store)} == {late.event_id, waiting.event_id}
    assert (rows(store, deliveries), rows(store, attempts)) == (4, 4)
    clock.now += 40 * DAY
    assert purge(store, clock.now - 30 * DAY) == 1  # late; waiting is pending however old
    assert [e["id"] for e in history.list_events(store)] == [waiting.event_id]


def stored_with(store, key, email, ensure_ascii=False):
    payload = {"id": key, "form": [{"variable": "email", "responses": [{"value": email}]}]}
    text = json.dumps(payload, ensure_ascii=ensure_ascii)
    return store.store_events("qualifio", "qualifio", [Incoming(text, key)], TARGETS)[0].event_id


def test_forget_erases_the_events_holding_the_address_and_no_other(store, clock):
    stored_with(store, "a", "Ann.Smith@Example.com ")
    stored_with(store, "b", "ann.smith@example.com")
    kept = {
        stored_with(store, "c", "joann.smith@example.com"),
        stored_with(store, "d", "ann.smith@example.community"),
        stored_with(store, "e", "annxsmith@example.com"),  # what a LIKE '_' would match
    }
    deliver_due(store, clock)
    assert forget(store, "ann.smith@example.com") == 2
    assert {e["id"] for e in history.list_events(store)} == kept
    assert (rows(store, deliveries), rows(store, attempts)) == (6, 6)
    assert forget(store, "ann.smith@example.com") == 0


def test_forget_finds_an_address_stored_as_unicode_escapes(store):
    stored_with(store, "a", "chloë@example.com", ensure_ascii=True)  # "chlo\u00eb@..."
    kept = stored_with(store, "b", "chloe@example.com")
    assert forget(store, "Chloë@example.com") == 1
    assert [e["id"] for e in history.list_events(store)] == [kept]


def test_an_answer_for_an_event_erased_meanwhile_leaves_the_others_recorded(store, clock):
    stored_with(store, "a", "ann.smith@example.com")
    [other] = ingest(store, "b")
    batch = store.claim_due(100, lease=30)  # a worker is sending all four
    forget(store, "ann.smith@example.com")
    assert store.record([Outcome(d, "delivered", clock.now, 5) for d in batch]) == 2
    [event] = history.list_events(store)
    assert event["id"] == other.event_id
    assert [d["status"] for d in event["deliveries"]] == ["delivered", "delivered"]
    assert rows(store, attempts) == 2


def test_relay_purge_erases_finished_events_and_keeps_pending_ones(tmp_path, sink, start_relay):
    config = basic_config(tmp_path, sink.url)
    working = start_relay(config)
    delivered = working.post(participation(1)).json()["event_id"]
    assert working.wait_settled() == ["delivered"]
    working.stop()
    stopped = start_relay(config, worker=False)  # the next one stays pending
    pending = stopped.post(participation(2)).json()["event_id"]

    kept = relay_command("purge", "--config", str(config), input="")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith("Events whose deliveries all ended before ")
    assert kept.stdout.endswith(" (pending ones are kept): 0\n")  # nothing to ask
    assert {e["id"] for e in stopped.events()} == {delivered, pending}

    erased = relay_command("purge", "--older-than", "0s", "--config", str(config), input="yes\n")
    assert erased.returncode == 0, erased.stderr
    assert erased.stdout.splitlines()[1:] == [
        "Erase 1 event, with its deliveries and attempt log? [y/N] "
        "Erased 1 event, with its deliveries and attempt log"
    ]
    assert [e["id"] for e in stopped.events()] == [pending]
    assert rows(stopped.relay.store, attempts) == 0


@pytest.mark.parametrize("answer", ["", "no\n", "yess\n"])  # end of input, no, a typo
def test_purge_erases_nothing_unless_the_answer_is_yes(tmp_path, sink, start_relay, answer):
    config = basic_config(tmp_path, sink.url)
    relay = start_relay(config)
    event_id = relay.post(participation(1)).json()["event_id"]
    assert relay.wait_settled() == ["delivered"]

    refused = relay_command("purge", "--older-than", "0s", "--config", str(config), input=answer)
    assert refused.returncode == 1
    assert refused.stdout.endswith("Erase 1 event, with its deliveries and attempt log? [y/N] ")
    assert refused.stderr == "Aborted: nothing was erased.\n"
    assert [e["id"] for e in relay.events()] == [event_id]

    scripted = relay_command("purge", "--older-than", "0s", "--yes", "--config", str(config))
    assert scripted.returncode == 0, scripted.stderr
    assert "?" not in scripted.stdout
    assert scripted.stdout.endswith("\nErased 1 event, with its deliveries and attempt log\n")
    assert relay.events() == []


def test_relay_forget_erases_one_participants_events(tmp_path, sink, start_relay):
    config = basic_config(tmp_path, sink.url)
    relay = start_relay(config)
    zoe = [relay.post(participation(n)).json()["event_id"] for n in (1, 2)]  # the sample's email
    other = relay.post(participation(3, form=[])).json()["event_id"]
    relay.wait_settled()

    command = ("forget", "Zoe.Lefevre@example.com", "--config", str(config))
    kept = relay_command(*command, input="")  # no answer: a script that forgot --yes
    assert kept.returncode == 1
    assert kept.stdout == (
        "Events holding this address, pending or not: 2\n"
        "Erase 2 events, with their deliveries and attempt log? [y/N] "
    )
    assert kept.stderr == "Aborted: nothing was erased.\n"
    assert len(relay.events()) == 3

    forgot = relay_command(*command, input="y\n")
    assert forgot.returncode == 0, forgot.stderr
    assert forgot.stdout.splitlines()[1] == (
        "Erase 2 events, with their deliveries and attempt log? [y/N] "
        "Erased 2 events, with their deliveries and attempt log. Copies already delivered stay "
        "in the destinations (sheets, Trello, Mailchimp, Brevo...): erase them there too."
    )
    assert "example.com" not in forgot.stdout + forgot.stderr
    assert [e["id"] for e in relay.events()] == [other]
    assert not set(zoe) & history.known_events(relay.relay.store, zoe)
    assert rows(relay.relay.store, attempts) == 1
    again = relay_command(*command, "--yes")
    assert again.returncode == 0, again.stderr
    assert again.stdout == "Events holding this address, pending or not: 0\n"  # nothing to ask


@pytest.mark.parametrize(
    ("older_than", "message"),
    [
        ("30", "--older-than needs a unit, such as 30d, 12h or 90m; got '30'"),
        (" 1.5 ", "--older-than needs a unit, such as 30d, 12h or 90m; got ' 1.5 '"),
        (
            "a month",
            "--older-than: expected a duration such as 500ms, 10s, 2m, 1h or 30d, got 'a month'",
        ),
    ],
)
def test_purge_refuses_a_duration_without_its_unit(tmp_path, older_than, message):
    config = basic_config(tmp_path)
    wrong = relay_command("purge", "--older-than", older_than, "--yes", "--config", str(config))
    assert (wrong.returncode, wrong.stderr) == (1, f"Error: {message}\n")
    assert wrong.stdout == ""  # refused before anything was counted, let alone erased


def test_forget_refuses_what_is_not_an_email(tmp_path):
    config = basic_config(tmp_path)
    no_email = relay_command("forget", "zoe", "--config", str(config))
    assert no_email.returncode == 1
    assert no_email.stderr == "Error: expected the participant's email address\n"


def test_the_worker_erases_what_retention_days_no_longer_keeps(tmp_path, sink, start_relay, caplog):
    config = basic_config(tmp_path, sink.url)
    first = start_relay(config)
    old = first.post(participation(1)).json()["event_id"]
    first.wait_settled()
    first.stop()
    with first.relay.store.engine.begin() as conn:  # 31 days pass
        conn.execute(sa.text("UPDATE events SET received_at = received_at - :s"), {"s": 31 * DAY})
        conn.execute(sa.text("UPDATE deliveries SET updated_at = updated_at - :s"), {"s": 31 * DAY})

    relay = start_relay(config)  # its worker purges at start, then every hour
    wait_until(lambda: "finished events erased: 1 (retention_days: 30)" in caplog.text, 10)
    assert not history.known_events(relay.relay.store, [old])
    new = relay.post(participation(2)).json()["event_id"]
    assert relay.wait_settled() == ["delivered"]
    assert [e["id"] for e in relay.events()] == [new]
