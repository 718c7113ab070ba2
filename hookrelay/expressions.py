"""JMESPath expressions compiled once, at load, into Python closures.

compile_expression() checks the syntax, the function names and their argument counts, so an
expression that loads cannot fail for those reasons while it delivers; what it compiles to gives
the same results as the JMESPath interpreter (tests/test_mapping.py checks it), several times
faster.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath import exceptions as jp_errors
from jmespath.visitor import TreeInterpreter

from hookrelay.errors import Permanent
from hookrelay.functions import Functions

if TYPE_CHECKING:
    from hookrelay.document import Document, Key

FUNCTIONS = Functions()
OPTIONS = jmespath.Options(custom_functions=FUNCTIONS)
# One interpreter for what closures do not cover: ParsedResult.search() builds a new one per call,
# throwing away its method cache. It keeps no per-search state, so threads can share it.
INTERPRETER = TreeInterpreter(OPTIONS)


@dataclass(frozen=True, slots=True)
class Expression:
    """A JMESPath expression compiled to Python closures; `text` is what the user wrote."""

    text: str
    run: Callable[[Any], Any]

    def search(self, value: Any) -> Any:
        """The expression's value for `value`.

        :raise Permanent: it failed on this value (a function given the wrong kind of value):
            retrying cannot help, fixing the expression can. The message names the error's kind,
            never the value, which may be personal data.
        """
        try:
            return self.run(value)
        except (jp_errors.JMESPathError, TypeError, AttributeError, ValueError) as exc:
            raise Permanent(f"{type(exc).__name__} in {self.text!r}") from None


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
    if kind == "subexpression" and all(c["type"] == "field" for c in node["children"]):
        return partial(_path, tuple(c["value"] for c in node["children"]))  # a.b.c: one loop
    if kind in ("subexpression", "index_expression", "pipe"):
        return partial(_chain, children)
    if kind == "literal":
        return partial(_constant, node["value"])
    if kind == "current":
        return _identity
    if kind == "function_expression":
        # Called directly: the argument count was checked at load, and a wrong type fails inside
        # the function (TypeError, AttributeError...), which Expression.search reports like the
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
        return lambda value: first if truthy(first := children[0](value)) else children[1](value)
    if kind == "and_expression":
        return lambda value: children[1](value) if truthy(first := children[0](value)) else first
    if kind == "comparator" and node["value"] in ("eq", "ne"):
        compare = TreeInterpreter.COMPARATOR_FUNC[node["value"]]
        return lambda value: compare(children[0](value), children[1](value))
    return partial(INTERPRETER.visit, node)


def _chain(steps: list[Callable[[Any], Any]], value: Any) -> Any:
    for step in steps:
        value = step(value)
    return value


def _path(names: tuple[str, ...], value: Any) -> Any:
    for name in names:
        if not isinstance(value, dict):
            return None
        value = value.get(name)
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


def truthy(value: Any) -> bool:
    """JMESPath's truth: false, null, "", [] and {} are false."""
    return value not in (None, False, "", [], {})
