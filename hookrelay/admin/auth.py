"""Who may use the console: one password, a signed session cookie, a CSRF token on every POST,
a limit on wrong passwords, and the headers every /admin answer carries.

* The session is Flask's signed cookie: HttpOnly, SameSite=Lax, Secure when the request came
  over HTTPS, ended by `Sign out` or by 12 hours without a request (each request renews it, and
  a cookie signed longer ago is refused on the server, not only dropped by the browser).
* Its signing key is RELAY_SECRET_KEY when set, else derived from RELAY_ADMIN_PASSWORD with
  scrypt: every gunicorn process and every dyno derives the same key, so a session holds
  whichever answers; changing the password signs everyone out; and someone who holds a cookie
  pays a scrypt per password guessed offline.
* Passwords are compared in constant time. Each address may give 5 wrong ones a minute, then
  gets 429: counted in each process (so with N gunicorn processes, at most 5 × N), which is
  enough to make guessing hopeless and needs no shared state.
* A POST without the session answers 401, one without the session's CSRF token 403; neither
  changes anything. A page without the session redirects to the sign-in page.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Flask,
    Request,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue

from hookrelay.admin import bp

logger = logging.getLogger(__name__)

IDLE = dt.timedelta(hours=12)  # a session unused this long is over
WRONG_PER_MINUTE = 5  # wrong passwords an address may give in a minute before a 429
#: Only the relay's own scripts and styles, no frames, forms posted only to the relay.
CSP = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
OPEN = ("admin.sign_in", "admin.static")  # what answers without a session


def init_app(app: Flask, password: str, secret_key: str | None) -> None:
    app.secret_key = secret_key or session_key(password)
    app.config.update(
        SESSION_COOKIE_NAME="hookrelay_admin",
        SESSION_COOKIE_PATH="/admin",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=IDLE,
        SESSION_REFRESH_EACH_REQUEST=True,
    )
    app.session_interface = AdminSessions()
    app.extensions["admin"] = Guard(password)
    app.after_request(headers)


def session_key(password: str) -> bytes:
    """The key that signs session cookies, derived from the password: slow to compute (scrypt,
    once per process), so a stolen cookie does not let anyone test passwords quickly."""
    return hashlib.scrypt(
        password.encode(), salt=b"hookrelay admin session", n=2**14, r=8, p=1, dklen=32
    )


class Guard:
    """The password, and the wrong ones given per address in the last minute (this process)."""

    def __init__(self, password: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._digest = hashlib.sha256(password.encode()).digest()
        self._clock = clock
        self._wrong: dict[str, collections.deque[float]] = {}
        self._lock = threading.Lock()

    def is_password(self, given: str) -> bool:
        """Compared as digests of one length, in constant time: the time taken says nothing."""
        return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), self._digest)

    def wait(self, address: str) -> float:
        """Seconds before `address` may try again; 0 when it may now."""
        now = self._clock()
        with self._lock:
            wrong = self._recent(address, now)
            return 60.0 - (now - wrong[0]) if len(wrong) >= WRONG_PER_MINUTE else 0.0

    def wrong(self, address: str) -> None:
        now = self._clock()
        with self._lock:
            self._recent(address, now).append(now)
            if len(self._wrong) > 10_000:  # many addresses: forget those with nothing recent
                for old in [a for a, w in self._wrong.items() if now - w[-1] > 60]:
                    del self._wrong[old]

    def _recent(self, address: str, now: float) -> collections.deque[float]:
        wrong = self._wrong.setdefault(address, collections.deque())
        while wrong and now - wrong[0] > 60:
            wrong.popleft()
        return wrong


class AdminSessions(SecureCookieSessionInterface):
    """Flask's signed cookie, only on /admin (ingest never reads one), marked Secure when the
    request came over HTTPS."""

    def open_session(self, app: Flask, request: Request) -> Any:
        return super().open_session(app, request) if is_admin(request.path) else None

    def get_cookie_secure(self, app: Flask) -> bool:
        # Behind a proxy (Heroku's router) the relay sees HTTP and the proxy says https in
        # X-Forwarded-Proto. It is trusted here even without trusted_proxy_hops: a client
        # that forges it only gets a cookie its browser keeps to HTTPS, never a weaker one.
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")
        return request.is_secure or "https" in (p.strip().lower() for p in forwarded)


def is_admin(path: str) -> bool:
    return path == "/admin" or path.startswith("/admin/")


def headers(response: Response) -> Response:
    """What every /admin answer carries: the CSP, no framing, and no-store on all but the
    static files (pages show payloads)."""
    if is_admin(request.path):
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if request.endpoint != "admin.static":
            response.headers["Cache-Control"] = "no-store"
    return response


def guard() -> Guard:
    found: Guard = current_app.extensions["admin"]
    return found


def is_signed_in() -> bool:
    return bool(session.get("signed_in"))


def csrf_token() -> str:
    """The session's CSRF token, made on first use (the sign-in form has one too)."""
    if CSRF_FIELD not in session:
        session[CSRF_FIELD] = secrets.token_urlsafe(32)
    token: str = session[CSRF_FIELD]
    return token


def has_csrf_token() -> bool:
    given = request.form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    expected = session.get(CSRF_FIELD) or ""
    return bool(expected) and hmac.compare_digest(given.encode(), expected.encode())


@bp.app_context_processor
def _tokens() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "signed_in": is_signed_in}


@bp.before_request
def _check() -> ResponseReturnValue | None:
    """Pages need the session, POSTs the session and its CSRF token. No field may hold a NUL:
    none belongs in a name, an id or an address, and PostgreSQL refuses it in any text."""
    if any("\x00" in v for v in (*request.args.values(), *request.form.values(), request.path)):
        abort(400, "a field holds a NUL character")
    if request.endpoint in OPEN:
        return None
    if not is_signed_in():
        if request.method == "POST":
            logger.warning("admin %s: %s refused: not signed in", request.remote_addr, request.path)
            abort(401)
        return redirect(url_for("admin.sign_in", next=request.full_path.rstrip("?")))
    if request.method == "POST" and not has_csrf_token():
        logger.warning("admin %s: %s refused: no CSRF token", request.remote_addr, request.path)
        abort(403)
    return None


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    target = _safe_next(request.values.get("next", ""))
    if request.method == "GET":
        return redirect(target) if is_signed_in() else render_template("admin/sign_in.html")
    address = request.remote_addr or "-"
    wait = guard().wait(address)
    if wait:
        logger.warning("admin %s: sign-in refused: too many wrong passwords", address)
        message = f"Too many wrong passwords: try again in {int(wait) + 1} s."
        page = render_template("admin/sign_in.html", message=message)
        return page, 429, {"Retry-After": str(int(wait) + 1)}
    if not has_csrf_token():
        logger.warning("admin %s: sign-in refused: no valid CSRF token", address)
        abort(403)
    if not guard().is_password(request.form.get("password", "")):
        guard().wrong(address)
        logger.warning("admin %s: sign-in refused: wrong password", address)
        return render_template("admin/sign_in.html", message="Wrong password."), 401
    session.clear()  # a new session, and a new CSRF token, for the signed-in person
    session.permanent = True
    session["signed_in"] = True
    csrf_token()
    logger.info("admin %s: signed in", address)
    return redirect(target)


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    session.clear()
    logger.info("admin %s: signed out", request.remote_addr)
    return redirect(url_for("admin.sign_in"))


def _safe_next(target: str) -> str:
    """Where to go after signing in: a page of the console, never another site."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "\\" in target or not is_admin(parts.path):
        return url_for("admin.overview")
    return target
