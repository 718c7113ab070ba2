"""JMESPath's own compliance suite, run against the compiled closures rather than the interpreter.

Each case of tests/fixtures/jmespath-compliance/ (its README says where the files come from) is
compiled and searched the way a mapping does it. A `result` must equal what the closure gives, as
JSON values (1 == 1.0, but true is not 1). An `error` must surface where a mapping would meet it:
syntax, unknown-function and invalid-arity at load (ConfigError), invalid-type and invalid-value
on the payload (Permanent). A `bench` case has no expected value: it must give what the
interpreter gives, or fail where the interpreter fails.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jmespath
import pytest

from hookrelay.document import Document
from hookrelay.errors import ConfigError, Permanent
from hookrelay.expressions import OPTIONS, compile_expression

SUITE = Path(__file__).parent / "fixtures" / "jmespath-compliance"
WHERE = {
    "syntax": "load",
    "unknown-function": "load",
    "invalid-arity": "load",
    "invalid-type": "search",
    "invalid-value": "search",
}


def cases():
    for path in sorted(SUITE.glob("*.json")):
        groups = json.loads(path.read_text(encoding="utf-8"))
        flat = [(group["given"], case) for group in groups for case in group["cases"]]
        for index, (given, case) in enumerate(flat):
            yield pytest.param(given, case, id=f"{path.stem}-{index}")


@pytest.fixture(scope="module")
def doc(tmp_path_factory):
    path = tmp_path_factory.mktemp("compliance") / "mapping.yaml"
    path.write_text("{}\n", encoding="utf-8")
    return Document(path)


@pytest.mark.parametrize(("given", "case"), list(cases()))
def test_compiled_expressions_pass_the_compliance_suite(doc, given, case):
    where, value = outcome(doc, case["expression"], given)
    if "error" in case:
        assert where == WHERE[case["error"]], value
    elif "result" in case:
        assert where == "result" and same(value, case["result"]), value
    else:
        assert case["bench"] in ("full", "parse")
        try:
            expected = jmespath.search(case["expression"], given, options=OPTIONS)
        except jmespath.exceptions.JMESPathError:
            assert where != "result", value
        else:
            assert where == "result" and same(value, expected), value


def test_the_suite_is_all_there():
    names = sorted(p.name for p in SUITE.glob("*.json"))
    assert len(names) == 12 and len(list(cases())) == 725, names


def outcome(doc, expression: str, given: Any) -> tuple[str, Any]:
    """("result", value), or where it failed ("load" or "search") with the message."""
    try:
        compiled = compile_expression(doc, expression, ("expression",))
    except ConfigError as exc:
        return "load", str(exc)
    try:
        return "result", compiled.search(given)
    except Permanent as exc:
        return "search", exc.message


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: 1 == 1.0, but true is not 1 (in Python, True == 1)."""
    if isinstance(a, list) or isinstance(b, list):
        return (
            isinstance(a, list)
            and isinstance(b, list)
            and len(a) == len(b)
            and all(map(same, a, b))
        )
    if isinstance(a, dict) or isinstance(b, dict):
        return (
            isinstance(a, dict)
            and isinstance(b, dict)
            and a.keys() == b.keys()
            and all(same(a[k], b[k]) for k in a)
        )
    return isinstance(a, bool) == isinstance(b, bool) and a == b
