"""`google_sheets`: append each record as a row of a spreadsheet tab, under its column by name.

The tab's header row decides where each field goes, so a marketer may reorder or add columns in
Google Sheets without breaking anything. A field with no column adds one at the end of the header
(`add_columns: false` leaves it out instead, and says so once). An empty tab gets the first batch's
fields as its header. Values are written RAW: `=HYPERLINK(...)` from a participant stays text.

Google counts one append of many rows as one write request and allows 60 per minute per service
account, so the worker gathers deliveries into batches (`batch_size`, `batch_wait`) and every
destination on one service account shares one rate limit in the process.

Auth is a service account's JSON key, refreshed with google-auth on the relay's own session; not
`AuthorizedSession`, which would also start lookups on a Google host the relay was not told about.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import google.auth.exceptions
import google.auth.transport.requests
from google.oauth2 import service_account

from hookrelay import limits
from hookrelay.destinations import Context, Record, _http
from hookrelay.errors import ConfigError, Permanent, RetryLater

SCOPE = "https://www.googleapis.com/auth/spreadsheets"

logger = logging.getLogger(__name__)


class GoogleSheets:
    type: ClassVar[str] = "google_sheets"
    required: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        name: str,
        context: Context,
        *,
        spreadsheet_id: str,
        credentials: str,
        sheet: str = "Sheet1",
        add_columns: bool = True,
        batch_size: int = 500,
        batch_wait: float = 2.0,
        writes_per_minute: int = 60,
        base_url: str = "https://sheets.googleapis.com/v4",
    ) -> None:
        self.name, self.timeout = name, context.timeout
        self.sheet, self.add_columns = str(sheet), add_columns
        self.batch_size, self.batch_wait = batch_size, batch_wait
        self.credentials = _credentials(credentials, context.base_dir)
        self.email = self.credentials.service_account_email
        self.limit = limits.shared(
            "google_sheets", self.email, lambda: limits.RateLimit(writes_per_minute, 60.0)
        )
        tab = "'" + self.sheet.replace("'", "''") + "'"
        spreadsheet = quote(str(spreadsheet_id), safe="")
        values = f"{_http.check_url(base_url, 'base_url')}/spreadsheets/{spreadsheet}/values/"
        self.header_url = values + quote(f"{tab}!1:1", safe="")
        self.append_url = values + quote(f"{tab}!A1", safe="") + ":append"
        self.session = _http.session()
        self.ignored: set[str] = set()  # fields without a column, already reported
        self._lock = threading.Lock()  # one header read-and-write at a time, per sheet

    def send(self, records: list[Record]) -> None:
        rows = [{k: _cell(v) for k, v in r.fields.items()} for r in records]
        with self._lock:
            header = self._header()
            fields = list(dict.fromkeys(k for row in rows for k in row))
            new = [f for f in fields if f not in header]
            if not header:
                header = new
                values = [header]
            elif new and self.add_columns:
                header = [*header, *new]
                self._request(
                    "PUT",
                    self.header_url,
                    params={"valueInputOption": "RAW"},
                    json={"majorDimension": "ROWS", "values": [header]},
                )
                values = []
            else:
                self._report(new)
                values = []
            values += [[row.get(column, "") for column in header] for row in rows]
            self._request(
                "POST",
                self.append_url,
                params={"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS"},
                json={"majorDimension": "ROWS", "values": values},
                idempotent=False,
            )

    def _header(self) -> list[str]:
        """The tab's first row; column names are matched as written, blanks hold a place."""
        tab = f"Check that the spreadsheet has a tab named {self.sheet!r} (`sheet`)"
        answer = self._request("GET", self.header_url, write=False, hints={400: tab}).json()
        row = (answer.get("values") or [[]])[0]
        return [str(cell) for cell in row]

    def _request(
        self,
        method: str,
        url: str,
        *,
        write: bool = True,
        idempotent: bool = True,
        hints: dict[int, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        if write:
            self.limit.acquire()
        try:
            return _http.request(
                self.session,
                method,
                url,
                timeout=self.timeout,
                what=f"Google Sheets ({self.name})",
                headers={"Authorization": f"Bearer {self._token()}"},
                idempotent=idempotent,
                hints={
                    403: f"Share the spreadsheet with {self.email} as Editor",
                    404: "Check `spreadsheet_id`: the sheet's address between /d/ and /edit",
                    **(hints or {}),
                },
                **kwargs,
            )
        except Permanent as exc:
            if exc.status != 401:
                raise
            self.credentials.token = None  # revoked or expired early: fetch a new one next time
            raise RetryLater(exc.message, status=401) from None

    def _token(self) -> str:
        """A valid access token, refreshed (under the lock: threads share it) when expired."""
        creds = self.credentials
        if not creds.valid:
            try:
                creds.refresh(google.auth.transport.requests.Request(self.session))  # type: ignore[no-untyped-call]
            except google.auth.exceptions.RefreshError as exc:
                message = f"Google refused the service account {self.email}: {_first(exc)}"
                if exc.retryable:
                    raise RetryLater(message) from None
                raise Permanent(message + ". Check the key in `credentials`") from None
            except google.auth.exceptions.TransportError as exc:
                raise RetryLater(
                    f"Google's token endpoint could not be reached ({type(exc.args[0]).__name__})"
                ) from None
        return str(creds.token)

    def _report(self, fields: list[str]) -> None:
        unseen = [f for f in fields if f not in self.ignored]
        if unseen:
            self.ignored.update(unseen)
            logger.warning(
                "%s: no column for %s in tab %r, left out (add_columns is false)",
                self.name,
                ", ".join(unseen),
                self.sheet,
            )


def _credentials(value: Any, base_dir: Path) -> service_account.Credentials:
    """A service account key: the JSON itself (from an environment variable), or a file's path."""
    text = str(value).strip()
    if not text.startswith("{"):
        try:
            text = (base_dir / text).read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the service account key file ({exc.strerror}); give its path or "
                "the key's JSON itself",
                key="credentials",
            ) from None
    try:
        info = json.loads(text)
        credentials: service_account.Credentials
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=[SCOPE]
        )
        return credentials
    except (ValueError, KeyError, TypeError) as exc:
        problem = "not JSON" if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise ConfigError(
            f"not a service account key ({problem}): download one from Google Cloud, "
            "IAM > Service accounts > Keys > Add key > JSON",
            key="credentials",
        ) from None


def _cell(value: Any) -> Any:
    """A value Sheets takes as it is: text, number or boolean; anything nested as JSON text."""
    if value is None:
        return ""
    if isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, ensure_ascii=False)


def _first(exc: Exception) -> str:
    return str(exc.args[0]) if exc.args else type(exc).__name__
