"""Reading YAML with line numbers: the one place that parses YAML, for config.yaml and mappings.

A Document expands ${VAR} and ${VAR:-default} and keeps PyYAML's marks, so each error names the
file, the line and the key; a value that came from the environment (maybe a secret) is never echoed
back in an error. Its small typed getters each raise such an error, so callers stay one line.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from hookrelay.errors import ConfigError, InvalidConfig

if TYPE_CHECKING:
    from hookrelay.expressions import Expression

Key = tuple[str | int, ...]
T = TypeVar("T")


def seconds(value: Any) -> float:
    """Seconds from 10, 1.5, '500ms', '10s', '2m', '1h' or '30d'.

    :raise ValueError: with a message that shows the expected form.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", str(value))
    if isinstance(value, bool) or not match:
        raise ValueError(f"expected a duration such as 500ms, 10s, 2m, 1h or 30d, got {value!r}")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
    return float(match.group(1)) * unit


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Document:
    """One YAML file: its data (with ${VAR} expanded) and the line of every key.

    `text`, when given, is read as the file's content (the admin console's playground, for a
    mapping not saved yet); `environ` is where ${VAR} is looked up, os.environ unless given (the
    playground gives none, so that no text typed there can show a server's secret).
    """

    def __init__(
        self, path: Path, text: str | None = None, environ: Mapping[str, str] | None = None
    ) -> None:
        self.path = path
        self._environ = os.environ if environ is None else environ
        if text is None:
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"cannot read the file ({exc.strerror})", path) from None
            except UnicodeDecodeError as exc:
                at = exc.object.count(b"\n", 0, exc.start) + 1
                raise ConfigError("not UTF-8 text: save the file as UTF-8", path, at) from None
        try:
            loader = yaml.SafeLoader(text)
        except yaml.reader.ReaderError as exc:  # a control character, before any parsing
            raise _unreadable(path, text, exc) from None
        try:
            node = loader.get_single_node()
            if node is not None:  # before constructing, which keeps the last of repeated keys
                _refuse_repeated_keys(path, loader, node)
            data = loader.construct_document(node) if node is not None else {}
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            raise ConfigError(f"invalid YAML: {exc.problem or exc.context}", path, line) from None
        except yaml.reader.ReaderError as exc:
            raise _unreadable(path, text, exc) from None
        finally:
            loader.dispose()
        self.lines: dict[Key, int] = {}
        self._from_env: dict[str, str] = {}  # value -> the variable it came from
        if node is not None:
            self._index(node, ())
        self.data = self._expand(data, ())

    def _index(self, node: yaml.Node, key: Key) -> None:
        self.lines[key] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                self.lines[key + (k.value,)] = k.start_mark.line + 1
                self._index(v, key + (k.value,))
                self.lines[key + (k.value,)] = k.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._index(v, key + (i,))

    def _expand(self, value: Any, key: Key) -> Any:
        if isinstance(value, dict):
            return {k: self._expand(v, key + (k,)) for k, v in value.items()}
        if isinstance(value, list):
            return [self._expand(v, key + (i,)) for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            return _VAR.sub(lambda m: self._lookup(m, key), value)
        return value

    def _lookup(self, match: re.Match[str], key: Key) -> str:
        name, default = match.group(1), match.group(2)
        value = self._environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                raise self.error(
                    key,
                    f"environment variable {name} is not set; set it, or write "
                    f"${{{name}:-default}} to give a default",
                )
            return default
        if len(value) >= 3:
            self._from_env[value] = name
        return value

    def error(self, key: Key, message: str) -> ConfigError:
        """A ConfigError pointing at `key` (or its nearest parent that has a line)."""
        probe = key
        while probe and probe not in self.lines:
            probe = probe[:-1]
        dotted = ".".join(str(k) for k in key) or None
        for value, name in self._from_env.items():  # it may be a secret: never echo it
            message = message.replace(value, f"${{{name}}}")
        return ConfigError(message, self.path, self.lines.get(probe), dotted)

    # Small typed getters: each raises a located ConfigError, so callers stay one line.

    def table(self, value: Any, key: Key, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        """`value` as a mapping; with `allowed`, an unknown key is an error saying what is known."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping of keys, got {type(value).__name__}")
        unknown = self.unknown_keys(value, key, allowed) if allowed is not None else []
        if unknown:
            raise unknown[0]
        return value

    def unknown_keys(
        self, value: dict[str, Any], key: Key, allowed: tuple[str, ...]
    ) -> list[ConfigError]:
        problems = []
        for k in value:
            if k not in allowed:
                hint = difflib.get_close_matches(str(k), allowed, n=1)
                also = f"did you mean {hint[0]!r}? " if hint else ""
                problems.append(
                    self.error(
                        key + (k,), f"unknown key {k!r}; {also}expected one of {', '.join(allowed)}"
                    )
                )
        return problems

    def integer(self, value: Any, key: Key, minimum: int = 0) -> int:
        try:
            number = int(value)
            if isinstance(value, bool) or number < minimum or str(number) != str(value).strip():
                raise ValueError
        except (TypeError, ValueError):
            raise self.error(key, f"expected a whole number >= {minimum}, got {value!r}") from None
        return number

    def duration(self, value: Any, key: Key) -> float:
        try:
            return seconds(value)
        except ValueError as exc:
            raise self.error(key, str(exc)) from None

    def boolean(self, value: Any, key: Key) -> bool:
        text = str(value).strip().lower()
        if text not in ("true", "false"):
            raise self.error(key, f"expected true or false, got {value!r}")
        return text == "true"

    def string(self, value: Any, key: Key) -> str:
        if not isinstance(value, str | int | float) or isinstance(value, bool) or value == "":
            raise self.error(key, "expected a non-empty text value")
        return str(value)

    def strings(self, value: Any, key: Key) -> tuple[str, ...]:
        items = value if isinstance(value, list) else [value]
        return tuple(self.string(v, key + (i,)) for i, v in enumerate(items))

    def expression(self, value: Any, key: Key) -> Expression:
        from hookrelay.expressions import compile_expression

        return compile_expression(self, self.string(value, key), key)


def _unreadable(path: Path, text: str, exc: yaml.reader.ReaderError) -> ConfigError:
    """A character YAML does not allow in a file (a control character), with its line."""
    line = text.count("\n", 0, exc.position) + 1
    return ConfigError(
        f"invalid YAML: character U+{exc.character:04X} is not allowed; remove it", path, line
    )


def _refuse_repeated_keys(path: Path, loader: yaml.SafeLoader, root: yaml.Node) -> None:
    """Refuse a key given twice in one mapping, at any depth: YAML would silently keep the last.

    Keys are compared as YAML reads them (`1` and `"1"` differ); an explicit key beside a `<<`
    merge is an override, not a repetition.
    """
    problems: list[ConfigError] = []
    visited: set[int] = set()  # an alias is the node it names: walk it once
    todo: list[tuple[yaml.Node, Key]] = [(root, ())]
    while todo:
        node, key = todo.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo += [(v, key + (i,)) for i, v in enumerate(node.value)]
        if not isinstance(node, yaml.MappingNode):
            continue
        first: dict[Any, tuple[yaml.Node, yaml.Node]] = {}
        for k, v in node.value:
            todo.append((v, key + (k.value,)))
            if not isinstance(k, yaml.ScalarNode) or k.tag == "tag:yaml.org,2002:merge":
                continue
            name = loader.construct_object(k)
            if name not in first:
                first[name] = (k, v)
                continue
            earlier, value = first[name]
            same_kind = isinstance(v, yaml.CollectionNode) and type(v) is type(value)
            problems.append(
                ConfigError(
                    f"repeated key; first at line {earlier.start_mark.line + 1} — "
                    f"{'merge them' if same_kind else 'keep one'}",
                    path,
                    k.start_mark.line + 1,
                    ".".join(str(part) for part in (*key, k.value)),
                )
            )
    if problems:
        raise problems[0] if len(problems) == 1 else InvalidConfig(problems)


def attempt(problems: list[ConfigError], default: T, build: Callable[..., T], *args: Any) -> T:
    """`build(*args)`, or `default` with its ConfigError added to `problems`: one pass finds all."""
    try:
        return build(*args)
    except InvalidConfig as exc:
        problems += exc.problems
    except ConfigError as exc:
        problems.append(exc)
    return default
