"""Alerts as the database keeps them (hookrelay.alerts.state), on both backends and a clock the test
moves: deaths counted where they are recorded, grouped, told once, resolved once, retried."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from hookrelay.alerts import outbox, state
from hookrelay.alerts.messages import Message, mask
from hookrelay.alerts.settings import Alerting
from hookrelay.claims import Outcome
from hookrelay.config import load_config
from hookrelay.errors import ConfigError, InvalidConfig
from hookrelay.sources import Incoming
from hookrelay.store import Store
from tests.conftest import FORBIDDEN, Clock, basic_config, participation

WAIT, EVERY = 30.0, 600.0


class Channel:
    """Two channels' keys are all compose needs: it writes one outbox row for each."""

    type = "test"
    label = "test"

    def __init__(self, key: str) -> None:
        self.key = key

    def send(self, message: Message) -> str:
        raise AssertionError("compose never sends")


ALERTING = Alerting(
    channels=(Channel("a"), Channel("b")),  # type: ignore[arg-type]
    wait=WAIT,
    every=EVERY,
    public_url="https://relay.example.com",
)


def die(store: Store, count: int, destination: str = "sink", error: str = "") -> None:
    """`count` deliveries to `destination` stored and recorded dead, as the worker does."""
    store.store_events("qualifio", "qualifio", events(count), [("pass", destination)])
    claimed = store.claim_due(count, 60, [destination])
    now = store.clock()
    store.record(
        [Outcome(d, "dead", now, 5, error or f"{destination} answered 400", 400) for d in claimed]
    )


def deliver(store: Store, destination: str = "sink") -> None:
    store.store_events("qualifio", "qualifio", events(1), [("pass", destination)])
    claimed = store.claim_due(1, 60, [destination])
    store.record([Outcome(d, "delivered", store.clock(), 5, None, 200) for d in claimed])


_numbers = itertools.count()


def events(count: int) -> list[Incoming]:
    """New participations, with the sample's names and addresses in them."""
    return [
        Incoming(participation(n).decode(), f"key-{n}") for n in itertools.islice(_numbers, count)
    ]


def told(store: Store) -> list[Message]:
    """Compose what is owed; the messages, each checked to be in the outbox once per channel."""
    composed = state.compose(store, ALERTING)
    rows = outbox.due(store)
    for message in composed:
        assert sorted(r.channel for r in rows if r.message.id == message.id) == ["a", "b"]
    return composed


def test_deaths_together_are_one_message_after_alert_wait(store: Store, clock: Clock) -> None:
    die(store, 12)
    clock.now += 1
    die(store, 8)
    assert told(store) == []  # the first death waits alert_wait for others to join
    clock.now += WAIT
    [message] = told(store)
    assert (message.kind, message.subject, message.count, message.resolved) == (
        "dead",
        "sink",
        20,
        False,
    )
    assert message.link == "https://relay.example.com/admin/deliveries?status=dead&destination=sink"
    assert "20 deliveries to sink ended dead" in message.title
    assert told(store) == []  # told once: a second compose, in any process, finds nothing


def test_a_second_burst_waits_for_alert_every_then_is_told_with_its_own_count(
    store: Store, clock: Clock
) -> None:
    die(store, 3)
    clock.now += WAIT
    assert [m.count for m in told(store)] == [3]
    die(store, 5)
    clock.now += WAIT
    assert told(store) == []
    clock.now += EVERY
    [again] = told(store)
    assert (again.count, again.total, again.resolved) == (5, 8, False)


def test_recovery_is_told_once_with_what_was_not_told_yet(store: Store, clock: Clock) -> None:
    die(store, 3)
    clock.now += WAIT
    told(store)
    clock.now += 1
    die(store, 4)  # inside alert_every: not told yet
    [alert] = [a for a in state.read_all(store) if a.kind == "dead"]
    clock.now += 1
    deliver(store)
    assert state.delivered_since(store, "sink", alert.last_at or 0)
    state.clear(store, "dead", "sink", at=alert.last_at)
    [resolved] = told(store)
    assert (resolved.resolved, resolved.count, resolved.total) == (True, 4, 7)
    assert "resolved: sink delivers again" in resolved.title
    assert told(store) == []
    clock.now += EVERY
    assert told(store) == []  # nothing more to tell


def test_a_death_after_the_success_keeps_the_alert_firing(store: Store, clock: Clock) -> None:
    die(store, 1)
    [seen] = [a for a in state.read_all(store) if a.kind == "dead"]
    clock.now += 1
    die(store, 1)  # after the read, before the clear: the clear must not hide it
    state.clear(store, "dead", "sink", at=seen.last_at)
    [alert] = [a for a in state.read_all(store) if a.kind == "dead"]
    assert alert.firing and alert.unsent == 2


def test_a_backlog_is_told_once_and_its_end_once(store: Store, clock: Clock) -> None:
    state.start(store, "backlog", "sink", 40, "sink answered 503", since=clock.now - 900)
    state.start(store, "backlog", "sink", 41, "again", since=clock.now - 900)  # already firing
    [alert] = told(store)
    assert (alert.kind, alert.count, alert.last_error) == ("backlog", 40, "sink answered 503")
    assert alert.link and alert.link.endswith("?status=pending&destination=sink")
    state.clear(store, "backlog", "sink")
    [resolved] = told(store)
    assert resolved.resolved and resolved.count == 0
    assert told(store) == []


def test_a_backlog_that_ends_before_it_was_told_is_never_told(store: Store, clock: Clock) -> None:
    state.start(store, "backlog", "sink", 2, None, since=clock.now)
    state.clear(store, "backlog", "sink")
    clock.now += EVERY
    assert told(store) == []


def test_the_same_refused_edit_noted_by_every_process_counts_once(
    store: Store, clock: Clock
) -> None:
    for _ in range(3):  # three processes saw the same edit
        with store.transaction() as conn:
            state.note(conn, "config_refused", "", 1, "config.yaml:3: bad", clock.now, at=500.0)
    state.clear(store, "config_refused", "", at=400.0)  # a process that loaded an older config
    clock.now += WAIT
    [message] = told(store)
    assert (message.count, message.resolved, message.link) == (
        1,
        False,
        "https://relay.example.com/admin",
    )


def test_a_kind_turned_off_is_not_told(store: Store, clock: Clock) -> None:
    die(store, 2)
    clock.now += WAIT
    off = Alerting(channels=ALERTING.channels, dead=False, wait=WAIT, every=EVERY)
    assert state.compose(store, off) == []


def test_a_failed_message_is_tried_again_later_and_claimed_by_one_process(
    store: Store, clock: Clock, storage: str
) -> None:
    die(store, 1)
    clock.now += WAIT
    told(store)
    first = outbox.due(store)[0]
    other = Store(storage, clock=clock)  # another process
    try:
        assert outbox.claim(store, first, lease=60)
        assert not outbox.claim(other, first, lease=60)
        at = outbox.failed(store, first, "slack answered 500")
        assert at == clock.now + 10
        assert first.id not in [o.id for o in outbox.due(other)]
        clock.now = at
        [again] = [o for o in outbox.due(other) if o.id == first.id]
        assert again.attempts == 1 and outbox.claim(other, again, lease=60)
        assert outbox.failed(other, again, "still 500") == clock.now + 20  # backing off
        outbox.sent(other, again)
        clock.now += 3600
        assert first.id not in [o.id for o in outbox.due(store)]
    finally:
        other.close()


def test_the_last_error_loses_emails_and_the_payload_s_values(store: Store, clock: Clock) -> None:
    echo = "member Zoë Lefèvre <zoe.lefevre@example.com> exists; jane.doe@example.com too"
    die(store, 1, error=echo)
    [alert] = [a for a in state.read_all(store) if a.kind == "dead"]
    assert alert.last_error == "member […] […] <[…]> exists; [email] too"
    text = alert.message(ALERTING).text() + json.dumps(alert.message(ALERTING).webhook())
    assert not [s for s in FORBIDDEN if s in text]


def test_mask_keeps_words_and_shortens() -> None:
    payload = json.dumps({"v": {"firstname": "Zoë", "optin": "1", "lang": "fr"}})
    assert mask("Zoë answered 1 in fr", [payload]) == "[…] answered 1 in fr"
    long = mask("x" * 1000)
    assert long is not None and len(long) == 300


def test_alert_settings_and_their_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SMTP_URL", "smtp://relay:pw@127.0.0.1:2525")
    path = basic_config(tmp_path)
    with path.open("a") as f:
        f.write(
            "alerts:\n"
            "  - {type: slack, url: 'https://hooks.example.com/T/B/secret'}\n"
            "  - {type: email, to: [ops@example.org, team@example.org]}\n"
            "  - {type: http, url: 'https://example.com/alerts', secret: whsec_c2VjcmV0}\n"
            "alert_on: {backlog: off, storage: 30s}\n"
            "public_url: https://relay.example.com/\n"
        )
    alerting = load_config(path).alerting
    assert [c.label for c in alerting.channels] == [
        "slack (hooks.example.com)",
        "email (127.0.0.1)",
        "http (example.com)",
    ]
    assert (alerting.dead, alerting.backlog, alerting.storage) == (True, None, 30.0)
    assert (alerting.every, alerting.wait, alerting.relay) == (600.0, 30.0, "relay.example.com")
    assert load_config(basic_config(tmp_path / "none")).alerting.channels == ()


@pytest.mark.parametrize(
    ("text", "key", "says"),
    [
        ("alerts: [{type: pager, url: 'https://x.example'}]", "alerts.0.type", "slack"),
        ("alerts: [{type: slack}]", "alerts.0", "needs 'url'"),
        ("alerts: [{type: slack, url: 'ftp://x'}]", "alerts.0.url", "http"),
        ("alerts: [{type: email, to: ops@example.org}]", "alerts.0.type", "SMTP_URL"),
        ("alerts: [{type: http, url: 'https://x.example', sign: x}]", "alerts.0.sign", "secret"),
        ("alert_on: {dead: maybe}", "alert_on.dead", "true or false"),
        ("alert_on: {backlg: 1m}", "alert_on.backlg", "backlog"),
        ("alert_every: soon", "alert_every", "duration"),
        ("public_url: relay.example.com", "public_url", "https://"),
    ],
)
def test_a_wrong_alert_setting_names_its_line_and_key(
    tmp_path: Path, monkeypatch, text: str, key: str, says: str
) -> None:
    monkeypatch.delenv("SMTP_URL", raising=False)
    path = basic_config(tmp_path)
    with path.open("a") as f:
        f.write(text + "\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    problems = raised.value.problems if isinstance(raised.value, InvalidConfig) else [raised.value]
    [problem] = [p for p in problems if p.key == key]
    assert says in problem.message and problem.line and problem.line > 10, str(problem)
