"""What a valid configuration is checked for before it runs: warnings from `relay check` and at
start-up, and mappings whose own tests fail, refused by `relay check`, at start-up and on reload."""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import pytest
import requests

from hookrelay.destinations import DESTINATIONS
from tests.conftest import (
    FIXTURES,
    PASS_MAPPING,
    SECRET,
    RunningRelay,
    participation,
    relay_command,
    write_config,
)
from tests.fakes.vendors import BREVO_KEY, MAILCHIMP_KEY, TRELLO_KEY, TRELLO_TOKEN

VENDORS = {
    "mailchimp": '{type: mailchimp, list_id: a1b2c3, api_key: "${MAILCHIMP_API_KEY}"}',
    "brevo": '{type: brevo, api_key: "${BREVO_API_KEY}", list_ids: [7]}',
    "trello": '{type: trello, list_id: l1, key: "${TRELLO_KEY}", token: "${TRELLO_TOKEN}"}',
}
ENV = {
    "MAILCHIMP_API_KEY": MAILCHIMP_KEY,
    "BREVO_API_KEY": BREVO_KEY,
    "TRELLO_KEY": TRELLO_KEY,
    "TRELLO_TOKEN": TRELLO_TOKEN,
}


def check(directory):
    """`relay check` run beside config.yaml, so paths read as the user wrote them."""
    return relay_command("check", "--config", "config.yaml", cwd=directory, env=ENV)


def config_for(destination: str) -> str:
    return f"""\
        storage: sqlite:///relay.db
        sources:
          qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["{SECRET}"]}}}}}}
        destinations:
          rows: {{type: file, path: rows.jsonl}}
          out: {destination}
        routes:
          - {{from: qualifio, mapping: pass, to: [rows]}}
          - {{from: qualifio, mapping: pass, to: [out]}}
        """


def test_every_destination_that_requires_a_field_is_checked():
    assert {k for k, cls in DESTINATIONS.items() if cls.required} == set(VENDORS)


@pytest.mark.parametrize("kind", sorted(VENDORS))
def test_check_warns_of_a_route_whose_mapping_never_makes_a_required_field(tmp_path, kind):
    write_config(tmp_path, config_for(VENDORS[kind]), {"pass": PASS_MAPPING})
    done = check(tmp_path)
    assert done.returncode == 0, done.stderr
    (required,) = DESTINATIONS[kind].required
    assert done.stderr == (
        f"Warning: config.yaml:9: routes.1: mapping pass (mappings/pass.yaml) has no field "
        f"`{required}`, which the {kind} destination out requires: every record would be "
        "skipped\n"
    )
    assert done.stdout == (
        "config.yaml: ok: 1 sources, 2 destinations, 1 mappings, 2 routes; 1 warning\n"
    )


def test_check_is_quiet_when_the_mapping_makes_the_required_field(tmp_path):
    mapping = "fields: {email: variables.email, name: variables.firstname}\n"
    write_config(tmp_path, config_for(VENDORS["brevo"]), {"pass": mapping})
    done = check(tmp_path)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == "config.yaml: ok: 1 sources, 2 destinations, 1 mappings, 2 routes\n"


TYPOS = """\
when: "id || variables.newsletter_optn"
fields:
  email: lower(variables.emial)
  name: "concat(variables.firstname, ' ', variables.lastname)"
  born: variables.birthday
  answers: "questionnaire[].concat(labl, ': ', join(', ', responses[].valu))"
  first: "questionnaire[?scor > `0`] | [0].label"
  sorted: "sort_by(questionnaire || `[]`, &to_string(not_checked))[].label"
  nested: {device: browser.devise, site: campaign.channel.website.name}
tests:
  - payload: ../samples/v2-complete.json
    expect: {email: null}
  - payload: ../samples/v1-participation.json
    expect: {born: "567903600"}
"""


def test_check_warns_of_field_paths_no_sample_payload_has(tmp_path):
    """The mapping's test payloads, normalised as its qualifio source does (`variables`, from
    `crm` for webhook 1.0); paths inside projections and filters are relative to each element."""
    write_config(tmp_path, config_for(VENDORS["brevo"]), {"pass": TYPOS})
    (tmp_path / "samples").mkdir()
    for name in ("v2-complete.json", "v1-participation.json"):
        shutil.copy(FIXTURES / name, tmp_path / "samples" / name)
    done = check(tmp_path)
    assert done.returncode == 0, done.stderr
    where, nowhere = "mappings/pass.yaml", "is in none of the sample payloads; did you mean"
    assert done.stderr.splitlines() == [
        f"Warning: {where}:1: when: `variables.newsletter_optn` {nowhere} "
        "`variables.newsletter_optin`?",
        f"Warning: {where}:3: fields.email: `variables.emial` {nowhere} `variables.email`?",
        f"Warning: {where}:6: fields.answers: `questionnaire[].labl` {nowhere} "
        "`questionnaire[].label`?",
        f"Warning: {where}:6: fields.answers: `questionnaire[].responses[].valu` {nowhere} "
        "`questionnaire[].responses[].value`?",
        f"Warning: {where}:7: fields.first: `questionnaire[].scor` {nowhere} "
        "`questionnaire[].score`?",
        f"Warning: {where}:9: fields.nested.device: `browser.devise` {nowhere} `browser.device`?",
    ]
    assert done.stdout.endswith("2 routes; 6 warnings\n")


def test_paths_are_checked_against_the_samples_folder_and_not_without_samples(tmp_path):
    mapping = "fields: {email: variables.emial, score: casualGame.scor}\n"  # no tests of its own
    write_config(tmp_path, config_for(VENDORS["brevo"]), {"pass": mapping})
    assert check(tmp_path).stderr == ""  # nothing to compare with: nothing said
    (tmp_path / "samples").mkdir()
    shutil.copy(FIXTURES / "v1-participation.json", tmp_path / "samples")
    (tmp_path / "samples/notes.json").write_text("not JSON")  # left out, not a failure
    done = check(tmp_path)
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "Warning: mappings/pass.yaml:1: fields.email: `variables.emial` is in none of the sample "
        "payloads; did you mean `variables.email`?",
        "Warning: mappings/pass.yaml:1: fields.score: `casualGame.scor` is in none of the sample "
        "payloads; did you mean `casualGame.score`?",
    ]


def test_a_json_source_s_mappings_see_no_variables(tmp_path):
    """A mapping routed from a `format: json` source reads the payload as it came."""
    config = config_for("{type: file, path: out.csv}").replace("format: qualifio", "format: json")
    mapping = f"""\
fields: {{email: variables.email, id: id}}
tests: [{{payload: {FIXTURES}/v2-complete.json, expect: {{email: null}}}}]
"""
    write_config(tmp_path, config, {"pass": mapping})
    done = check(tmp_path)
    assert (done.returncode, done.stderr) == (
        0,
        "Warning: mappings/pass.yaml:1: fields.email: `variables.email` is in none of the sample "
        "payloads\n",
    )


FAILING = """\
fields: {id: id, state: state, email: variables.email}
tests:
  - payload: ../samples/v2-complete.json
    expect: {state: COMPLETED, email: zoe.lefevre@example.com}
  - payload: ../samples/v2-complete.json
    expect: {state: DONE, email: someone.else@example.com}
  - payload: ../samples/v2-complete.json
    expect: skipped
  - payload: ../samples/missing.json
    expect: {state: COMPLETED}
"""
#: The failures of FAILING, as `relay check`, start-up and a reload refuse them: the fields that
#: differ, never their values (this goes to the log and /readyz). A test whose payload cannot be
#: read is not run (a deploy without samples/), so it refuses nothing.
REFUSED = [
    "mappings/pass.yaml:5: tests: test 2 (../samples/v2-complete.json) fails: state, email "
    "differ from what it expects; `relay test` says more",
    "mappings/pass.yaml:7: tests: test 3 (../samples/v2-complete.json) fails: expected skipped, "
    "got a record; `relay test` says more",
]


def failing_config(directory):
    config = write_config(directory, config_for(VENDORS["brevo"]), {"pass": FAILING})
    shutil.copytree(FIXTURES, directory / "samples", ignore=shutil.ignore_patterns("jmespath*"))
    return config


def test_check_fails_on_a_mapping_whose_tests_fail(tmp_path):
    failing_config(tmp_path)
    done = check(tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"Error: {line}" for line in REFUSED]
    assert "example.com" not in done.stderr
    tested = relay_command("test", "--config", "config.yaml", cwd=tmp_path, env=ENV)
    assert "FAIL pass test 4 (../samples/missing.json)" in tested.stdout  # `relay test` says it


def test_the_worker_refuses_to_start_on_a_mapping_whose_tests_fail(tmp_path):
    failing_config(tmp_path)
    done = relay_command("worker", "--config", "config.yaml", cwd=tmp_path, env=ENV)
    assert done.returncode == 1
    assert [line for line in done.stderr.splitlines() if line.startswith("Error: ")] == [
        f"Error: {line}" for line in REFUSED
    ]


#: A mapping whose tests pass, with a typo that only a warning shows.
TYPO_PASSING = """\
fields: {id: id, state: state, email: variables.emial}
tests: [{payload: ../samples/v2-complete.json, expect: {state: COMPLETED}}]
"""


def test_warnings_are_logged_at_start_up_and_a_reload_with_failing_tests_is_refused(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("RELAY_RELOAD_SECONDS", "0")  # reloaded below, when the test says
    config = failing_config(tmp_path)
    config.write_text(textwrap.dedent(config_for("{type: file, path: out.jsonl}")), "utf-8")
    mapping = tmp_path / "mappings/pass.yaml"
    mapping.write_text(TYPO_PASSING, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # paths in messages as the user wrote them
    relay = RunningRelay(config.relative_to(tmp_path))
    try:
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert (
            "mappings/pass.yaml:1: fields.email: `variables.emial` is in none of the sample "
            "payloads; did you mean `variables.email`?"
        ) in warned

        stat = mapping.stat()
        mapping.write_text(textwrap.dedent(FAILING), encoding="utf-8")
        os.utime(mapping, ns=(stat.st_mtime_ns + 10**9,) * 2)  # seen within one clock tick
        assert relay.relay.reload_if_changed() is False
        ready = requests.get(f"{relay.url}/readyz", timeout=5)
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "config_refused": REFUSED}
        assert "config change refused: " + REFUSED[0] in caplog.text

        # The last good mapping (with its typo) keeps delivering.
        assert relay.post(participation(1)).status_code == 202
        assert relay.wait_settled() == ["delivered", "delivered"]
        (row,) = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
        assert row == {
            "id": json.loads(participation(1))["id"],
            "state": "COMPLETED",
            "email": None,
        }
    finally:
        relay.stop()


@pytest.mark.parametrize(
    ("alerts", "line", "says"),
    [
        (
            "alerts: [{type: slack, url: 'https://hooks.example.com/x'}]",
            10,
            "alerts: no public_url",
        ),
        ("alert_on: {backlog: 5m}", 10, "alert_on: no alert will be sent"),
    ],
)
def test_check_warns_of_alerts_that_link_nowhere_or_reach_no_one(tmp_path, alerts, line, says):
    config = config_for("{type: file, path: out.jsonl}") + alerts + "\n"  # ends indented
    write_config(tmp_path, config, {"pass": PASS_MAPPING})
    checked = check(tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert f"Warning: config.yaml:{line}: {says}" in checked.stderr
