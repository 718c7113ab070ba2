"""Config errors name the file, the line and the key, and never echo a secret."""

from __future__ import annotations

import pytest

from hookrelay.config import load_config
from hookrelay.errors import ConfigError
from tests.conftest import PASS_MAPPING, write_config

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
            "unknown destination type 'htp'; expected one of file, http",
        ),
        (("mapping: pass", "mapping: nope"), "mappings/nope.yaml", "cannot read the file"),
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
    ],
)
def test_errors_name_file_line_and_key(tmp_path, change, where, message):
    path = write_config(tmp_path, GOOD.replace(*change), {"pass": PASS_MAPPING})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert text.startswith(str(tmp_path / where) if "/" in where else f"{tmp_path}/{where}"), text
    assert message in text


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
