"""`relay events`, `show`, `replay`, `purge`, `forget`: what was stored, delivering it again,
erasing it. They read through hookrelay.history, the query layer the admin pages share."""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from pathlib import Path

import click

from hookrelay import health, history, retention, showing
from hookrelay.cli import config_option, main, read_config
from hookrelay.database import STATUSES
from hookrelay.document import seconds
from hookrelay.errors import RelayError
from hookrelay.runtime import Relay, open_store


@main.command()
@click.option(
    "--status", type=click.Choice(STATUSES), help="only events with a delivery in this state"
)
@click.option("--limit", default=50, show_default=True)
@config_option
def events(status: str | None, limit: int, config_path: Path | None) -> None:
    """List recent events and the state of each delivery (no personal data)."""
    store = Relay(read_config(config_path)).store
    troubles = health.read_all(store)
    for trouble in troubles:
        if trouble.troubled:
            click.echo(f"destination {trouble.destination}: {trouble.describe()}")
    paused, now = {t.destination: t.paused_until for t in troubles}, time.time()
    for event in history.list_events(store, status, limit):  # type: ignore[arg-type]
        when = dt.datetime.fromtimestamp(event["received_at"]).isoformat(" ", "seconds")
        click.echo(f"{event['id']}  {when}  {event['source']}")
        for d in event["deliveries"]:
            error = f"  {d['last_error']}" if d["last_error"] and d["status"] != "delivered" else ""
            if d["status"] == "pending":
                error = f"  {showing.next_try(d, now, paused.get(d['destination'], 0.0))}{error}"
            click.echo(
                f"    {d['destination']:<16} {d['status']:<9} attempts={d['attempts']}{error}"
            )


@main.command()
@click.argument("wanted", metavar="ID")
@config_option
def show(wanted: str, config_path: Path | None) -> None:
    """Show an event whole: payload, variables, each delivery with the record its mapping makes
    now, and every attempt. ID is an event id, or a Qualifio participation id: each of its
    events."""
    config = read_config(config_path)
    store = open_store(config)
    found = history.find_events(store, config.sources.values(), wanted.strip())
    if not found:
        raise RelayError(f"no event, nor participation, with id {wanted!r}")
    paused, now = {t.destination: t.paused_until for t in health.read_all(store)}, time.time()
    shown = [history.event(store, event_id) for event_id in found]
    click.echo("\n\n".join(showing.describe(config, e, paused, now) for e in shown if e))


@main.command()
@click.argument("event_ids", nargs=-1, metavar="[EVENT_ID]...")
@click.option("--dead", is_flag=True, help="every dead delivery, of any event")
@click.option("--skipped", is_flag=True, help="every skipped delivery, of any event")
@click.option(
    "--all",
    "delivered_too",
    is_flag=True,
    help="with EVENT_ID: send its delivered deliveries again too (a deliberate re-send)",
)
@click.option("--destination", help="only deliveries to this destination")
@config_option
def replay(
    event_ids: tuple[str, ...],
    dead: bool,
    skipped: bool,
    delivered_too: bool,
    destination: str | None,
    config_path: Path | None,
) -> None:
    """Deliver again, with a fresh attempt budget: EVENT_ID... (every delivery of theirs that is
    not delivered; --all: those too), or --dead and/or --skipped [--destination D]."""
    if delivered_too and not event_ids:
        raise RelayError("--all goes with event ids: it sends their delivered deliveries again")
    if not event_ids and not (dead or skipped):
        raise RelayError("give event ids, or --dead and/or --skipped")
    if event_ids and (dead or skipped):
        raise RelayError(
            "give event ids or --dead/--skipped, not both: an event's replay already takes its "
            "dead and skipped deliveries"
        )
    wanted = {"dead": dead, "skipped": skipped}
    if event_ids:  # every state but delivered, unless --all
        wanted = {s: delivered_too or s != "delivered" for s in STATUSES}
    store = Relay(read_config(config_path)).store
    unknown = set(event_ids) - history.known_events(store, event_ids)
    if unknown:
        raise RelayError(f"no event with id {', '.join(sorted(unknown))}")
    n = store.replay(
        event_ids, destination=destination, states=[s for s in STATUSES if wanted.get(s)]
    )
    kept = "; delivered ones are not sent again (--all sends them)" if event_ids else ""
    click.echo(f"{n} {'delivery' if n == 1 else 'deliveries'} scheduled again{kept}")


def _duration(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    """A duration with its unit: `--older-than 30` could mean seconds or days, so it is refused."""
    if value is not None and re.fullmatch(r"\s*[0-9.]+\s*", value):
        raise RelayError(f"--older-than needs a unit, such as 30d, 12h or 90m; got {value!r}")
    try:
        return None if value is None else seconds(value)
    except ValueError as exc:
        raise RelayError(f"--older-than: {exc}") from None


yes_option = click.option("--yes", is_flag=True, help="erase without asking (for scripts)")


@main.command()
@click.option(
    "--older-than",
    callback=_duration,
    metavar="DURATION",
    help="erase events whose deliveries all ended this long ago, such as 30d, 12h or 90m "
    "(default: retention_days)",
)
@yes_option
@config_option
def purge(older_than: float | None, yes: bool, config_path: Path | None) -> None:
    """Erase finished events now, as the worker does every hour; pending ones are kept.
    Says how many, then asks (not with --yes)."""
    relay = Relay(read_config(config_path))
    if older_than is None:
        older_than = relay.config.retention_days * 86400.0
    before = dt.datetime.now() - dt.timedelta(seconds=older_than)
    found = retention.count_expired(relay.store, before.timestamp())
    when = before.isoformat(" ", "seconds")
    if _ask(f"Events whose deliveries all ended before {when} (pending ones are kept)", found, yes):
        click.echo(f"Erased {_events(retention.purge(relay.store, before.timestamp()))}")


@main.command()
@click.argument("email")
@yes_option
@config_option
def forget(email: str, yes: bool, config_path: Path | None) -> None:
    """Erase every stored event that holds EMAIL, whatever its state.
    Says how many, then asks (not with --yes)."""
    if "@" not in email:
        raise RelayError("expected the participant's email address")
    store = Relay(read_config(config_path)).store
    found = retention.find_holding(store, email)
    if _ask("Events holding this address, pending or not", len(found), yes):
        erased = retention.erase(store, found)
        click.echo(
            f"Erased {_events(erased)}. Copies already delivered stay in the destinations "
            "(sheets, Trello, Mailchimp, Brevo...): erase them there too."
        )


def _ask(what: str, count: int, yes: bool) -> bool:
    """Say how many events would be erased, and ask, on stdin whether a terminal or not: anything
    but y or yes erases nothing and exits 1. False when there is nothing to erase."""
    click.echo(f"{what}: {count}")
    if count and not yes:
        click.echo(f"Erase {_events(count)}? [y/N] ", nl=False)
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            click.echo("Aborted: nothing was erased.", err=True)
            sys.exit(1)
    return count > 0


def _events(count: int) -> str:
    if count == 1:
        return "1 event, with its deliveries and attempt log"
    return f"{count} events, with their deliveries and attempt log"
