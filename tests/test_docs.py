"""The README keeps up with the code: every setting, destination, command and function is there,
and every YAML example in it passes `relay check`. The files Heroku reads describe this project."""

from __future__ import annotations

import json
import re
import shutil
import tomllib
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from hookrelay.cli import main
from hookrelay.config import POLICY, SETTINGS
from hookrelay.destinations import DESTINATIONS
from hookrelay.functions import Functions
from tests.conftest import ROOT, relay_command
from tests.fakes.google import EMAIL, private_key
from tests.fakes.vendors import BREVO_KEY, MAILCHIMP_KEY, TRELLO_KEY, TRELLO_TOKEN

README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [s.name for s in (*SETTINGS, *POLICY)])
def test_every_setting_is_documented(name):
    assert f"| `{name}` |" in README


@pytest.mark.parametrize("kind", sorted(DESTINATIONS))
def test_every_destination_type_is_documented(kind):
    assert f"| `{kind}` |" in README


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_is_documented(command):
    assert f"| `relay {command}" in README


EXTRA_FUNCTIONS = sorted(n[len("_func_") :] for n in vars(Functions) if n.startswith("_func_"))


@pytest.mark.parametrize("function", EXTRA_FUNCTIONS)
def test_every_extra_function_is_documented_with_an_example(function):
    assert f"| `{function}` | `{function}(" in README


# Every YAML block of the README passes `relay check`: a whole config as it is, beside the example
# mappings; a config snippet (one destination and its route) merged into the example config.yaml;
# a mapping as a file of mappings/, with its tests run; a mapping snippet merged into the example
# newsletter.yaml. A block that cannot be checked says why, on the line before it:
NOT_CHECKED = re.compile(r"<!-- docs-test: not checked: (.+?) -->\n$")
MAPPING_KEYS = ("description", "when", "fields", "drop", "omit_empty", "tests")

#: What the README's blocks read with ${VAR}: a value of the right shape for each.
README_ENV = {
    "QUALIFIO_SECRET": "readme-secret-0123456789",
    "ZAPIER_HOOK_URL": "https://hooks.example.com/catch/1/abc",
    "OUTBOUND_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "TRELLO_KEY": TRELLO_KEY,
    "TRELLO_TOKEN": TRELLO_TOKEN,
    "MAILCHIMP_API_KEY": MAILCHIMP_KEY,
    "BREVO_API_KEY": BREVO_KEY,
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/readme",
    "SMTP_URL": "smtp://relay%40example.com:password@smtp.example.com:587",
}


def yaml_blocks() -> list[tuple[int, str, str | None]]:
    """Each ```yaml block of the README: its line, its text, and why it is not checked (if so)."""
    blocks = []
    for match in re.finditer(r"^```yaml\n(.*?)^```$", README, re.S | re.M):
        before = README[: match.start()]
        reason = NOT_CHECKED.search(before)
        blocks.append((before.count("\n") + 1, match.group(1), reason and reason.group(1)))
    return blocks


def kind_of(block: str) -> str:
    data = yaml.safe_load(block)
    keys = set(data) if isinstance(data, dict) else {"(not a mapping of keys)"}
    if keys <= {s.name for s in SETTINGS}:
        return "config" if "sources" in keys else "config snippet"
    if keys <= set(MAPPING_KEYS):
        return "mapping" if "fields" in keys else "mapping snippet"
    return f"neither a config nor a mapping (keys {sorted(keys)})"


def merged(base: dict[str, Any], snippet: dict[str, Any]) -> dict[str, Any]:
    """`base` with the snippet's sections added: tables merged, lists extended."""
    out = dict(base)
    for key, value in snippet.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + value
        else:
            out[key] = value
    return out


BLOCKS = yaml_blocks()


def test_the_readme_has_its_config_and_mapping_examples():
    kinds = [kind_of(text) for _, text, _ in BLOCKS]
    assert {"config", "config snippet", "mapping", "mapping snippet"} <= set(kinds)


@pytest.mark.parametrize(("line", "text", "reason"), BLOCKS, ids=[f"line {b[0]}" for b in BLOCKS])
def test_every_yaml_block_of_the_readme_passes_relay_check(
    tmp_path, monkeypatch, line, text, reason
):
    if reason is not None:
        assert reason.strip(), f"README line {line}: say why the block is not checked"
        return
    kind = kind_of(text)
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    config = tmp_path / "config.yaml"
    shutil.copy(ROOT / "config.yaml", config)
    if kind == "config":
        config.write_text(text, encoding="utf-8")
    elif kind == "config snippet":
        example = yaml.safe_load(config.read_text(encoding="utf-8"))
        config.write_text(yaml.safe_dump(merged(example, yaml.safe_load(text))), encoding="utf-8")
    elif kind == "mapping":
        (tmp_path / "mappings/readme_example.yaml").write_text(text, encoding="utf-8")
    elif kind == "mapping snippet":
        newsletter = tmp_path / "mappings/newsletter.yaml"
        example = yaml.safe_load(newsletter.read_text(encoding="utf-8"))
        newsletter.write_text(yaml.safe_dump(merged(example, yaml.safe_load(text))), "utf-8")
    else:
        pytest.fail(f"README line {line}: a YAML block that is {kind}; check it here, or mark it")
    values = json.dumps(yaml.safe_load(config.read_text(encoding="utf-8")))  # not comments
    wanted = set(re.findall(r"\$\{([A-Za-z_]\w*)\}", values))
    assert wanted <= {*README_ENV, "GOOGLE_CREDENTIALS"}, "give README_ENV a value for each"
    # An optional secret left unset (the README's ${QUALIFIO_OLD_SECRET:-}) is left out.
    for name in ("QUALIFIO_OLD_SECRET", "DATABASE_URL", "RELAY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    env = {**README_ENV, "GOOGLE_CREDENTIALS": json.dumps(service_account_key())}
    checked = relay_command("check", "--config", str(config), env=env)
    assert checked.returncode == 0, f"README line {line} ({kind}): {checked.stderr}"
    assert checked.stdout.startswith(f"{config}: ok: ")
    if kind.startswith("mapping"):  # its own tests: pass too
        tested = relay_command("test", "--config", str(config), env=env)
        assert tested.returncode == 0, f"README line {line}: {tested.stdout}"


def service_account_key() -> dict[str, str]:
    """A Google service account key of the right shape (no request is made with it)."""
    pem = private_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return {
        "type": "service_account",
        "project_id": "relay-readme",
        "private_key_id": "0123456789abcdef",
        "private_key": pem.decode(),
        "client_email": EMAIL,
        "client_id": "100000000000000000000",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


# --- Heroku: what its Python buildpack and app.json (Heroku Button, review apps) read -------------

APP_JSON = json.loads((ROOT / "app.json").read_text(encoding="utf-8"))
#: The keys of Heroku's app.json schema (https://devcenter.heroku.com/articles/app-json-schema).
APP_JSON_KEYS = {
    *("name", "description", "keywords", "website", "repository", "logo", "success_url"),
    *("scripts", "env", "formation", "addons", "buildpacks", "environments", "stack", "image"),
}
ENV_KEYS = {"description", "value", "required", "generator"}


def test_app_json_runs_the_procfile_on_postgresql_with_a_generated_secret():
    assert set(APP_JSON) <= APP_JSON_KEYS
    env = APP_JSON["env"]
    assert all(re.fullmatch(r"[A-Z][A-Z0-9_]*", n) and set(v) <= ENV_KEYS for n, v in env.items())
    assert env["QUALIFIO_SECRET"]["generator"] == "secret"
    plans = [a if isinstance(a, str) else a["plan"] for a in APP_JSON["addons"]]
    assert [p for p in plans if p.partition(":")[0] == "heroku-postgresql"]
    procfile = (ROOT / "Procfile").read_text(encoding="utf-8").splitlines()
    processes = {line.partition(":")[0] for line in procfile if line.strip()}
    formation = APP_JSON["formation"]
    assert set(formation) == processes == {"web", "worker"}
    assert all(set(f) <= {"quantity", "size"} and f["quantity"] >= 1 for f in formation.values())
    assert env["RELAY_WORKER"]["value"] == "off"  # the worker dyno delivers; web ones only receive
    assert APP_JSON["buildpacks"] == [{"url": "heroku/python"}]


def test_requirements_txt_installs_this_project_whose_dependencies_pyproject_declares():
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert [kept for line in lines if (kept := line.partition("#")[0].strip())] == ["."]


def test_python_version_is_the_oldest_python_pyproject_accepts():
    pinned = (ROOT / ".python-version").read_text(encoding="utf-8").strip()
    assert re.fullmatch(r"3\.\d+", pinned), "a major version: Heroku installs its latest patch"
    with open(ROOT / "pyproject.toml", "rb") as f:
        requires = tomllib.load(f)["project"]["requires-python"]
    lowest = re.fullmatch(r">=\s*(\d+\.\d+)(\.0)?", requires.split(",")[0].strip())
    assert lowest and lowest[1] == pinned, f"requires-python {requires!r}, .python-version {pinned}"
