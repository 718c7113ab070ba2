"""Fixtures: configs in tmp_path, the relay on a real loopback port, a signing Qualifio client,
and a guard that fails any test whose logs carry personal data or a secret."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from sqlalchemy.pool import NullPool
from werkzeug.serving import make_server

from hookrelay import history, metrics
from hookrelay.auth import sign
from hookrelay.config import load_config
from hookrelay.sources import Incoming
from hookrelay.store import Store, Stored
from hookrelay.web import create_app, start
from tests.fakes.server import FakeServer
from tests.fakes.vendors import BREVO_KEY, MAILCHIMP_KEY, TRELLO_KEY, TRELLO_TOKEN

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SECRET = "test-secret"
DEAD_PROXY = "http://127.0.0.1:9"  # nothing listens: a request that leaves loopback fails loudly

# Never in a log line: the samples' people, and the secrets the tests configure.
FORBIDDEN = (
    "zoe.lefevre@example.com",
    "jan.peeters@example.com",
    "jane.doe@example.com",
    "Zoë",
    "Lefèvre",
    "Peeters",
    SECRET,
    "old-secret",
    "s3cr3t-token",
    "basic-pass",
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "PRIVATE KEY",  # a Google service account key
    "ya29.",  # a Google access token
    TRELLO_KEY,
    TRELLO_TOKEN,
    MAILCHIMP_KEY,
    BREVO_KEY,
)

for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
    os.environ[var] = DEAD_PROXY
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
os.environ.pop("DYNO", None)

LOG_FILES: list[Path] = []  # logs of subprocesses, checked by the privacy guard


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Under CI, a skipped test is a failed one: whatever it needed should have been there."""
    report = yield
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, which counts as a failure: {report.longrepr}"
    return report


@pytest.fixture(autouse=True)
def no_personal_data_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level("DEBUG")
    LOG_FILES.clear()
    yield
    texts = [("captured logs", caplog.text)]
    texts += [(str(p), p.read_text(errors="replace")) for p in LOG_FILES if p.exists()]
    for where, text in texts:
        leaked = [s for s in FORBIDDEN if s in text]
        assert not leaked, f"{where} contain {leaked}"


def sample(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def participation(n: int, state: str = "COMPLETED", **changes: Any) -> bytes:
    """A distinct participation, built from the v2 sample."""
    data = json.loads(sample("v2-complete.json"))
    data.update(id=f"00000000-0000-4000-8000-{n:012d}", state=state)
    data.update(changes)
    return json.dumps(data, ensure_ascii=False).encode()


def write_config(directory: Path, config: str, mappings: dict[str, str] | None = None) -> Path:
    """config.yaml (dedented) and mappings/<name>.yaml in `directory`; returns config.yaml."""
    (directory / "mappings").mkdir(parents=True, exist_ok=True)
    for name, text in (mappings or {}).items():
        (directory / "mappings" / f"{name}.yaml").write_text(
            textwrap.dedent(text), encoding="utf-8"
        )
    path = directory / "config.yaml"
    path.write_text(textwrap.dedent(config), encoding="utf-8")
    return path


#: A mapping that forwards the participation's id, state and opt-ins (no personal data).
PASS_MAPPING = """
fields:
  id: id
  state: state
  newsletter: variables.newsletter_optin
"""


def file_and_hook_config(directory: Path, hook_url: str, extra: str = "") -> Path:
    """Each participation to a `file` destination (rows) and an http one (hook), and a mapping
    whose `when` skips every participation to rows: one delivery of each outcome is easy."""
    return write_config(
        directory,
        f"""
        storage: ${{RELAY_TEST_STORAGE}}
        sources:
          qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["{SECRET}"]}}}}}}
        destinations:
          rows: {{type: file, path: rows.jsonl}}
          hook: {{type: http, url: "{hook_url}"}}
        routes:
          - {{from: qualifio, mapping: pass, to: [rows, hook]}}
          - {{from: qualifio, mapping: never, to: [rows]}}
        {extra}
        """,
        {"pass": PASS_MAPPING, "never": "when: \"state == 'NEVER'\"\nfields: {id: id}\n"},
    )


def vendor_config(directory: Path, destination: str, mapping: str) -> Path:
    """One qualifio source signed with SECRET, routed through `mapping` to one destination `out`
    (given as a YAML flow mapping), with fast retries and a 2 s timeout."""
    return write_config(
        directory,
        f"""
        storage: ${{RELAY_TEST_STORAGE}}
        sources:
          qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["{SECRET}"]}}}}}}
        destinations:
          out: {destination}
        routes:
          - {{from: qualifio, mapping: m, to: [out]}}
        delivery: {{max_attempts: 4, backoff: {{initial: 50ms, max: 200ms}}, timeout: 2s}}
        """,
        {"m": mapping},
    )


def basic_config(directory: Path, sink_url: str = "http://127.0.0.1:9", **extra: str) -> Path:
    """One qualifio source signed with SECRET, one http destination, fast retries."""
    auth = extra.pop("auth", f'{{signature: {{secrets: ["{SECRET}"]}}}}')
    return write_config(
        directory,
        f"""
        storage: ${{RELAY_TEST_STORAGE:-sqlite:///relay.db}}
        storage_timeout: {extra.pop("storage_timeout", "5s")}
        sources:
          qualifio: {{format: qualifio, auth: {auth}}}
          plain: {{format: json, auth: none}}
        destinations:
          sink: {{type: http, url: "{sink_url}", {extra.pop("sink_options", "")}}}
        routes:
          - {{from: qualifio, mapping: pass, to: [sink]}}
        delivery:
          max_attempts: {extra.pop("max_attempts", "4")}
          backoff: {{initial: {extra.pop("initial", "50ms")}, max: {extra.pop("max", "200ms")}}}
          timeout: {extra.pop("timeout", "2s")}
          lease: {extra.pop("lease", "5s")}
    """,
        {"pass": extra.pop("mapping", PASS_MAPPING)},
    )


class RunningRelay:
    """The relay's web app on a real loopback port, in this process."""

    def __init__(self, config_path: Path, worker: bool = True) -> None:
        self.app = create_app(load_config(config_path))
        start(self.app, deliver=worker)
        self.relay = self.app.extensions["relay"]
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self.relay.worker.stop()
        self.relay.alerter.stop()
        metrics.FLUSHER.stop(self.relay.store)  # not later, into a closed store
        self.relay.store.close()

    def post(
        self, body: bytes, source: str = "qualifio", secret: str | None = SECRET, **headers: str
    ) -> requests.Response:
        if secret is not None:
            headers.setdefault("X-Qualifio-Signature", sign(body, secret))
        headers.setdefault("Content-Type", "application/json")
        return requests.post(f"{self.url}/hooks/{source}", data=body, headers=headers, timeout=10)

    def events(self) -> list[dict[str, Any]]:
        """Newest first, each with its deliveries."""
        return history.list_events(self.relay.store, limit=10_000)

    def deliveries(self) -> list[dict[str, Any]]:
        """Every delivery, the newest event's first."""
        return [d for e in self.events() for d in e["deliveries"]]

    def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        return history.attempts_of(self.relay.store, delivery_id)

    def statuses(self) -> list[str]:
        return [d["status"] for d in self.deliveries()]

    def wait_settled(self, timeout: float = 15.0) -> list[str]:
        """Wait until no delivery is pending; returns every delivery's status."""
        deadline = time.monotonic() + timeout
        while "pending" in (found := self.statuses()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return found


PG_URL = os.environ.get("RELAY_TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/test")


@functools.cache
def pg_available() -> bool:
    engine = sa.create_engine(_driver(PG_URL), connect_args={"connect_timeout": 3})
    try:
        with engine.connect():
            return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def _driver(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@contextlib.contextmanager
def pg_schema(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A schema of its own on the PostgreSQL server, dropped afterwards; its URL."""
    if not pg_available():
        pytest.fail(f"PostgreSQL does not answer at {PG_URL}; .ci/run starts it")
    schema = f"test_{uuid.uuid4().hex[:16]}"
    # NullPool: a restart of the server in a test must not leave a dead pooled connection here.
    admin = sa.create_engine(_driver(PG_URL), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    monkeypatch.setenv("RELAY_TEST_STORAGE", url)
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Each test that stores runs on both backends: a SQLite file in tmp_path, or a schema of
    its own on the PostgreSQL server (RELAY_TEST_DATABASE_URL, default 127.0.0.1:5432/test),
    so runs never see each other's rows. Configs read it as ${RELAY_TEST_STORAGE}."""
    if request.param == "postgresql":
        with pg_schema(monkeypatch) as url:
            yield url
        return
    url = f"sqlite:///{tmp_path}/relay.db"
    monkeypatch.setenv("RELAY_TEST_STORAGE", url)
    yield url


@pytest.fixture
def pg_storage(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with pg_schema(monkeypatch) as url:
        yield url


class Clock:
    """A clock the test moves by hand, for a Store's timestamps."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(storage: str, clock: Clock) -> Iterator[Store]:
    """A Store on each backend, on the test's clock."""
    s = Store(storage, clock=clock)
    yield s
    s.close()


TARGETS = [("pass", "sink"), ("pass", "archive")]


def ingest(store: Store, *keys: str, source: str = "qualifio") -> list[Stored]:
    """One event per dedupe key, each with a delivery to each of TARGETS."""
    return store.store_events(source, "qualifio", [Incoming("{}", k) for k in keys], TARGETS)


def query_plan(store: Store, query: Any) -> str:
    """How the database plans `query`, as one line; PostgreSQL told to avoid sequential scans,
    as it would with a large table."""
    sql = str(query.compile(store.engine, compile_kwargs={"literal_binds": True}))
    explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    with store.engine.connect() as conn:
        if store.dialect == "postgresql":
            conn.exec_driver_sql("SET enable_seqscan = off")
        return " ".join(str(row[-1]) for row in conn.exec_driver_sql(explain + sql))


@pytest.fixture
def sink() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.fixture
def start_relay(storage: str) -> Iterator[Any]:
    running: list[RunningRelay] = []

    def start(config_path: Path, worker: bool = True) -> RunningRelay:
        running.append(RunningRelay(config_path, worker))
        return running[-1]

    yield start
    for r in running:
        r.stop()


def relay_command(
    *args: str, cwd: Path | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    """Run the real `relay` CLI in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "hookrelay", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **kwargs.pop("env", {})},
        **kwargs,
    )


def gunicorn_available() -> bool:
    return shutil.which("gunicorn", path=str(Path(sys.executable).parent)) is not None
