"""A strict local Google: the OAuth token endpoint and the three Sheets calls the relay makes.

It refuses what Google would refuse: a JWT grant not signed by the service account's key or
claiming the wrong issuer, audience or scope; a request without a token it issued; a URL, query
parameter or ValueRange body that the Sheets discovery document (tests/specs/) does not allow; a
spreadsheet not shared with the service account (403), an unknown one (404), an unknown tab (400).
It can enforce the write quota (429 RESOURCE_EXHAUSTED, no Retry-After) and be told to fail with
Google's own error bodies.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.openapi import load
from tests.fakes.server import Answer, FakeServer, Received

SCOPE = "https://www.googleapis.com/auth/spreadsheets"
EMAIL = "hookrelay@relay-test.iam.gserviceaccount.com"
AUDIENCE = "https://oauth2.googleapis.com/token"  # what Google checks, whatever the token_uri


def error(status: int) -> Answer:
    """Google's error body for a status, as the Sheets API sends it."""
    if status == 429:
        body = load("error-samples.json")["google_sheets"]["429_write_quota"]["body"]
        return Answer(429, body)  # no Retry-After: Google sends none
    words = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        500: "INTERNAL",
        503: "UNAVAILABLE",
    }
    messages = {
        401: "Request had invalid authentication credentials. Expected OAuth 2 access token.",
        403: "The caller does not have permission",
        404: "Requested entity was not found.",
        500: "Internal error encountered.",
        503: "The service is currently unavailable.",
    }
    message = messages.get(status, "Request contains an invalid argument.")
    return Answer(status, {"error": {"code": status, "message": message, "status": words[status]}})


def _bad(message: str) -> Answer:
    return Answer(400, {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}})


@functools.cache
def private_key() -> rsa.RSAPrivateKey:
    """One RSA key per test session: generating one takes a noticeable fraction of a second."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Spreadsheet:
    tabs: dict[str, list[list[Any]]] = field(default_factory=lambda: {"Sheet1": []})
    shared_with: set[str] = field(default_factory=lambda: {EMAIL})


class FakeGoogle:
    """`token_uri` and `sheets_url` for the relay; `spreadsheets` for assertions."""

    def __init__(self, writes_per_minute: int | None = None) -> None:
        self.discovery = load("google-sheets-v4.discovery.json")
        self.oauth = FakeServer(handle=self._token)
        self.sheets = FakeServer(check=self._check, handle=self._handle)
        self.token_uri = f"{self.oauth.url}/token"
        self.sheets_url = f"{self.sheets.url}/v4"  # the API root, as `base_url` takes it
        self.spreadsheets: dict[str, Spreadsheet] = {}
        self.tokens: set[str] = set()
        self.writes: list[Received] = []  # append and update calls that changed the sheet
        self.writes_per_minute = writes_per_minute
        self.slow_reads = 0.0  # seconds each read of a sheet takes, to make two writers overlap
        self._recent: deque[float] = deque()
        self._lock = threading.Lock()
        self._methods = [
            (m["httpMethod"], _path_pattern(m["flatPath"]), m)
            for m in self.discovery["resources"]["spreadsheets"]["resources"]["values"][
                "methods"
            ].values()
        ]

    def __enter__(self) -> FakeGoogle:
        self.oauth.__enter__()
        self.sheets.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sheets.__exit__(*exc)
        self.oauth.__exit__(*exc)

    def fail(self, *answers: Answer) -> None:
        self.sheets.fail(*answers)

    def credentials(self) -> dict[str, str]:
        """A service account key file's content, pointing at this fake's token endpoint."""
        pem = private_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {
            "type": "service_account",
            "project_id": "relay-test",
            "private_key_id": "0123456789abcdef",
            "private_key": pem.decode(),
            "client_email": EMAIL,
            "client_id": "100000000000000000000",
            "token_uri": self.token_uri,
        }

    def sheet(self, spreadsheet_id: str, tab: str = "Sheet1") -> list[list[Any]]:
        return self.spreadsheets[spreadsheet_id].tabs[tab]

    # --- OAuth -----------------------------------------------------------------------------------

    def _token(self, received: Received) -> Answer:
        form = {k: v[0] for k, v in parse_qs(received.body.decode()).items()}
        if received.method != "POST" or received.path != "/token":
            return Answer(404, {"error": "not_found"})
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return Answer(400, {"error": "unsupported_grant_type"})
        problem = self._jwt_problem(form.get("assertion", ""))
        if problem:
            return Answer(400, {"error": "invalid_grant", "error_description": problem})
        token = f"ya29.fake-{len(self.tokens)}-{time.monotonic_ns()}"
        with self._lock:
            self.tokens.add(token)
        return Answer(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    def _jwt_problem(self, assertion: str) -> str | None:
        try:
            head, claims, signature = (_unb64(p) for p in assertion.split("."))
            header, payload = json.loads(head), json.loads(claims)
            private_key().public_key().verify(
                signature,
                assertion.rsplit(".", 1)[0].encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, InvalidSignature):
            return "Invalid JWT Signature."
        now = time.time()
        if header.get("alg") != "RS256":
            return "Invalid JWT: alg must be RS256."
        if payload.get("iss") != EMAIL:
            return "Invalid JWT: unknown issuer."
        if payload.get("aud") != AUDIENCE:
            return "Invalid JWT: Failed audience check."
        if SCOPE not in str(payload.get("scope", "")).split():
            return "Invalid JWT: scope must include spreadsheets."
        if not payload.get("iat", 0) - 300 <= now <= payload.get("exp", 0):
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
        return None

    # --- Sheets ----------------------------------------------------------------------------------

    def _check(self, received: Received) -> Answer | None:
        """Refuse what Google would refuse before looking at the spreadsheet."""
        auth = received.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[len("Bearer ") :] not in self.tokens:
            return error(401)
        match = self._match(received)
        if match is None:
            return Answer(404, "<html>404. That's an error.</html>", {"Content-Type": "text/html"})
        method = match[0]
        known = {**self.discovery["parameters"], **method["parameters"]}
        for name, value in received.query.items():
            spec = known.get(name)
            if spec is None or spec.get("location") != "query":
                return _bad(f'Invalid JSON payload received. Unknown name "{name}": Cannot bind.')
            if "enum" in spec and value not in spec["enum"]:
                return _bad(f"Invalid value at '{name}' (\"{value}\")")
        if method["httpMethod"] != "GET":
            if "valueInputOption" not in received.query:
                return _bad("'valueInputOption' is required but not specified")
            return self._body_problem(received.body)
        return None

    def _body_problem(self, raw: bytes) -> Answer | None:
        schema = self.discovery["schemas"]["ValueRange"]["properties"]
        try:
            body = json.loads(raw)
        except ValueError:
            return _bad("Invalid JSON payload received.")
        if not isinstance(body, dict):
            return _bad("Invalid JSON payload received. Expected an object.")
        for name, value in body.items():
            if name not in schema:
                return _bad(f'Invalid JSON payload received. Unknown name "{name}"')
            if "enum" in schema[name] and value not in schema[name]["enum"]:
                return _bad(f"Invalid value at '{name}' ({value!r})")
        rows = body.get("values", [])
        if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
            return _bad("Invalid values: expected a list of rows")
        for i, row in enumerate(rows):
            for j, cell in enumerate(row):
                if cell is None or not isinstance(cell, str | int | float | bool):
                    return _bad(f"Invalid values[{i}][{j}]: {type(cell).__name__}_value")
                if isinstance(cell, str) and len(cell) > 50000:
                    return _bad(
                        "Your input contains more than the maximum of 50000 characters in a "
                        "single cell."
                    )
        return None

    def _match(self, received: Received) -> tuple[dict[str, Any], dict[str, str]] | None:
        """The discovery document's method for this request, and its path parameters."""
        for http_method, pattern, method in self._methods:
            match = pattern.fullmatch(received.path)
            if http_method == received.method and match:
                return method, match.groupdict()
        return None

    def _handle(self, received: Received) -> Answer:
        path = self._match(received)[1]  # type: ignore[index]  # _check matched it
        book = self.spreadsheets.get(path["spreadsheetId"])
        if book is None:
            return error(404)
        if EMAIL not in book.shared_with:
            return error(403)
        tab_name, cells = _range(path["range"])
        if tab_name not in book.tabs:
            return _bad(f"Unable to parse range: {path['range']}")
        tab = book.tabs[tab_name]
        if received.method == "GET":
            time.sleep(self.slow_reads)
            row = [c for c in tab[0]] if tab and cells == "1:1" else []
            while row and row[-1] == "":
                row.pop()
            answer = {"range": f"'{tab_name}'!A1:Z1", "majorDimension": "ROWS"}
            return Answer(200, answer | ({"values": [row]} if row else {}))
        if not self._within_quota():
            return error(429)
        values = json.loads(received.body).get("values", [])
        with self._lock:
            self.writes.append(received)
            if received.method == "PUT":  # update: the header row
                tab[:1] = [list(values[0]) + tab[0][len(values[0]) :] if tab else list(values[0])]
            else:  # append: after the last row of the table
                tab.extend(list(row) for row in values)
        updates = {"updatedRows": len(values), "updatedCells": sum(len(r) for r in values)}
        return Answer(200, {"spreadsheetId": path["spreadsheetId"], "updates": updates})

    def _within_quota(self) -> bool:
        if self.writes_per_minute is None:
            return True
        with self._lock:
            now = time.monotonic()
            while self._recent and self._recent[0] <= now - 60:
                self._recent.popleft()
            if len(self._recent) >= self.writes_per_minute:
                return False
            self._recent.append(now)
            return True


def _path_pattern(flat_path: str) -> re.Pattern[str]:
    """`v4/spreadsheets/{spreadsheetId}/values/{range}:append` as a regex on the decoded path."""
    parts = re.split(r"(\{\w+\})", "/" + flat_path)
    return re.compile(
        "".join(
            f"(?P<{p[1:-1]}>[^/]+)"
            if p == "{spreadsheetId}"
            else f"(?P<{p[1:-1]}>.+?)"
            if p.startswith("{")
            else re.escape(p)
            for p in parts
        )
    )


def _range(a1: str) -> tuple[str, str]:
    """("My tab", "A1") from "'My tab'!A1"; the relay always names the tab."""
    tab, _, cells = a1.rpartition("!")
    if tab.startswith("'") and tab.endswith("'"):
        tab = tab[1:-1].replace("''", "'")
    return tab, cells


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
