"""`google_sheets`: append each record as a row of a spreadsheet tab, under its column by name.

The tab's header row decides where each field goes, so a marketer may reorder or add columns in
Google Sheets without breaking anything. A field with no column adds one at the end of the header
(`add_columns: false` leaves it out instead, and says so once). An empty tab gets the first batch's
fields as its header. Values are written RAW: `=HYPERLINK(...)` from a participant stays text.

Google counts one append of many rows as one write request and allows 60 per minute per service
account, so the worker gathers deliveries into batches (`batch_size`, `batch_wait`) and every
destination on one service account shares one rate limit in the process.

Auth is a service account (see _google). The header read, its extension and the append of one
tab run under one lock in every process (`exclusive`), so two processes adding columns at once
cannot put rows under the wrong column. An append refused with a 400 is raised as Refused: the
worker splits the batch until the row at fault stands alone, and the others are written.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Any, ClassVar
from urllib.parse import quote

from hookrelay import limits
from hookrelay.destinations import Context, Record, _http
from hookrelay.destinations._google import ServiceAccount
from hookrelay.errors import Permanent, Refused, RetryLater

SCOPE = "https://www.googleapis.com/auth/spreadsheets"
RAW = {"valueInputOption": "RAW"}  # a value is text, a number or a boolean; never a formula

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
        self.account = ServiceAccount(credentials, context.base_dir, [SCOPE])
        self.email = self.account.email
        self.limit = limits.shared(
            "google_sheets", self.email, lambda: limits.RateLimit(writes_per_minute, 60.0)
        )
        tab = "'" + self.sheet.replace("'", "''") + "'"
        spreadsheet = quote(str(spreadsheet_id), safe="")
        self.exclusive = f"google_sheets {spreadsheet} {tab}"
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
            new = [f for f in dict.fromkeys(k for row in rows for k in row) if f not in header]
            values = []
            if not header:  # an empty tab: the header row goes in the same append
                header, values = new, [new]
            elif new and self.add_columns:
                header = [*header, *new]
                self._request("PUT", self.header_url, params=RAW, json=_rows([header]))
            else:
                self._report(new)
            values += [[row.get(column, "") for column in header] for row in rows]
            try:
                self._request(
                    "POST",
                    self.append_url,
                    params={**RAW, "insertDataOption": "INSERT_ROWS"},
                    json=_rows(values),
                    idempotent=False,
                )
            except Permanent as exc:
                if exc.status == 400:  # a value Sheets will not take: find the row at fault
                    raise Refused(exc.message, status=400) from None
                raise

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
                headers={"Authorization": f"Bearer {self.account.token(self.session)}"},
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
            self.account.drop_token()
            raise RetryLater(exc.message, status=401) from None

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


def _cell(value: Any) -> Any:
    """A value Sheets takes as it is: text, number or boolean; anything nested as JSON text."""
    if value is None:
        return ""
    if isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, ensure_ascii=False)


def _rows(values: list[list[Any]]) -> dict[str, Any]:
    """A ValueRange of rows."""
    return {"majorDimension": "ROWS", "values": values}
