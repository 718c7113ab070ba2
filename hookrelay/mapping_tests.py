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

from hookrelay.errors import BadRequest, Permanent, Skip
from hookrelay.mapping import Mapping
from hookrelay.sources import events_in, normalise

ABSENT = object()


@dataclass(frozen=True, slots=True)
class Result:
    mapping: str
    number: int  # 1-based, in the file's order
    payload: str
    differences: list[str]
    #: What failed, without a value from the payload or the expectation (they may be a
    #: participant's data): for the log and /readyz. `relay test` shows `differences`.
    summary: str = ""
    ran: bool = True  # False: its payload could not be read, so the mapping was not tested

    @property
    def passed(self) -> bool:
        return not self.differences


def run_tests(mapping: Mapping, fmt: str) -> list[Result]:
    base = mapping.path.parent if mapping.path else Path(".")
    return [_run(mapping, fmt, base, n, test) for n, test in enumerate(mapping.tests, 1)]


def _run(mapping: Mapping, fmt: str, base: Path, number: int, test: dict[str, Any]) -> Result:
    name = str(test.get("payload", ""))
    try:
        events = events_in(json.loads((base / name).read_bytes()))
    except (OSError, ValueError, BadRequest) as exc:
        said = f"cannot read payload {name!r}: {exc}"
        return Result(mapping.name, number, name, [said], said, ran=False)
    if len(events) > 1:
        said = f"the payload holds {len(events)} events; a test takes one: one object per file"
        return Result(mapping.name, number, name, [said], said)
    expect = test.get("expect")
    try:
        record: Any = mapping.apply(normalise(fmt, events[0]))
    except Skip as exc:
        record = "skipped"
        reason = exc.message
    except Permanent as exc:  # its message names the field and the kinds of value, no value
        said = f"the mapping failed: {exc.message}"
        return Result(mapping.name, number, name, [said], said)
    if expect == "skipped" or record == "skipped":
        if expect == record:
            return Result(mapping.name, number, name, [])
        if record == "skipped":
            said, got = f"expected a record, got skipped ({reason})", f"skipped ({reason})"
        else:
            said, got = "expected skipped, got a record", json.dumps(record, ensure_ascii=False)
        return Result(mapping.name, number, name, [f"expected {_show(expect)}, got {got}"], said)
    if not isinstance(expect, dict):
        said = "expect must be `skipped` or fields to check"
        return Result(mapping.name, number, name, [said], said)
    found = differences(expect, record)
    fields = [line.partition(": expected ")[0] for line in found]  # differences' own form
    said = f"{', '.join(fields)} differ{'s' if len(fields) == 1 else ''} from what it expects"
    return Result(mapping.name, number, name, found, said if found else "")


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
