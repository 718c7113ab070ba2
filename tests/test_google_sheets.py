"""The `google_sheets` destination against a strict fake of Google's OAuth and Sheets endpoints."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hookrelay.config import load_config
from hookrelay.destinations import Context, Record
from hookrelay.destinations.google_sheets import GoogleSheets
from hookrelay.errors import ConfigError, Permanent
from tests.conftest import participation, vendor_config, write_config
from tests.fakes.google import EMAIL, FakeGoogle, Spreadsheet, error, private_key
from tests.fakes.server import Answer
from tests.processes import wait_until

ROW_MAPPING = """
fields:
  id: id
  state: state
  firstname: variables.firstname
  why: variables.why_win
  answers: questionnaire[].responses[].value[]
  campaign: campaign.name
"""


@pytest.fixture
def google() -> Iterator[FakeGoogle]:
    with FakeGoogle() as fake:
        fake.spreadsheets["sheet-1"] = Spreadsheet(tabs={"Participations": []})
        yield fake


def destination(google: FakeGoogle, **options: object) -> GoogleSheets:
    options = {"spreadsheet_id": "sheet-1", "sheet": "Participations", **options}
    return GoogleSheets(
        "sheet",
        Context(Path("."), 5.0),
        credentials=json.dumps(google.credentials()),
        base_url=google.sheets_url,
        **options,  # type: ignore[arg-type]
    )


def records(*rows: dict) -> list[Record]:
    return [Record(f"d{i}", f"e{i}", row) for i, row in enumerate(rows)]


def attempts(relay) -> list[dict]:
    """The attempt log of the only delivery."""
    (event,) = relay.events()
    return relay.attempts(event["deliveries"][0]["id"])


def sheets_config(tmp_path: Path, google: FakeGoogle, monkeypatch, **options: str) -> Path:
    monkeypatch.setenv("GOOGLE_CREDENTIALS", json.dumps(google.credentials()))
    options = {"batch_wait": "200ms", **options}
    extra = "".join(f", {k}: {v}" for k, v in options.items())
    destination = (
        "{type: google_sheets, spreadsheet_id: sheet-1, sheet: Participations, "
        f'credentials: "${{GOOGLE_CREDENTIALS}}", base_url: "{google.sheets_url}"{extra}}}'
    )
    return vendor_config(tmp_path, destination, ROW_MAPPING)


# --- rows and columns, straight through the destination ------------------------------------------


def test_fields_go_under_their_columns_by_name(google):
    tab = google.sheet("sheet-1", "Participations")
    tab.append(["state", "Notes", "id", "", "firstname"])  # a marketer's own order and columns
    destination(google).send(records({"id": "p1", "firstname": "Zoë", "state": "COMPLETED"}))
    assert tab == [
        ["state", "Notes", "id", "", "firstname"],
        ["COMPLETED", "", "p1", "", "Zoë"],
    ]


def test_fields_without_a_column_are_added_to_the_header(google):
    tab = google.sheet("sheet-1", "Participations")
    tab.extend([["id", "state"], ["p0", "COMPLETED"]])
    destination(google).send(records({"id": "p1", "score": 7, "state": "INCOMPLETE"}))
    assert tab == [["id", "state", "score"], ["p0", "COMPLETED"], ["p1", "INCOMPLETE", 7]]


def test_without_add_columns_extra_fields_are_left_out_and_reported_once(google, caplog):
    tab = google.sheet("sheet-1", "Participations")
    tab.append(["id"])
    sheet = destination(google, add_columns=False)
    sheet.send(records({"id": "p1", "score": 7}))
    sheet.send(records({"id": "p2", "score": 8}))
    assert tab == [["id"], ["p1"], ["p2"]]
    reports = [r.getMessage() for r in caplog.records if "no column for score" in r.getMessage()]
    assert len(reports) == 1, reports


def test_an_empty_sheet_gets_a_header_from_the_first_record(google):
    destination(google).send(records({"id": "p1", "state": "COMPLETED"}, {"id": "p2", "x": True}))
    assert google.sheet("sheet-1", "Participations") == [
        ["id", "state", "x"],
        ["p1", "COMPLETED", ""],
        ["p2", "", True],
    ]


def test_a_tab_name_with_spaces_and_quotes_is_quoted(google):
    google.spreadsheets["sheet-1"].tabs["Été 'winners'"] = []
    destination(google, sheet="Été 'winners'").send(records({"id": "p1"}))
    assert google.sheet("sheet-1", "Été 'winners'") == [["id"], ["p1"]]


def test_one_token_serves_many_sends(google):
    sheet = destination(google)
    for n in range(3):
        sheet.send(records({"id": f"p{n}"}))
    assert len(google.oauth.requests) == 1
    assert len(google.writes) == 3


def test_a_key_google_does_not_know_is_dead_with_a_clear_message(google):
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert other is not private_key()
    from cryptography.hazmat.primitives import serialization

    pem = other.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    sheet = GoogleSheets(
        "sheet",
        Context(Path("."), 5.0),
        spreadsheet_id="sheet-1",
        credentials=json.dumps({**google.credentials(), "private_key": pem}),
        base_url=google.sheets_url,
    )
    with pytest.raises(Permanent) as caught:
        sheet.send(records({"id": "p1"}))
    assert f"Google refused the service account {EMAIL}" in caught.value.message
    assert "Invalid JWT Signature" in caught.value.message
    assert not google.sheets.seen


# --- through the relay ---------------------------------------------------------------------------


def test_values_are_written_raw_and_unicode_survives(tmp_path, google, monkeypatch, start_relay):
    relay = start_relay(sheets_config(tmp_path, google, monkeypatch))
    assert relay.post(participation(1)).status_code == 202
    assert relay.wait_settled() == ["delivered"]
    header, row = google.sheet("sheet-1", "Participations")
    cells = dict(zip(header, row, strict=True))
    assert cells["why"].startswith("=HYPERLINK(")  # text, not a formula
    assert cells["firstname"] == "Zoë" and cells["campaign"].startswith("Quiz d'été —")
    assert json.loads(cells["answers"])  # a list, written as JSON text
    append = google.writes[-1]
    assert append.path.endswith(":append")
    assert append.query == {"valueInputOption": "RAW", "insertDataOption": "INSERT_ROWS"}


def test_a_burst_goes_out_in_one_call(tmp_path, google, monkeypatch, start_relay):
    relay = start_relay(sheets_config(tmp_path, google, monkeypatch), worker=False)
    for n in range(300):
        assert relay.post(participation(n)).status_code == 202
    relay.relay.worker.start()
    assert relay.wait_settled(30) == ["delivered"] * 300
    assert len(google.writes) == 1
    assert len(google.sheet("sheet-1", "Participations")) == 301  # the header and 300 rows


def test_a_trickle_is_gathered_for_batch_wait(tmp_path, google, monkeypatch, start_relay):
    relay = start_relay(sheets_config(tmp_path, google, monkeypatch, batch_wait="3s"))
    for n in range(10):
        assert relay.post(participation(n)).status_code == 202
    assert relay.wait_settled(30) == ["delivered"] * 10
    assert len(google.writes) <= 2  # not ten: the first claim waited for the rest


def test_batch_size_caps_the_rows_per_call(tmp_path, google, monkeypatch, start_relay):
    relay = start_relay(sheets_config(tmp_path, google, monkeypatch, batch_size="4"), worker=False)
    for n in range(10):
        relay.post(participation(n))
    relay.relay.worker.start()
    assert relay.wait_settled(30) == ["delivered"] * 10
    rows = [len(json.loads(w.body)["values"]) for w in google.writes]
    assert max(rows) <= 5 and sum(rows) == 11  # the first call also carries the header


@pytest.mark.parametrize("status", [429, 500])
def test_429_and_500_are_retried(status, tmp_path, google, monkeypatch, start_relay):
    google.fail(error(status))
    relay = start_relay(sheets_config(tmp_path, google, monkeypatch))
    relay.post(participation(1))
    assert relay.wait_settled() == ["delivered"]
    assert [a["http_status"] for a in attempts(relay)] == [status, None]
    assert len(google.sheet("sheet-1", "Participations")) == 2


def test_an_unshared_sheet_is_dead_with_the_email_to_share_with(
    tmp_path, google, monkeypatch, start_relay
):
    google.spreadsheets["sheet-1"].shared_with.clear()
    relay = start_relay(sheets_config(tmp_path, google, monkeypatch))
    relay.post(participation(1))
    assert relay.wait_settled() == ["dead"]
    (attempt,) = attempts(relay)
    assert attempt["http_status"] == 403
    assert f"Share the spreadsheet with {EMAIL} as Editor" in attempt["detail"]
    assert "The caller does not have permission" in attempt["detail"]


def test_an_unknown_tab_is_dead_with_a_hint(tmp_path, google, monkeypatch, start_relay):
    google.spreadsheets["sheet-1"].tabs = {"Sheet1": []}
    relay = start_relay(sheets_config(tmp_path, google, monkeypatch))
    relay.post(participation(1))
    assert relay.wait_settled() == ["dead"]
    assert "tab named 'Participations'" in attempts(relay)[0]["detail"]


def test_an_append_that_timed_out_says_a_retry_may_duplicate(
    tmp_path, google, monkeypatch, start_relay
):
    header = ["id", "state", "firstname", "why", "answers", "campaign"]
    google.fail(Answer(200, {"values": [header]}), Answer(200, {}, delay=3.0))  # header, append
    relay = start_relay(sheets_config(tmp_path, google, monkeypatch))
    relay.post(participation(1))
    assert relay.wait_settled() == ["delivered"]
    first = attempts(relay)[0]["detail"]
    assert "did not answer within 2s" in first and "may make a duplicate" in first


# --- configuration -------------------------------------------------------------------------------


def test_credentials_may_be_a_file_path(tmp_path, google):
    (tmp_path / "key.json").write_text(json.dumps(google.credentials()))
    sheet = GoogleSheets("s", Context(tmp_path, 5.0), spreadsheet_id="x", credentials="key.json")
    assert sheet.email == EMAIL


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        ("missing.json", "cannot read the service account key file"),
        ('{"type": "service_account"}', "not a service account key"),
        ("{not json", "not a service account key (not JSON)"),
    ],
)
def test_bad_credentials_are_a_config_error_without_the_value(tmp_path, credentials, expected):
    with pytest.raises(ConfigError) as caught:
        GoogleSheets("s", Context(tmp_path, 5.0), spreadsheet_id="x", credentials=credentials)
    assert caught.value.key == "credentials"
    assert expected in caught.value.message
    assert credentials not in caught.value.message


def test_options_are_checked_with_their_line(tmp_path, google, monkeypatch):
    monkeypatch.setenv("RELAY_TEST_STORAGE", "sqlite:///relay.db")
    path = sheets_config(tmp_path, google, monkeypatch, batch_wait="soon", add_columns="maybe")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "destinations.out.batch_wait" in str(caught.value)
    assert "expected a duration" in str(caught.value)


def test_destinations_on_one_service_account_share_its_limit(google):
    assert destination(google).limit is destination(google, sheet="Other").limit


def test_a_spent_limit_holds_deliveries_back_without_spending_attempts(
    tmp_path, google, monkeypatch, start_relay
):
    path = sheets_config(
        tmp_path, google, monkeypatch, batch_size="1", batch_wait="0s", writes_per_minute="2"
    )
    monkeypatch.setattr("hookrelay.limits._shared", {})  # a fresh allowance for this test
    relay = start_relay(path)
    for n in range(3):
        relay.post(participation(n))
    wait_until(lambda: sorted(relay.statuses()) == ["delivered", "delivered", "pending"])
    time.sleep(1.0)  # the worker polls many times meanwhile
    (waiting,) = [d for e in relay.events() for d in e["deliveries"] if d["attempts"] == 0]
    assert waiting["status"] == "pending"
    assert len(google.writes) == 2  # two appends (the first carried the header): the allowance


def test_a_token_google_no_longer_accepts_is_replaced(tmp_path, google, monkeypatch, start_relay):
    relay = start_relay(sheets_config(tmp_path, google, monkeypatch))
    relay.post(participation(1))
    assert relay.wait_settled() == ["delivered"]
    google.tokens.clear()  # revoked on Google's side before its expiry
    relay.post(participation(2))
    assert relay.wait_settled() == ["delivered", "delivered"]
    assert len(google.oauth.requests) == 2
    assert len(google.sheet("sheet-1", "Participations")) == 3


def test_a_row_sheets_refuses_is_dead_alone_and_its_neighbours_written(
    tmp_path, google, monkeypatch, start_relay
):
    relay = start_relay(sheets_config(tmp_path, google, monkeypatch), worker=False)
    for n in range(10):
        body = json.loads(participation(n))
        if n == 6:  # Google takes at most 50,000 characters in a cell
            body["questionnaire"][2]["responses"][0]["value"] = "long answer " * 5000
        assert relay.post(json.dumps(body).encode()).status_code == 202
    relay.relay.worker.start()
    assert sorted(relay.wait_settled(30)) == ["dead"] + ["delivered"] * 9
    [dead] = [d for d in relay.deliveries() if d["status"] == "dead"]
    assert "50000 characters in a single cell" in dead["last_error"]
    header, *rows = google.sheet("sheet-1", "Participations")
    ids = sorted(dict(zip(header, row, strict=False))["id"] for row in rows)
    assert ids == sorted(json.loads(participation(n))["id"] for n in range(10) if n != 6)


TWO_WRITERS = """
storage: ${{RELAY_TEST_STORAGE}}
sources:
  qualifio: {{format: qualifio, auth: none}}
destinations:
  with_a: {sheet}
  with_b: {sheet}
routes:
  - {{from: qualifio, mapping: a, to: [with_a]}}
  - {{from: qualifio, mapping: b, to: [with_b]}}
delivery: {{backoff: {{initial: 50ms, max: 200ms}}}}
"""


def test_writers_adding_columns_at_once_never_put_a_value_under_another_column(
    tmp_path, google, monkeypatch, start_relay
):
    """Two destinations on one tab, each adding its own column: they read, extend and write the
    header one after the other (the lock every process shares), or one column would be lost and
    its values land under the other's name."""
    monkeypatch.setenv("GOOGLE_CREDENTIALS", json.dumps(google.credentials()))
    google.spreadsheets["sheet-1"] = Spreadsheet(tabs={"Participations": [["id"]]})
    google.slow_reads = 0.3  # both writers would read the header before either writes it
    sheet = (
        "{type: google_sheets, spreadsheet_id: sheet-1, sheet: Participations, batch_wait: 0s, "
        f'credentials: "${{GOOGLE_CREDENTIALS}}", base_url: "{google.sheets_url}"}}'
    )
    config = write_config(
        tmp_path,
        TWO_WRITERS.format(sheet=sheet),
        {"a": "fields: {id: id, a: a}", "b": "fields: {id: id, b: b}"},
    )
    relay = start_relay(config, worker=False)
    for n in range(5):
        relay.post(participation(n, a=f"a-{n}", b=f"b-{n}"), secret=None)
    relay.relay.worker.start()
    assert relay.wait_settled(30) == ["delivered"] * 10
    header, *rows = google.sheet("sheet-1", "Participations")
    assert sorted(header) == ["a", "b", "id"]
    cells = [dict(zip(header, row, strict=False)) for row in rows]
    assert sorted(c["a"] for c in cells if c.get("a")) == [f"a-{n}" for n in range(5)]
    assert sorted(c["b"] for c in cells if c.get("b")) == [f"b-{n}" for n in range(5)]
