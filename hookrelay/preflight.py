"""What a valid configuration is checked for before it runs: its mappings' own tests, which refuse
it when one fails, and warnings, which do not.

* refuse_failing_tests(): a mapping whose `tests:` fail is refused like an invalid one, by
  `relay check`, at start-up and on reload. A test whose payload file cannot be read (a deploy
  without samples/) is not run, and does not refuse anything.
* find_warnings(): a route that sends a mapping without a field its destination requires (every
  record would be skipped); a field path that none of the sample payloads has (`variables.emial`).

Sample payloads are the mapping's own test payloads and the JSON files of samples/ beside
config.yaml, normalised as the mapping's sources normalise them. With none, no path is checked.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jmespath

from hookrelay.config import Config
from hookrelay.document import Document, Key
from hookrelay.errors import BadRequest, ConfigError, InvalidConfig, RelayError
from hookrelay.mapping import Mapping, Tree
from hookrelay.mapping_tests import run_tests
from hookrelay.sources import events_in, normalise

PayloadPath = tuple[str, ...]  # field names, and EACH for "every element of a list"
EACH = "[]"


def refuse_failing_tests(config: Config) -> None:
    """Refuse a configuration when one of its mappings' own tests fails.

    :raise InvalidConfig: one problem per failing test, at its line, naming the fields that differ
        but never their values: the log and /readyz show it.
    """
    problems = []
    for name, mapping in sorted(config.mappings.items()):
        lines = _lines(mapping.path)
        for result in run_tests(mapping, format_of(config, name)):
            if result.ran and not result.passed:
                message = f"test {result.number} ({result.payload}) fails: {result.summary}"
                line = lines.get(("tests", result.number - 1))
                problems.append(
                    ConfigError(f"{message}; `relay test` says more", mapping.path, line, "tests")
                )
    if problems:
        raise InvalidConfig(problems)


def find_warnings(config: Config) -> list[str]:
    """What `relay check` prints, and the relay logs at start-up and reload, as warnings: each
    names the file, the line and the key."""
    found = [*_unmade_fields(config), *_alert_warnings(config)]
    examples = _payloads(config.path.parent / "samples")
    for name, mapping in sorted(config.mappings.items()):
        payloads = [*_test_payloads(mapping), *examples]
        seen = _paths_in(normalise(fmt, p) for fmt in formats_of(config, name) for p in payloads)
        if seen:
            found += _unknown_paths(mapping, seen)
    return found


def format_of(config: Config, mapping: str) -> str:
    """The format a mapping's tests read: its first route's source's, else qualifio."""
    return formats_of(config, mapping)[0]


def formats_of(config: Config, mapping: str) -> list[str]:
    routed = [config.sources[r.source].format for r in config.routes if r.mapping == mapping]
    return list(dict.fromkeys(routed)) or ["qualifio"]


# --- alerts that cannot reach anyone, or link nowhere --------------------------------------------


def _alert_warnings(config: Config) -> Iterator[str]:
    lines, alerting = _lines(config.path), config.alerting
    if alerting.channels and not alerting.public_url:
        yield _located(
            config.path,
            lines.get(("alerts",)),
            "alerts",
            "no public_url: messages will not link to the admin console; set it to the "
            "relay's https:// address",
        )
    for key in ("alert_on", "alert_every", "alert_wait"):
        if not alerting.channels and (key,) in lines:
            yield _located(
                config.path,
                lines[(key,)],
                key,
                "no alert will be sent: `alerts` lists no channel (slack, email or http)",
            )


# --- a route to a destination that requires a field the mapping never makes ---------------------


def _unmade_fields(config: Config) -> Iterator[str]:
    lines = _lines(config.path)
    for i, route in enumerate(config.routes):
        mapping = config.mappings[route.mapping]
        for name in route.destinations:
            destination = config.destinations[name]
            missing = [f for f in destination.required if f not in mapping.fields]
            if missing:
                fields = ", ".join(f"`{f}`" for f in missing)
                yield _located(
                    config.path,
                    lines.get(("routes", i)),
                    f"routes.{i}",
                    f"mapping {route.mapping} ({mapping.path}) has no field {fields}, which the "
                    f"{destination.type} destination {name} requires: every record would be "
                    "skipped",
                )


# --- field paths that no sample payload has -------------------------------------------------


def _unknown_paths(mapping: Mapping, seen: set[PayloadPath]) -> Iterator[str]:
    lines = _lines(mapping.path)
    known = sorted(_shown(p) for p in seen)
    for key, text in _expressions(mapping):
        for path in _missing(jmespath.compile(text).parsed, seen):
            hint = difflib.get_close_matches(_shown(path), known, n=1)
            guess = f"; did you mean `{hint[0]}`?" if hint else ""
            yield _located(
                mapping.path,
                lines.get(key),
                ".".join(map(str, key)),
                f"`{_shown(path)}` is in none of the sample payloads{guess}",
            )


def _expressions(mapping: Mapping) -> Iterator[tuple[Key, str]]:
    if mapping.when is not None:
        yield ("when",), mapping.when.text

    def walk(tree: Tree, key: Key) -> Iterator[tuple[Key, str]]:
        for name, node in tree.items():
            if isinstance(node, dict):
                yield from walk(node, key + (name,))
            else:
                yield key + (name,), node.text

    yield from walk(mapping.fields, ("fields",))


def _missing(node: Any, seen: set[PayloadPath]) -> list[PayloadPath]:
    """The paths an expression reads that no sample has, but the longest only: `a.b.c`, not also
    `a` and `a.b`."""
    read: list[PayloadPath] = []
    _reads(node, _At(()), read)
    missing = [p for p in dict.fromkeys(read) if p not in seen]
    return [p for p in missing if not any(q[: len(p)] == p and q != p for q in missing)]


@dataclass(frozen=True, slots=True)
class _At:
    """Where in the payload a value comes from; `collected`: a list of the values at `path`, as
    a projection (`a[].b`) makes."""

    path: PayloadPath
    collected: bool = False


def _reads(node: dict[str, Any], at: _At | None, read: list[PayloadPath]) -> _At | None:
    """Add to `read` each field path `node` reads when evaluated at `at` (None: somewhere this
    cannot tell, like a function's `&expression`); return where its own value comes from."""
    kind, kids = node["type"], [k for k in node.get("children", ()) if isinstance(k, dict)]
    if kind == "field":
        if at is None or at.collected:
            return None
        read.append(at.path + (node["value"],))
        return _At(at.path + (node["value"],))
    if kind in ("current", "identity"):
        return at
    if kind in ("subexpression", "pipe"):
        for kid in kids:
            at = _reads(kid, at, read)
        return at
    if kind == "index_expression":
        of = _reads(kids[0], at, read)
        return of if kids[1]["type"] == "slice" else _element(of)
    if kind == "flatten":
        of = _reads(kids[0], at, read)
        return None if of is None else _At(_element_path(of), collected=True)
    if kind in ("projection", "filter_projection"):
        each = _element(_reads(kids[0], at, read))
        for condition in kids[2:]:
            _reads(condition, each, read)
        value = _reads(kids[1], each, read)
        return None if value is None else _At(value.path, collected=True)
    if kind in ("value_projection", "expref"):  # the keys of an object, an argument's elements
        _reads(kids[0], at if kind == "value_projection" else None, read)
        return None
    for kid in kids:  # functions, comparisons, and/or/not, multi-selects: each at the same place
        _reads(kid, at, read)
    return None


def _element(at: _At | None) -> _At | None:
    return None if at is None else _At(_element_path(at))


def _element_path(at: _At) -> PayloadPath:
    return at.path if at.collected else at.path + (EACH,)


def _paths_in(payloads: Iterator[Any]) -> set[PayloadPath]:
    seen: set[PayloadPath] = set()

    def walk(value: Any, path: PayloadPath) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                seen.add(path + (str(name),))
                walk(item, path + (str(name),))
        elif isinstance(value, list):
            seen.add(path + (EACH,))
            for item in value:
                walk(item, path + (EACH,))

    for payload in payloads:
        walk(payload, ())
    return seen


def _shown(path: PayloadPath) -> str:
    """A path as JMESPath writes it: `questionnaire[].score`, `"odd.name".x`."""
    text = ""
    for part in path:
        if part == EACH:
            text += EACH
        else:
            name = part if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part) else json.dumps(part)
            text += f".{name}" if text else name
    return text


# --- reading payloads and lines -----------------------------------------------------------------


def _test_payloads(mapping: Mapping) -> list[dict[str, Any]]:
    base = mapping.path.parent if mapping.path else Path(".")
    return _read([base / str(t.get("payload", "")) for t in mapping.tests])


def _payloads(folder: Path) -> list[dict[str, Any]]:
    return _read(sorted(folder.glob("*.json")))


def _read(paths: list[Path]) -> list[dict[str, Any]]:
    """The events of each readable JSON file; one that cannot be read is `relay test`'s to say."""
    events = []
    for path in paths:
        try:
            events += events_in(json.loads(path.read_bytes()))
        except (OSError, ValueError, BadRequest):
            continue
    return events


def _lines(path: Path | None) -> dict[Key, int]:
    try:
        return Document(path).lines if path else {}
    except RelayError:  # changed since it was loaded: the warning goes without its line
        return {}


def _located(path: Path | None, line: int | None, key: str, message: str) -> str:
    where = ":".join(str(p) for p in (path, line) if p is not None)
    return f"{where}: {key}: {message}"
