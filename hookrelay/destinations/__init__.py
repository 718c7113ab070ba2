"""Destinations: where mapped records go. One protocol, one explicit registry.

A destination class declares its options as keyword-only constructor parameters: options typed
`int`, `float` (a duration: 2s, 500ms) or `bool` are checked and converted for it, the rest it
validates itself (raising ConfigError with the option's name as key). It sends a batch of at most
`batch_size` records, raising RetryLater, Permanent or Skip for the whole batch, or Refused when
the batch was refused for what one of its records holds (the worker then splits it).
"""

from __future__ import annotations

import difflib
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from hookrelay.errors import ConfigError
from hookrelay.limits import RateLimit

if TYPE_CHECKING:
    from hookrelay.document import Document, Key


@dataclass(frozen=True, slots=True)
class Record:
    """One mapped record on its way out; `delivery_id` is stable across retries and replays."""

    delivery_id: str
    event_id: str
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Context:
    """What every destination may need beyond its own options."""

    base_dir: Path  # the directory of config.yaml; relative paths start there
    timeout: float  # seconds for one request


class Destination(Protocol):
    type: ClassVar[str]  # what users write after `type:` in config.yaml
    required: ClassVar[tuple[str, ...]]  # record fields without which a record is skipped
    name: str

    @property
    def batch_size(self) -> int:
        """1 unless the vendor accepts batches."""

    @property
    def batch_wait(self) -> float:
        """Seconds the worker may wait for a batch to fill; 0 sends what is due."""

    @property
    def limit(self) -> RateLimit | None:
        """The vendor's rate limit: the worker claims nothing for this destination while spent."""

    @property
    def exclusive(self) -> str | None:
        """A lock name when two sends must never overlap, in any process (a sheet's header is
        read, extended and written under it); None for most."""

    def send(self, records: list[Record]) -> None: ...


def _registry() -> dict[str, type[Destination]]:
    from hookrelay.destinations.brevo import Brevo
    from hookrelay.destinations.file import File
    from hookrelay.destinations.google_sheets import GoogleSheets
    from hookrelay.destinations.http import Http
    from hookrelay.destinations.mailchimp import Mailchimp
    from hookrelay.destinations.trello import Trello

    return {cls.type: cls for cls in (Brevo, File, GoogleSheets, Http, Mailchimp, Trello)}


DESTINATIONS: dict[str, type[Destination]] = _registry()


def build_destination(
    doc: Document,
    key: Key,
    name: str,
    options: dict[str, Any],
    base_dir: Path,
    timeout: float,
    also: tuple[str, ...] = (),
) -> Destination:
    """Validate a destination's options against its class and build it; errors carry the line.

    `also` names the keys every destination takes besides its own (the delivery policy).
    """
    kind = options.pop("type", None)
    if kind not in DESTINATIONS:
        raise doc.error(
            key + ("type",),
            f"unknown destination type {kind!r}; expected one of {', '.join(sorted(DESTINATIONS))}",
        )
    cls = DESTINATIONS[kind]
    params = {
        n: p
        for n, p in inspect.signature(cls).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    for option in options:
        if option not in params:
            known = sorted([*params, *also])
            hint = difflib.get_close_matches(option, known, n=1)
            guess = f"did you mean {hint[0]!r}? " if hint else ""
            raise doc.error(
                key + (option,),
                f"unknown option {option!r} for a {kind} destination; "
                f"{guess}expected one of {', '.join(known)}",
            )
    for option, param in params.items():
        if param.default is inspect.Parameter.empty and option not in options:
            raise doc.error(key, f"a {kind} destination needs {option!r}")
    hints = typing.get_type_hints(cls.__init__)
    for option, value in options.items():
        options[option] = _typed(doc, key + (option,), hints.get(option), value)
    try:
        return cls(name, Context(base_dir, timeout), **options)  # type: ignore[call-arg]
    except ConfigError as exc:
        raise doc.error(key + ((exc.key,) if exc.key else ()), exc.message) from None


def _typed(doc: Document, key: Key, hint: Any, value: Any) -> Any:
    """Options typed int, float (a duration) or bool, checked and converted; others as given."""
    if hint is int:
        return doc.integer(value, key, minimum=1)
    if hint is float:
        return doc.duration(value, key)
    if hint is bool:
        return doc.boolean(value, key)
    return value
