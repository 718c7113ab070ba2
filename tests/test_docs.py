"""The README keeps up with the code: every setting, destination, command and function is there."""

from __future__ import annotations

import pytest

from hookrelay.cli import main
from hookrelay.config import POLICY, SETTINGS
from hookrelay.destinations import DESTINATIONS
from hookrelay.functions import Functions
from tests.conftest import ROOT

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
