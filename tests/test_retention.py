"""Retention and erasure from the outside: `relay purge`, `relay forget`, and the worker's own
purge of what `retention_days` no longer keeps."""

from __future__ import annotations

import sqlalchemy as sa

from tests.conftest import basic_config, participation, relay_command
from tests.processes import wait_until

DAY = 86400


def erase_log_rows(relay):
    """How many attempt-log rows the store holds: an erased event must take its own with it."""
    with relay.relay.store.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM attempts").scalar()


def test_relay_purge_erases_finished_events_and_keeps_pending_ones(tmp_path, sink, start_relay):
    config = basic_config(tmp_path, sink.url)
    working = start_relay(config)
    delivered = working.post(participation(1)).json()["event_id"]
    assert working.wait_settled() == ["delivered"]
    working.stop()
    stopped = start_relay(config, worker=False)  # the next one stays pending
    pending = stopped.post(participation(2)).json()["event_id"]

    kept = relay_command("purge", "--config", str(config))
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith("0 events erased")
    assert {e["id"] for e in stopped.relay.store.list_events()} == {delivered, pending}

    erased = relay_command("purge", "--older-than", "0s", "--config", str(config))
    assert erased.returncode == 0, erased.stderr
    assert erased.stdout.startswith("1 event erased, with its deliveries and attempt log")
    assert [e["id"] for e in stopped.relay.store.list_events()] == [pending]
    assert erase_log_rows(stopped) == 0


def test_relay_forget_erases_one_participants_events(tmp_path, sink, start_relay):
    config = basic_config(tmp_path, sink.url)
    relay = start_relay(config)
    zoe = [relay.post(participation(n)).json()["event_id"] for n in (1, 2)]  # the sample's email
    other = relay.post(participation(3, form=[])).json()["event_id"]
    relay.wait_settled()

    forgot = relay_command("forget", "Zoe.Lefevre@example.com", "--config", str(config))
    assert forgot.returncode == 0, forgot.stderr
    assert forgot.stdout.startswith("2 events erased, with their deliveries and attempt log.")
    assert "erase them there too" in forgot.stdout
    assert "example.com" not in forgot.stdout + forgot.stderr
    assert [e["id"] for e in relay.relay.store.list_events()] == [other]
    assert not set(zoe) & relay.relay.store.known_events(zoe)
    assert erase_log_rows(relay) == 1


def test_purge_and_forget_refuse_what_they_cannot_read(tmp_path):
    config = basic_config(tmp_path)
    wrong = relay_command("purge", "--older-than", "a month", "--config", str(config))
    assert wrong.returncode == 2  # click's usage error
    assert "expected a duration such as 500ms, 10s, 2m, 1h or 30d, got 'a month'" in wrong.stderr
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
    wait_until(lambda: not relay.relay.store.known_events([old]), timeout=10)
    assert "finished events erased: 1 (retention_days: 30)" in caplog.text
    new = relay.post(participation(2)).json()["event_id"]
    assert relay.wait_settled() == ["delivered"]
    assert [e["id"] for e in relay.relay.store.list_events()] == [new]
