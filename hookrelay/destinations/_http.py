"""What every destination that speaks HTTP shares: one session, timeouts, and turning a vendor's
answer into delivered, RetryLater or Permanent."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable, Mapping
from typing import Any

import requests
import requests.adapters
from urllib3.exceptions import NewConnectionError

from hookrelay.errors import ConfigError, Permanent, RetryLater, Throttled

RETRY_STATUSES = frozenset({408, 425, 429})
EXCERPT = 300  # characters of a vendor's answer kept in the attempt log


def session() -> requests.Session:
    """Kept-alive connections, as many per host as a destination's `concurrency` may use."""
    s = requests.Session()
    s.headers["User-Agent"] = "hookrelay"
    adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    return s


POOL = 64  # connections kept per host: `concurrency` above this opens and closes the rest


def check_url(url: Any, key: str = "url") -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError("expected an http:// or https:// address", key=key)
    return url.rstrip("/") if key == "base_url" else url


def request(
    s: requests.Session,
    method: str,
    url: str,
    *,
    timeout: float,
    what: str,
    secrets: Iterable[str] = (),
    idempotent: bool = True,
    hints: Mapping[int, str] | None = None,
    **kwargs: Any,
) -> requests.Response:
    """Send one request; a 2xx is returned, anything else raised as RetryLater or Permanent.

    Redirects are not followed: a moved endpoint is a configuration to fix, not to guess. A request
    that is not `idempotent` (it creates something) and failed in a way that leaves it unknown
    whether the vendor acted on it is still retried, but the attempt log says a duplicate may
    follow. `hints` add what the user should do to a refusal, by status.
    """
    try:
        response = s.request(method, url, timeout=timeout, allow_redirects=False, **kwargs)
    except requests.ConnectTimeout:
        raise RetryLater(f"{what} could not be reached within {timeout:g}s") from None
    except requests.Timeout:
        raise RetryLater(
            f"{what} did not answer within {timeout:g}s" + ("" if idempotent else MAYBE_DONE)
        ) from None
    except requests.RequestException as exc:
        unsent = _never_sent(exc)
        raise RetryLater(
            f"{what} could not be reached ({type(exc).__name__})"
            + ("" if idempotent or unsent else MAYBE_DONE)
        ) from None
    if response.status_code < 300:
        return response
    error = classify(response, what, secrets, hints)
    if isinstance(error, RetryLater) and not idempotent and response.status_code >= 500:
        error.message += MAYBE_DONE
    raise error


MAYBE_DONE = "; it may have been done anyway, so this retry may make a duplicate"


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the connection was never made (refused, no route, unknown host)."""
    reason = getattr(exc.args[0], "reason", None) if exc.args else None
    return isinstance(reason, NewConnectionError)


def classify(
    response: requests.Response,
    what: str,
    secrets: Iterable[str] = (),
    hints: Mapping[int, str] | None = None,
) -> RetryLater | Permanent:
    """Throttled for 429, RetryLater for 408/425/5xx (with Retry-After when given), Permanent
    for the rest."""
    code = response.status_code
    message = f"{what} answered {code}: {excerpt(vendor_message(response), secrets)}"
    if code in RETRY_STATUSES or code >= 500:
        kind = Throttled if code == 429 else RetryLater
        return kind(message, delay=retry_after(response.headers.get("Retry-After")), status=code)
    if 300 <= code < 400:
        message += f" (redirected to {response.headers.get('Location')}: set the final address)"
    if hints and code in hints:
        message += f". {hints[code]}"
    return Permanent(message, status=code)


def vendor_message(response: requests.Response) -> str:
    """The vendor's own words from an error body: problem+json's title and detail, Google's
    error.message, {"message": ...} or {"error": ...}; else the body as it is."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    if not isinstance(body, dict):
        return response.text
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    keys = ("title", "detail") if "detail" in body else ("message",)
    parts = [str(body[k]) for k in keys if body.get(k)]
    if isinstance(error, str):
        parts.insert(0, error)
    return ": ".join(parts) or response.text


def excerpt(text: str, secrets: Iterable[str] = ()) -> str:
    """The start of an answer, one line, with any secret we hold masked."""
    text = " ".join(text.split())[:EXCERPT]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())
