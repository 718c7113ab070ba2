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


def parse_events(source: Source, body: bytes) -> list[Incoming]:
    """Split a body into events: an object is one event, an array one event per element.

    :raise BadRequest: malformed JSON, or a shape the source's format does not accept.
    """
    try:
        data = json.loads(body)
    except UnicodeDecodeError:
        raise BadRequest("body is not UTF-8 text; send JSON") from None
    except ValueError as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        return [_incoming(source, data, body.decode("utf-8"))]
    if isinstance(data, list) and data and all(isinstance(item, dict) for item in data):
        return [_incoming(source, item, json.dumps(item, ensure_ascii=False)) for item in data]
    raise BadRequest("expected a JSON object, or a non-empty array of objects")


def _incoming(source: Source, item: dict[str, Any], text: str) -> Incoming:
    if source.format == "qualifio" and not any(item.get(k) for k in ("id", "eventId")):
        raise BadRequest("a Qualifio participation has an 'id' (or a loyalty event an 'eventId')")
    return Incoming(text, dedupe_key(source, item, text))


def dedupe_key(source: Source, item: dict[str, Any], text: str) -> str:
    """Two requests with one key are one participation. Qualifio: id + state; json: the body."""
    if source.dedupe is not None:
        try:
            value = source.dedupe.search(item)
        except Permanent as exc:  # never refuse a participation over its dedupe key
            logger.warning(
                "source %s: dedupe failed (%s); using the body's hash", source.name, exc.message
            )
            value = None
        if value not in (None, ""):
            return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    elif source.format == "qualifio":
        if item.get("id"):
            return f"{item['id']}/{item.get('state') or ''}"
        return str(item["eventId"])
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def normalise(fmt: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload a mapping sees: the raw payload with a flat `variables` object beside it."""
    if fmt != "qualifio":
        return payload
    if payload.get("configuration") == "pushWebhookParticipationV1":
        variables = {**(payload.get("crm") or {}), **(payload.get("sso") or {})}
    else:
        variables = {}
        for item in _items(payload.get("form")):
            variables[item["variable"]] = _responses(item)
        for item in _items(payload.get("optins")):
            variables[item["variable"]] = item.get("response", "")
        for item in _items(payload.get("questionnaire")):
            variables[item["variable"]] = _responses(item)
    return {**payload, "variables": variables}


def _items(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        return []
    return [i for i in value if isinstance(i, dict) and isinstance(i.get("variable"), str)]


def _responses(item: dict[str, Any]) -> Any:
    """One response gives its value, several a list, none null. A file upload gives its URL."""
    values = [
        r.get("value", (r.get("file") or {}).get("path"))
        for r in item.get("responses") or []
        if isinstance(r, dict)
    ]
    if not values:
        return None
    return values[0] if len(values) == 1 else values
