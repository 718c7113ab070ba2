"""Alerts through a running relay (gunicorn, `relay worker`) with real local servers: a Slack-style
endpoint, an SMTP server and a signed webhook receive what a person must hear, once, without a
participant's data."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from standardwebhooks import Webhook

from hookrelay.alerts import outbox
from hookrelay.alerts.messages import Message
from hookrelay.database import alert_messages, new_id
from tests.conftest import FORBIDDEN, PG_URL, basic_config, participation, relay_command
from tests.fakes.server import Answer, FakeServer, Received
from tests.fakes.smtp import FakeSmtp
from tests.fakes.tcp import TcpProxy
from tests.processes import Supervised, post_signed, processes, wait_until

HOOK_SECRET = "whsec_" + "c2VjcmV0LWZvci1hbGVydHM="  # base64 of "secret-for-alerts"
WAIT = 2  # alert_wait, seconds
PUBLIC = "https://relay.example.com"


def alert_config(
    directory: Path, sink: FakeServer, slack: FakeServer, hook: FakeServer, **alert_on: str
) -> Path:
    """basic_config, alerting to Slack, email (SMTP_URL) and a signed webhook."""
    path = basic_config(directory, sink.url, max_attempts="50")
    on = {"dead": "true", "backlog": "off", "config_refused": "true", "storage": "off", **alert_on}
    with path.open("a", encoding="utf-8") as f:
        f.write(
            f"alerts:\n"
            f"  - {{type: slack, url: '{slack.url}/services/T0/B0/token'}}\n"
            f"  - {{type: email, to: ops@example.org}}\n"
            f"  - {{type: http, url: '{hook.url}/alerts', secret: '{HOOK_SECRET}'}}\n"
            f"alert_on: {{{', '.join(f'{k}: {v}' for k, v in on.items())}}}\n"
            f"alert_every: 1h\n"
            f"alert_wait: {WAIT}s\n"
            f"public_url: {PUBLIC}\n"
        )
    return path


class Refusing:
    """A vendor that refuses participations, quoting the participant back as vendors do, while
    `refusing` is set."""

    def __init__(self) -> None:
        self.refusing = True

    def __call__(self, request: Received) -> Answer | None:
        if not self.refusing:
            return None
        return Answer(400, {"error": "member Zoë Lefèvre <zoe.lefevre@example.com> refused"})


@pytest.fixture
def servers() -> Iterator[tuple[FakeServer, FakeServer, FakeServer, FakeSmtp, Refusing]]:
    refusing = Refusing()
    with (
        FakeServer(check=refusing) as sink,
        FakeServer() as slack,
        FakeServer() as hook,
        FakeSmtp() as smtp,
    ):
        yield sink, slack, hook, smtp, refusing


def start(tmp_path: Path, config: Path, smtp: FakeSmtp, webs: int, workers: int) -> str:
    url, started = processes(tmp_path, config, webs=webs, workers=workers, SMTP_URL=smtp.url)
    RUNNING.extend(started)
    return url


RUNNING: list[Supervised] = []


@pytest.fixture(autouse=True)
def stop_processes() -> Iterator[None]:
    yield
    while RUNNING:
        RUNNING.pop().stop()


def statuses(storage: str) -> list[str]:
    engine = sa.create_engine(storage.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with engine.connect() as conn:
            return list(conn.exec_driver_sql("SELECT status FROM deliveries").scalars())
    finally:
        engine.dispose()


def texts(slack: FakeServer, hook: FakeServer, smtp: FakeSmtp) -> list[str]:
    """Everything every channel received, as text."""
    return [
        *(r.body.decode() for r in slack.seen),
        *(r.body.decode() for r in hook.seen),
        *(m.raw.decode(errors="replace") + str(m.message.get_content()) for m in smtp.mails),
    ]


def no_personal_data(slack: FakeServer, hook: FakeServer, smtp: FakeSmtp) -> None:
    for text in texts(slack, hook, smtp):
        leaked = [s for s in FORBIDDEN if s in text or json.dumps(s)[1:-1] in text]
        assert not leaked, text


def verified(request: Received) -> dict[str, object]:
    """The webhook's JSON, its Standard Webhooks signature checked."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    return Webhook(HOOK_SECRET).verify(request.body, headers)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_deliveries_dead_together_make_one_alert_per_channel_then_one_resolved(
    tmp_path: Path, storage: str, servers
) -> None:
    """Two web processes and a `relay worker` all run the alerts: each message goes out once."""
    sink, slack, hook, smtp, refusing = servers
    url = start(tmp_path, alert_config(tmp_path, sink, slack, hook), smtp, webs=2, workers=1)
    with ThreadPoolExecutor(20) as pool:  # together, well inside alert_wait
        answers = list(pool.map(lambda n: post_signed(url, participation(n)), range(20)))
    assert {a.status_code for a in answers} == {202}
    wait_until(lambda: statuses(storage).count("dead") == 20)
    wait_until(lambda: slack.seen and hook.seen and smtp.mails, timeout=WAIT + 15)

    [text] = [r.json()["text"] for r in slack.seen]
    assert "20 deliveries to sink ended dead" in text, text
    assert f"{PUBLIC}/admin/deliveries?status=dead&destination=sink" in text
    assert "Last error: the endpoint of sink answered 400: member [" in text
    [mail] = smtp.mails
    assert mail.rcpt_tos == ["ops@example.org"]
    assert "20 deliveries to sink ended dead" in mail.message["Subject"]
    [alert] = [verified(r) for r in hook.seen]
    assert (alert["type"], alert["kind"], alert["subject"], alert["count"]) == (
        "alert",
        "dead",
        "sink",
        20,
    )

    for n in range(20, 40):  # a second burst, inside alert_every
        post_signed(url, participation(n))
    wait_until(lambda: statuses(storage).count("dead") == 40)
    time.sleep(WAIT + 2)  # what a round would need to tell it, had it been owed
    assert (len(slack.seen), len(hook.seen), len(smtp.mails)) == (1, 1, 1)

    refusing.refusing = False  # the cause is fixed: the next participation is delivered
    post_signed(url, participation(40))
    wait_until(lambda: len(slack.seen) == 2 and len(hook.seen) == 2 and len(smtp.mails) == 2)
    resolved = slack.seen[1].json()["text"]
    assert (
        "resolved: sink delivers again; before that, 20 deliveries to sink ended dead" in resolved
    )
    assert "40 in all" in resolved
    assert verified(hook.seen[1])["type"] == "resolved"
    time.sleep(2)  # another process would have sent its copy by now
    assert (len(slack.seen), len(hook.seen), len(smtp.mails)) == (2, 2, 2)  # once each
    no_personal_data(slack, hook, smtp)


@pytest.mark.slow
def test_a_backlog_is_told_when_the_sink_is_down_longer_than_backlog(
    tmp_path: Path, servers
) -> None:
    sink, slack, hook, smtp, refusing = servers
    refusing.refusing = False
    sink.default = Answer(503, {"error": "down for maintenance"})
    config = alert_config(tmp_path, sink, slack, hook, dead="false", backlog="3s")
    url = start(tmp_path, config, smtp, webs=1, workers=0)
    for n in range(3):
        post_signed(url, participation(n))
    wait_until(lambda: slack.seen, timeout=20)
    [text] = [r.json()["text"] for r in slack.seen]
    assert "deliveries to sink are held up: 3 deliveries waiting" in text, text
    assert "answered 503: down for maintenance" in text
    assert f"{PUBLIC}/admin/deliveries?status=pending&destination=sink" in text

    sink.default = Answer(200, {"ok": True})
    wait_until(lambda: len(sink.requests) == 3, timeout=40)  # the next probe finds it back
    wait_until(lambda: len(slack.seen) == 2, timeout=20)
    assert "resolved: deliveries to sink flow again" in slack.seen[1].json()["text"]
    no_personal_data(slack, hook, smtp)


@pytest.mark.slow
def test_a_channel_that_hangs_holds_up_no_delivery_and_is_tried_again(
    tmp_path: Path, servers
) -> None:
    sink, slack, hook, smtp, refusing = servers
    slack.fail(Answer(200, "ok", delay=12))  # past the channel's 10 s timeout
    url = start(tmp_path, alert_config(tmp_path, sink, slack, hook), smtp, webs=1, workers=0)
    for n in range(3):
        post_signed(url, participation(n))
    wait_until(lambda: slack.seen, timeout=WAIT + 15)  # the alert is out, and hangs
    hung_at = slack.seen[0].at
    refusing.refusing = False
    for n in range(3, 53):
        assert post_signed(url, participation(n)).status_code == 202
    wait_until(lambda: len(sink.requests) == 50, timeout=30)
    assert max(r.at for r in sink.requests) < hung_at + 10  # all while the alert still hung

    wait_until(  # slack: hung, tried again 10 s on, resolved; the others: alert, resolved
        lambda: (len(slack.seen), len(smtp.mails), len(hook.seen)) == (3, 2, 2), timeout=40
    )
    texts = [r.json()["text"] for r in slack.seen]
    dead, again, resolved = sorted(texts, key=lambda t: "resolved" in t)
    assert dead == again and "3 deliveries to sink ended dead" in dead
    assert "resolved: sink delivers again" in resolved


@pytest.mark.slow
def test_storage_that_does_not_answer_is_told_by_the_worker_and_its_return(
    tmp_path: Path, servers, pg_storage: str, monkeypatch
) -> None:
    sink, slack, hook, smtp, _ = servers
    with TcpProxy("127.0.0.1", 5432) as proxy:
        via_proxy = pg_storage.replace(":5432/", f":{proxy.port}/")
        assert via_proxy != pg_storage and PG_URL in pg_storage
        monkeypatch.setenv("RELAY_TEST_STORAGE", via_proxy)
        config = alert_config(tmp_path, sink, slack, hook, storage="2s")
        start(tmp_path, config, smtp, webs=1, workers=1)
        proxy.cut()
        wait_until(lambda: slack.seen, timeout=20)
        [text] = [r.json()["text"] for r in slack.seen]
        assert "the database does not answer" in text, text
        proxy.restore()
        wait_until(lambda: len(slack.seen) == 2, timeout=20)
        assert "resolved: the database answers again" in slack.seen[1].json()["text"]
        time.sleep(2)
        assert len(slack.seen) == 2  # one process watches: the `relay worker`
        assert len(smtp.mails) == 2 and len(hook.seen) == 2


@pytest.mark.slow
def test_a_refused_edit_is_told_once_across_processes_and_its_fix_once(
    tmp_path: Path, servers
) -> None:
    sink, slack, hook, smtp, _ = servers
    config = alert_config(tmp_path, sink, slack, hook)
    start(tmp_path, config, smtp, webs=2, workers=1)
    good = config.read_text(encoding="utf-8")
    config.write_text(good + "retention_days: soon\n", encoding="utf-8")
    wait_until(lambda: slack.seen, timeout=WAIT + 20)
    [text] = [r.json()["text"] for r in slack.seen]
    assert "1 edit of the configuration refused" in text
    assert "retention_days" in text and "config.yaml" in text
    assert "The last good configuration keeps running." in text
    config.write_text(good + "retention_days: 7\n", encoding="utf-8")
    wait_until(lambda: len(slack.seen) == 2, timeout=20)
    assert "resolved: the configuration loads again" in slack.seen[1].json()["text"]
    time.sleep(2)
    assert len(slack.seen) == 2 and len(smtp.mails) == 2


def test_alert_test_says_what_each_channel_answered(tmp_path: Path, servers) -> None:
    sink, slack, hook, _, _ = servers
    hook.default = Answer(500, {"message": "no"})
    with FakeSmtp(starttls=True, username="relay@example.org", password="pw") as smtp:
        config = alert_config(tmp_path, sink, slack, hook)
        env = {"SMTP_URL": smtp.url, "SSL_CERT_FILE": str(smtp.cert_path)}
        done = relay_command("alert-test", "--config", str(config), env=env)
        assert done.returncode == 1, done.stderr
        lines = done.stdout.splitlines() + done.stderr.splitlines()
        assert "slack (127.0.0.1): 200" in "\n".join(lines)
        assert f"email (127.0.0.1): accepted by 127.0.0.1:{smtp.port} for 1 of 1" in lines
        assert "http (127.0.0.1): FAILED: http (127.0.0.1) answered 500: no" in done.stderr
        assert "token" not in done.stdout + done.stderr  # the webhook's URL is a secret
        [mail] = smtp.mails
        assert "test alert" in mail.message["Subject"] and mail.mail_from == "relay@example.org"
    assert "test alert: this channel works" in slack.seen[0].json()["text"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_readyz_reports_an_alerts_thread_that_died(
    tmp_path: Path, servers, start_relay, monkeypatch
) -> None:
    sink, slack, hook, smtp, _ = servers
    monkeypatch.setenv("SMTP_URL", smtp.url)
    relay = start_relay(alert_config(tmp_path, sink, slack, hook), worker=False)

    def die() -> None:
        raise SystemExit  # what no `except Exception` catches: the thread ends

    relay.relay.alerter.run_once = die  # fault injection: nothing in the relay ends it so
    answer = wait_until(
        lambda: (
            (r := requests.get(f"{relay.url}/readyz", timeout=5)).status_code == 503 and r.json()
        )
    )
    assert answer["problems"] == ["thread alerts is not alive"]


def test_an_outbox_row_that_cannot_be_read_fails_alone(
    tmp_path: Path, servers, start_relay, monkeypatch
) -> None:
    sink, slack, hook, smtp, _ = servers
    monkeypatch.setenv("SMTP_URL", smtp.url)
    relay = start_relay(alert_config(tmp_path, sink, slack, hook)).relay
    store, [channel, *_] = relay.store, relay.config.alerting.channels
    good = Message(new_id(), "test", "", False, 0, 0, None, None, None)
    with store.transaction() as conn:
        conn.execute(
            alert_messages.insert(),
            [
                {
                    "id": new_id(),
                    "channel": channel.key,
                    "body": "{not json",
                    "attempts": 0,
                    "next_try_at": 0.0,
                    "claimed_until": 0.0,
                    "created_at": store.clock(),
                },
            ],
        )
        outbox.add(conn, [channel.key], good, store.clock())
    wait_until(lambda: slack.seen)
    assert "test alert" in slack.seen[0].json()["text"]

    def left() -> list[tuple[str, int, str]]:
        with store.engine.connect() as conn:
            query = sa.select(alert_messages.c.body, alert_messages.c.attempts)
            return [
                tuple(row) for row in conn.execute(query.add_columns(alert_messages.c.last_error))
            ]

    assert wait_until(lambda: left() and left()[0][1] == 1)  # tried again later, for a day
    assert left() == [("{not json", 1, "internal error (JSONDecodeError)")]
