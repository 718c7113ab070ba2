"""Checks a request to a fake vendor against the vendor's own OpenAPI description, so a test fails
when the relay sends something the real API would refuse, with the reason in the answer.

The descriptions are in tests/specs/ (their sources and licences: tests/specs/README.md)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import OperationNotFound, PathNotFound
from openapi_core.templating.paths.finders import APICallPathFinder
from openapi_core.validation.request.exceptions import RequestBodyValidationError
from werkzeug.datastructures import Headers, ImmutableMultiDict

from tests.fakes.server import Received

SPECS = Path(__file__).resolve().parents[1] / "specs"


def load(name: str) -> Any:
    """A fresh copy of tests/specs/<name> (callers patch it)."""
    return json.loads((SPECS / name).read_text(encoding="utf-8"))


class Invalid(Exception):
    """The request does not match the description: 404 (no such path), 405 (no such method on
    it) or 400; `name` is the offending parameter when there is one."""

    def __init__(self, status: int, reason: str, name: str | None = None) -> None:
        super().__init__(reason)
        self.status, self.reason, self.name = status, reason, name


@dataclass
class Checked:
    operation: str  # the operationId, to dispatch on
    path: dict[str, str]  # path parameters
    query: dict[str, Any]  # query parameters, cast and with the description's defaults
    body: Any = None  # as openapi-core unmarshalled it (formats become datetimes); raw: received


class _SpecRequest:
    """openapi-core's `Request` protocol over a `Received`, addressed to the description's own
    host: the fake listens on 127.0.0.1, which matches none of the description's `servers`."""

    def __init__(self, host_url: str, received: Received, query: Mapping[str, str]) -> None:
        headers = Headers(list(received.headers.items()))
        self.host_url = host_url
        self.path = received.path
        self.method = received.method.lower()
        self.body: bytes | None = received.body
        self.content_type = headers.get("Content-Type", "application/octet-stream").lower()
        self.parameters = RequestParameters(query=ImmutableMultiDict(query), header=headers)


class Spec:
    """One vendor's description, patched by the caller where it is wrong about the real API.

    Stricter than openapi-core: a query parameter the operation does not declare is refused
    (the real APIs ignore it), so a misspelt name fails the test instead of doing nothing."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.title = document["info"]["title"]
        server = urlsplit(document["servers"][0]["url"])
        self.host_url = f"{server.scheme}://{server.netloc}"
        self.api = OpenAPI.from_dict(document)
        self._finder = APICallPathFinder(self.api.spec)

    def check(
        self,
        received: Received,
        query: Mapping[str, str] | None = None,
        allow: Iterable[str] = (),
    ) -> Checked:
        """Validate `received` (with `query` instead of its own, if given: a vendor may take
        parameters from elsewhere); `allow` names undeclared query parameters to let through."""
        query = dict(received.query if query is None else query)
        method = received.method.lower()
        try:
            found = self._finder.find(method, self.host_url + received.path)
        except PathNotFound:
            raise Invalid(404, f"{received.path} is not in the {self.title} description") from None
        except OperationNotFound:
            raise Invalid(405, f"{received.method} {received.path} is not described") from None
        template = found.path.parts[-1]
        item = self.document["paths"][template]
        parameters = [*item.get("parameters", []), *item[method].get("parameters", [])]
        declared = {p["name"] for p in parameters if p.get("in") == "query"}
        unknown = sorted(set(query) - declared - set(allow))
        if unknown:
            raise Invalid(
                400,
                f"undeclared query parameter {unknown[0]!r} (the real API ignores it; the fake "
                "refuses it so that a misspelt name fails the test)",
                unknown[0],
            )
        result = self.api.unmarshal_request(_SpecRequest(self.host_url, received, query))
        errors = list(result.errors)
        if errors:
            name = getattr(errors[0], "name", None)
            raise Invalid(400, "; ".join(map(describe, errors)), name)
        return Checked(
            found.operation["operationId"],
            dict(found.path_result.variables),
            dict(result.parameters.query),
            result.body,
        )


def describe(error: Exception) -> str:
    """One line saying what is wrong and where, without echoing the whole request body."""
    name, location = getattr(error, "name", None), getattr(error, "location", None)
    if name and location:
        where = f"{location} parameter {name}"
    elif isinstance(error, RequestBodyValidationError):
        where = "request body"
    else:
        where = type(error).__name__
    cause = error.__cause__
    schema_errors = getattr(cause, "schema_errors", None)
    if schema_errors:
        reasons = []
        for e in schema_errors:
            at = "/".join(map(str, e.absolute_path))
            reasons.append(f"{at}: {e.message}" if at else e.message)
        return f"{where}: {'; '.join(reasons)}"
    if cause is not None:
        return f"{where}: {cause}"
    return str(error)
