"""The `relay` command: serve, worker, check, try, test, send, events, replay, purge, forget.

Every RelayError becomes one line on stderr and exit 1; never a traceback for a user error.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import click
import requests

from hookrelay import __version__, health, history, metrics, retention
from hookrelay.auth import sign
from hookrelay.config import Config, default_config_path, load_config
from hookrelay.database import STATUSES
from hookrelay.document import seconds
from hookrelay.errors import InvalidConfig, RelayError, Skip
from hookrelay.mapping_tests import run_tests
from hookrelay.runtime import Relay, configure_logging
from hookrelay.sources import normalise


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InvalidConfig as exc:  # one line per problem, all of them
            for problem in exc.problems:
                click.echo(f"Error: {problem}", err=True)
            ctx.exit(1)
        except RelayError as exc:
            raise click.ClickException(str(exc)) from None


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="config.yaml to use (default: $RELAY_CONFIG or ./config.yaml)",
)


def _config(path: Path | None) -> Config:
    return load_config(path or default_config_path())


@click.group(cls=Group)
@click.version_option(__version__, prog_name="relay")
def main() -> None:
    """hookrelay: Qualifio webhooks in, mapped records out."""


@main.command()
@click.option("--port", type=int, help="port to listen on (default: $PORT or 8000)")
@config_option
def serve(port: int | None, config_path: Path | None) -> None:
    """Run the web app with gunicorn (and the delivery worker inside it)."""
    _config(config_path)  # refuse to start on a broken config, with its one-line reason
    if port:
        os.environ["PORT"] = str(port)
    if config_path:
        os.environ["RELAY_CONFIG"] = str(config_path)
    os.execvp(
        sys.executable,
        [sys.executable, "-m", "gunicorn", "-c", "python:hookrelay.gunicorn_conf", "relay:app"],
    )


@main.command()
@config_option
def worker(config_path: Path | None) -> None:
    """Deliver stored events (when web processes run with RELAY_WORKER=off)."""
    configure_logging()
    relay = Relay(_config(config_path))
    relay.warn()
    relay.watch()
    metrics.FLUSHER.start(relay.store)
    click.echo("worker running; Ctrl-C to stop", err=True)
    relay.worker.run_forever()


@main.command()
@config_option
def check(config_path: Path | None) -> None:
    """Validate config.yaml and every mapping a route uses."""
    config = _config(config_path)
    click.echo(
        f"{config.path}: ok: {len(config.sources)} sources, {len(config.destinations)} "
        f"destinations, {len(config.mappings)} mappings, {len(config.routes)} routes"
    )


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
    config = _config(config_path)
    found = config.mappings.get(mapping)
    if found is None:
        known = ", ".join(sorted(config.mappings)) or "none"
        raise RelayError(f"no mapping named {mapping!r}; mappings/ has {known}")
    try:
        data = normalise(_format(config, mapping, source), json.loads(payload.read_bytes()))
    except ValueError as exc:
        raise RelayError(f"{payload}: not valid JSON ({exc})") from None
    if explain:
        for field, expression, value in found.explain(data):
            click.echo(f"{field}: {expression}\n    = {json.dumps(value, ensure_ascii=False)}")
        click.echo("")
    try:
        record = found.apply(data)
    except Skip as exc:
        click.echo(f"skipped: {exc.message}")
        return
    click.echo(json.dumps(record, ensure_ascii=False, indent=2))


@main.command("test")
@config_option
def test_(config_path: Path | None) -> None:
    """Run the `tests:` of every mapping; print what differs; exit 1 when any fails."""
    config = _config(config_path)
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


@main.command()
@click.argument("payload", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", default="qualifio", show_default=True, help="source to post to")
@click.option("--url", help="relay address (default: http://127.0.0.1:$PORT)")
@config_option
def send(payload: Path, source: str, url: str | None, config_path: Path | None) -> None:
    """Post PAYLOAD as Qualifio would: signed with the source's first secret, with its auth."""
    config = _config(config_path)
    src = config.sources.get(source)
    if src is None:
        raise RelayError(
            f"unknown source {source!r}; expected one of {', '.join(sorted(config.sources))}"
        )
    body = payload.read_bytes()
    headers = {"Content-Type": "application/json"}
    if src.auth.signature_secrets:
        headers["X-Qualifio-Signature"] = sign(body, src.auth.signature_secrets[0])
    if src.auth.header:
        headers[src.auth.header[0]] = src.auth.header[1]
    base = url or f"http://127.0.0.1:{os.environ.get('PORT', '8000')}"
    try:
        answer = requests.post(
            f"{base.rstrip('/')}/hooks/{source}",
            data=body,
            headers=headers,
            auth=src.auth.basic,
            timeout=30,
        )
    except requests.RequestException as exc:
        raise RelayError(
            f"cannot reach the relay at {base} ({type(exc).__name__}); is it running?"
        ) from None
    click.echo(f"{answer.status_code} {answer.text.strip()}")
    if answer.status_code >= 300:
        sys.exit(1)


@main.command()
@click.option(
    "--status", type=click.Choice(STATUSES), help="only events with a delivery in this state"
)
@click.option("--limit", default=50, show_default=True)
@config_option
def events(status: str | None, limit: int, config_path: Path | None) -> None:
    """List recent events and the state of each delivery (no personal data)."""
    store = Relay(_config(config_path)).store
    for trouble in health.read_all(store):
        if trouble.troubled:
            click.echo(f"destination {trouble.destination}: {trouble.describe()}")
    for event in history.list_events(store, status, limit):  # type: ignore[arg-type]
        when = dt.datetime.fromtimestamp(event["received_at"]).isoformat(" ", "seconds")
        click.echo(f"{event['id']}  {when}  {event['source']}")
        for d in event["deliveries"]:
            error = f"  {d['last_error']}" if d["last_error"] and d["status"] != "delivered" else ""
            click.echo(
                f"    {d['destination']:<16} {d['status']:<9} attempts={d['attempts']}{error}"
            )


@main.command()
@click.argument("event_ids", nargs=-1)
@click.option("--dead", is_flag=True, help="replay every dead delivery")
@click.option("--destination", help="only deliveries to this destination")
@config_option
def replay(
    event_ids: tuple[str, ...], dead: bool, destination: str | None, config_path: Path | None
) -> None:
    """Deliver events again: EVENT_ID..., or --dead [--destination D]."""
    if bool(event_ids) == dead:
        raise RelayError("give event ids, or --dead (not both)")
    store = Relay(_config(config_path)).store
    unknown = set(event_ids) - history.known_events(store, event_ids)
    if unknown:
        raise RelayError(f"no event with id {', '.join(sorted(unknown))}")
    n = store.replay(event_ids, dead=dead, destination=destination)
    click.echo(f"{n} deliveries scheduled again")


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    try:
        return None if value is None else seconds(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option(
    "--older-than",
    callback=_duration,
    metavar="DURATION",
    help="erase events whose deliveries all ended this long ago (default: retention_days)",
)
@config_option
def purge(older_than: float | None, config_path: Path | None) -> None:
    """Erase finished events now, as the worker does every hour; pending ones are kept."""
    relay = Relay(_config(config_path))
    if older_than is None:
        older_than = relay.config.retention_days * 86400.0
    before = dt.datetime.now() - dt.timedelta(seconds=older_than)
    erased = retention.purge(relay.store, before.timestamp())
    click.echo(
        f"{_erased(erased)}: every delivery of each had ended before "
        f"{before.isoformat(' ', 'seconds')}; pending ones are kept"
    )


@main.command()
@click.argument("email")
@config_option
def forget(email: str, config_path: Path | None) -> None:
    """Erase every stored event that holds EMAIL, whatever its state."""
    if "@" not in email:
        raise RelayError("expected the participant's email address")
    erased = retention.forget(Relay(_config(config_path)).store, email)
    click.echo(
        f"{_erased(erased)}. Copies already delivered stay in the destinations "
        "(sheets, Trello, Mailchimp, Brevo...): erase them there too."
    )


def _erased(count: int) -> str:
    if count == 1:
        return "1 event erased, with its deliveries and attempt log"
    return f"{count} events erased, with their deliveries and attempt log"
