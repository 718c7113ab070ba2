"""`relay test`: run the `tests:` of every mapping file and say exactly what differs.

An `expect` lists the fields to check, at any depth; fields it does not list are not checked, and
`null` means "absent or null" (so a test can say an opt-in "0" was left out). `expect: skipped`
means the mapping's `when` must reject the payload.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hookrelay.errors import Permanent, Skip
from hookrelay.mapping import Mapping
from hookrelay.sources import normalise

ABSENT = object()


@dataclass(frozen=True, slots=True)
class Result:
    mapping: str
    number: int  # 1-based, in the file's order
    payload: str
    differences: list[str]

    @property
    def passed(self) -> bool:
        return not self.differences


def run_tests(mapping: Mapping, fmt: str) -> list[Result]:
    base = mapping.path.parent if mapping.path else Path(".")
    return [_run(mapping, fmt, base, n, test) for n, test in enumerate(mapping.tests, 1)]


def _run(mapping: Mapping, fmt: str, base: Path, number: int, test: dict[str, Any]) -> Result:
    name = str(test.get("payload", ""))
    try:
        payload = json.loads((base / name).read_bytes())
    except (OSError, ValueError) as exc:
        return Result(mapping.name, number, name, [f"cannot read payload {name!r}: {exc}"])
    expect = test.get("expect")
    try:
        record: Any = mapping.apply(normalise(fmt, payload))
    except Skip as exc:
        record = "skipped"
        reason = exc.message
    except Permanent as exc:
        return Result(mapping.name, number, name, [f"the mapping failed: {exc.message}"])
    if expect == "skipped" or record == "skipped":
        if expect == record:
            return Result(mapping.name, number, name, [])
        got = (
            f"skipped ({reason})" if record == "skipped" else json.dumps(record, ensure_ascii=False)
        )
        return Result(mapping.name, number, name, [f"expected {_show(expect)}, got {got}"])
    if not isinstance(expect, dict):
        return Result(mapping.name, number, name, ["expect must be `skipped` or fields to check"])
    return Result(mapping.name, number, name, differences(expect, record))


def differences(expect: dict[str, Any], record: dict[str, Any], path: str = "") -> list[str]:
    """One line per field whose value is not the expected one."""
    found = []
    for field, wanted in expect.items():
        where = f"{path}{field}"
        got = record.get(field, ABSENT) if isinstance(record, dict) else ABSENT
        if isinstance(wanted, dict) and isinstance(got, dict):
            found += differences(wanted, got, where + ".")
        elif wanted is None and got in (ABSENT, None):
            continue
        elif got is ABSENT or got != wanted:
            found.append(f"{where}: expected {_show(wanted)}, got {_show(got)}")
    return found


def _show(value: Any) -> str:
    if value is ABSENT:
        return "nothing (the field is absent)"
    return json.dumps(value, ensure_ascii=False)
