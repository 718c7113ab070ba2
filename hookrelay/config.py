"""Read config.yaml and mappings/*.yaml into frozen objects the rest of the relay trusts.

This is the only module that reads YAML. It expands ${VAR} and ${VAR:-default}, validates every key
and keeps PyYAML's marks, so each error names the file, the line and the key. Secrets are never
echoed back in an error.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

import yaml

from hookrelay.errors import ConfigError, InvalidConfig

if TYPE_CHECKING:
    from hookrelay.expressions import Expression

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Key = tuple[str | int, ...]
T = TypeVar("T")


class Setting(NamedTuple):
    name: str
    default: Any
    help: str


#: Top-level settings of config.yaml, their defaults and what they mean (README lists them all).
SETTINGS = (
    Setting(
        "storage", "sqlite:///relay.db", "sqlite:///path (relative to config.yaml) or postgresql://"
    ),
    Setting("max_body_bytes", 1024 * 1024, "larger request bodies are answered 413"),
    Setting(
        "trusted_proxy_hops",
        0,
        "proxies in front of the relay that append X-Forwarded-For (Heroku: 1)",
    ),
    Setting(
        "storage_timeout", "10s", "ingest answers 503 (Qualifio retries) when a commit takes longer"
    ),
    Setting("retention_days", 30, "stored payloads are kept this long after their last delivery"),
    Setting("sources", {}, "where participations come from: POST /hooks/<name>"),
    Setting("destinations", {}, "where mapped records go"),
    Setting("routes", [], "which mapping sends which source to which destinations"),
    Setting("delivery", {}, "retry policy; any destination may override these keys"),
)

#: The delivery policy keys, valid under `delivery:` and in any destination.
POLICY = (
    Setting("max_attempts", 12, "attempts before a delivery is dead"),
    Setting("backoff", {"initial": "10s", "max": "1h"}, "exponential backoff with full jitter"),
    Setting("timeout", "10s", "time allowed for one request to a destination"),
    Setting("lease", "5m", "a claimed delivery whose worker died is retried after this"),
)


@dataclass(frozen=True, slots=True)
class Policy:
    """How hard the worker tries one destination."""

    max_attempts: int = 12
    backoff_initial: float = 10.0
    backoff_max: float = 3600.0
    timeout: float = 10.0
    lease: float = 300.0


@dataclass(frozen=True, slots=True)
class Auth:
    """Every configured check must pass; an empty Auth accepts everything."""

    header: tuple[str, str] | None = None
    basic: tuple[str, str] | None = None
    signature_secrets: tuple[str, ...] = ()
    allow_ips: tuple[Network, ...] = ()


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    format: Literal["qualifio", "json"]
    auth: Auth
    dedupe: Expression | None = None


@dataclass(frozen=True, slots=True)
class Route:
    source: str
    mapping: str
    destinations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    storage: str
    sources: Mapping[str, Source]
    destinations: Mapping[str, Any]  # name -> Destination (see hookrelay.destinations)
    policies: Mapping[str, Policy]
    mappings: Mapping[str, Any]  # name -> hookrelay.mapping.Mapping
    routes: tuple[Route, ...]
    max_body_bytes: int = 1024 * 1024
    trusted_proxy_hops: int = 0
    retention_days: int = 30
    storage_timeout: float = 10.0
    fingerprint: Fingerprint = ()

    def targets(self, source: str) -> list[tuple[str, str]]:
        """The (mapping, destination) pairs an event from `source` is delivered to."""
        return [(r.mapping, d) for r in self.routes if r.source == source for d in r.destinations]


Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(config_path: Path) -> Fingerprint:
    """What tells a changed configuration: the stat of config.yaml and of each mapping file."""
    paths = [config_path, *sorted((config_path.parent / "mappings").glob("*.yaml"))]
    found = []
    for path in paths:
        try:
            stat = path.stat()
        except OSError:
            continue
        found.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(found)


def default_config_path() -> Path:
    return Path(os.environ.get("RELAY_CONFIG", "config.yaml"))


# --- reading YAML with line numbers -------------------------------------------------------------


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
    """One YAML file: its data (with ${VAR} expanded) and the line of every key."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the file ({exc.strerror})", path) from None
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else {}
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            raise ConfigError(f"invalid YAML: {exc.problem or exc.context}", path, line) from None
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
        value = os.environ.get(name)
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


# --- config.yaml --------------------------------------------------------------------------------


def load_config(path: Path | str) -> Config:
    """Read and validate config.yaml and every mapping in mappings/ beside it.

    :raise ConfigError: one problem; InvalidConfig when there are several, all reported at once.
    """
    path = Path(path)
    seen = fingerprint(path)  # before reading, so an edit made while we read is not missed
    doc = Document(path)
    problems: list[ConfigError] = []
    data = doc.data if isinstance(doc.data, dict) else {}
    problems += doc.unknown_keys(data, (), tuple(s.name for s in SETTINGS))
    base = attempt(problems, Policy(), _policy, doc, data.get("delivery"), ("delivery",), Policy())
    declared_sources: dict[str, Any] = attempt(
        problems, {}, _named, doc, data.get("sources"), ("sources",)
    )
    sources: dict[str, Source] = {}
    for name, spec in declared_sources.items():
        source = attempt(problems, None, _source, doc, name, spec)
        if source is not None:
            sources[name] = source
    declared: dict[str, Any] = attempt(
        problems, {}, _named, doc, data.get("destinations"), ("destinations",)
    )
    destinations, policies = {}, {}
    for name, spec in declared.items():
        built = attempt(problems, None, _destination, doc, name, spec, base, path.parent)
        if built is not None:
            destinations[name], policies[name] = built
    mappings = {}
    for mapping_path in sorted((path.parent / "mappings").glob("*.yaml")):
        mapping = attempt(problems, None, _mapping, mapping_path)
        if mapping is not None:
            mappings[mapping_path.stem] = mapping
    routes = _routes(
        doc,
        data.get("routes"),
        set(declared_sources),
        set(declared),
        problems,
        path.parent / "mappings",
    )
    settings: dict[str, Any] = attempt(problems, {}, _settings, doc, data, path.parent)
    if problems:
        raise problems[0] if len(problems) == 1 else InvalidConfig(problems)
    return Config(
        fingerprint=seen,
        path=path,
        sources=sources,
        destinations=destinations,
        policies=policies,
        mappings=mappings,
        routes=routes,
        **settings,
    )


def attempt(problems: list[ConfigError], default: T, build: Callable[..., T], *args: Any) -> T:
    """`build(*args)`, or `default` with its ConfigError added to `problems`: one pass finds all."""
    try:
        return build(*args)
    except InvalidConfig as exc:
        problems += exc.problems
    except ConfigError as exc:
        problems.append(exc)
    return default


def _destination(
    doc: Document, name: str, spec: Any, base: Policy, directory: Path
) -> tuple[Any, Policy]:
    """A destination and its policy: the policy keys any destination takes, the rest its own."""
    from hookrelay.destinations import build_destination

    key = ("destinations", name)
    options = dict(doc.table(spec, key))
    policy = _policy(
        doc, {k: options.pop(k) for k in list(options) if k in _POLICY_KEYS}, key, base
    )
    destination = build_destination(
        doc, key, name, options, directory, policy.timeout, _POLICY_KEYS
    )
    return destination, policy


def _mapping(path: Path) -> Any:
    from hookrelay.mapping import load_mapping

    return load_mapping(Document(path), path.stem)


def _settings(doc: Document, data: dict[str, Any], base: Path) -> dict[str, Any]:
    storage = doc.string(data.get("storage", SETTINGS[0].default), ("storage",))
    return dict(
        storage=_resolve_sqlite(storage, base),
        max_body_bytes=doc.integer(data.get("max_body_bytes", 1 << 20), ("max_body_bytes",), 1),
        trusted_proxy_hops=doc.integer(data.get("trusted_proxy_hops", 0), ("trusted_proxy_hops",)),
        retention_days=doc.integer(data.get("retention_days", 30), ("retention_days",), 1),
        storage_timeout=doc.duration(data.get("storage_timeout", "10s"), ("storage_timeout",)),
    )


def _named(doc: Document, value: Any, key: Key) -> dict[str, Any]:
    table = doc.table(value, key)
    for name in table:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", str(name)):
            raise doc.error(key + (name,), "names use only letters, digits, '_' and '-'")
    return table


_POLICY_KEYS = tuple(s.name for s in POLICY)


def _policy(doc: Document, value: Any, key: Key, base: Policy) -> Policy:
    spec = doc.table(value, key, tuple(s.name for s in POLICY)) if key == ("delivery",) else value
    backoff = doc.table(spec.get("backoff"), key + ("backoff",), ("initial", "max"))
    return Policy(
        max_attempts=doc.integer(
            spec.get("max_attempts", base.max_attempts), key + ("max_attempts",), 1
        ),
        backoff_initial=doc.duration(
            backoff.get("initial", base.backoff_initial), key + ("backoff", "initial")
        ),
        backoff_max=doc.duration(backoff.get("max", base.backoff_max), key + ("backoff", "max")),
        timeout=doc.duration(spec.get("timeout", base.timeout), key + ("timeout",)),
        lease=doc.duration(spec.get("lease", base.lease), key + ("lease",)),
    )


def _source(doc: Document, name: str, spec: Any) -> Source:
    key = ("sources", name)
    spec = doc.table(spec, key, ("format", "auth", "dedupe"))
    fmt = spec.get("format", "json")
    if fmt not in ("qualifio", "json"):
        raise doc.error(key + ("format",), f"unknown format {fmt!r}; expected qualifio or json")
    dedupe = doc.expression(spec["dedupe"], key + ("dedupe",)) if "dedupe" in spec else None
    return Source(name, fmt, _auth(doc, spec.get("auth"), key + ("auth",)), dedupe)


def _auth(doc: Document, value: Any, key: Key) -> Auth:
    spec = doc.table(value, key, ("header", "basic", "signature", "allow_ips"))
    header = basic = None
    if "header" in spec:
        h = doc.table(spec["header"], key + ("header",), ("name", "value"))
        header = (
            doc.string(h.get("name"), key + ("header", "name")),
            doc.string(h.get("value"), key + ("header", "value")),
        )
    if "basic" in spec:
        b = doc.table(spec["basic"], key + ("basic",), ("username", "password"))
        basic = (
            doc.string(b.get("username"), key + ("basic", "username")),
            doc.string(b.get("password"), key + ("basic", "password")),
        )
    secrets: tuple[str, ...] = ()
    if "signature" in spec:
        s = doc.table(spec["signature"], key + ("signature",), ("secrets",))
        secrets = doc.strings(s.get("secrets"), key + ("signature", "secrets"))
    networks = []
    for i, raw in enumerate(spec.get("allow_ips") or []):
        try:
            networks.append(ipaddress.ip_network(str(raw), strict=False))
        except ValueError:
            raise doc.error(
                key + ("allow_ips", i),
                f"expected an address or network such as 203.0.113.0/24, got {raw!r}",
            ) from None
    return Auth(header, basic, secrets, tuple(networks))


def _routes(
    doc: Document,
    value: Any,
    sources: set[str],
    destinations: set[str],
    problems: list[ConfigError],
    mapping_dir: Path,
) -> tuple[Route, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append(doc.error(("routes",), "expected a list of {from, mapping, to}"))
        return ()
    routes = []
    for i, spec in enumerate(value):
        route = attempt(
            problems, None, _route, doc, ("routes", i), spec, sources, destinations, mapping_dir
        )
        if route is not None:
            routes.append(route)
    return tuple(routes)


def _route(
    doc: Document, key: Key, spec: Any, sources: set[str], destinations: set[str], mapping_dir: Path
) -> Route:
    spec = doc.table(spec, key, ("from", "mapping", "to"))
    for required in ("from", "mapping", "to"):
        if required not in spec:
            raise doc.error(key, f"missing {required!r}; a route is {{from, mapping, to}}")
    source = doc.string(spec["from"], key + ("from",))
    if source not in sources:
        raise doc.error(
            key + ("from",),
            f"unknown source {source!r}; expected one of "
            f"{', '.join(sorted(sources)) or '(none configured)'}",
        )
    to = doc.strings(spec["to"], key + ("to",))
    for j, name in enumerate(to):
        if name not in destinations:
            raise doc.error(
                key + ("to", j),
                f"unknown destination {name!r}; expected one of "
                f"{', '.join(sorted(destinations)) or '(none configured)'}",
            )
    mapping = doc.string(spec["mapping"], key + ("mapping",))
    if not (mapping_dir / f"{mapping}.yaml").is_file():
        known = sorted(p.stem for p in mapping_dir.glob("*.yaml"))
        raise doc.error(
            key + ("mapping",),
            f"no mapping file mappings/{mapping}.yaml; expected "
            f"one of {', '.join(known) or '(no mapping files yet)'}",
        )
    return Route(source, mapping, to)


def _resolve_sqlite(url: str, base: Path) -> str:
    """A relative sqlite path is relative to config.yaml, whatever the working directory."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url[len(prefix) :].startswith("/") and url != prefix:
        return prefix + str((base / url[len(prefix) :]).resolve())
    return url
