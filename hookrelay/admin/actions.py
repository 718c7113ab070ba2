"""The console's actions: `Replay` one delivery, `Replay all dead` of one destination, and
forget a participant by email. Each is a POST with the CSRF token (hookrelay.admin.auth); the
bulk ones come after a page that shows how many they touch.

They go through the Store and hookrelay.retention, as `relay replay` and `relay forget` do, and
each is logged with ids and counts only (who: the address), never an email.
"""

from __future__ import annotations

import logging
import re

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from hookrelay import history, retention
from hookrelay.admin import bp, relay

logger = logging.getLogger(__name__)

_ID = re.compile(r"[0-9a-f]{32}")


@bp.post("/deliveries/<delivery_id>/replay")
def replay(delivery_id: str) -> ResponseReturnValue:
    """Deliver this one delivery again, with a fresh attempt budget, unless it was delivered
    (as `relay replay` without --all) or a worker holds it right now."""
    r = relay()
    event_id = history.event_of(r.store, delivery_id) if _ID.fullmatch(delivery_id) else None
    if event_id is None:
        abort(404, f"no delivery with id {delivery_id}")
    n = r.store.replay(delivery_ids=[delivery_id])
    logger.info("admin %s: replay delivery %s: %d scheduled", request.remote_addr, delivery_id, n)
    if n:
        flash(f"Delivery {delivery_id} scheduled again.")
    else:
        flash(f"Delivery {delivery_id} was not replayed: it was delivered, or is being sent now.")
    return redirect(url_for("admin.event", event_id=event_id))


@bp.route("/deliveries/replay-dead", methods=["GET", "POST"])
def replay_dead() -> ResponseReturnValue:
    """GET: how many dead deliveries to the destination would be sent again, and the button;
    POST: send them again, with a fresh attempt budget."""
    destination = request.values.get("destination", "").strip()
    if not destination:
        abort(400, "which destination? Give its name")
    r = relay()
    if request.method == "GET":
        count = history.dead_by_destination(r.store).get(destination, 0)
        return render_template("admin/replay_dead.html", destination=destination, count=count)
    n = r.store.replay(dead=True, destination=destination)
    logger.info(
        "admin %s: replay all dead to %s: %d scheduled", request.remote_addr, destination, n
    )
    flash(f"{n} dead {_deliveries(n)} to {destination} scheduled again.")
    return redirect(url_for("admin.deliveries", destination=destination))


@bp.route("/forget", methods=["GET", "POST"])
def forget() -> ResponseReturnValue:
    """GET: the form; POST: how many stored events hold the address, and the button that erases
    them. The address travels in POST bodies only, never in a URL (URLs reach access logs)."""
    if request.method == "GET":
        return render_template("admin/forget.html")
    email = _email()
    count = len(retention.find_holding(relay().store, email))
    return render_template("admin/forget.html", email=email, count=count)


@bp.post("/forget/erase")
def erase() -> ResponseReturnValue:
    """Erase every stored event holding the address, whatever its state, as `relay forget`."""
    r = relay()
    erased = retention.erase(r.store, retention.find_holding(r.store, _email()))
    logger.info("admin %s: forget: %d events erased", request.remote_addr, erased)
    flash(
        f"Erased {erased} {'event' if erased == 1 else 'events'}, with their deliveries and "
        "attempt log. Copies already delivered stay in the destinations: erase them there too."
    )
    return redirect(url_for("admin.forget"))


def _email() -> str:
    email = request.form.get("email", "").strip()
    if "@" not in email:
        abort(400, "expected the participant's email address")
    return email


def _deliveries(n: int) -> str:
    return "delivery" if n == 1 else "deliveries"
