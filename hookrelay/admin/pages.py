"""The console's pages that only read: the overview, the deliveries list and one event.

Each reads through hookrelay.history, hookrelay.activity and hookrelay.showing, the layer the
CLI's `relay events` and `relay show` read, never SQL of its own.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from typing import Any

from flask import abort, current_app, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from hookrelay import activity, health, history, showing
from hookrelay.admin import bp, chart, relay
from hookrelay.alerts import outbox
from hookrelay.alerts import state as alert_state
from hookrelay.database import STATUSES, Status
from hookrelay.sources import normalise

PAGE_SIZE = 50
FILTERS = ("source", "destination", "since", "until", "q")  # and status, one of STATUSES
_KEY = re.compile(r"[0-9a-f]{32}")


@bp.errorhandler(HTTPException)
def _error(error: HTTPException) -> ResponseReturnValue:
    """A page that says what went wrong; the playground's script gets JSON."""
    code = error.code or 500
    if request.endpoint == "admin.try_":
        return jsonify(error=error.description), code
    page = render_template(
        "admin/error.html", code=code, name=error.name, description=error.description
    )
    return page, code, dict(error.get_headers())  # keeps Retry-After, Allow


@bp.get("/")
@bp.get("")  # registered first: the links say /admin
def overview() -> ResponseReturnValue:
    """Per destination, where deliveries stand; per source, what came; the last 24 hours as a
    chart; the configuration, the storage and the alerts."""
    r, now = relay(), time.time()
    since = now - activity.DAY
    received, delivered = activity.per_minute(r.store, since, 1440)
    totals, counted_at = current_app.extensions["admin_totals"].get(r.store)
    labels = {c.key: c.label for c in r.config.alerting.channels}
    return render_template(
        "admin/overview.html",
        now=now,
        destinations=activity.destinations(r.store, list(r.config.destinations), since, totals),
        counted_at=counted_at,
        health={h.destination: h for h in health.read_all(r.store)},
        sources={
            **dict.fromkeys(r.config.sources, 0),
            **activity.received_by_source(r.store, since),
        },
        chart=chart.draw(received, delivered, since),
        totals=(sum(received), sum(delivered)),
        relay=r,
        storage=_storage_problems(),
        statuses=STATUSES,
        alerts=[a for a in alert_state.read_all(r.store) if a.firing or a.unsent or a.reported],
        untaken=[
            (labels.get(key, "a channel no longer configured"), attempts, error)
            for key, attempts, error in outbox.failing(r.store)
        ],
    )


def _storage_problems() -> list[str]:
    """What /readyz would say: the storage does not answer, a thread of this process died."""
    found = []
    try:
        relay().store.ping()
    except Exception as exc:  # whatever the driver raises, the page says the storage is down
        found.append(f"storage does not answer ({type(exc).__name__})")
    return found + relay().problems()


@bp.get("/deliveries")
def deliveries() -> ResponseReturnValue:
    """Newest first, filtered by source, destination, status and time, or the deliveries of the
    events a search names (an event id, or a Qualifio participation id); paged by keyset."""
    r = relay()
    shown = _filters()
    event_ids = None
    if shown["q"]:
        # Through the indexes only: reading every payload for an id found nowhere else would
        # take seconds on a large database (`relay show` still does).
        sources = r.config.sources.values()
        event_ids = history.find_events(r.store, sources, shown["q"], read_payloads=False)
    page = history.list_deliveries(
        r.store,
        source=shown["source"] or None,
        destination=shown["destination"] or None,
        status=shown["status"] or None,
        since=_time(shown["since"]),
        until=_time(shown["until"]),
        event_ids=event_ids,
        before=_key("before"),
        after=_key("after"),
        limit=PAGE_SIZE,
    )
    return render_template(
        "admin/deliveries.html",
        page=page,
        shown=shown,
        kept={k: v for k, v in shown.items() if v},  # the filters the page links keep
        sources=sorted(r.config.sources),
        destinations=sorted(r.config.destinations),
        statuses=STATUSES,
        dead=history.dead_by_destination(r.store),
        now=time.time(),
    )


def _filters() -> dict[str, Any]:
    """The filters as given (to fill the form again), a status only when it is one."""
    shown = {k: request.args.get(k, "").strip() for k in FILTERS}
    status = request.args.get("status", "")
    shown["status"] = status if status in STATUSES else ""
    return shown


def _time(value: str) -> float | None:
    """A datetime-local field's value (the server's local time), or None when empty or not one."""
    try:
        return dt.datetime.fromisoformat(value).timestamp() if value else None
    except ValueError:
        return None


def _key(name: str) -> str | None:
    value = request.args.get(name, "")
    return value if _KEY.fullmatch(value) else None


@bp.get("/events/<event_id>")
def event(event_id: str) -> ResponseReturnValue:
    """One event whole, as `relay show` gives it: payload, variables, and per delivery the
    record its mapping makes now and every attempt."""
    r, now = relay(), time.time()
    found = history.event(r.store, event_id)
    if found is None:
        abort(404, f"no event with id {event_id}")
    payload = json.loads(found["payload"])
    paused = {h.destination: h.paused_until for h in health.read_all(r.store)}
    return render_template(
        "admin/event.html",
        event=found,
        payload=payload,
        variables=(
            normalise("qualifio", payload)["variables"]
            if found["format"] == "qualifio" and isinstance(payload, dict)
            else None
        ),
        deliveries=[_delivery(found, d, paused, now) for d in found["deliveries"]],
    )


def _delivery(
    event: dict[str, Any], d: dict[str, Any], paused: dict[str, float], now: float
) -> dict[str, Any]:
    kind, made = showing.record_now(relay().config, event, d)
    status: Status = d["status"]
    return {
        **d,
        "next_try": (
            showing.next_try(d, now, paused.get(d["destination"], 0.0))
            if status == "pending"
            else None
        ),
        "record_kind": kind,
        "record": made,
        "can_replay": status != "delivered",
    }
