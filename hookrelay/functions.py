"""The functions mappings may use beyond standard JMESPath (the README shows each with an example).

Each gives null for a null input instead of failing, so a missing form field never kills a
delivery. Each signature says what the function accepts, and every call is checked against it (by
jmespath, compiled expressions included): a text function given an object fails, naming the
field; converters, hashes and combinators accept any value (`"types": []`: jmespath checks
nothing) and give null or a best effort.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from jmespath import functions


class Functions(functions.Functions):
    """Functions beyond standard JMESPath; each gives null for a null input instead of failing."""

    @functions.signature({"types": ["string", "null"]})
    def _func_lower(self, s: str | None) -> str | None:
        return None if s is None else s.lower()

    @functions.signature({"types": ["string", "null"]})
    def _func_upper(self, s: str | None) -> str | None:
        return None if s is None else s.upper()

    @functions.signature({"types": ["string", "null"]})
    def _func_trim(self, s: str | None) -> str | None:
        return None if s is None else s.strip()

    @functions.signature({"types": ["string", "null"]})
    def _func_title(self, s: str | None) -> str | None:
        return None if s is None else s.title()

    @functions.signature(
        {"types": ["string", "null"]}, {"types": ["string"]}, {"types": ["string"]}
    )
    def _func_replace(self, s: str | None, old: str, new: str) -> str | None:
        return None if s is None else s.replace(old, new)

    @functions.signature({"types": ["string", "null"]}, {"types": ["string"]})
    def _func_split(self, s: str | None, sep: str) -> list[str] | None:
        return None if s is None else s.split(sep)

    @functions.signature({"types": [], "variadic": True})
    def _func_concat(self, *values: Any) -> str:
        return "".join(_text(v) for v in values if v is not None)

    @functions.signature({"types": [], "variadic": True})
    def _func_coalesce(self, *values: Any) -> Any:
        return next((v for v in values if v not in (None, "")), None)

    @functions.signature({"types": []}, {"types": []})
    def _func_default(self, value: Any, fallback: Any) -> Any:
        return fallback if value in (None, "") else value

    @functions.signature({"types": []})  # an object or an array gives null
    def _func_to_bool(self, value: Any) -> bool | None:
        if value is None or isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "y", "on", "oui"):
            return True
        if text in ("0", "false", "no", "n", "off", "non", ""):
            return False
        return None

    @functions.signature({"types": []})  # anything but a number of seconds gives null
    def _func_from_unix(self, seconds: Any) -> str | None:
        moment = _moment(_seconds(seconds))
        return None if moment is None else moment.isoformat().replace("+00:00", "Z")

    @functions.signature({"types": []}, {"types": ["string"]})  # anything but a date gives null
    def _func_format_date(self, value: Any, fmt: str) -> str | None:
        moment = _parse_date(value)
        return None if moment is None else moment.strftime(fmt)

    @functions.signature()
    def _func_now(self) -> str:
        return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")

    @functions.signature({"types": []})  # hashes the value as concat() writes it
    def _func_md5(self, value: Any) -> str | None:
        return None if value is None else hashlib.md5(_text(value).encode()).hexdigest()

    @functions.signature({"types": []})
    def _func_sha256(self, value: Any) -> str | None:
        return None if value is None else hashlib.sha256(_text(value).encode()).hexdigest()

    @functions.signature({"types": []})  # anything but an array of pairs gives {}
    def _func_pick(self, pairs: Any) -> dict[str, Any] | None:
        if pairs is None:
            return None
        if not isinstance(pairs, list):
            return {}
        return {
            _text(p[0]): p[1]
            for p in pairs
            if isinstance(p, list) and len(p) == 2 and p[0] is not None
        }


def _text(value: Any) -> str:
    """How a value reads inside a string: 45.0 as 45, true as true, objects as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _parse_date(value: Any) -> dt.datetime | None:
    """A date from seconds since the epoch (a number or digits) or ISO 8601 text, else None."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    if isinstance(value, int | float) or str(value).isdigit():
        return _moment(_seconds(value))
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def _seconds(value: Any) -> float | None:
    """A number of seconds from a number or numeric text; None for anything else (true too)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):  # "soon", or an integer beyond any float
        return None


def _moment(seconds: float | None) -> dt.datetime | None:
    """The UTC moment `seconds` after the epoch; None when no datetime holds it (1e300, NaN)."""
    if seconds is None:
        return None
    try:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    except (OverflowError, OSError, ValueError):  # beyond time_t, beyond year 9999, NaN
        return None
