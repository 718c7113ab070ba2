"""`relay try` and `relay test`: what a mapping makes of a payload, and its own tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from hookrelay.cli import config_option, main, read_config
from hookrelay.config import Config
from hookrelay.errors import RelayError, Skip
from hookrelay.mapping import Mapping
from hookrelay.mapping_tests import run_tests
from hookrelay.sources import events_in, normalise


@main.command("try")
@click.argument("mapping")
@click.argument("payload", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--source", help="the source whose format applies (default: the one routed to MAPPING)"
)
@click.option("--explain", is_flag=True, help="show each field's expression and value")
@config_option
def try_(
    mapping: str, payload: Path, source: str | None, explain: bool, config_path: Path | None
) -> None:
    """Print the record MAPPING makes of the PAYLOAD file, or why it is skipped."""
    config = read_config(config_path)
    found = config.mappings.get(mapping)
    if found is None:
        known = ", ".join(sorted(config.mappings)) or "none"
        raise RelayError(f"no mapping named {mapping!r}; mappings/ has {known}")
    fmt = _format(config, mapping, source)
    try:
        events = events_in(json.loads(payload.read_bytes()))
    except ValueError as exc:
        raise RelayError(f"{payload}: not valid JSON ({exc})") from None
    except RelayError as exc:
        raise RelayError(f"{payload}: {exc.message}") from None
    for number, event in enumerate(events, 1):
        many = f"event {number} of {len(events)}" if len(events) > 1 else ""
        if many:  # an array (Qualifio loyalty events) is one event per element, as on ingest
            click.echo(f"# {many}")
        try:
            _try_one(found, normalise(fmt, event), explain)
        except RelayError as exc:
            raise RelayError(f"{many}: {exc.message}" if many else exc.message) from None


def _try_one(mapping: Mapping, data: dict[str, Any], explain: bool) -> None:
    if explain:
        for field, expression, value in mapping.explain(data):
            click.echo(f"{field}: {expression}\n    = {json.dumps(value, ensure_ascii=False)}")
        click.echo("")
    try:
        record = mapping.apply(data)
    except Skip as exc:
        click.echo(f"skipped: {exc.message}")
        return
    click.echo(json.dumps(record, ensure_ascii=False, indent=2))


@main.command("test")
@config_option
def test_(config_path: Path | None) -> None:
    """Run the `tests:` of every mapping; print what differs; exit 1 when any fails."""
    config = read_config(config_path)
    results = [
        r
        for name, m in sorted(config.mappings.items())
        for r in run_tests(m, _format(config, name, None))
    ]
    for r in results:
        click.echo(f"{'ok  ' if r.passed else 'FAIL'} {r.mapping} test {r.number} ({r.payload})")
        for line in r.differences:
            click.echo(f"       {line}")
    failed = sum(not r.passed for r in results)
    click.echo(f"{len(results) - failed} passed, {failed} failed")
    if failed:
        sys.exit(1)


def _format(config: Config, mapping: str, source: str | None) -> str:
    """The format a mapping reads: its source's, or qualifio for a mapping no route uses yet."""
    if source is not None:
        if source not in config.sources:
            raise RelayError(
                f"unknown source {source!r}; expected one of {', '.join(config.sources)}"
            )
        return config.sources[source].format
    routed = [r.source for r in config.routes if r.mapping == mapping]
    return config.sources[routed[0]].format if routed else "qualifio"
