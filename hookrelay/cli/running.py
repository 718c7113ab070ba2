"""`relay serve`, `relay worker`, `relay check`, `relay send`, `relay alert-test`: run the relay,
check its config, post a payload to it, try its alert channels."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import requests

from hookrelay import preflight
from hookrelay.alerts.channels import AlertFailed
from hookrelay.alerts.messages import Message
from hookrelay.auth import sign
from hookrelay.cli import config_option, main, read_config
from hookrelay.database import new_id
from hookrelay.errors import RelayError
from hookrelay.runtime import LOOPBACK, Relay, check_example_secret, configure_logging, open_store


@main.command()
@click.option("--port", type=int, help="port to listen on (default: $PORT or 8000)")
@click.option(
    "--host",
    help=f"address to listen on (default: $HOST, or {LOOPBACK}; 0.0.0.0 on a dyno); beyond "
    "loopback the example secret is refused",
)
@config_option
def serve(port: int | None, host: str | None, config_path: Path | None) -> None:
    """Run the web app with gunicorn (and the delivery worker inside it)."""
    # Refuse, in one line, what would fail in gunicorn's workers: a broken config, storage that
    # cannot be opened, the example secret where others can reach it.
    config = read_config(config_path)
    host = host or os.environ.get("HOST") or ("0.0.0.0" if os.environ.get("DYNO") else LOOPBACK)
    preflight.refuse_failing_tests(config)
    check_example_secret(config, [host])  # its warnings are gunicorn's to give, once
    open_store(config).close()
    os.environ["HOST"] = host
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
    relay = Relay(read_config(config_path))  # before logging: a storage problem is one line
    configure_logging()
    relay.warn()
    relay.start(deliver=True)
    click.echo("worker running; Ctrl-C to stop", err=True)
    relay.worker.run_until_stopped()


@main.command()
@config_option
def check(config_path: Path | None) -> None:
    """Validate config.yaml and every mapping, run the mappings' tests, and warn about what
    looks wrong though valid (exit 0 with warnings only)."""
    config = read_config(config_path)
    warned = preflight.find_warnings(config)
    for warning in warned:
        click.echo(f"Warning: {warning}", err=True)
    preflight.refuse_failing_tests(config)
    also = f"; {len(warned)} warning{'' if len(warned) == 1 else 's'}" if warned else ""
    click.echo(
        f"{config.path}: ok: {len(config.sources)} sources, {len(config.destinations)} "
        f"destinations, {len(config.mappings)} mappings, {len(config.routes)} routes{also}"
    )


@main.command()
@click.argument("payload", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--source", default="qualifio", show_default=True, help="source to post to")
@click.option("--url", help="relay address (default: http://127.0.0.1:$PORT)")
@config_option
def send(payload: Path, source: str, url: str | None, config_path: Path | None) -> None:
    """Post PAYLOAD as Qualifio would: signed with the source's first secret, with its auth."""
    config = read_config(config_path)
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


@main.command("alert-test")
@config_option
def alert_test(config_path: Path | None) -> None:
    """Send a test message through every alert channel and say what each answered (exit 1 if
    one did not take it)."""
    alerting = read_config(config_path).alerting
    if not alerting.channels:
        raise RelayError("no alert channels: add an `alerts:` list to config.yaml (see README)")
    message = Message(
        new_id(), "test", "", False, 0, 0, None, None, alerting.link("test", ""), alerting.relay
    )
    failed = 0
    for channel in alerting.channels:
        try:
            click.echo(f"{channel.label}: {channel.send(message)}")
        except AlertFailed as exc:
            click.echo(f"{channel.label}: FAILED: {exc.message}", err=True)
            failed += 1
    if failed:
        sys.exit(1)
