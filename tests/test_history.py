"""The attempt log, seen: `relay show` (an event whole, by its id or its participation's) and
`relay events` (ids and states, and when a pending delivery is tried next), on both backends."""

from __future__ import annotations

import datetime as dt
import json
import time

import sqlalchemy as sa

from hookrelay import history
from hookrelay.claims import Outcome
from hookrelay.config import load_config
from hookrelay.database import deliveries, events
from hookrelay.sources import Incoming, dedupe_key
from tests.conftest import (
    FORBIDDEN,
    ROOT,
    TARGETS,
    basic_config,
    file_and_hook_config,
    ingest,
    participation,
    query_plan,
    relay_command,
    sample,
)
from tests.fakes.server import Answer

PARTICIPANT = ("zoe.lefevre@example.com", "Zoë", "Lefèvre")  # in samples/v2-complete.json


def show(config, wanted):
    done = relay_command("show", wanted, "--config", str(config))
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_show_gives_the_payload_variables_records_and_every_attempt(tmp_path, sink, start_relay):
    sink.default = Answer(400, {"error": "field 'id' is not accepted"})  # hook: dead at once
    config = file_and_hook_config(tmp_path, sink.url)
    relay = start_relay(config)
    event_id = relay.post(sample("v2-complete.json")).json()["event_id"]
    assert sorted(relay.wait_settled()) == ["dead", "delivered", "skipped"]

    shown = show(config, event_id)
    head, payload = shown.split("\npayload\n", 1)
    assert head.splitlines()[:2] == [f"event {event_id}", "  source    qualifio (format qualifio)"]
    assert '          "value": "zoe.lefevre@example.com"' in payload  # pretty, as stored
    assert '    "email": "zoe.lefevre@example.com",' in shown.split("\nvariables ")[1]
    blocks = {b.split("\n", 1)[0]: b for b in shown.split("\n\ndelivery ")[1:]}
    [hook] = [b for first, b in blocks.items() if first.endswith("to hook (mapping pass)")]
    [rows] = [b for first, b in blocks.items() if first.endswith("to rows (mapping pass)")]
    [never] = [b for first, b in blocks.items() if first.endswith("to rows (mapping never)")]

    assert "  status      dead, 1 attempt\n" in hook
    assert "  last error  " in hook and "answered 400" in hook
    [attempt] = hook.split("  attempts\n")[1].splitlines()
    assert " dead " in attempt and " HTTP 400 " in attempt and " ms  " in attempt
    assert "field 'id' is not accepted" in attempt  # the vendor's answer, excerpted
    assert '"id": "7F3C2A91-5B4E-4D2A-9C1E-2B8F6A0D4E11"' in hook  # the record it makes now

    assert "  status      delivered, 1 attempt\n" in rows and "last error" not in rows
    [attempt] = rows.split("  attempts\n")[1].splitlines()
    assert " delivered " in attempt
    assert "  record now  skipped: when: state == 'NEVER'" in never


def test_a_pending_delivery_says_when_it_is_tried_next(tmp_path, sink, start_relay):
    sink.default = Answer(429, {"error": "slow down"}, {"Retry-After": "3600"})
    config = basic_config(tmp_path, sink.url)
    relay = start_relay(config)
    event_id = relay.post(participation(1)).json()["event_id"]
    deadline = time.monotonic() + 10
    while not relay.attempts((delivery := relay.deliveries()[0])["id"]):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    when = dt.datetime.fromtimestamp(relay.deliveries()[0]["next_attempt_at"])
    today = when.date() == dt.date.today()  # past midnight, the date comes too
    at = when.strftime("%H:%M:%S") if today else when.isoformat(" ", "seconds")

    listed = relay_command("events", "--config", str(config)).stdout
    assert f"    sink             pending   attempts=0  next try {at}" in listed
    shown = show(config, event_id)
    assert f"delivery {delivery['id']} to sink (mapping pass)" in shown
    assert f"  status      pending, 0 attempts, next try {at}" in shown  # a 429 spends none
    assert " retry     HTTP 429 " in shown


def test_events_say_due_now_and_never_show_personal_data(tmp_path, start_relay):
    config = basic_config(tmp_path)
    relay = start_relay(config, worker=False)
    event_id = relay.post(sample("v2-complete.json")).json()["event_id"]

    listed = relay_command("events", "--config", str(config)).stdout
    assert f"{event_id}  " in listed
    assert "    sink             pending   attempts=0  due now\n" in listed
    assert not [s for s in FORBIDDEN if s in listed]
    shown = show(config, event_id)  # the operator's own look at one event: the payload whole
    assert all(s in shown for s in PARTICIPANT)
    assert "  status      pending, 0 attempts, due now\n  record now\n" in shown
    assert "  attempts    none yet" in shown


def test_show_finds_the_events_of_a_participation_by_its_id(tmp_path, start_relay):
    config = basic_config(tmp_path)
    relay = start_relay(config, worker=False)
    incomplete = relay.post(participation(1, state="INCOMPLETE")).json()["event_id"]
    complete = relay.post(participation(1)).json()["event_id"]
    relay.post(participation(2))
    loyalty = relay.post(sample("loyalty-earning-ILLUSTRATIVE.json")).json()["events"]
    copied = relay.post(participation(3), source="plain", secret=None).json()["event_id"]

    def events_of(wanted):
        return [
            line.split()[1] for line in show(config, wanted).splitlines() if line[:6] == "event "
        ]

    assert events_of(json.loads(participation(1))["id"]) == [incomplete, complete]
    first = json.loads(sample("loyalty-earning-ILLUSTRATIVE.json"))[0]["eventId"]
    assert events_of(first) == [loyalty[0]["event_id"]]
    # A source with no Qualifio dedupe key (format json): found in the stored payloads.
    assert events_of(json.loads(participation(3))["id"]) == [copied]
    assert events_of(complete) == [complete]


def test_a_participation_is_found_through_the_dedupe_index(tmp_path, store):
    # The payload does not hold the id: only the dedupe key the relay stored can find it.
    config = load_config(basic_config(tmp_path))
    pid = "7F3C2A91-5B4E-4D2A-9C1E-2B8F6A0D4E11"
    source = config.sources["qualifio"]
    key = dedupe_key(source, {"id": pid, "state": "COMPLETED"}, "")
    [stored] = store.store_events("qualifio", "qualifio", [Incoming("{}", key)], TARGETS)
    assert history.find_events(store, config.sources.values(), pid) == [stored.event_id]


def test_show_of_an_unknown_id_is_one_line_and_exit_1(tmp_path, storage):
    done = relay_command("show", "0123abcd", "--config", str(basic_config(tmp_path)), cwd=ROOT)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "Error: no event, nor participation, with id '0123abcd'\n"


# --- the admin console's deliveries list ---------------------------------------------------------


def end(store, destination, status, detail="refused"):
    """Claim every due delivery to `destination` and record `status` for each; their ids."""
    claimed = store.claim_due(100, lease=30, destinations=[destination])
    store.record([Outcome(d, status, store.clock(), 5, detail) for d in claimed])
    return {d.id for d in claimed}


def walk(store, **filters):
    """Every page, oldest by `before` from the newest, then back by `after`: the ids of each."""
    pages, page = [], history.list_deliveries(store, limit=3, **filters)
    while True:
        pages.append([d["id"] for d in page.rows])
        if page.older is None:
            break
        page = history.list_deliveries(store, limit=3, before=page.older, **filters)
    back = []
    while page.newer is not None:
        page = history.list_deliveries(store, limit=3, after=page.newer, **filters)
        back.append([d["id"] for d in page.rows])
    return pages, back


def test_deliveries_are_listed_newest_first_by_keyset_pages(store):
    for n in range(4):
        ingest(store, f"k{n}")
    ingest(store, "other", source="loyalty")
    everything = sorted(d["id"] for e in history.list_events(store) for d in e["deliveries"])
    pages, back = walk(store)
    assert [i for p in pages for i in p] == everything[::-1]  # all ten, newest first, once
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert back == pages[-2::-1]  # and the same pages on the way back
    assert history.list_deliveries(store, limit=3).newer is None  # the first page


def test_deliveries_are_filtered_by_status_destination_source_time_and_event(store):
    events = [s.event_id for s in ingest(store, "a", "b", "c")]
    ingest(store, "d", source="loyalty")
    dead = end(store, "sink", "dead")
    end(store, "archive", "delivered")

    def ids(**filters):
        return {d["id"] for d in history.list_deliveries(store, limit=100, **filters).rows}

    assert ids(status="dead") == dead and len(dead) == 4
    assert ids(status="dead", source="qualifio") == {
        d["id"]
        for e in history.list_events(store)
        if e["source"] == "qualifio"
        for d in e["deliveries"]
        if d["destination"] == "sink"
    }
    assert len(ids(destination="archive")) == 4 and len(ids(source="loyalty")) == 2
    assert len(ids(event_ids=events[:2])) == 4 and ids(event_ids=[]) == set()
    now = time.time()  # a delivery's id holds the time it was stored (not the test's clock)
    assert len(ids(since=now - 60, until=now + 60)) == 8
    assert ids(since=now + 60) == set() and ids(until=now - 60) == set()
    assert history.dead_by_destination(store) == {"sink": 4}


def test_a_status_page_reads_through_its_index_without_sorting(store):
    """The deliveries list of one status, deep in the history, as the database plans it."""
    query = (
        sa.select(*history.LISTED)
        .join_from(deliveries, events, events.c.id == deliveries.c.event_id)
        .where(deliveries.c.status == "dead", deliveries.c.id < "0123")
        .order_by(deliveries.c.id.desc())
        .limit(51)
    )
    plan = query_plan(store, query)
    assert "deliveries_status_id" in plan, plan
    assert "TEMP B-TREE" not in plan and "Sort" not in plan, plan
