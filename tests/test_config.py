"""Config errors name the file, the line and the key, and never echo a secret."""

from __future__ import annotations

import os

import pytest
import requests

from hookrelay.config import load_config
from hookrelay.destinations import DESTINATIONS
from hookrelay.errors import ConfigError, InvalidConfig
from tests.conftest import PASS_MAPPING, basic_config, participation, relay_command, write_config

GOOD = """\
storage: sqlite:///relay.db
sources:
  qualifio: {format: qualifio, auth: {signature: {secrets: ["${QS_SECRET:-dev}"]}}}
destinations:
  sink: {type: http, url: "http://127.0.0.1:9/hook", timeout: 3s}
  archive: {type: file, path: data/rows.csv}
routes:
  - {from: qualifio, mapping: pass, to: [sink, archive]}
delivery:
  max_attempts: 5
  backoff: {initial: 1s, max: 2m}
"""


def test_a_good_config_loads_with_defaults_and_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("QS_SECRET", "from-env")
    config = load_config(write_config(tmp_path, GOOD, {"pass": PASS_MAPPING}))
    assert config.sources["qualifio"].auth.signature_secrets == ("from-env",)
    assert config.storage == f"sqlite:///{tmp_path}/relay.db"
    assert config.policies["sink"].timeout == 3.0 and config.policies["archive"].timeout == 10.0
    assert config.policies["sink"].max_attempts == 5 and config.policies["sink"].backoff_max == 120
    assert config.targets("qualifio") == [("pass", "sink"), ("pass", "archive")]
    assert config.max_body_bytes == 1 << 20


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        (
            (
                'url: "http://127.0.0.1:9/hook", timeout: 3s',
                'url: "http://127.0.0.1:9/hook", tiemout: 3s',
            ),
            "config.yaml:5: destinations.sink.tiemout",
            "did you mean 'timeout'?",
        ),
        (
            ("type: http", "type: htp"),
            "config.yaml:5: destinations.sink.type",
            f"unknown destination type 'htp'; expected one of {', '.join(sorted(DESTINATIONS))}",
        ),
        (
            ("mapping: pass", "mapping: nope"),
            "config.yaml:8: routes.0.mapping",
            "no mapping file mappings/nope.yaml; expected one of pass",
        ),
        (
            ("to: [sink, archive]", "to: [sink, archiv]"),
            "config.yaml:8: routes.0.to.1",
            "unknown destination 'archiv'; expected one of archive, sink",
        ),
        (
            ("from: qualifio", "from: qualifo"),
            "config.yaml:8: routes.0.from",
            "unknown source 'qualifo'",
        ),
        (
            ("max_attempts: 5", "max_attempts: many"),
            "config.yaml:10: delivery.max_attempts",
            "expected a whole number >= 1, got 'many'",
        ),
        (
            ("initial: 1s", "initial: soon"),
            "config.yaml:11: delivery.backoff.initial",
            "expected a duration",
        ),
        (("storage:", "storag:"), "config.yaml:1: storag", "did you mean 'storage'?"),
        (
            ("format: qualifio", "format: xml"),
            "config.yaml:3: sources.qualifio.format",
            "expected qualifio or json",
        ),
        (
            ("${QS_SECRET:-dev}", "${QS_UNSET_VAR}"),
            "config.yaml:3: sources.qualifio.auth.signature.secrets.0",
            "environment variable QS_UNSET_VAR is not set",
        ),
        (
            ("path: data/rows.csv", "path: data/rows.xls"),
            "config.yaml:6: destinations.archive.path",
            "expected a file ending in",
        ),
        (("{from: qualifio", "[from: qualifio"), "config.yaml:8", "invalid YAML"),
        (
            ('["${QS_SECRET:-dev}"]', "[]"),
            "config.yaml:3: sources.qualifio.auth.signature.secrets",
            "no secret to check signatures with",
        ),
        (
            ('["${QS_SECRET:-dev}"]', '["${QS_UNSET_VAR:-}", ""]'),
            "config.yaml:3: sources.qualifio.auth.signature.secrets",
            "no secret to check signatures with",
        ),
        (
            ('auth: {signature: {secrets: ["${QS_SECRET:-dev}"]}}', "auth: {}"),
            "config.yaml:3: sources.qualifio.auth",
            "write `auth: none` to accept requests from anyone",
        ),
        (
            (', auth: {signature: {secrets: ["${QS_SECRET:-dev}"]}}', ""),
            "config.yaml:3: sources.qualifio.auth",
            "a source needs at least one check",
        ),
    ],
)
def test_errors_name_file_line_and_key(tmp_path, change, where, message):
    path = write_config(tmp_path, GOOD.replace(*change), {"pass": PASS_MAPPING})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert text.startswith(str(tmp_path / where) if "/" in where else f"{tmp_path}/{where}"), text
    assert message in text


def test_an_empty_optional_secret_is_left_out(tmp_path):
    text = GOOD.replace('"${QS_SECRET:-dev}"', '"${QS_SECRET:-dev}", "${QS_OLD_UNSET:-}"')
    config = load_config(write_config(tmp_path, text, {"pass": PASS_MAPPING}))
    assert config.sources["qualifio"].auth.signature_secrets == ("dev",)


def test_auth_none_accepts_anyone_and_says_so_at_start(tmp_path, sink, start_relay, caplog):
    text = GOOD.replace('auth: {signature: {secrets: ["${QS_SECRET:-dev}"]}}', "auth: none")
    text = text.replace("sqlite:///relay.db", "${RELAY_TEST_STORAGE}")
    relay = start_relay(write_config(tmp_path, text, {"pass": PASS_MAPPING}))
    assert "source qualifio accepts requests from anyone (auth: none)" in caplog.messages
    assert relay.post(participation(1), secret=None).status_code == 202


@pytest.mark.parametrize(
    ("mapping", "where", "message"),
    [
        (
            "fields:\n  id: id\n  email: lower(variables.email\n",
            "3: fields.email",
            "invalid JMESPath 'lower(variables.email'",
        ),
        (
            "fields:\n  email: lowr(variables.email)\n",
            "2: fields.email",
            "unknown function lowr(); did you mean lower()?",
        ),
        (
            "fields:\n  email: lower(variables.email, 'x')\n",
            "2: fields.email",
            "lower() takes 1 argument, got 2 in",
        ),
        ("fields:\n  x: replace(a, 'b')\n", "2: fields.x", "replace() takes 3 arguments, got 2"),
        ("fields:\n  x: concat()\n", "2: fields.x", "concat() takes 1 or more arguments, got 0"),
        (
            "fields:\n  nested:\n    x: upper(trim(a), a)\n",
            "3: fields.nested.x",
            "upper() takes 1 argument, got 2",
        ),
        ("when: \"state = 'COMPLETED'\"\nfields: {id: id}\n", "1: when", "invalid JMESPath"),
        ("fields: {id: id}\nomit_empty: yes please\n", "2: omit_empty", "expected true or false"),
        (
            "fields: {id: id}\ndrop: {value: ['0']}\n",
            "2: drop.value",
            "unknown key 'value'; did you mean 'values'?",
        ),
        ("feilds: {id: id}\n", "1: feilds", "unknown key 'feilds'; did you mean 'fields'?"),
        (
            "fields: {id: id}\ntests: {payload: x}\n",
            "2: tests",
            "expected a list of {payload, expect}",
        ),
        ("fields: {id: [id]}\n", "1: fields.id", "expected a non-empty text value"),
    ],
)
def test_mapping_errors_name_file_line_and_key(tmp_path, mapping, where, message):
    path = write_config(tmp_path, GOOD, {"pass": mapping})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"{tmp_path}/mappings/pass.yaml:{where}: "), caught.value
    assert message in str(caught.value)


def test_every_problem_is_reported_in_one_pass(tmp_path):
    config = GOOD.replace("type: http", "type: htp").replace("max_attempts: 5", "max_attempts: x")
    config = config.replace("from: qualifio", "from: qualifo")
    path = write_config(
        tmp_path,
        config,
        {
            "pass": "fields:\n  a: lowr(x)\n  b: upper(x, y)\n  c: id\n",
            "draft": "fields: {id: [oops}\n",
        },
    )
    with pytest.raises(InvalidConfig) as caught:
        load_config(path)
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[0].replace(str(tmp_path) + "/", "") for line in lines] == [
        "config.yaml:5",
        "config.yaml:8",
        "config.yaml:10",
        "mappings/draft.yaml:1",
        "mappings/pass.yaml:2",
        "mappings/pass.yaml:3",
    ]


def test_mapping_errors_name_the_mapping_file(tmp_path):
    path = write_config(
        tmp_path, GOOD, {"pass": "fields:\n  id: id\n  email: lower(variables.email\n"}
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(
        f"{tmp_path}/mappings/pass.yaml:3: fields.email: invalid JMESPath"
    )


def test_a_secret_is_never_echoed_in_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("QS_SECRET", "hunter2-secret")
    path = write_config(tmp_path, GOOD.replace("type: http", "type: https"), {"pass": PASS_MAPPING})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "hunter2-secret" not in str(caught.value)


def test_a_value_from_the_environment_is_never_echoed(tmp_path, monkeypatch):
    monkeypatch.setenv("QS_SECRET", "hunter2-secret")
    path = write_config(
        tmp_path,
        GOOD.replace("max_attempts: 5", "max_attempts: ${QS_SECRET}"),
        {"pass": PASS_MAPPING},
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "hunter2-secret" not in str(caught.value)
    assert "got '${QS_SECRET}'" in str(caught.value)


TRELLO_PASTED_AT_THE_END = """\
destinations:
  board: {type: trello, list_id: 5abbe4b7ddc1b351ef961415, key: k, token: t}
routes:
  - {from: qualifio, mapping: pass, to: [board]}
"""


def test_a_repeated_top_level_key_names_both_lines(tmp_path):
    """The README's Trello snippet pasted at the end of config.yaml: without the check, its
    destinations and routes would silently replace the ones above."""
    path = write_config(tmp_path, GOOD + TRELLO_PASTED_AT_THE_END, {"pass": PASS_MAPPING})
    with pytest.raises(InvalidConfig) as caught:
        load_config(path)
    assert [str(p) for p in caught.value.problems] == [
        f"{path}:12: destinations: repeated key; first at line 4 — merge them",
        f"{path}:14: routes: repeated key; first at line 7 — merge them",
    ]


@pytest.mark.parametrize(
    ("config", "mapping", "message"),
    [
        (
            GOOD.replace("  max_attempts: 5\n", "  max_attempts: 5\n  max_attempts: 6\n"),
            PASS_MAPPING,
            "config.yaml:11: delivery.max_attempts: repeated key; first at line 10 — keep one",
        ),
        (
            GOOD.replace("timeout: 3s}", "timeout: 3s, url: http://127.0.0.1:9/other}"),
            PASS_MAPPING,
            "config.yaml:5: destinations.sink.url: repeated key; first at line 5 — keep one",
        ),
        (
            GOOD,
            "fields:\n  id: id\n  merge_fields:\n    A: a\n  state: state\n  id: state\n",
            "mappings/pass.yaml:6: fields.id: repeated key; first at line 2 — keep one",
        ),
        (
            GOOD,
            "fields:\n  merge_fields: {A: a}\n  merge_fields:\n    B: b\n",
            "mappings/pass.yaml:3: fields.merge_fields: repeated key; first at line 2 — merge them",
        ),
    ],
)
def test_a_repeated_key_at_any_depth_is_an_error(tmp_path, config, mapping, message):
    path = write_config(tmp_path, config, {"pass": mapping})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == f"{tmp_path}/{message}"


def test_a_key_beside_a_yaml_merge_overrides_it_and_is_no_repetition(tmp_path):
    text = GOOD.replace(
        "  sink: {type: http,", "  base: &base {type: file, path: a.csv}\n  sink: {type: http,"
    ).replace("archive: {type: file, path: data/rows.csv}", "archive: {<<: *base, path: b.csv}")
    config = load_config(write_config(tmp_path, text, {"pass": PASS_MAPPING}))
    assert config.destinations["archive"].path == tmp_path / "b.csv"


def test_a_reload_with_a_repeated_key_is_refused_and_the_last_good_config_runs(
    tmp_path, sink, start_relay
):
    text = GOOD.replace("sqlite:///relay.db", "${RELAY_TEST_STORAGE}")
    text = text.replace("http://127.0.0.1:9/hook", f"{sink.url}/hook")
    path = write_config(tmp_path, text, {"pass": PASS_MAPPING})
    relay = start_relay(path)
    running = relay.relay.config
    path.write_text(text + TRELLO_PASTED_AT_THE_END, encoding="utf-8")
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # seen even within one tick

    assert relay.relay.reload_if_changed() is False
    assert relay.relay.config is running
    ready = requests.get(f"{relay.url}/readyz", timeout=5).json()
    refused = f"{path}:12: destinations: repeated key; first at line 4 — merge them"
    assert refused in ready["config_refused"]
    relay.post(participation(1), secret="dev")
    assert relay.wait_settled() == ["delivered", "delivered"]  # sink and archive, as before
    assert sink.requests[0].path == "/hook"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"storage: sqlite:///relay.db\nsources: {}\x1f\n",
            "invalid YAML: character U+001F is not allowed",
        ),
        (b"storage: sqlite:///relay.db\nsources: \xff\n", "not UTF-8 text"),
    ],
)
def test_a_file_yaml_cannot_read_is_one_line_naming_its_line(tmp_path, content, message):
    (tmp_path / "config.yaml").write_bytes(content)
    checked = relay_command("check", "--config", str(tmp_path / "config.yaml"))
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert checked.stderr.strip() == f"Error: {tmp_path / 'config.yaml'}:2: {message}" + (
        "; remove it" if "U+" in message else ": save the file as UTF-8"
    )


@pytest.mark.parametrize("text", ["", "# only a comment\n", "- a list\n"])
def test_an_empty_config_is_refused_and_the_last_good_config_runs(
    tmp_path, sink, start_relay, text
):
    """An editor empties the file, then writes it: a reload in between must not run a relay with
    no destinations (which would end every pending delivery as one to a removed destination)."""
    path = basic_config(tmp_path, sink.url)
    relay = start_relay(path)
    running = relay.relay.config
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # seen even within one tick
    assert relay.relay.reload_if_changed() is False
    assert relay.relay.config is running
    [problem] = relay.relay.config_problems
    assert problem.startswith(str(path)) and "expected a mapping of settings" in problem
