"""`file`: append records to a CSV or JSON Lines file; needs no credentials.

Safe under concurrent workers and processes: every write holds an exclusive lock on
`<path>.lock`. CSV columns come from the first record; a record with new fields extends the header
(the file is rewritten once, under the lock), so every row stays aligned with its header.

A CSV cell that a spreadsheet would run as a formula (text starting with = + - @, a tab or a
carriage return: a participant's `=HYPERLINK(...)`) is written with a leading `'`, as OWASP
advises, unless `escape_formulas: false`. Numbers stay numbers, and so does text that is only a
number (`-5`, `+32 470 12 34 56`): no formula hides in digits. JSON Lines are written as the
records are: programs read them, not spreadsheets.

A batch is written whole or not at all: a write that fails midway (a full disk) is cut back to
where it started, so no partial line is left for the next one to be appended onto. A record that
cannot be written as UTF-8 (a lone surrogate) is Refused, and the worker writes its neighbours.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from hookrelay.destinations import Context, Record
from hookrelay.errors import ConfigError, Refused, RetryLater

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class File:
    type: ClassVar[str] = "file"
    required: ClassVar[tuple[str, ...]] = ()
    batch_size, batch_wait, limit, exclusive = 500, 0.0, None, None

    def __init__(
        self, name: str, context: Context, *, path: str, escape_formulas: bool = True
    ) -> None:
        self.name, self.escape_formulas = name, escape_formulas
        self.path = context.base_dir / str(path)
        if self.path.suffix not in FORMATS:
            raise ConfigError(
                f"expected a file ending in {', '.join(FORMATS)}, got {path!r}", key="path"
            )
        self.format = FORMATS[self.path.suffix]
        self._thread_lock = threading.Lock()  # flock is per process; threads need their own

    def send(self, records: list[Record]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                if self.format == "jsonl":
                    lines = (json.dumps(r.fields, ensure_ascii=False) + "\n" for r in records)
                    self._append(_utf8("".join(lines)))
                else:
                    self._append_csv([r.fields for r in records])
        except OSError as exc:
            raise RetryLater(f"cannot write {self.path} ({exc.strerror})") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, open(f"{self.path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, data: bytes) -> None:
        """Append `data` and fsync it, or leave the file as it was. Unbuffered, so that what a
        failed write left is known and cut back, not flushed again when the file closes."""
        with open(self.path, "ab", buffering=0) as f:
            start = f.tell()
            try:
                left = memoryview(data)
                while left:
                    left = left[f.write(left) :]
                os.fsync(f.fileno())
            except OSError:
                f.truncate(start)
                raise

    def _append_csv(self, rows: list[dict[str, Any]]) -> None:
        header = self._header()
        new = [k for row in rows for k in row if k not in header]
        columns = header + list(dict.fromkeys(new))
        out = io.StringIO()
        writer = csv.DictWriter(out, columns, restval="")
        if not header:
            writer.writeheader()
        cell = _safe_cell if self.escape_formulas else _cell
        writer.writerows({k: cell(v) for k, v in row.items()} for row in rows)
        data = _utf8(out.getvalue())  # before the header changes: a refused batch changes nothing
        if header and new:
            self._rewrite(columns)
        self._append(data)

    def _header(self) -> list[str]:
        try:
            with open(self.path, encoding="utf-8", newline="") as f:
                return next(csv.reader(f), [])
        except FileNotFoundError:
            return []

    def _rewrite(self, columns: list[str]) -> None:
        """Extend the header row: rewrite the file to a temporary one, then swap it in."""
        temporary = self.path.with_suffix(".csv.tmp")
        with (
            open(self.path, encoding="utf-8", newline="") as src,
            open(temporary, "w", encoding="utf-8", newline="") as dst,
        ):
            writer = csv.DictWriter(dst, columns, restval="")
            writer.writeheader()
            writer.writerows(csv.DictReader(src))
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(temporary, self.path)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise Refused(
            "a record holds text that cannot be written as UTF-8 (a lone surrogate escape such "
            "as \\ud800 in the participation)"
        ) from None


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?[0-9][0-9 .,]*")  # digits cannot name a function, nor reach DDE


def _safe_cell(value: Any) -> str:
    """A cell no spreadsheet runs as a formula: text that could start one gets a leading `'`."""
    text = _cell(value)
    if isinstance(value, str) and text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def _cell(value: Any) -> str:
    """Nested values as JSON text, booleans as true/false, null as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
