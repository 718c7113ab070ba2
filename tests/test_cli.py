"""The `relay` command, run as a real subprocess: one-line errors, exit codes, a working serve."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest
import requests

from hookrelay.destinations import DESTINATIONS
from tests.conftest import LOG_FILES, ROOT, basic_config, relay_command, write_config
from tests.processes import free_port, wait_until


def test_send_signs_like_qualifio(tmp_path, sink, start_relay):
    config = basic_config(tmp_path, sink.url)
    relay = start_relay(config)
    sent = relay_command(
        "send", str(ROOT / "samples/v2-complete.json"), "--url", relay.url, "--config", str(config)
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith('202 {"duplicate":false,"event_id":')
    again = relay_command(
        "send", str(ROOT / "samples/v2-complete.json"), "--url", relay.url, "--config", str(config)
    )
    assert again.stdout.startswith('200 {"duplicate":true')
    assert relay.wait_settled() == ["delivered"]


def test_events_lists_ids_and_states_without_personal_data(tmp_path, sink, start_relay):
    config = basic_config(tmp_path, sink.url)
    relay = start_relay(config)
    event_id = relay.post((ROOT / "samples/v2-complete.json").read_bytes()).json()["event_id"]
    relay.wait_settled()
    listed = relay_command("events", "--config", str(config))
    assert listed.returncode == 0
    assert event_id in listed.stdout and "sink" in listed.stdout and "delivered" in listed.stdout
    assert "example.com" not in listed.stdout
    assert relay_command("events", "--status", "dead", "--config", str(config)).stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("replay", "0123abcd"), "no event with id 0123abcd"),
        (("replay",), "give event ids, or --dead"),
        (
            ("try", "nope", "samples/v2-complete.json"),
            "no mapping named 'nope'; mappings/ has pass",
        ),
        (
            ("send", "samples/v2-complete.json", "--url", "http://127.0.0.1:9"),
            "cannot reach the relay",
        ),
        (("send", "samples/v2-complete.json", "--source", "nope"), "unknown source 'nope'"),
    ],
)
def test_user_errors_are_one_line_and_exit_1(tmp_path, args, message):
    config = basic_config(tmp_path)
    done = relay_command(*args, "--config", str(config), cwd=ROOT)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert message in done.stderr


def test_check_reports_a_broken_config_in_one_line(tmp_path):
    config = write_config(tmp_path, "sources:\n  q: {format: xml}\n")
    done = relay_command("check", "--config", str(config))
    assert done.returncode == 1
    assert (
        done.stderr == f"Error: {config}:2: sources.q.format: unknown format 'xml'; "
        "expected qualifio or json\n"
    )
    good = relay_command("check", "--config", str(basic_config(tmp_path)))
    assert (
        good.returncode == 0
        and ": ok: 2 sources, 1 destinations, 1 mappings, 1 routes" in good.stdout
    )


def test_try_prints_the_record_or_why_it_is_skipped():
    done = relay_command("try", "newsletter", "samples/v2-complete.json", cwd=ROOT)
    assert done.returncode == 0 and '"status_if_new": "subscribed"' in done.stdout
    skipped = relay_command("try", "newsletter", "samples/v2-incomplete.json", cwd=ROOT)
    assert skipped.stdout.startswith("skipped: when: state == 'COMPLETED'")


def test_serve_runs_the_example_config_end_to_end(tmp_path):
    """The README's first command on a copy of the example: gunicorn, in-process worker, files."""
    for name in ("config.yaml", "mappings/sheet_row.yaml", "mappings/newsletter.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text((ROOT / name).read_text())
    port, log = free_port(), tmp_path / "serve.log"
    LOG_FILES.append(log)
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1"}
    env.pop("DATABASE_URL", None)
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "hookrelay", "serve"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok)
        sent = relay_command(
            "send", str(ROOT / "samples/v2-complete.json"), cwd=tmp_path, env={"PORT": str(port)}
        )
        assert sent.returncode == 0 and sent.stdout.startswith("202"), sent.stdout + sent.stderr
        rows = tmp_path / "data/participations.csv"
        text = wait_until(
            lambda: (
                rows.read_text(encoding="utf-8").count("\n") >= 2
                and rows.read_text(encoding="utf-8")
            )
        )
        assert text.startswith("participation_id,state,")
        assert "7F3C2A91-5B4E-4D2A-9C1E-2B8F6A0D4E11,COMPLETED" in text
        assert '"=HYPERLINK(""https://attacker.example' in text
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)


def test_try_explain_shows_each_field_expression_and_value():
    done = relay_command("try", "newsletter", "samples/v2-complete.json", "--explain", cwd=ROOT)
    assert done.returncode == 0
    assert 'merge_fields.PARTNERS: variables.partners_optin\n    = "0"' in done.stdout
    assert '"PARTNERS"' not in done.stdout.split("\n\n", 1)[1]  # explained, then dropped


FAILING = """
fields:
  id: id
  merge_fields: {PARTNERS: variables.partners_optin, NEWS: variables.newsletter_optin}
tests:
  - payload: ../samples/v2-complete.json
    expect: {id: 7F3C2A91-5B4E-4D2A-9C1E-2B8F6A0D4E11, merge_fields: {PARTNERS: null, NEWS: "1"}}
  - payload: ../samples/v2-complete.json
    expect: {merge_fields: {NEWS: "0"}, missing: x}
  - payload: ../samples/v2-incomplete.json
    expect: skipped
"""


def test_relay_test_runs_every_mapping_and_prints_what_differs(tmp_path):
    config = basic_config(tmp_path, mapping=FAILING)
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    done = relay_command("test", "--config", str(config))
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "FAIL pass test 1 (../samples/v2-complete.json)",
        '       merge_fields.PARTNERS: expected null, got "0"',
        "FAIL pass test 2 (../samples/v2-complete.json)",
        '       merge_fields.NEWS: expected "0", got "1"',
        '       missing: expected "x", got nothing (the field is absent)',
        "FAIL pass test 3 (../samples/v2-incomplete.json)",
        '       expected "skipped", got {"id": "7F3C2A91-5B4E-4D2A-9C1E-2B8F6A0D4E11", '
        '"merge_fields": {"PARTNERS": "0", "NEWS": "1"}}',
        "0 passed, 3 failed",
    ]


def test_relay_test_passes_on_the_example_mappings():
    done = relay_command("test", cwd=ROOT)
    assert done.returncode == 0, done.stdout
    assert done.stdout.splitlines()[-1].endswith(" passed, 0 failed")


def test_check_lists_every_problem_then_exits_1(tmp_path):
    config = write_config(
        tmp_path,
        "sources:\n  q: {format: xml}\ndestinations:\n  d: {type: nope}\n"
        "routes:\n  - {from: q, mapping: m, to: [d]}\n",
        {"m": "fields: {a: lowr(x)}\n"},
    )
    done = relay_command("check", "--config", str(config))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"Error: {config}:2: sources.q.format: unknown format 'xml'; expected qualifio or json",
        f"Error: {config}:4: destinations.d.type: unknown destination type 'nope'; "
        f"expected one of {', '.join(sorted(DESTINATIONS))}",
        f"Error: {tmp_path}/mappings/m.yaml:1: fields.a: unknown function lowr(); "
        "did you mean lower()? (the README lists them all) in 'lowr(x)'",
    ]
