"""Strict local fakes of Trello, Mailchimp and Brevo, for tests: each refuses what the real API
would refuse (checked against the vendor's own OpenAPI description in tests/specs/, plus the
rules the description leaves out), answers with the vendor's real error bodies, and keeps the
state a test asserts on.

    with TrelloFake() as trello:                 # or MailchimpFake(), BrevoFake()
        ...  # point the relay at trello.base_url (http://127.0.0.1:<port>/1)
        trello.fail(trello.error(429), trello.error(500))  # the next two answers, then normal
        assert trello.cards[0]["labels"][0]["name"] == "Newsletter"

Every fake has:
- `url` (the server root) and `base_url` (root + the API's base path: /1, /3.0, /v3);
- `seen` (every request), `requests` (those answered 2xx), `fail(*answers)` (scripted answers);
- `error(kind, **subst) -> Answer`: the vendor's error for a status (429, 500, 401, ...) or a
  named case (`"400_bad_list"`, `"400_compliance_state"`, `"400_duplicate"`, ... see `ERRORS`);
- `rate=(n, seconds)`: at most n requests per fixed window of that many seconds, then the
  vendor's own 429;
- each request goes through: rate limit, auth, the description, then any scripted failure,
  then the vendor's state. An invalid request is refused even while failures are scripted.

Beyond the real APIs, an undeclared query parameter or body field is refused (the real APIs
ignore it), so a misspelt name fails the test instead of silently doing nothing."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import re
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from functools import cache
from http import HTTPStatus
from typing import Any, Self

from werkzeug.datastructures import Headers

from tests.fakes.openapi import Checked, Invalid, Spec, load
from tests.fakes.server import Answer, FakeServer, Received

TEXT = {"Content-Type": "text/plain; charset=utf-8"}
PROBLEM = {"Content-Type": "application/problem+json; charset=utf-8"}


@cache
def _samples() -> dict[str, Any]:
    return dict(load("error-samples.json"))


def _sample(vendor: str, name: str) -> Answer:
    """An answer copied from error-samples.json, the bodies seen from the real services."""
    sample = _samples()[vendor][name]
    if "body_text" in sample:
        return Answer(sample["status"], sample["body_text"], dict(TEXT))
    headers = {"Content-Type": sample["content_type"]} if "content_type" in sample else {}
    return Answer(sample["status"], json.loads(json.dumps(sample["body"])), headers)


def _header(received: Received, name: str) -> str:
    """A request header, whatever its case."""
    return Headers(list(received.headers.items())).get(name, "")


def _close(schema: dict[str, Any]) -> None:
    """Refuse undeclared fields in a request body schema (the real APIs drop them silently)."""
    schema["additionalProperties"] = False


class _Vendor:
    """What the three fakes share: the server, the rate window and the order of checks."""

    base_path = ""
    default_rate = (1_000_000, 1.0)  # the window counted when no `rate` is set (not enforced)

    def __init__(self, spec: Spec, rate: tuple[int, float] | None) -> None:
        self.spec, self.rate = spec, rate
        self._lock = threading.RLock()
        self._window_start, self._window_count = time.monotonic(), 0
        self.server = FakeServer(check=self._check, handle=self._handle)
        self.url = self.server.url
        self.base_url = self.url + self.base_path

    @property
    def seen(self) -> list[Received]:
        return self.server.seen

    @property
    def requests(self) -> list[Received]:
        return self.server.requests

    def fail(self, *answers: Answer) -> None:
        self.server.fail(*answers)

    def __enter__(self) -> Self:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def error(self, kind: int | str, **subst: str) -> Answer:
        raise NotImplementedError

    # -- the order of checks: rate, auth, description (before scripted failures), then state

    def _check(self, received: Received) -> Answer | None:
        """Refuse before any scripted failure: a failure scripted for a retry test must not hide
        a request that the real API would have refused anyway."""
        if self._count() and self.rate:
            return self.error(429)
        refused = self._authenticate(received)
        if refused is not None:
            return refused
        try:
            self._parse(received)
        except Invalid as invalid:
            return self._invalid(invalid)
        return None

    def _handle(self, received: Received) -> Answer:
        try:
            checked = self._parse(received)
        except Invalid as invalid:  # not reached: _check refused it
            return self._invalid(invalid)
        with self._lock:
            return self._answer(checked, received)

    def _count(self) -> bool:
        """Count a request in the current window; True when it is over the limit."""
        limit, window = self.rate or self.default_rate
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= window:
                self._window_start, self._window_count = now, 0
            self._window_count += 1
            return self._window_count > limit

    def _window(self) -> tuple[int, int, int]:
        """(limit, remaining, seconds to reset) of the current window."""
        limit, window = self.rate or self.default_rate
        with self._lock:
            left = window - (time.monotonic() - self._window_start)
            return limit, max(0, limit - self._window_count), max(0, math.ceil(left))

    def _parse(self, received: Received) -> Checked:
        return self.spec.check(received)

    def _authenticate(self, received: Received) -> Answer | None:
        raise NotImplementedError

    def _invalid(self, invalid: Invalid) -> Answer:
        raise NotImplementedError

    def _answer(self, checked: Checked, received: Received) -> Answer:
        raise NotImplementedError


# -- Trello ----------------------------------------------------------------------------------

TRELLO_KEY = "0123456789abcdef0123456789abcdef"
TRELLO_TOKEN = "ATTA" + "0123456789abcdef" * 4
TRELLO_BOARD = "5abbe4b7ddc1b351ef961414"
TRELLO_LIST = "5abbe4b7ddc1b351ef961415"
TRELLO_LABELS = (
    {
        "id": "5abbe4b7ddc1b351ef9614a1",
        "idBoard": TRELLO_BOARD,
        "name": "Newsletter",
        "color": "green",
    },
    {"id": "5abbe4b7ddc1b351ef9614a2", "idBoard": TRELLO_BOARD, "name": "VIP", "color": "red"},
)
_TRELLO_ID = re.compile(r"^[0-9a-fA-F]{24}$")
_OAUTH = re.compile(r'(\w+)="([^"]*)"')


@cache
def _trello_spec() -> Spec:
    """The project's own description of Trello's calls (tests/specs/trello.openapi.json).

    key/token may come as query parameters or in an OAuth header, and every parameter may come
    in a JSON body instead: the fake checks those by hand."""
    document = load("trello.openapi.json")
    return Spec(document)


class TrelloFake(_Vendor):
    """POST /1/cards, GET /1/lists/{id}, GET /1/boards/{id}/labels.

    State: `lists` (id -> {id, name, idBoard, closed, pos}), `labels` (list of {id, idBoard,
    name, color}), `cards` (as created, with `labels` resolved). Parameters may come as query
    parameters or as a JSON body, and key/token as query parameters or an OAuth header."""

    base_path = "/1"

    def __init__(
        self,
        key: str = TRELLO_KEY,
        token: str = TRELLO_TOKEN,
        *,
        lists: Mapping[str, str] | None = None,
        labels: Iterable[Mapping[str, Any]] = TRELLO_LABELS,
        rate: tuple[int, float] | None = None,
    ) -> None:
        super().__init__(_trello_spec(), rate)
        self.key, self.token = key, token
        self.lists: dict[str, dict[str, Any]] = {
            list_id: {"id": list_id, "name": f"List {n}", "idBoard": board, "closed": False}
            | {"pos": 16384 * n}
            for n, (list_id, board) in enumerate((lists or {TRELLO_LIST: TRELLO_BOARD}).items(), 1)
        }
        self.labels: list[dict[str, Any]] = [dict(label) for label in labels]
        self.cards: list[dict[str, Any]] = []

    ERRORS = ("429_token", "429_key", "400_bad_list", "400_bad_id", "401_key", "401_token")

    def error(self, kind: int | str, **subst: str) -> Answer:
        """429 (= "429_token"), "429_key", "400_bad_list", "400_bad_id": the real bodies; 401
        (= "401_token"), "401_key"; any other status: its reason phrase (or `text=`), as text."""
        if kind in (429, "429_token", "429_key", "400_bad_list", "400_bad_id"):
            return _sample("trello", "429_token" if kind == 429 else str(kind))
        if kind in (401, "401_token", "401_key"):
            return Answer(401, "invalid key" if kind == "401_key" else "invalid token", dict(TEXT))
        if not isinstance(kind, int):
            raise ValueError(f"{kind!r}: not one of {self.ERRORS}")
        return Answer(kind, subst.get("text", HTTPStatus(kind).phrase), dict(TEXT))

    def _credentials(self, received: Received) -> tuple[str | None, str | None]:
        if "key" in received.query or "token" in received.query:
            return received.query.get("key"), received.query.get("token")
        body = self._body(received)
        if "key" in body or "token" in body:
            return body.get("key"), body.get("token")
        header = _header(received, "Authorization")
        if header.startswith("OAuth "):
            fields = dict(_OAUTH.findall(header))
            return fields.get("oauth_consumer_key"), fields.get("oauth_token")
        return None, None

    def _authenticate(self, received: Received) -> Answer | None:
        try:
            key, token = self._credentials(received)
        except Invalid:
            return None  # the body is refused by _parse
        if key != self.key:
            return Answer(401, "invalid key", dict(TEXT))
        if token != self.token:
            return Answer(401, "invalid token", dict(TEXT))
        return None

    @staticmethod
    def _body(received: Received) -> dict[str, Any]:
        if not received.body:
            return {}
        content_type = _header(received, "Content-Type")
        if not content_type.startswith("application/json"):
            raise Invalid(
                400,
                f"the fake takes a JSON body or query parameters, not {content_type or '?'}",
            )
        try:
            body = received.json()
        except ValueError as e:
            raise Invalid(400, f"invalid JSON: {e}") from None
        if not isinstance(body, dict):
            raise Invalid(400, "the JSON body is not an object")
        return body

    def _params(self, received: Received) -> dict[str, str]:
        """The query and the JSON body as one set of query parameters, to check them alike."""
        params = dict(received.query)
        for name, value in self._body(received).items():
            if name in params:
                raise Invalid(400, f"{name} is both in the query and in the JSON body", name)
            if value is None:
                continue
            if isinstance(value, bool):
                params[name] = "true" if value else "false"
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                params[name] = ",".join(value)
            elif isinstance(value, str | int | float):
                params[name] = str(value)
            else:
                raise Invalid(400, f"{name} must be a string, number, boolean or list", name)
        return params

    def _parse(self, received: Received) -> Checked:
        params = self._params(received)
        checked = self.spec.check(received, params, allow=("key", "token"))
        checked.body = params  # the raw values, as the card keeps them
        if len(params.get("desc", "")) > 16384:  # the real limit, not in the description
            raise Invalid(400, "longer than 16384 characters", "desc")
        return checked

    def _invalid(self, invalid: Invalid) -> Answer:
        if invalid.status in (404, 405):
            return Answer(404, invalid.reason, dict(TEXT))
        if invalid.name == "id":
            return Answer(400, "invalid id", dict(TEXT))
        what = f"invalid value for {invalid.name}" if invalid.name else "invalid request"
        return Answer(400, f"{what} ({invalid.reason})", dict(TEXT))

    def _answer(self, checked: Checked, received: Received) -> Answer:
        if checked.operation == "post-cards":
            return self._create_card(checked)
        if checked.operation == "get-lists-id":
            if not _TRELLO_ID.match(checked.path["id"]):
                return Answer(400, "invalid id", dict(TEXT))
            found = self.lists.get(checked.path["id"])
            if found is None:
                return Answer(404, "The requested resource was not found.", dict(TEXT))
            return Answer(200, dict(found))
        if checked.operation == "get-boards-id-labels":
            board = checked.path["id"]
            boards = {x["idBoard"] for x in [*self.lists.values(), *self.labels]}
            if board not in boards:
                return Answer(404, "The requested resource was not found.", dict(TEXT))
            labels = [dict(x) for x in self.labels if x["idBoard"] == board]
            return Answer(200, labels[: checked.query.get("limit", 50)])
        return Answer(501, f"{checked.operation} is not implemented by the fake", dict(TEXT))

    def _create_card(self, checked: Checked) -> Answer:
        params = checked.body
        found = self.lists.get(checked.query["idList"])
        if found is None:
            return _sample("trello", "400_bad_list")
        on_board = {x["id"]: x for x in self.labels if x["idBoard"] == found["idBoard"]}
        label_ids = checked.query.get("idLabels", [])
        if any(i not in on_board for i in label_ids):
            return Answer(400, "invalid value for idLabels", dict(TEXT))
        card_id, short = secrets.token_hex(12), secrets.token_urlsafe(6)[:8]
        card = {
            "id": card_id,
            "name": params.get("name", ""),
            "desc": params.get("desc", ""),
            "idList": found["id"],
            "idBoard": found["idBoard"],
            "idLabels": label_ids,
            "labels": [dict(on_board[i]) for i in label_ids],
            "idMembers": checked.query.get("idMembers", []),
            "due": params.get("due"),
            "start": params.get("start"),
            "dueComplete": checked.query.get("dueComplete", False),
            "pos": params.get("pos", "bottom"),
            "closed": False,
            "shortLink": short,
            "shortUrl": f"https://trello.com/c/{short}",
            "url": f"https://trello.com/c/{short}/{len(self.cards) + 1}-card",
        }
        self.cards.append(card)
        return Answer(200, card)


# -- Mailchimp -------------------------------------------------------------------------------

MAILCHIMP_KEY = "0123456789abcdef0123456789abcdef-us6"
MAILCHIMP_LIST = "4ca5becb8d"
MAILCHIMP_ERRORS_URL = "https://mailchimp.com/developer/marketing/docs/errors/"
_MAILCHIMP_TITLES = {
    400: ("Invalid Resource", "The resource submitted could not be validated."),
    401: (
        "API Key Invalid",
        "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
    ),
    403: ("Forbidden", "You don't have permission to access this resource."),
    404: ("Resource Not Found", "The requested resource could not be found."),
    405: (
        "Method Not Allowed",
        "The requested method and resource are not compatible. See the Allow header for this "
        "resource's available methods.",
    ),
    429: ("Too Many Requests", "You have exceeded the limit of 10 simultaneous connections."),
    500: (
        "Internal Server Error",
        "An unexpected internal error has occurred. Please contact Support for more information.",
    ),
    503: ("Service Unavailable", "This service is temporarily unavailable."),
}


def subscriber_hash(email: str) -> str:
    """Mailchimp's member id: md5 of the lower-cased address."""
    return hashlib.md5(email.lower().encode()).hexdigest()


@cache
def _mailchimp_spec() -> Spec:
    document = load("mailchimp-marketing.subset.json")
    schemas = document["components"]["schemas"]
    for name in ("AddListMembers2", "MemberTags", "MemberTag"):
        _close(schemas[name])
    return Spec(document)


class MailchimpFake(_Vendor):
    """PUT/GET /3.0/lists/{list}/members/{hash}, POST …/tags, GET …/merge-fields, GET /3.0/ping.

    State: `lists` (list id -> lower email -> member), `members` (the first list's),
    `forgotten` (lower emails), `puts` (PUT bodies). A member is
    {email_address, status, merge_fields, tags (names), language, compliance}. PUT is an
    upsert: `status_if_new` only for a new member, `status` changes an existing one (which the
    relay must never send: assert on `puts`, every PUT body that matched the description).
    `merge_fields=` (tags): refuse any other merge field, as a list without it would drop it."""

    base_path = "/3.0"

    def __init__(
        self,
        key: str = MAILCHIMP_KEY,
        lists: Iterable[str] = (MAILCHIMP_LIST,),
        *,
        merge_fields: Iterable[str] | None = None,
        rate: tuple[int, float] | None = None,
    ) -> None:
        super().__init__(_mailchimp_spec(), rate)
        self.key = key
        self.lists: dict[str, dict[str, dict[str, Any]]] = {list_id: {} for list_id in lists}
        self.list_id = next(iter(self.lists))
        self.merge_fields = None if merge_fields is None else list(merge_fields)
        self.forgotten: set[str] = set()
        self.puts: list[dict[str, Any]] = []

    @property
    def members(self) -> dict[str, dict[str, Any]]:
        return self.lists[self.list_id]

    def seed(
        self,
        email: str,
        status: str = "subscribed",
        *,
        compliance: bool = False,
        list_id: str | None = None,
        merge_fields: Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        language: str = "",
    ) -> dict[str, Any]:
        """An existing member; `compliance=True` puts it in a compliance state (every PUT is
        then refused with "Member In Compliance State")."""
        member = {
            "email_address": email,
            "status": status,
            "merge_fields": dict(merge_fields or {}),
            "tags": list(tags),
            "language": language,
            "compliance": compliance,
        }
        with self._lock:
            self.lists[list_id or self.list_id][email.lower()] = member
        return member

    def forget(self, email: str, list_id: str | None = None) -> None:
        """GDPR-deleted ("forgotten"): gone from the list, and a PUT can never bring it back."""
        with self._lock:
            self.lists[list_id or self.list_id].pop(email.lower(), None)
            self.forgotten.add(email.lower())

    ERRORS = ("400_member_exists", "400_compliance_state", "400_forgotten")

    def error(self, kind: int | str, **subst: str) -> Answer:
        """A problem+json answer: a status (title and detail as Mailchimp words them; `detail=`
        replaces the detail), or a named case (`ERRORS`) with `email=` put in its detail.
        "400_compliance_state" has no `type`, as seen from the real API in 2025."""
        email = subst.get("email", "someone@example.org")
        if kind == "400_forgotten":
            title = "Forgotten Email Not Subscribed"
            detail = (
                f"{email} was permanently deleted and cannot be re-imported. The contact must "
                "re-subscribe to get back on the list."
            )
            return self._problem(400, title, detail)
        if isinstance(kind, str):
            if kind not in self.ERRORS:
                raise ValueError(f"{kind!r}: not one of {self.ERRORS}")
            answer = _sample("mailchimp", kind)
            answer.body["instance"] = str(uuid.uuid4())
            sample_email = re.search(r"\S+@example\.com", answer.body["detail"])
            if sample_email:
                answer.body["detail"] = answer.body["detail"].replace(sample_email.group(), email)
            if kind == "400_compliance_state":
                del answer.body["type"]
            return answer
        title, detail = _MAILCHIMP_TITLES.get(kind, (HTTPStatus(kind).phrase, ""))
        return self._problem(kind, title, subst.get("detail", detail))

    @staticmethod
    def _problem(status: int, title: str, detail: str, **extra: Any) -> Answer:
        body = {
            "type": MAILCHIMP_ERRORS_URL,
            "title": title,
            "status": status,
            "detail": detail,
            "instance": str(uuid.uuid4()),
            **extra,
        }
        return Answer(status, body, dict(PROBLEM))

    def _authenticate(self, received: Received) -> Answer | None:
        header = _header(received, "Authorization")
        if not header:
            detail = "Your request did not include an API key."
            return self._problem(401, "API Key Missing", detail)
        password = None
        if header.startswith("Basic "):
            try:
                password = base64.b64decode(header[6:]).decode().partition(":")[2]
            except ValueError:
                pass
        return None if password == self.key else self.error(401)

    def _invalid(self, invalid: Invalid) -> Answer:
        if invalid.status != 400:
            return self.error(invalid.status)
        detail = (
            "The resource submitted could not be validated. For field-specific details, "
            "see the 'errors' array."
        )
        errors = [{"field": invalid.name or "", "message": invalid.reason}]
        return self._problem(400, "Invalid Resource", detail, errors=errors)

    def _answer(self, checked: Checked, received: Received) -> Answer:
        if checked.operation == "getPing":
            return Answer(200, {"health_status": "Everything's Chimpy!"})
        members = self.lists.get(checked.path.get("listId", ""))
        if members is None:
            return self.error(404)
        if checked.operation == "getListsIdMergeFields":
            return Answer(200, self._merge_fields(checked.path["listId"]))
        if checked.operation == "putListsIdMembersId":
            return self._put(checked, received.json(), members)
        member = self._member(members, checked.path["subscriberHash"])
        if member is None:
            return self.error(404)
        if checked.operation == "getListsIdMembersId":
            return Answer(200, self._view(member, checked.path["listId"]))
        if checked.operation == "postListMemberTags":
            for tag in received.json()["tags"]:
                if tag["status"] == "active" and tag["name"] not in member["tags"]:
                    member["tags"].append(tag["name"])
                elif tag["status"] == "inactive" and tag["name"] in member["tags"]:
                    member["tags"].remove(tag["name"])
            return Answer(204)
        return self._problem(501, "Not Implemented", f"{checked.operation}: not in the fake")

    @staticmethod
    def _member(members: dict[str, dict[str, Any]], key: str) -> dict[str, Any] | None:
        """By subscriber hash, or by address (which the API also takes)."""
        if key.lower() in members:
            return members[key.lower()]
        return next((m for e, m in members.items() if subscriber_hash(e) == key.lower()), None)

    def _put(
        self, checked: Checked, body: dict[str, Any], members: dict[str, dict[str, Any]]
    ) -> Answer:
        self.puts.append(body)
        email, list_id = body["email_address"], checked.path["listId"]
        if checked.path["subscriberHash"].lower() != subscriber_hash(email):
            message = (
                "does not match the subscriber hash in the URL (md5 of the lower-cased address)"
            )
            return self._invalid(Invalid(400, message, "email_address"))
        known = (
            set(body.get("merge_fields", {})) if self.merge_fields is None else self.merge_fields
        )
        unknown = set(body.get("merge_fields", {})) - set(known)
        if unknown:
            message = f"unknown merge field(s) {sorted(unknown)}; the list has {self.merge_fields}"
            return self._invalid(Invalid(400, message, "merge_fields"))
        if email.lower() in self.forgotten:
            return self.error("400_forgotten", email=email)
        member = members.get(email.lower())
        if member is not None and member["compliance"]:
            return self.error("400_compliance_state", email=email)
        if member is None:
            member = self.seed(email, body.get("status", body["status_if_new"]), list_id=list_id)
        elif "status" in body:
            member["status"] = body["status"]
        member["merge_fields"].update(body.get("merge_fields", {}))
        if "language" in body:
            member["language"] = body["language"]
        return Answer(200, self._view(member, list_id))

    @staticmethod
    def _view(member: dict[str, Any], list_id: str) -> dict[str, Any]:
        """The member as the API shows it (part of `ListMembers2`)."""
        email = member["email_address"]
        return {
            "id": subscriber_hash(email),
            "email_address": email,
            "unique_email_id": subscriber_hash(email)[:10],
            "status": member["status"],
            "merge_fields": dict(member["merge_fields"]),
            "language": member["language"],
            "list_id": list_id,
            "tags_count": len(member["tags"]),
            "tags": [{"id": n, "name": name} for n, name in enumerate(member["tags"], 1)],
        }

    def _merge_fields(self, list_id: str) -> dict[str, Any]:
        tags = self.merge_fields if self.merge_fields is not None else ["FNAME", "LNAME"]
        fields = [
            {"merge_id": n, "tag": tag, "name": tag.title(), "type": "text", "required": False}
            | {"list_id": list_id}
            for n, tag in enumerate(tags, 1)
        ]
        return {"merge_fields": fields, "list_id": list_id, "total_items": len(fields)}


# -- Brevo -----------------------------------------------------------------------------------

BREVO_KEY = "xkeysib-" + "0123456789abcdef" * 4 + "-AbCdEfGhIjKlMnOp"
BREVO_LISTS = (2, 7)


@cache
def _brevo_spec() -> Spec:
    document = load("brevo-v3.subset.json")
    _close(document["components"]["schemas"]["createContact"])
    return Spec(document)


class BrevoFake(_Vendor):
    """POST /v3/contacts and GET /v3/contacts/{identifier}; every answer carries the
    x-sib-ratelimit-limit/remaining/reset headers (from `rate`, else a window of 10 per second
    that is reported but not enforced).

    State: `contacts` (lower email -> {id, email, attributes, listIds, emailBlacklisted,
    smsBlacklisted}); `list_ids`, the lists that exist. `attributes=` (names): refuse any other
    attribute. Answers scripted with `fail()` carry the rate headers of when they were made."""

    base_path = "/v3"
    default_rate = (10, 1.0)

    def __init__(
        self,
        key: str = BREVO_KEY,
        lists: Iterable[int] = BREVO_LISTS,
        *,
        attributes: Iterable[str] | None = None,
        rate: tuple[int, float] | None = None,
    ) -> None:
        super().__init__(_brevo_spec(), rate)
        self.key = key
        self.list_ids = set(lists)
        self.attributes = None if attributes is None else set(attributes)
        self.contacts: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)

    def seed(
        self,
        email: str,
        attributes: Mapping[str, Any] | None = None,
        list_ids: Iterable[int] = (),
    ) -> dict[str, Any]:
        """An existing contact (Brevo keeps addresses lower-cased)."""
        contact = {
            "id": next(self._ids),
            "email": email.lower(),
            "attributes": dict(attributes or {}),
            "listIds": list(list_ids),
            "emailBlacklisted": False,
            "smsBlacklisted": False,
        }
        with self._lock:
            self.contacts[email.lower()] = contact
        return contact

    ERRORS = ("400_duplicate", "404_list")

    def error(self, kind: int | str, **subst: str) -> Answer:
        """{"code", "message"} with the rate headers: a status, or a named case (`ERRORS`);
        `message=` replaces the message."""
        named = {
            "400_duplicate": (400, "duplicate_parameter", "Contact already exist"),
            "404_list": (404, "document_not_found", "List ID does not exist"),
        }
        by_status = {
            400: ("invalid_parameter", "Invalid parameter"),
            401: ("unauthorized", "Key not found"),
            402: ("not_enough_credits", "Not enough credits"),
            403: ("permission_denied", "Permission denied"),
            404: ("document_not_found", "Document not found"),
            405: ("method_not_allowed", "Method is not allowed on this path"),
            429: ("too_many_requests", "The expected rate limit is exceeded."),
        }
        if isinstance(kind, str):
            if kind not in named:
                raise ValueError(f"{kind!r}: not one of {self.ERRORS}")
            status, code, message = named[kind]
        else:
            status = kind
            code, message = by_status.get(kind, ("internal_error", HTTPStatus(kind).phrase))
        body = {"code": code, "message": subst.get("message", message)}
        return Answer(status, body, self._rate_headers())

    def _rate_headers(self) -> dict[str, str]:
        limit, remaining, reset = self._window()
        return {
            "x-sib-ratelimit-limit": str(limit),
            "x-sib-ratelimit-remaining": str(remaining),
            "x-sib-ratelimit-reset": str(reset),
        }

    def _authenticate(self, received: Received) -> Answer | None:
        return None if _header(received, "api-key") == self.key else self.error(401)

    def _invalid(self, invalid: Invalid) -> Answer:
        if invalid.status == 404:
            return self.error(404, message=invalid.reason)
        if invalid.status == 405:
            return self.error(405, message=invalid.reason)
        code = "missing_parameter" if "Missing" in invalid.reason else "invalid_parameter"
        return Answer(400, {"code": code, "message": invalid.reason}, self._rate_headers())

    def _answer(self, checked: Checked, received: Received) -> Answer:
        answer = self._contacts(checked, received)
        answer.headers.update(self._rate_headers())
        return answer

    def _contacts(self, checked: Checked, received: Received) -> Answer:
        if checked.operation == "Contacts_createNewContact":
            return self._create(received.json())
        if checked.operation == "Contacts_getDetails":
            identifier = checked.path["identifier"].lower()
            found = self.contacts.get(identifier) or next(
                (c for c in self.contacts.values() if str(c["id"]) == identifier), None
            )
            if found is None:
                return self.error(404, message="Contact does not exist")
            return Answer(200, dict(found))
        return self.error(405, message=f"{checked.operation} is not implemented by the fake")

    def _create(self, body: dict[str, Any]) -> Answer:
        email = body.get("email")
        if not email:
            return self.error(400, message="email is missing (the fake needs an email address)")
        if set(body.get("listIds", [])) - self.list_ids:
            return self.error("404_list")
        known = set(body.get("attributes", {})) if self.attributes is None else self.attributes
        unknown = set(body.get("attributes", {})) - known
        if unknown:
            return self.error(400, message=f"Attribute(s) {sorted(unknown)} do not exist")
        contact = self.contacts.get(email.lower())
        if contact is not None and body.get("updateEnabled") is not True:
            return self.error("400_duplicate")
        if contact is None:
            contact = self.seed(email, body.get("attributes"))
            status, answer_body = 201, {"id": contact["id"]}
        else:
            contact["attributes"].update(body.get("attributes", {}))
            status, answer_body = 204, None
        for list_id in body.get("listIds", []):
            if list_id not in contact["listIds"]:
                contact["listIds"].append(list_id)
        for flag in ("emailBlacklisted", "smsBlacklisted"):
            if flag in body:
                contact[flag] = body[flag]
        return Answer(status, answer_body)
