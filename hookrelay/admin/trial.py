"""What the playground runs: a mapping compiled from the text typed in it, applied to a payload,
and the mapping's own `tests:`, through the code the relay itself runs (hookrelay.mapping,
hookrelay.mapping_tests), so the playground and the relay cannot disagree.

The text is read without the server's environment: a ${VAR} typed in the playground reads
nothing, so nobody can make a page show a secret. A test payload is read only from the relay's
own folder (beside config.yaml).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from hookrelay.config import Config
from hookrelay.document import Document, Key
from hookrelay.errors import BadRequest, ConfigError, InvalidConfig, Permanent, Skip
from hookrelay.mapping import Mapping, load_mapping
from hookrelay.mapping_tests import Result, run_tests
from hookrelay.sources import events_in, normalise

NAME = re.compile(r"[A-Za-z0-9_-]{1,100}")  # a mapping's name, as config.yaml's names
_FIELD = re.compile(r"field (\S+): ")  # how Mapping.apply names the field that failed


class Compiled(NamedTuple):
    mapping: Mapping | None  # None: it has problems
    problems: list[dict[str, Any]]  # each with its line and key
    lines: dict[Key, int]  # the line of each key, to say where an expression failed


def compile_text(config: Config, name: str, text: str) -> Compiled:
    """The mapping `text` makes, as mappings/<name>.yaml would."""
    path = mappings_dir(config) / f"{name if NAME.fullmatch(name) else 'playground'}.yaml"
    try:
        doc = Document(path, text, environ={})
        return Compiled(load_mapping(doc, path.stem), [], doc.lines)
    except ConfigError as exc:  # InvalidConfig: several, each with its line
        problems = exc.problems if isinstance(exc, InvalidConfig) else [exc]
        return Compiled(None, [_problem("mapping", p.line, p.key, p.message) for p in problems], {})


def run(config: Config, name: str, text: str, payload: str, fmt: str) -> dict[str, Any]:
    """Everything the Result region shows: `errors` (the mapping's or the payload's, each with
    its line and key: nothing else ran), `results` (per event of the payload: its record, or
    `skipped` with the reason, or the error), and `tests` (the mapping's own)."""
    mapping, errors, lines = compile_text(config, name, text)
    events = _events(payload, errors)
    found: dict[str, Any] = {"errors": errors, "results": [], "tests": []}
    if mapping is None:
        return found
    found["tests"] = [_test(r) for r in tests_of(config, mapping, fmt)]
    if events is not None:
        found["results"] = [_apply(mapping, normalise(fmt, e), lines) for e in events]
    return found


def _events(payload: str, errors: list[Any]) -> list[dict[str, Any]] | None:
    """The events of the payload text (an array is one event per element, as on ingest)."""
    if not payload.strip():
        errors.append(_problem("payload", None, None, "paste a payload, or choose one"))
        return None
    try:
        return events_in(json.loads(payload))
    except json.JSONDecodeError as exc:
        errors.append(_problem("payload", exc.lineno, None, f"not valid JSON: {exc.msg}"))
    except BadRequest as exc:
        errors.append(_problem("payload", None, None, exc.message))
    return None


def _apply(mapping: Mapping, data: dict[str, Any], lines: dict[Key, int]) -> dict[str, Any]:
    try:
        return {"outcome": "record", "record": mapping.apply(data)}
    except Skip as exc:
        return {"outcome": "skipped", "reason": exc.message}
    except Permanent as exc:  # an expression failed on this payload: where, when we can tell
        field = _FIELD.match(exc.message)
        key: tuple[str, ...] = ()
        if field:
            name = field.group(1)
            key = ("when",) if name == "when" else ("fields", *name.split("."))
        return {
            "outcome": "error",
            "message": exc.message,
            "key": ".".join(key) or None,
            "line": lines.get(key),
        }
    except Exception as exc:  # whatever one payload provokes: said, not raised
        return {"outcome": "error", "message": f"internal error ({type(exc).__name__})"}


def tests_of(config: Config, mapping: Mapping, fmt: str) -> list[Result]:
    """The mapping's own tests, each run on its own; one whose payload lies outside the relay's
    folder is not read."""
    home = config.path.parent.resolve()
    base = mapping.path.parent if mapping.path else home
    results = []
    for number, test in enumerate(mapping.tests, 1):
        payload = str(test.get("payload", ""))
        if not (base / payload).resolve().is_relative_to(home):
            said = f"payload {payload!r} is outside the relay's folder: not read here"
            results.append(Result(mapping.name, number, payload, [said], said, ran=False))
            continue
        one = run_tests(dataclasses.replace(mapping, tests=(test,)), fmt)[0]
        results.append(dataclasses.replace(one, number=number))
    return results


def _test(r: Result) -> dict[str, Any]:
    return {
        "number": r.number,
        "payload": r.payload,
        "passed": r.passed,
        "ran": r.ran,
        "differences": r.differences,
    }


def _problem(where: str, line: int | None, key: str | None, message: str) -> dict[str, Any]:
    return {"where": where, "line": line, "key": key, "message": message}


def mappings_dir(config: Config) -> Path:
    return config.path.parent / "mappings"


def mapping_files(config: Config) -> list[str]:
    """The names of the mapping files there are, to choose from."""
    return sorted(p.stem for p in mappings_dir(config).glob("*.yaml"))


def samples(config: Config) -> list[str]:
    """The sample payloads beside config.yaml (samples/*.json), to choose from."""
    return sorted(p.name for p in (config.path.parent / "samples").glob("*.json"))
