"""What every destination that speaks HTTP shares: one session, timeouts, and turning a vendor's
answer into delivered, RetryLater or Permanent."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterable
from typing import Any

import requests

from hookrelay.errors import ConfigError, Permanent, RetryLater

RETRY_STATUSES = frozenset({408, 425, 429})
EXCERPT = 300  # characters of a vendor's answer kept in the attempt log


def session() -> requests.Session:
    s = requests.Session()
    s.headers["User-Agent"] = "hookrelay"
    return s


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
    **kwargs: Any,
) -> requests.Response:
    """Send one request; a 2xx is returned, anything else raised as RetryLater or Permanent.

    Redirects are not followed: a moved endpoint is a configuration to fix, not to guess.
    """
    try:
        response = s.request(method, url, timeout=timeout, allow_redirects=False, **kwargs)
    except requests.Timeout:
        raise RetryLater(f"{what} did not answer within {timeout:g}s") from None
    except requests.RequestException as exc:
        raise RetryLater(f"{what} could not be reached ({type(exc).__name__})") from None
    if response.status_code < 300:
        return response
    raise classify(response, what, secrets)


def classify(response: requests.Response, what: str, secrets: Iterable[str] = ()) -> Exception:
    """RetryLater for 408/425/429/5xx (with Retry-After when given), Permanent for the rest."""
    code = response.status_code
    message = f"{what} answered {code}: {excerpt(response.text, secrets)}"
    if code in RETRY_STATUSES or code >= 500:
        return RetryLater(
            message, delay=retry_after(response.headers.get("Retry-After")), status=code
        )
    if 300 <= code < 400:
        message += f" (redirected to {response.headers.get('Location')}: set the final address)"
    return Permanent(message, status=code)


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
