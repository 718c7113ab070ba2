"""`relay show`: one event as an operator reads it: its payload, the `variables` mappings see,
and each delivery with the record its mapping makes now and every attempt it had.

The payload is shown whole: an operator asked for this one event on the server (DESIGN §5, and
the admin console's event page shows the same). It goes to the terminal, never to the log.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any, Literal

from hookrelay.claims import Delivery
from hookrelay.config import Config
from hookrelay.errors import Permanent, Skip
from hookrelay.sending import record_of
from hookrelay.sources import normalise

#: Control characters a payload or a vendor's answer may hold, written escaped so that none can
#: move the cursor or recolour the operator's terminal (line breaks are the display's own).
CONTROL = {c: f"\\x{c:02x}" for c in [*range(32), *range(127, 160)] if c != 10}


def describe(
    config: Config, event: Mapping[str, Any], paused: Mapping[str, float], now: float
) -> str:
    """The text of one event (as hookrelay.history.event reads it); `paused` holds when each
    troubled destination takes deliveries again."""
    payload = json.loads(event["payload"])
    lines = [
        f"event {event['id']}",
        f"  source    {event['source']} (format {event['format']})",
        f"  received  {_time(event['received_at'])}",
        "",
        "payload",
        *_json(payload, 2),
    ]
    if event["format"] == "qualifio":
        variables = normalise("qualifio", payload)["variables"]
        lines += ["", "variables (what a mapping reads as variables.<name>)", *_json(variables, 2)]
    for d in event["deliveries"]:
        lines += ["", *_delivery(config, event, d, paused.get(d["destination"], 0.0), now)]
    if not event["deliveries"]:
        lines += ["", "no deliveries: no route took this event"]
    return "\n".join(lines).translate(CONTROL)


def _delivery(
    config: Config, event: Mapping[str, Any], d: Mapping[str, Any], paused: float, now: float
) -> list[str]:
    status = f"{d['status']}, {d['attempts']} attempt{'' if d['attempts'] == 1 else 's'}"
    if d["status"] == "pending":
        status += f", {next_try(d, now, paused)}"
    lines = [
        f"delivery {d['id']} to {d['destination']} (mapping {d['mapping']})",
        f"  status      {status}",
    ]
    if d["last_error"]:
        lines.append(f"  last error  {d['last_error']}")
    kind, made = record_now(config, event, d)
    if kind == "record":
        lines += ["  record now", *_json(made, 4)]
    else:
        lines.append(f"  record now  {kind}: {made}")
    lines.append("  attempts" if d["attempt_log"] else "  attempts    none yet")
    lines += [f"    {_attempt(a)}" for a in d["attempt_log"]]
    return lines


def record_now(
    config: Config, event: Mapping[str, Any], d: Mapping[str, Any]
) -> tuple[Literal["record", "skipped", "error"], Any]:
    """What the delivery's mapping makes of the stored payload now, through the worker's own
    code: ("record", its fields), or ("skipped" or "error", the reason)."""
    delivery = Delivery(
        d["id"],
        event["id"],
        d["mapping"],
        d["destination"],
        d["attempts"],
        "",  # not claimed: nothing is sent
        event["source"],
        event["format"],
        event["payload"],
        event["received_at"],
    )
    destination = config.destinations.get(d["destination"])
    try:
        return "record", record_of(config, destination, delivery).fields
    except Skip as exc:
        return "skipped", exc.message
    except Permanent as exc:
        return "error", exc.message
    except Exception as exc:  # what one payload provokes; the rest of the event is still shown
        return "error", f"internal error ({type(exc).__name__})"


def next_try(d: Mapping[str, Any], now: float, paused_until: float = 0.0) -> str:
    """When a pending delivery is tried: `being sent`, `due now` or `next try 12:03:04` (with
    the date when it is not today), not before its destination takes deliveries again."""
    if d["claimed_by"] and d["next_attempt_at"] > now:
        return "being sent"
    when = max(d["next_attempt_at"], paused_until)
    if when <= now:
        return "due now"
    at = dt.datetime.fromtimestamp(when)
    today = at.date() == dt.datetime.fromtimestamp(now).date()
    return f"next try {at.strftime('%H:%M:%S') if today else at.isoformat(' ', 'seconds')}"


def _attempt(a: Mapping[str, Any]) -> str:
    outcome = "retry" if a["outcome"] == "pending" else a["outcome"]  # pending again: retried
    http = f"HTTP {a['http_status']}" if a["http_status"] else "-"
    detail = (a["detail"] or "").replace("\n", "\n      ")
    line = f"{_time(a['started_at'])}  {outcome:<9} {http:<8} {a['duration_ms']:>6} ms  {detail}"
    return line.rstrip()


def _time(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp).isoformat(" ", "seconds")


def _json(value: Any, indent: int) -> list[str]:
    text = json.dumps(value, ensure_ascii=False, indent=2)
    return [" " * indent + line for line in text.splitlines()]
