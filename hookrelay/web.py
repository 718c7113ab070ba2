"""The web app: POST /hooks/<source>, /healthz, /readyz, /metrics, and the admin console under
/admin (hookrelay.admin) when RELAY_ADMIN_PASSWORD is set.

A 2xx means "stored durably": the event and its deliveries are committed before we answer, and
nothing is forwarded from this request. Views only raise; one error handler turns a Rejected into
its answer, and one log line without payload values.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge
from werkzeug.middleware.proxy_fix import ProxyFix

from hookrelay import admin, metrics
from hookrelay.auth import authenticate, check_address
from hookrelay.config import Config, default_config_path, load_config
from hookrelay.errors import Rejected, RequestTimeout, StorageUnavailable, TooLarge, UnknownSource
from hookrelay.runtime import Relay, configure_logging
from hookrelay.sources import parse_events

logger = logging.getLogger(__name__)
bp = Blueprint("hooks", __name__)


def create_app(config: Config | None = None) -> Flask:
    """Assemble the relay's web app; with no config, load RELAY_CONFIG. It starts nothing: what
    runs beside the requests is started by whoever serves the app (`start`)."""
    configure_logging()
    relay = Relay(config or load_config(default_config_path()))
    app = Flask(__name__)
    app.extensions["relay"] = relay
    app.register_blueprint(bp)
    app.register_error_handler(Rejected, _rejected)
    app.register_error_handler(HTTPException, _http_error)
    if os.environ.get("RELAY_ADMIN_PASSWORD"):  # the console is off without it: /admin is a 404
        admin.init_app(
            app, os.environ["RELAY_ADMIN_PASSWORD"], os.environ.get("RELAY_SECRET_KEY") or None
        )
    if relay.config.trusted_proxy_hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=relay.config.trusted_proxy_hops)  # type: ignore[method-assign]
    relay.warn()
    return app


def start(app: Flask, deliver: bool | None = None) -> None:
    """Start what runs beside the app's requests (Relay.start): the delivery worker too, unless
    `deliver` is False or RELAY_WORKER=off (a delivery process of its own runs it)."""
    relay: Relay = app.extensions["relay"]
    deliver = deliver if deliver is not None else os.environ.get("RELAY_WORKER", "on") != "off"
    relay.start(deliver)
    if deliver:
        atexit.register(relay.worker.stop)


def relay() -> Relay:
    found: Relay = current_app.extensions["relay"]
    return found


@bp.post("/hooks/<source>")
def receive(source: str) -> ResponseReturnValue:
    config = relay().config
    src = config.sources.get(source)
    if src is None:
        raise UnknownSource(f"no source named {source!r} in the config")
    check_address(src.auth, request.remote_addr, source)
    body = _body(config.max_body_bytes)
    authenticate(src.auth, request.headers, request.authorization, body, source)
    stored = relay().store.store_events(
        source, src.format, parse_events(src, body), config.targets(source)
    )
    relay().worker.wake()
    for s in stored:
        outcome = "duplicate" if s.duplicate else "stored"
        metrics.EVENTS.labels(source, outcome).inc()
        logger.info("event %s from %s: %s", s.event_id, source, outcome)
    status = 200 if all(s.duplicate for s in stored) else 202
    answers = [{"event_id": s.event_id, "duplicate": s.duplicate} for s in stored]
    return jsonify(
        answers[0]
        if len(answers) == 1 and not body.lstrip().startswith(b"[")
        else {"events": answers}
    ), status


def _body(limit: int) -> bytes:
    too_large = TooLarge(f"body is over the limit of {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    # A chunked body has no length: Werkzeug stops reading at max_content_length without a word,
    # so read one byte more than allowed to tell "exactly the limit" from "over it".
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise too_large from None
    except ClientDisconnected as exc:
        # Werkzeug reports any failed read as a disconnection; one that ran out of time (the
        # server's deadline, hookrelay.serving) is a slow client, told so with a 408.
        if isinstance(exc.__context__, TimeoutError):
            raise RequestTimeout(exc.__context__) from None
        raise
    if len(body) > limit:
        raise too_large
    return body


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    problems = []
    try:
        relay().store.ping()
    except Exception as exc:  # whatever the driver raises, the answer is "not ready"
        problems.append(f"storage does not answer ({type(exc).__name__})")
    problems += relay().problems()
    if problems:
        return {"status": "unavailable", "problems": problems}, 503
    if relay().config_problems:  # still ready: the last good configuration is running
        return {"status": "ready", "config_refused": relay().config_problems}
    return {"status": "ready"}


@bp.get("/metrics")
def metrics_view() -> ResponseReturnValue:
    return metrics.render(relay().store), 200, {"Content-Type": "text/plain; version=0.0.4"}


def _rejected(error: Rejected) -> ResponseReturnValue:
    headers = {}
    if isinstance(error, StorageUnavailable):
        headers["Retry-After"] = str(error.retry_after)
    source = (request.view_args or {}).get("source", "-")
    if error.status != 401 and error.status != 403:  # auth already logged which check failed
        logger.warning("%s %s: %d %s", request.method, request.path, error.status, error.message)
    if request.endpoint == "hooks.receive":
        metrics.EVENTS.labels(
            source if source in relay().config.sources else "-", f"rejected_{error.status}"
        ).inc()
    return jsonify(error=error.message), error.status, headers


def _http_error(error: HTTPException) -> Any:
    logger.warning("%s %s: %s", request.method, request.path, error.code)
    return jsonify(error=error.description), error.code
