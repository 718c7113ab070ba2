"""Source formats: turn a request body into events to store, and a stored event into the
normalised payload mappings read.

Ingest only parses and checks the shape (so a bad body gets its 400 at once); normalising happens
at delivery time on the stored raw payload, so a fix to this module or a mapping applies on replay.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from hookrelay.auth import Auth, load_auth
from hookrelay.errors import BadRequest, Permanent

if TYPE_CHECKING:
    from hookrelay.document import Document
    from hookrelay.expressions import Expression

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Source:
    name: str
    format: Literal["qualifio", "json"]
    auth: Auth
    dedupe: Expression | None = None


def load_source(doc: Document, name: str, spec: Any) -> Source:
    """One entry of config.yaml's `sources:`."""
    key = ("sources", name)
    spec = doc.table(spec, key, ("format", "auth", "dedupe"))
    fmt = spec.get("format", "json")
    if fmt not in ("qualifio", "json"):
        raise doc.error(key + ("format",), f"unknown format {fmt!r}; expected qualifio or json")
    dedupe = doc.expression(spec["dedupe"], key + ("dedupe",)) if "dedupe" in spec else None
    return Source(name, fmt, load_auth(doc, spec.get("auth"), key + ("auth",)), dedupe)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One event parsed from a request, ready to store."""

    payload: str  # the raw JSON text of this event
    dedupe_key: str


MAX_DEPTH = 64  # arrays and objects nested deeper than this are refused (DESIGN §4)


def parse_events(source: Source, body: bytes) -> list[Incoming]:
    """Split a body into events: an object is one event, an array one event per element.

    What is stored is what the worker can read back: UTF-8 text (a BOM is dropped), strict JSON
    (no NaN or Infinity), nested at most MAX_DEPTH deep.

    :raise BadRequest: anything else, or a shape the source's format does not accept.
    """
    data, text = parse_json(body)
    if isinstance(data, dict):
        return [_incoming(source, data, text)]
    # Each element's own text; ASCII, so that a lone surrogate (valid as a JSON escape) stays an
    # escape, which every database can store.
    return [_incoming(source, item, json.dumps(item)) for item in events_in(data)]


def events_in(data: Any) -> list[dict[str, Any]]:
    """The events a JSON value holds: an object is one, an array of objects one per element.

    :raise BadRequest: any other shape (a list of numbers, text, an empty array...).
    """
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return data
    raise BadRequest("expected a JSON object, or a non-empty array of objects")


def parse_json(body: bytes) -> tuple[Any, str]:
    """The body's JSON value and its text, which is what gets stored.

    :raise BadRequest: not UTF-8, not strict JSON, or nested deeper than MAX_DEPTH.
    """
    try:
        text = body.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8 text; send JSON encoded as UTF-8") from None
    too_deep = BadRequest(f"body is nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:  # deeper than the parser goes, so deeper than MAX_DEPTH
        raise too_deep from None
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if _deeper_than(data, MAX_DEPTH):
        raise too_deep
    return data, text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` deep (iterative: no recursion limit)."""
    level = [value]
    for _ in range(limit):
        level = [
            child
            for v in level
            if isinstance(v, dict | list)
            for child in (v.values() if isinstance(v, dict) else v)
            if isinstance(child, dict | list)
        ]
        if not level:
            return False
    return True


def _incoming(source: Source, item: dict[str, Any], text: str) -> Incoming:
    if source.format == "qualifio" and not any(item.get(k) for k in ("id", "eventId")):
        raise BadRequest("a Qualifio participation has an 'id' (or a loyalty event an 'eventId')")
    return Incoming(text, dedupe_key(source, item, text))


def dedupe_key(source: Source, item: dict[str, Any], text: str) -> str:
    """Two requests with one key are one participation. Qualifio: id + state; json: the body.

    The key is the SHA-256 of an unambiguous encoding of what identifies the participation (JSON
    of [id, state], not "id/state", which "X/x", "y" and "X", "x/y" share), so its index has a
    fixed size whatever the participation holds.
    """
    identity = None
    if source.dedupe is not None:
        try:
            value = source.dedupe.search(item)
        except Permanent as exc:  # never refuse a participation over its dedupe key
            logger.warning(
                "source %s: dedupe failed (%s); using the body's hash", source.name, exc.message
            )
            value = None
        if value not in (None, ""):
            identity = ["dedupe", value]
    elif source.format == "qualifio":
        if item.get("id"):
            identity = ["qualifio", item["id"], item.get("state") or ""]
        else:
            identity = ["qualifio-event", item["eventId"]]
    material = json.dumps(identity, sort_keys=True) if identity else "body:" + text
    return hashlib.sha256(material.encode()).hexdigest()


def normalise(fmt: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload a mapping sees: the raw payload with a flat `variables` object beside it.

    Parts of an unexpected shape (a `crm` that is a list, `responses` that are text) are left
    out of `variables` rather than failing: the raw payload is still there for a mapping to read.
    """
    if fmt != "qualifio":
        return payload
    if payload.get("configuration") == "pushWebhookParticipationV1":
        variables = {**_object(payload.get("crm")), **_object(payload.get("sso"))}
    else:
        variables = {}
        for item in _items(payload.get("form")):
            variables[item["variable"]] = _responses(item)
        for item in _items(payload.get("optins")):
            variables[item["variable"]] = item.get("response", "")
        for item in _items(payload.get("questionnaire")):
            variables[item["variable"]] = _responses(item)
    return {**payload, "variables": variables}


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [i for i in value if isinstance(i, dict) and isinstance(i.get("variable"), str)]


def _responses(item: dict[str, Any]) -> Any:
    """One response gives its value, several a list, none null. A file upload gives its URL."""
    responses = item.get("responses")
    values = [
        r["value"] if "value" in r else _object(r.get("file")).get("path")
        for r in (responses if isinstance(responses, list) else [])
        if isinstance(r, dict)
    ]
    if not values:
        return None
    return values[0] if len(values) == 1 else values
