"""JMESPath expressions compiled once, at load, into Python closures.

compile_expression() checks the syntax, the function names and their argument counts, so an
expression that loads cannot fail for those reasons while it delivers; what it compiles to gives
the same results as the JMESPath interpreter, several times faster: JMESPath's own compliance suite
(tests/test_compliance.py) runs against the closures, not the interpreter.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import jmespath
from jmespath import exceptions as jp_errors
from jmespath.functions import TYPES_MAP
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
    call: str | None = None  # the function the whole expression calls, if it is one call

    def search(self, value: Any) -> Any:
        """The expression's value for `value`.

        :raise Permanent: it failed on this value, whatever the failure (a function given the
            wrong kind of value, a number too large, a payload nested too deep): retrying cannot
            help, fixing the expression or the payload can. The message reads like
            `lower(campaign): expected a string, got an object`: the expression and the kinds of
            value, never the value, which may be personal data, nor Python's names.
        """
        try:
            return self.run(value)
        except jp_errors.JMESPathTypeError as exc:
            raise Permanent(f"{self.text}: {_type_problem(exc, self.call)}") from None
        # Anything else is a failure on this payload too (OverflowError, RecursionError...): the
        # caller expects Permanent only, and a delivery retried on it would fail the same way.
        except Exception as exc:
            raise Permanent(f"{self.text}: {_failure(exc)}") from None


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
    call = parsed["value"] if parsed["type"] == "function_expression" else None
    return Expression(text, _closure(parsed), call)


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
        return _call(node["value"], children)
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


def _call(name: str, args: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    """A call of function `name`, with the interpreter's per-call type checks.

    call_function checks each argument against the function's signature, so abs(`false`) or
    join(',', 'text') fail as they do in the interpreter. A function whose signature names no
    type (concat, coalesce...) has nothing to check once the argument count passed at load, so
    it is called directly: the check would cost more than most of these calls.
    """
    spec = FUNCTIONS.FUNCTION_TABLE[name]
    if any(declared["types"] for declared in spec["signature"]):
        return lambda value: FUNCTIONS.call_function(name, [arg(value) for arg in args])
    function = spec["function"]
    return lambda value: function(FUNCTIONS, *[arg(value) for arg in args])


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
    """JMESPath's truth: false, null, "", [] and {} are false, everything else (0 too) is true.

    Not `value not in (None, False, "", [], {})`: in Python 0 == False, so 0 would be false.
    """
    if value is None or value is False:
        return False
    return not isinstance(value, str | list | dict) or len(value) > 0


def _type_problem(exc: jp_errors.JMESPathTypeError, call: str | None) -> str:
    """What was wrong, in kinds only, never the value: 'expected a number, got a boolean', with
    the function's name when it is not the expression's own call ('trim() expected ...')."""
    # null is left out of what a function takes when it takes something else: it gives null.
    kinds = [t for t in exc.expected_types if t != "null"] or ["null"]
    expected = " or ".join(_kind(t) for t in kinds)
    got = exc.actual_type
    if got in TYPES_MAP:  # a Python type name: jmespath checked an array's element
        got = f"an array holding {_kind(TYPES_MAP[got])}"
    else:
        got = _kind(got)
    which = "" if exc.function_name == call else f"{exc.function_name}() "
    return f"{which}expected {expected}, got {got}"


def _failure(exc: Exception) -> str:
    """A failure other than a function's type check, in words rather than Python's names."""
    if isinstance(exc, OverflowError):
        return "a number is too large to compute with"
    if isinstance(exc, RecursionError):
        return "a value is nested too deep"
    return "cannot be computed on this payload (a value of a kind it cannot take)"


def _kind(jmespath_type: str) -> str:
    """A JMESPath type as a phrase: 'array-number' reads 'an array of numbers'."""
    if jmespath_type.startswith("array-"):
        return f"an array of {jmespath_type[len('array-') :]}s"
    if jmespath_type in ("null", "unknown"):
        return jmespath_type
    if jmespath_type == "expref":
        return "an expression (&...)"
    return f"{'an' if jmespath_type[0] in 'aeiou' else 'a'} {jmespath_type}"
