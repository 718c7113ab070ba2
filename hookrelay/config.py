"""Read config.yaml and mappings/*.yaml into frozen objects the rest of the relay trusts.

Every key is validated and every problem found in one pass, each naming the file, the line and the
key. hookrelay.document reads the YAML; sources, destinations and mappings each read their own
section in their own module, this one the settings, the delivery policy and the routes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from hookrelay.alerts.settings import Alerting, load_alerting
from hookrelay.document import Document, Key, attempt
from hookrelay.errors import ConfigError, InvalidConfig
from hookrelay.sources import Source, load_source


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
    Setting("retention_days", 30, "days an event is kept once all its deliveries have ended"),
    Setting("sources", {}, "where participations come from: POST /hooks/<name>"),
    Setting("destinations", {}, "where mapped records go"),
    Setting("routes", [], "which mapping sends which source to which destinations"),
    Setting("delivery", {}, "retry policy; any destination may override these keys"),
    Setting("admin", {"edit_mappings": False}, "the admin console; edit_mappings: save mappings"),
    Setting("alerts", [], "channels alerts go to: slack, email (through $SMTP_URL), http"),
    Setting(
        "alert_on",
        {"dead": True, "backlog": "15m", "config_refused": True, "storage": "1m"},
        "what alerts tell: a delivery ended dead, one waited longer than `backlog`, an edit was "
        "refused, the database did not answer for `storage` (false: never)",
    ),
    Setting("alert_every", "10m", "at most one message per destination and kind this often"),
    Setting("alert_wait", "30s", "a first failure waits this long for others to join its alert"),
    Setting("public_url", None, "the relay's address: alerts link to its admin console"),
)

#: The delivery policy keys, valid under `delivery:` and in any destination.
POLICY = (
    Setting("max_attempts", 12, "attempts before a delivery is dead"),
    Setting("backoff", {"initial": "10s", "max": "1h"}, "exponential backoff with full jitter"),
    Setting("timeout", "10s", "time allowed for one request to a destination"),
    Setting("lease", "5m", "a claimed delivery whose worker died is retried after this"),
    Setting(
        "concurrency",
        8,
        "deliveries sent at once to one destination by a worker process (one batch at a time "
        "for a destination that batches)",
    ),
    Setting(
        "throttle_max",
        "24h",
        "a destination throttled or down this long ends the deliveries waiting for it dead",
    ),
)


@dataclass(frozen=True, slots=True)
class Policy:
    """How hard the worker tries one destination."""

    max_attempts: int = 12
    backoff_initial: float = 10.0
    backoff_max: float = 3600.0
    timeout: float = 10.0
    lease: float = 300.0
    concurrency: int = 8
    throttle_max: float = 86400.0


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
    edit_mappings: bool = False  # admin: {edit_mappings: true}: the playground may save mappings
    alerting: Alerting = Alerting()
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


def load_config(path: Path | str) -> Config:
    """Read and validate config.yaml and every mapping in mappings/ beside it.

    :raise ConfigError: one problem; InvalidConfig when there are several, all reported at once.
    """
    path = Path(path)
    seen = fingerprint(path)  # before reading, so an edit made while we read is not missed
    doc = Document(path)
    problems: list[ConfigError] = []
    data = doc.data if isinstance(doc.data, dict) else {}
    if not data:  # an empty file, or one being written: never a configuration to run
        problems.append(doc.error((), "expected a mapping of settings with at least `sources`"))
    problems += doc.unknown_keys(data, (), tuple(s.name for s in SETTINGS))
    base = attempt(problems, Policy(), _policy, doc, data.get("delivery"), ("delivery",), Policy())
    declared: dict[str, dict[str, Any]] = {
        section: attempt(problems, {}, _named, doc, data.get(section), (section,))
        for section in ("sources", "destinations")
    }
    sources = _each(problems, load_source, {n: (doc, n, s) for n, s in declared["sources"].items()})
    built = _each(
        problems,
        _destination,
        {n: (doc, n, s, base, path.parent) for n, s in declared["destinations"].items()},
    )
    mapping_dir = path.parent / "mappings"
    mappings = _each(problems, _mapping, {p.stem: (p,) for p in sorted(mapping_dir.glob("*.yaml"))})
    routes = _routes(  # checked against every declared name, built or not
        doc,
        data.get("routes"),
        set(declared["sources"]),
        set(declared["destinations"]),
        problems,
        mapping_dir,
    )
    settings: dict[str, Any] = attempt(problems, {}, _settings, doc, data, path.parent)
    if problems:
        raise problems[0] if len(problems) == 1 else InvalidConfig(problems)
    return Config(
        fingerprint=seen,
        path=path,
        sources=sources,
        destinations={name: destination for name, (destination, _) in built.items()},
        policies={name: policy for name, (_, policy) in built.items()},
        mappings=mappings,
        routes=routes,
        **settings,
    )


def _each(
    problems: list[ConfigError], build: Callable[..., Any], args: dict[str, tuple[Any, ...]]
) -> dict[str, Any]:
    """`build(*args)` for each name; a name whose build failed is left out, its problems kept."""
    built = {name: attempt(problems, None, build, *a) for name, a in args.items()}
    return {name: result for name, result in built.items() if result is not None}


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
    admin = doc.table(data.get("admin"), ("admin",), ("edit_mappings",))
    return dict(
        storage=_resolve_sqlite(storage, base),
        max_body_bytes=doc.integer(data.get("max_body_bytes", 1 << 20), ("max_body_bytes",), 1),
        trusted_proxy_hops=doc.integer(data.get("trusted_proxy_hops", 0), ("trusted_proxy_hops",)),
        retention_days=doc.integer(data.get("retention_days", 30), ("retention_days",), 1),
        storage_timeout=doc.duration(data.get("storage_timeout", "10s"), ("storage_timeout",)),
        edit_mappings=doc.boolean(admin.get("edit_mappings", False), ("admin", "edit_mappings")),
        alerting=load_alerting(doc, data),
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
        concurrency=doc.integer(
            spec.get("concurrency", base.concurrency), key + ("concurrency",), 1
        ),
        throttle_max=doc.duration(
            spec.get("throttle_max", base.throttle_max), key + ("throttle_max",)
        ),
    )


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
