"""The `relay` command, run as a real subprocess: one-line errors, exit codes, a working serve."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
import requests

from hookrelay.destinations import DESTINATIONS
from tests.conftest import (
    FIXTURES,
    LOG_FILES,
    ROOT,
    basic_config,
    file_and_hook_config,
    participation,
    relay_command,
    write_config,
)
from tests.fakes.server import Answer
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
        (("replay",), "give event ids, or --dead and/or --skipped"),
        (("replay", "0123abcd", "--skipped"), "not both: an event's replay already takes its dead"),
        (("replay", "--dead", "--all"), "--all goes with event ids"),
        (("replay", "--all"), "--all goes with event ids"),
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
        assert '"\'=HYPERLINK(""https://attacker.example' in text  # never a formula in Excel
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


def test_check_names_both_lines_of_a_repeated_key(tmp_path):
    """The README's Trello snippet pasted at the end of a working config.yaml."""
    config = basic_config(tmp_path)
    with config.open("a", encoding="utf-8") as f:
        f.write("destinations:\n  board: {type: trello, list_id: x, key: k, token: t}\n")
        f.write("routes:\n  - {from: qualifio, mapping: pass, to: [board]}\n")
    done = relay_command("check", "--config", str(config))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        f"Error: {config}:16: destinations: repeated key; first at line 7 — merge them",
        f"Error: {config}:18: routes: repeated key; first at line 9 — merge them",
    ]


def test_replay_of_an_event_sends_again_only_what_was_not_delivered(tmp_path, sink, start_relay):
    sink.fail(Answer(400, {"error": "field 'id' is not accepted"}))  # hook refuses: dead at once
    config = file_and_hook_config(
        tmp_path, sink.url, "delivery: {backoff: {initial: 50ms, max: 200ms}}"
    )
    relay = start_relay(config)
    event_id = relay.post(participation(1)).json()["event_id"]
    assert sorted(relay.wait_settled()) == ["dead", "delivered", "skipped"]

    def replay(*args: str) -> str:
        done = relay_command("replay", *args, "--config", str(config))
        assert done.returncode == 0, done.stderr
        relay.relay.worker.wake()
        relay.wait_settled()
        return done.stdout

    assert replay(event_id) == (
        "2 deliveries scheduled again; delivered ones are not sent again (--all sends them)\n"
    )
    assert sorted(relay.statuses()) == ["delivered", "delivered", "skipped"]
    assert len(sink.requests) == 1  # the dead one, accepted now
    rows = tmp_path / "rows.jsonl"
    assert len(rows.read_text().splitlines()) == 1  # the file received nothing twice

    assert replay("--skipped") == "1 delivery scheduled again\n"  # when: still refuses it
    assert replay("--dead") == "0 deliveries scheduled again\n"
    assert (len(sink.requests), len(rows.read_text().splitlines())) == (1, 1)

    assert replay(event_id, "--all", "--destination", "rows").startswith("2 deliveries")
    assert (len(sink.requests), len(rows.read_text().splitlines())) == (1, 2)  # asked for


# --- where `relay serve` listens, and the example secret ------------------------------------------


def example_copy(directory):
    """The repository's example config.yaml and mappings, storing in `directory`."""
    shutil.copy(ROOT / "config.yaml", directory / "config.yaml")
    shutil.copytree(ROOT / "mappings", directory / "mappings")
    return directory / "config.yaml"


def listening(port):
    """The addresses a TCP socket listens on at `port`, read from the kernel's tables, as
    `ss -ltn` reads them."""
    found = set()
    for table, size in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        with open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    raw = bytes.fromhex(address)  # 32-bit words, each in host (little) order
                    words = [raw[i : i + 4][::-1] for i in range(0, size, 4)]
                    found.add(str(ipaddress.ip_address(b"".join(words))))
    return found


def this_machines_addresses():
    """The machine's own addresses other than loopback (from `hostname -I`, where it exists)."""
    if shutil.which("hostname") is None:
        return []
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return [a for a in out if not ipaddress.ip_address(a).is_loopback]


@contextlib.contextmanager
def serving(command, cwd, env, port):
    """The relay started by `command` (in its own process group), once it answers on loopback."""
    log = cwd / "serve.log"
    LOG_FILES.append(log)
    with open(log, "w") as out:
        server = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok)
        yield log
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(20)


def plain_env(**changes):
    env = {**os.environ, **changes}
    for name in ("HOST", "PORT", "DYNO", "DATABASE_URL", "QUALIFIO_SECRET", "RELAY_CONFIG"):
        if name not in changes:
            env.pop(name, None)
    return env


GUNICORN = [sys.executable, "-m", "gunicorn", "relay:app"]  # reads ./gunicorn.conf.py, as Heroku


@pytest.mark.parametrize(
    ("args", "env", "where"),
    [
        (["--port"], {}, {"127.0.0.1"}),
        (["--host", "0.0.0.0", "--port"], {"QUALIFIO_SECRET": "x" * 24}, {"0.0.0.0"}),
        (None, {"DYNO": "web.1", "QUALIFIO_SECRET": "x" * 24}, {"0.0.0.0"}),
    ],
    ids=["relay serve --port", "relay serve --host 0.0.0.0", "gunicorn relay:app on a dyno"],
)
def test_serve_listens_on_loopback_unless_told_otherwise(tmp_path, args, env, where):
    config, port = example_copy(tmp_path), free_port()
    if args is None:  # Heroku: PORT from the platform, gunicorn relay:app from the Procfile
        command = GUNICORN
        env = {**env, "PORT": str(port), "RELAY_CONFIG": str(config)}
        shutil.copy(ROOT / "gunicorn.conf.py", tmp_path)
        shutil.copy(ROOT / "relay.py", tmp_path)
    else:
        command = [sys.executable, "-m", "hookrelay", "serve", *args, str(port)]
    with serving(command, tmp_path, plain_env(**env), port) as log:
        assert listening(port) == where
        for address in this_machines_addresses():
            v6 = ":" in address
            with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET) as s:
                s.settimeout(2)
                reached = s.connect_ex((address, port)) == 0
            assert reached == (("::" if v6 else "0.0.0.0") in where), address
        if "QUALIFIO_SECRET" not in env:
            assert "accepts the example secret 'dev-secret-change-me': fine on this machine" in (
                log.read_text()
            )


EXAMPLE_REFUSED = (
    "Error: source qualifio accepts the example secret 'dev-secret-change-me', which anyone can "
    "read, and the relay {where}: set QUALIFIO_SECRET to your Qualifio webhook's secret\n"
)


@pytest.mark.parametrize(
    ("args", "env", "where"),
    [
        (["--host", "0.0.0.0"], {}, "would listen on 0.0.0.0"),
        (["--port", "{port}"], {"HOST": "0.0.0.0"}, "would listen on 0.0.0.0"),
        (["--host", "192.0.2.2"], {}, "would listen on 192.0.2.2"),
        ([], {"DYNO": "web.1"}, "would listen on 0.0.0.0"),  # a dyno's default host
        (["--host", "127.0.0.1"], {"DYNO": "web.1"}, "runs on a dyno (DYNO is set)"),
        ([], {"HOST": "::", "QUALIFIO_SECRET": "dev-secret-change-me"}, "would listen on ::"),
    ],
)
def test_serve_refuses_the_example_secret_beyond_loopback(tmp_path, args, env, where):
    example_copy(tmp_path)
    port = free_port()
    args = [a.format(port=port) for a in args]
    done = relay_command("serve", *args, cwd=tmp_path, env=plain_env(**env))
    assert done.returncode == 1
    assert done.stderr == EXAMPLE_REFUSED.format(where=where)
    assert listening(port) == set()


def test_the_example_secret_written_in_the_config_is_refused_too(tmp_path):
    config = basic_config(tmp_path, auth='{signature: {secrets: ["dev-secret-change-me"]}}')
    done = relay_command("serve", "--host", "0.0.0.0", "--config", str(config), env=plain_env())
    assert done.returncode == 1
    assert done.stderr.endswith(
        "the relay would listen on 0.0.0.0: write ${QUALIFIO_SECRET} in its place in "
        f"{config} and set that variable\n"
    )


def test_gunicorn_on_a_dyno_refuses_the_example_secret(tmp_path):
    config = example_copy(tmp_path)
    shutil.copy(ROOT / "gunicorn.conf.py", tmp_path)
    port = free_port()
    env = plain_env(DYNO="web.1", PORT=str(port), RELAY_CONFIG=str(config))
    done = subprocess.run(
        GUNICORN, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    refused = EXAMPLE_REFUSED.format(where="would listen on 0.0.0.0").removeprefix("Error: ")
    [line] = [line for line in done.stderr.splitlines() if "example secret" in line]
    assert line.endswith(f"[ERROR] {refused.strip()}")
    assert "Traceback" not in done.stderr and "Listening at" not in done.stderr


@pytest.mark.parametrize(
    ("process", "dyno"),
    [("web", "web.1"), ("worker", "worker.1"), ("worker", None)],
    ids=["gunicorn relay:app on a dyno", "relay worker on a dyno", "relay worker elsewhere"],
)
def test_on_a_dyno_each_file_destination_is_said_to_be_lost_at_each_restart(
    tmp_path, process, dyno
):
    """The Procfile's processes as Heroku starts them, on the example config's two files."""
    config, port = example_copy(tmp_path), free_port()
    shutil.copy(ROOT / "gunicorn.conf.py", tmp_path)
    shutil.copy(ROOT / "relay.py", tmp_path)
    env = {"PORT": str(port), "RELAY_CONFIG": str(config), "QUALIFIO_SECRET": "x" * 24}
    env = plain_env(**env, **({"DYNO": dyno} if dyno else {}))
    command = GUNICORN if process == "web" else [sys.executable, "-m", "hookrelay", "worker"]
    log = tmp_path / f"{process}.log"
    LOG_FILES.append(log)
    with open(log, "w") as out:
        started = subprocess.Popen(
            command, cwd=tmp_path, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:  # each process warns before it serves or delivers
        if process == "web":
            wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok)
        else:
            wait_until(lambda: "worker running" in log.read_text())
    finally:
        os.killpg(started.pid, signal.SIGTERM)
        started.wait(20)
    said = [line for line in log.read_text().splitlines() if "ephemeral disk: the file" in line]
    if dyno is None:
        assert said == []
        return
    for name, path in (("archive", "participations.csv"), ("newsletter_log", "newsletter.jsonl")):
        assert any(
            line.endswith(
                f"WARNING hookrelay.runtime: destination {name} writes {tmp_path}/data/{path} on "
                "the dyno's ephemeral disk: the file is lost at each restart and deploy; send to "
                "a google_sheets or http destination instead"
            )
            for line in said
        ), said


# --- storage that cannot be opened: one line, exit 1 ----------------------------------------------

STORAGE_COMMANDS = [
    ("events",),
    ("show", "x"),
    ("worker",),
    ("serve", "--port", "9"),
    ("replay", "--dead"),
    ("purge", "--older-than", "30d", "--yes"),
    ("forget", "someone@example.org", "--yes"),
]


@pytest.mark.parametrize(
    ("storage", "reason"),
    [
        ("sqlite:////nonexistent/dir/relay.db", "the folder /nonexistent/dir does not exist"),
        ("postgresql://relay:pw@127.0.0.1:{port}/test", "Connection refused"),
    ],
    ids=["sqlite, no folder", "postgresql, closed port"],
)
def test_storage_that_cannot_be_opened_is_one_line_and_exit_1(tmp_path, storage, reason):
    storage = storage.format(port=free_port())
    config = basic_config(tmp_path)
    env = {**os.environ, "RELAY_TEST_STORAGE": storage}
    running = [  # at once: each takes most of a second to start
        subprocess.Popen(
            [sys.executable, "-m", "hookrelay", *args, "--config", str(config)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in STORAGE_COMMANDS
    ]
    for args, process in zip(STORAGE_COMMANDS, running, strict=True):
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 1, args
        [line] = stderr.splitlines()
        shown = storage.replace(":pw@", ":***@")  # never the password
        assert line.startswith(f"Error: cannot open storage {shown}: "), (args, line)
        assert reason in line and f"`storage` in {config}" in line, (args, line)
        assert ":pw@" not in stderr


# --- relay try: any payload shape, errors in words ------------------------------------------------

LOYALTY = """
fields:
  kind: eventType
  points: points
  email: lower(member)
"""


def test_try_takes_each_event_of_an_array_as_ingest_does(tmp_path):
    config = basic_config(tmp_path, mapping="fields: {kind: eventType, points: points}\n")
    done = relay_command(
        "try", "pass", str(FIXTURES / "loyalty-earning-ILLUSTRATIVE.json"), "--config", str(config)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "# event 1 of 2",
        "{",
        '  "kind": "EARNING",',
        '  "points": 50',
        "}",
        "# event 2 of 2",
        "{",
        '  "kind": "LEVEL_CHANGE",',
        '  "points": null',
        "}",
    ]
    example = relay_command(
        "try", "newsletter", str(FIXTURES / "loyalty-earning-ILLUSTRATIVE.json"), cwd=ROOT
    )
    assert example.returncode == 0 and example.stdout.count("skipped: when: state ==") == 2


def test_a_mapping_error_names_the_field_expression_and_kinds_never_a_python_name(tmp_path):
    config = basic_config(tmp_path, mapping=LOYALTY)
    loyalty = FIXTURES / "loyalty-earning-ILLUSTRATIVE.json"
    done = relay_command("try", "pass", str(loyalty), "--config", str(config))
    assert (done.returncode, done.stderr) == (
        1,
        "Error: event 1 of 2: field email: lower(member): expected a string, got an object\n",
    )
    (tmp_path / "b").mkdir()
    config = basic_config(tmp_path / "b", mapping="fields: {campaign: lower(campaign)}\n")
    one = relay_command("try", "pass", str(FIXTURES / "v2-complete.json"), "--config", str(config))
    assert (
        one.stderr == "Error: field campaign: lower(campaign): expected a string, got an object\n"
    )


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "[]", "[{}, 3]"])
def test_try_refuses_a_payload_of_another_shape_in_one_line(tmp_path, payload):
    config = basic_config(tmp_path)
    path = tmp_path / "payload.json"
    path.write_text(payload)
    done = relay_command("try", "pass", str(path), "--config", str(config))
    assert (done.returncode, done.stderr) == (
        1,
        f"Error: {path}: expected a JSON object, or a non-empty array of objects\n",
    )


def test_relay_test_says_an_array_payload_is_not_one_event(tmp_path):
    loyalty = FIXTURES / "loyalty-earning-ILLUSTRATIVE.json"
    mapping = f"fields: {{kind: eventType}}\ntests: [{{payload: {loyalty}, expect: {{kind: X}}}}]\n"
    config = basic_config(tmp_path, mapping=mapping)
    done = relay_command("test", "--config", str(config))
    assert done.returncode == 1
    assert done.stdout.splitlines()[1] == (
        "       the payload holds 2 events; a test takes one: one object per file"
    )
