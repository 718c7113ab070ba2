"""The admin console (DESIGN §9): the relay's face, under /admin, for the people who run
campaigns. Server-rendered pages that read through the query layer the CLI reads
(hookrelay.history, hookrelay.activity, hookrelay.showing), and POST actions that go through the
Store, as `relay replay` and `relay forget` do.

Off unless RELAY_ADMIN_PASSWORD is set: create_app calls init_app only then, and otherwise
/admin answers 404 like any unknown path.

- auth.py        sign-in and sign-out, the session, CSRF, the sign-in rate limit, headers
- pages.py       overview, deliveries, event: what was stored (reads only)
- actions.py     Replay, Replay all dead, forget by email (each after its confirmation)
- playground.py  try a mapping on a payload, live; save it to mappings/ (when allowed), download
- trial.py       what the playground runs: compile a mapping from text, apply it, its tests
- chart.py       the 24-hour chart, drawn on the server as SVG
- templates/admin/*.html, static/admin.css, static/admin.js (the playground's live result)
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, current_app

from hookrelay import activity

if TYPE_CHECKING:
    from hookrelay.runtime import Relay

bp = Blueprint(
    "admin",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)


def init_app(app: Flask, password: str, secret_key: str | None = None) -> None:
    """Serve the console under /admin, signed in with `password`; session cookies are signed
    with `secret_key` (RELAY_SECRET_KEY), else with a key derived from the password."""
    auth.init_app(app, password, secret_key)
    app.extensions["admin_totals"] = activity.Totals()
    app.register_blueprint(bp)


def relay() -> Relay:
    found: Relay = current_app.extensions["relay"]
    return found


@bp.app_template_filter("when")
def when(timestamp: float | None) -> str:
    """A time as the CLI shows it: the server's local time, to the second."""
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).isoformat(" ", "seconds")


@bp.app_template_filter("pretty")
def pretty(value: Any) -> str:
    """JSON as `relay show` writes it: indented, non-ASCII as itself. Escaped by the template
    like any text, so a payload's `<script>` shows as text (Flask's tojson would show \u003c)."""
    return json.dumps(value, ensure_ascii=False, indent=2)


@bp.app_template_filter("age")
def age(seconds: float) -> str:
    """A duration in the largest units that say it: 45 s, 3 min, 2 h 5 min, 3 d 4 h."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


# The views register themselves on `bp` when their modules are imported.
from hookrelay.admin import actions, auth, pages, playground  # noqa: E402

__all__ = ["actions", "auth", "bp", "init_app", "pages", "playground", "relay"]
