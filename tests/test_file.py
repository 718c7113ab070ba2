"""The `file` destination: CSV and JSON Lines, new columns, and writers in several processes."""

from __future__ import annotations

import csv
import json
import multiprocessing
from pathlib import Path

import pytest

from hookrelay.destinations import Context, Record
from hookrelay.destinations.file import File
from hookrelay.errors import ConfigError


def file_destination(tmp_path: Path, name: str) -> File:
    return File("archive", Context(tmp_path, 5.0), path=name)


def records(*rows: dict) -> list[Record]:
    return [Record(f"d{i}", f"e{i}", row) for i, row in enumerate(rows)]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def test_csv_header_comes_from_the_first_record(tmp_path):
    dest = file_destination(tmp_path, "out/rows.csv")
    dest.send(records({"id": "1", "name": "Zo", "nested": {"a": [1, 2]}, "ok": True, "none": None}))
    assert read_csv(tmp_path / "out/rows.csv") == [
        {"id": "1", "name": "Zo", "nested": '{"a": [1, 2]}', "ok": "true", "none": ""}
    ]


def test_new_columns_extend_the_header_and_keep_rows_aligned(tmp_path):
    dest = file_destination(tmp_path, "rows.csv")
    dest.send(records({"id": "1", "b": "x"}))
    dest.send(records({"id": "2", "c": "y, with comma", "why": '=HYPERLINK("x")'}))
    assert read_csv(tmp_path / "rows.csv") == [
        {"id": "1", "b": "x", "c": "", "why": ""},
        {"id": "2", "b": "", "c": "y, with comma", "why": '=HYPERLINK("x")'},
    ]


def test_jsonl_appends_one_object_per_line(tmp_path):
    dest = file_destination(tmp_path, "rows.jsonl")
    dest.send(records({"id": "1", "name": "Zoë"}, {"id": "2"}))
    lines = (tmp_path / "rows.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"id": "1", "name": "Zoë"}, {"id": "2"}]


def test_unknown_extension_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        file_destination(tmp_path, "rows.xlsx")
    assert caught.value.key == "path" and ".csv" in caught.value.message


def _write_many(directory: str, worker: int) -> None:
    dest = File("archive", Context(Path(directory), 5.0), path="rows.csv")
    for n in range(40):
        extra = {f"col{worker}": "x"} if n == 20 else {}  # new columns while others write
        dest.send(records({"worker": str(worker), "n": str(n), **extra}))


def test_concurrent_processes_never_interleave_or_lose_rows(tmp_path):
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_write_many, args=(str(tmp_path), w)) for w in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(30)
    rows = read_csv(tmp_path / "rows.csv")
    assert sorted((r["worker"], int(r["n"])) for r in rows) == sorted(
        (str(w), n) for w in range(4) for n in range(40)
    )
    assert all(None not in r for r in rows)  # no row longer than the header
    with open(tmp_path / "rows.csv", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert {"col0", "col1", "col2", "col3"} <= set(header)
