"""Mappings: compiled JMESPath that turns a normalised payload into a destination's record.

A mapping file holds `when`, `fields` (nested YAML builds nested output), `drop` (the opt-in "0"
filter), `omit_empty` and `tests`. Expressions are compiled once, when the file is loaded; applying
a mapping is then a walk over compiled expressions. A record the mapping rejects raises Skip.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath import exceptions as jp_errors
from jmespath import functions
from jmespath.visitor import TreeInterpreter

from hookrelay.errors import ConfigError, InvalidConfig, Permanent, Skip

if TYPE_CHECKING:
    from hookrelay.config import Document, Key

Tree = dict[str, "Expression | Tree"]


class Functions(functions.Functions):
    """Functions beyond standard JMESPath; each gives null for a null input instead of failing."""

    @functions.signature({"types": ["string", "null"]})
    def _func_lower(self, s: str | None) -> str | None:
        return None if s is None else s.lower()

    @functions.signature({"types": ["string", "null"]})
    def _func_upper(self, s: str | None) -> str | None:
        return None if s is None else s.upper()

    @functions.signature({"types": ["string", "null"]})
    def _func_trim(self, s: str | None) -> str | None:
        return None if s is None else s.strip()

    @functions.signature({"types": ["string", "null"]})
    def _func_title(self, s: str | None) -> str | None:
        return None if s is None else s.title()

    @functions.signature(
        {"types": ["string", "null"]}, {"types": ["string"]}, {"types": ["string"]}
    )
    def _func_replace(self, s: str | None, old: str, new: str) -> str | None:
        return None if s is None else s.replace(old, new)

    @functions.signature({"types": ["string", "null"]}, {"types": ["string"]})
    def _func_split(self, s: str | None, sep: str) -> list[str] | None:
        return None if s is None else s.split(sep)

    @functions.signature({"types": [], "variadic": True})
    def _func_concat(self, *values: Any) -> str:
        return "".join(_text(v) for v in values if v is not None)

    @functions.signature({"types": [], "variadic": True})
    def _func_coalesce(self, *values: Any) -> Any:
        return next((v for v in values if v not in (None, "")), None)

    @functions.signature({"types": []}, {"types": []})
    def _func_default(self, value: Any, fallback: Any) -> Any:
        return fallback if value in (None, "") else value

    @functions.signature({"types": ["string", "number", "boolean", "null"]})
    def _func_to_bool(self, value: Any) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "y", "on", "oui"):
            return True
        if text in ("0", "false", "no", "n", "off", "non", ""):
            return False
        return None

    @functions.signature({"types": ["string", "number", "null"]})
    def _func_from_unix(self, seconds: Any) -> str | None:
        try:
            moment = dt.datetime.fromtimestamp(float(seconds), dt.UTC)
        except (TypeError, ValueError, OverflowError):
            return None
        return moment.isoformat().replace("+00:00", "Z")

    @functions.signature({"types": ["string", "number", "null"]}, {"types": ["string"]})
    def _func_format_date(self, value: Any, fmt: str) -> str | None:
        moment = _parse_date(value)
        return None if moment is None else moment.strftime(fmt)

    @functions.signature()
    def _func_now(self) -> str:
        return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    @functions.signature({"types": ["string", "number", "null"]})
    def _func_md5(self, value: Any) -> str | None:
        return None if value is None else hashlib.md5(_text(value).encode()).hexdigest()

    @functions.signature({"types": ["string", "number", "null"]})
    def _func_sha256(self, value: Any) -> str | None:
        return None if value is None else hashlib.sha256(_text(value).encode()).hexdigest()

    @functions.signature({"types": ["array", "null"]})
    def _func_pick(self, pairs: list[Any] | None) -> dict[str, Any] | None:
        if pairs is None:
            return None
        return {
            _text(p[0]): p[1]
            for p in pairs
            if isinstance(p, list) and len(p) == 2 and p[0] is not None
        }


def _text(value: Any) -> str:
    """How a value reads inside a string: 45.0 as 45, true as true, objects as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _parse_date(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) or str(value).isdigit():
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


FUNCTIONS = Functions()
OPTIONS = jmespath.Options(custom_functions=FUNCTIONS)
# One interpreter for what closures do not cover: ParsedResult.search() builds a new one per call,
# throwing away its method cache. It keeps no per-search state, so threads can share it.
INTERPRETER = TreeInterpreter(OPTIONS)


@dataclass(frozen=True, slots=True)
class Expression:
    """A JMESPath expression compiled to Python closures; `text` is what the user wrote."""

    text: str
    search: Callable[[Any], Any]


def compile_expression(doc: Document, text: str, key: Key) -> Expression:
    """Compile once at load: syntax, function names and argument counts are checked here, so a
    mapping that loads cannot fail for those reasons while it delivers."""
    try:
        parsed = jmespath.compile(text).parsed
    except jp_errors.LexerError as exc:
        raise doc.error(key, f"invalid JMESPath {text!r}: {exc.msg}") from None
    except jp_errors.ParseError as exc:
        raise doc.error(
            key, f"invalid JMESPath {text!r}: {exc.msg} at column {exc.lex_position + 1}"
        ) from None
    problem = _function_problem(parsed)
    if problem:
        raise doc.error(key, f"{problem} in {text!r}")
    return Expression(text, _closure(parsed))


def _closure(node: Any) -> Callable[[Any], Any]:
    """The node as a Python function of the current value.

    The node types mappings use become direct closures, each a transcription of the JMESPath
    interpreter's own rule for it; the rest (filters, slices, ordering comparisons...) go to the
    interpreter, whose tree walk costs a method dispatch per node and per record.
    """
    kind = node["type"]
    children = [_closure(c) for c in node.get("children", ()) if isinstance(c, dict)]
    if kind == "field":
        name = node["value"]
        return lambda value: value.get(name) if isinstance(value, dict) else None
    if kind in ("subexpression", "index_expression", "pipe"):
        return partial(_chain, children)
    if kind == "literal":
        return partial(_constant, node["value"])
    if kind == "current":
        return _identity
    if kind == "function_expression":
        # Called directly: the argument count was checked at load, and a wrong type fails inside
        # the function (TypeError, AttributeError...), which Mapping._search reports like the
        # interpreter's own type error. Its per-call type check cost ten times the call.
        function = FUNCTIONS.FUNCTION_TABLE[node["value"]]["function"]
        return lambda value: function(FUNCTIONS, *[arg(value) for arg in children])
    if kind == "projection":
        return partial(_project, *children)
    if kind == "flatten":
        return partial(_flatten, children[0])
    if kind == "index":
        return partial(_index, node["value"])
    if kind == "multi_select_list":
        return lambda value: None if value is None else [c(value) for c in children]
    if kind == "multi_select_dict":
        names = [c["value"] for c in node["children"]]
        return lambda value: (
            None if value is None else {n: c(value) for n, c in zip(names, children, strict=True)}
        )
    if kind == "key_val_pair":
        return children[0]
    if kind == "or_expression":
        return lambda value: first if _truthy(first := children[0](value)) else children[1](value)
    if kind == "and_expression":
        return lambda value: children[1](value) if _truthy(first := children[0](value)) else first
    if kind == "comparator" and node["value"] in ("eq", "ne"):
        compare = TreeInterpreter.COMPARATOR_FUNC[node["value"]]
        return lambda value: compare(children[0](value), children[1](value))
    return partial(INTERPRETER.visit, node)


def _chain(steps: list[Callable[[Any], Any]], value: Any) -> Any:
    for step in steps:
        value = step(value)
    return value


def _constant(constant: Any, value: Any) -> Any:
    return constant


def _identity(value: Any) -> Any:
    return value


def _project(base: Callable[[Any], Any], each: Callable[[Any], Any], value: Any) -> Any:
    items = base(value)
    if not isinstance(items, list):
        return None
    return [r for r in map(each, items) if r is not None]


def _flatten(base: Callable[[Any], Any], value: Any) -> Any:
    items = base(value)
    if not isinstance(items, list):
        return None
    merged: list[Any] = []
    for item in items:
        if isinstance(item, list):
            merged.extend(item)
        else:
            merged.append(item)
    return merged


def _index(position: int, value: Any) -> Any:
    if not isinstance(value, list):
        return None
    try:
        return value[position]
    except IndexError:
        return None


def _function_problem(node: Any) -> str | None:
    """The first unknown function or wrong argument count in a parsed expression."""
    if not isinstance(node, dict):
        return None
    if node.get("type") == "function_expression":
        name, given = node["value"], len(node["children"])
        table = Functions.FUNCTION_TABLE
        if name not in table:
            hint = difflib.get_close_matches(name, table, n=1)
            also = f"; did you mean {hint[0]}()?" if hint else ""
            return f"unknown function {name}(){also} (the README lists them all)"
        signature = table[name]["signature"]
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if given < len(signature) or (given > len(signature) and not variadic):
            wanted = f"{len(signature)}{' or more' if variadic else ''}"
            return f"{name}() takes {wanted} argument{'s' if wanted != '1' else ''}, got {given}"
    return next(filter(None, map(_function_problem, node.get("children", []))), None)


@dataclass(frozen=True, slots=True)
class Mapping:
    name: str
    fields: Tree
    when: Expression | None = None
    drop_values: tuple[Any, ...] = ()
    drop_fields: tuple[tuple[str, ...], ...] | None = None  # None: every field
    omit_empty: bool = False
    tests: tuple[dict[str, Any], ...] = ()
    description: str = ""
    path: Path | None = None  # the file it came from; test payloads are relative to it

    def apply(self, payload: Any) -> dict[str, Any]:
        """The output record for one normalised payload.

        :raise Skip: when `when` rejects the payload.
        :raise Permanent: when an expression fails on this payload (a mapping bug; replayable).
        """
        if self.when is not None and not _truthy(self._search(self.when, payload, "when")):
            raise Skip(f"when: {self.when.text}")
        return self._prune(self._build(self.fields, payload, ()), ())

    def explain(self, payload: Any) -> list[tuple[str, str, Any]]:
        """Each output field's dotted name, expression and value, before drop and omit_empty."""
        rows: list[tuple[str, str, Any]] = []

        def walk(tree: Tree, path: tuple[str, ...]) -> None:
            for name, node in tree.items():
                if isinstance(node, dict):
                    walk(node, path + (name,))
                else:
                    field = ".".join(path + (name,))
                    rows.append((field, node.text, self._search(node, payload, field)))

        walk(self.fields, ())
        return rows

    def _build(self, tree: Tree, payload: Any, path: tuple[str, ...]) -> dict[str, Any]:
        return {
            name: self._build(node, payload, path + (name,))
            if isinstance(node, dict)
            else self._search(node, payload, ".".join(path + (name,)))
            for name, node in tree.items()
        }

    @staticmethod
    def _search(expression: Expression, payload: Any, field: str) -> Any:
        try:
            return expression.search(payload)
        except (jp_errors.JMESPathError, TypeError, AttributeError, ValueError) as exc:
            # The library's message quotes the offending value: keep only its kind (privacy).
            raise Permanent(f"field {field}: {type(exc).__name__} in {expression.text!r}") from None

    def _prune(self, record: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        out = {}
        for name, value in record.items():
            here = path + (name,)
            if isinstance(value, dict):
                value = self._prune(value, here)
                if self.omit_empty and not value:
                    continue
            elif self._is_dropped(value, here) or (self.omit_empty and value in (None, "")):
                continue
            out[name] = value
        return out

    def _is_dropped(self, value: Any, path: tuple[str, ...]) -> bool:
        if not self.drop_values or isinstance(value, bool) or value not in self.drop_values:
            return False
        return self.drop_fields is None or path in self.drop_fields


def _truthy(value: Any) -> bool:
    return value not in (None, False, "", [], {})


def load_mapping(doc: Document, name: str) -> Mapping:
    """Validate and compile one mappings/<name>.yaml; every problem in it is reported at once."""
    from hookrelay.config import attempt

    problems: list[ConfigError] = []
    data = doc.data if isinstance(doc.data, dict) else {}
    problems += doc.unknown_keys(data, (), _KEYS)
    if "fields" not in data:
        problems.append(
            doc.error((), "missing 'fields': a mapping lists its output fields as name: expression")
        )
    fields: Tree = attempt(problems, {}, _tree, doc, data.get("fields"), ("fields",), problems)
    when = attempt(problems, None, _when, doc, data)
    drop: dict[str, Any] = attempt(
        problems, {}, doc.table, data.get("drop"), ("drop",), ("values", "fields")
    )
    drop_fields = None
    if "fields" in drop:
        drop_fields = tuple(
            tuple(f.split(".")) for f in doc.strings(drop["fields"], ("drop", "fields"))
        )
    omit_empty = data.get("omit_empty", False)
    if not isinstance(omit_empty, bool):
        problems.append(doc.error(("omit_empty",), f"expected true or false, got {omit_empty!r}"))
    tests = data.get("tests") or []
    if not isinstance(tests, list) or not all(isinstance(t, dict) for t in tests):
        problems.append(doc.error(("tests",), "expected a list of {payload, expect}"))
        tests = []
    if problems:
        raise problems[0] if len(problems) == 1 else InvalidConfig(problems)
    return Mapping(
        name=name,
        fields=fields,
        when=when,
        drop_values=tuple(drop.get("values") or ()),
        drop_fields=drop_fields,
        omit_empty=omit_empty,
        tests=tuple(tests),
        description=str(data.get("description", "")),
        path=doc.path,
    )


_KEYS = ("description", "when", "fields", "drop", "omit_empty", "tests")


def _when(doc: Document, data: dict[str, Any]) -> Expression | None:
    return doc.expression(data["when"], ("when",)) if "when" in data else None


def _tree(doc: Document, value: Any, key: Key, problems: list[ConfigError]) -> Tree:
    """Compile every field; a bad one is reported and the others are still checked."""
    from hookrelay.config import attempt

    if not isinstance(value, dict) or not value:
        raise doc.error(key, "expected output fields as name: expression (nested names nest)")
    tree: Tree = {}
    for name, node in value.items():
        here = key + (name,)
        if isinstance(node, dict):
            empty: Tree = {}
            tree[str(name)] = attempt(problems, empty, _tree, doc, node, here, problems)
        else:
            compiled = attempt(problems, None, doc.expression, node, here)
            if compiled is not None:
                tree[str(name)] = compiled
    return tree
