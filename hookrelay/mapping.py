"""Mappings: compiled JMESPath that turns a normalised payload into a destination's record.

A mapping file holds `when`, `fields` (nested YAML builds nested output), `drop` (the opt-in "0"
filter), `omit_empty` and `tests`. Expressions are compiled once, when the file is loaded; applying
a mapping is then a walk over compiled expressions. A record the mapping rejects raises Skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hookrelay.errors import ConfigError, InvalidConfig, Permanent, Skip
from hookrelay.expressions import Expression, truthy

if TYPE_CHECKING:
    from hookrelay.document import Document, Key

Tree = dict[str, "Expression | Tree"]


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
        if self.when is not None and not truthy(self._search(self.when, payload, "when")):
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
        except Permanent as exc:
            raise Permanent(f"field {field}: {exc.message}") from None

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


def load_mapping(doc: Document, name: str) -> Mapping:
    """Validate and compile one mappings/<name>.yaml; every problem in it is reported at once."""
    from hookrelay.document import attempt

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
    from hookrelay.document import attempt

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
