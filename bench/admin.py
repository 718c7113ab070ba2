"""Admin console benchmark: its pages with 1,000,000 events stored, on SQLite and PostgreSQL.

    .venv/bin/python bench/admin.py                                  # both, 1,000,000 events
    .venv/bin/python bench/admin.py --storage sqlite --events 100000 # one, quicker
    .venv/bin/python bench/admin.py --storage postgresql://127.0.0.1:5432/test

Why: DESIGN §9 promises that with 1,000,000 events stored any page of /admin answers in under
200 ms on SQLite and on PostgreSQL; a page that counts or sorts rows without an index that
serves it passes with a thousand events and fails with a month of a busy campaign.

What runs, per storage:
- a new database (SQLite in a temporary directory; on PostgreSQL a schema of the run's own,
  dropped at the end) with the relay's own tables (hookrelay.database.create_schema), filled with
  bulk SQL (executemany on SQLite, COPY on PostgreSQL) before the relay starts; the indexes are
  dropped for the load and built again by create_schema after it. PostgreSQL then gets VACUUM
  ANALYZE, as autovacuum would long have done; SQLite gets no ANALYZE, since the relay never
  runs one.
- the history: --events events received over the last 30 days from three sources (qualifio 80 %:
  Qualifio 2.0 complete and incomplete, 1.0; loyalty 15 %; contest 5 %), stored as the relay
  stores them (the sample's body with a fresh participation id, the dedupe key the relay computes,
  ids that order by time as hookrelay.database.new_id's do), each with one delivery per route
  (2.65 per event on average, five destinations) and their attempts: mostly delivered at the
  first attempt, some after retries, 2 % dead (half refused at once, half after 12 attempts; 10 %
  for `board`, the destination in trouble; none for the `archive` file), incomplete
  participations skipped by the newsletter mapping, the last 15 minutes' deliveries partly
  pending.
- `gunicorn relay:app` with the project's settings (-c python:hookrelay.gunicorn_conf),
  RELAY_WORKER=off (nothing is sent or purged while measuring) and RELAY_ADMIN_PASSWORD set.
- a requests.Session signed in through the sign-in form (one keep-alive connection, like a
  browser's) gets each page once untimed, then --repeat times: median, p95 and the slowest are
  printed, with the first (cold) request apart.

The pages: the overview (/admin); the deliveries list filtered to one destination and status,
--depth pages deep by following its "next" links (keyset pages), and filtered to dead ones
received before 25 days ago when the list has a time filter; the search for an old
participation's id when the list has a search field; the event page of a delivery dead after 12
attempts; the playground. Exit 1 when a page did not answer 200, or a median or p95 is over
the target.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urljoin

import requests
import sqlalchemy as sa
from ingest import ROOT, drop_schema, machine, own_schema, start_server

from hookrelay.config import load_config
from hookrelay.database import (
    DELIVERY_COLUMNS,
    EVENT_COLUMNS,
    create_schema,
    metadata,
    new_id,
)
from hookrelay.sources import Source, dedupe_key

TARGET_MS = 200.0
PASSWORD = "bench-admin-password"
DAY = 86400.0
CHUNK = 20_000  # events built and sent at once
EVENT = re.compile(r"/admin/events/\w+$")
ATTEMPT_COLUMNS = "delivery_id, started_at, duration_ms, outcome, http_status, detail"

CONFIG_YAML = """\
storage: {storage}
sources:
  qualifio: {{format: qualifio, auth: {{signature: {{secrets: ["bench-secret"]}}}}}}
  loyalty: {{format: qualifio, auth: {{signature: {{secrets: ["bench-secret"]}}}}}}
  contest: {{format: qualifio, auth: {{signature: {{secrets: ["bench-secret"]}}}}}}
destinations:
  archive: {{type: file, path: out.csv}}
  crm: {{type: http, url: "http://127.0.0.1:9/crm"}}
  newsletter: {{type: http, url: "http://127.0.0.1:9/newsletter"}}
  points: {{type: http, url: "http://127.0.0.1:9/points"}}
  board: {{type: http, url: "http://127.0.0.1:9/board"}}
routes:
  - {{from: qualifio, mapping: row, to: [archive]}}
  - {{from: qualifio, mapping: contact, to: [crm]}}
  - {{from: qualifio, mapping: newsletter, to: [newsletter]}}
  - {{from: loyalty, mapping: points, to: [points]}}
  - {{from: contest, mapping: row, to: [board, archive]}}
"""
MAPPINGS = {
    "row": "fields: {id: id, state: state, email: variables.email}\n",
    "contact": "fields: {email: lower(variables.email), firstname: variables.firstname}\n",
    "newsletter": "when: \"state == 'COMPLETED'\"\nfields: {email: lower(variables.email)}\n",
    "points": "fields: {event: eventId, points: points}\n",
}
#: Which sample each source's events are, and how often (out of 20).
SAMPLES = {
    "qualifio": [("v2-complete.json", 11), ("v2-incomplete.json", 3), ("v1-participation.json", 2)],
    "loyalty": [("loyalty-earning-ILLUSTRATIVE.json", 3)],
    "contest": [("v2-complete.json", 1)],
}


# --- the history ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of event: a sample body with a hole for its id, its source and destinations."""

    source: Source
    before: str
    after: str
    item: dict[str, Any]  # the sample, for the dedupe key
    id_key: str  # "id", or "eventId" for loyalty events
    targets: tuple[tuple[str, str], ...]  # (mapping, destination)


def kinds(config_path: Path) -> list[Kind]:
    """The 20 kinds events are drawn from, in proportion."""
    config = load_config(config_path)
    found = []
    for name, samples in SAMPLES.items():
        targets = tuple(config.targets(name))
        for file, weight in samples:
            data = json.loads((ROOT / "samples" / file).read_text(encoding="utf-8"))
            item = data[0] if isinstance(data, list) else data
            id_key = "id" if "id" in item else "eventId"
            body = json.dumps({**item, id_key: "@" * 36}, ensure_ascii=False)
            before, after = body.split("@" * 36)
            kind = Kind(config.sources[name], before, after, item, id_key, targets)
            found += [kind] * weight
    return found


@dataclass(slots=True)
class Rows:
    events: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    attempts: list[tuple[Any, ...]] = field(default_factory=list)


def time_id(at: float) -> str:
    """An id as new_id() would have made it at `at`: the time ordering is what indexes see."""
    return f"{int(at * 1000):012x}{new_id()[12:]}"


def history(kinds: list[Kind], total: int, now: float, rng: random.Random) -> Iterator[Rows]:
    """`total` events over the 30 days before `now`, oldest first, CHUNK at a time."""
    for start in range(0, total, CHUNK):
        rows = Rows()
        for n in range(start, min(start + CHUNK, total)):
            received = now - 30 * DAY + 30 * DAY * (n + rng.random()) / total
            kind = kinds[rng.randrange(len(kinds))]
            pid = f"{rng.getrandbits(128):032X}"
            pid = f"{pid[:8]}-{pid[8:12]}-{pid[12:16]}-{pid[16:20]}-{pid[20:]}"
            key = dedupe_key(kind.source, {**kind.item, kind.id_key: pid}, "")
            event_id = time_id(received)
            rows.events.append(
                (
                    event_id,
                    kind.source.name,
                    "qualifio",
                    key,
                    kind.before + pid + kind.after,
                    received,
                )
            )
            for mapping, destination in kind.targets:
                add_delivery(rows, event_id, mapping, destination, kind, received, now, rng)
        yield rows


def add_delivery(
    rows: Rows,
    event_id: str,
    mapping: str,
    destination: str,
    kind: Kind,
    received: float,
    now: float,
    rng: random.Random,
) -> None:
    """One delivery and its attempts, with an outcome drawn as a month of a campaign has them."""
    delivery_id, r, at = time_id(received), rng.random(), received + 0.05
    error: str | None = None
    tries: list[tuple[int | None, str]]  # (HTTP status, outcome) of each attempt
    if mapping == "newsletter" and kind.item.get("state") != "COMPLETED":
        status, tries = "skipped", []
        error = "when: state == 'COMPLETED' is false"
    elif now - received < 900 and r < 0.3:
        status, tries = "pending", [(503, "pending")] if r < 0.1 else []
        error = f"the endpoint of {destination} answered 503" if tries else None
    elif r < (dead := {"board": 0.1, "archive": 0.0}.get(destination, 0.02)):
        status = "dead"
        if r < dead / 2:
            tries = [(400, "dead")]
            error = f'the endpoint of {destination} answered 400: {{"error": "invalid list"}}'
        else:
            tries = [(503, "pending")] * 11 + [(None, "dead")]
            error = f"gave up after 12 attempts: the endpoint of {destination} did not answer"
    elif r < 0.06:
        status, tries = "delivered", [*[(503, "pending")] * rng.randint(1, 2), (202, "delivered")]
    else:
        status, tries = "delivered", [(202, "delivered")]
    for i, (http_status, outcome) in enumerate(tries):
        detail = None if outcome == "delivered" else error
        rows.attempts.append((delivery_id, at, rng.randint(5, 400), outcome, http_status, detail))
        at += 10 * 2**i if i < len(tries) - 1 else 0.5
    due = now + 60 if status == "pending" else at
    last_error = None if status == "delivered" else error
    rows.deliveries.append(
        (delivery_id, event_id, mapping, destination, status, len(tries), due, at, at, last_error)
    )


# --- loading --------------------------------------------------------------------------------------


def driver_url(storage: str) -> str:
    return storage.replace("postgres://", "postgresql://", 1).replace(
        "postgresql://", "postgresql+psycopg://", 1
    )


def load(storage: str, config_path: Path, total: int) -> dict[str, Any]:
    """Create the relay's tables, fill them, build the indexes; what to look at afterwards."""
    engine = sa.create_engine(driver_url(storage))
    sqlite = engine.dialect.name == "sqlite"
    indexes = [i.name for t in metadata.sorted_tables for i in t.indexes]
    with engine.begin() as conn:
        create_schema(conn)
        for name in indexes:
            conn.exec_driver_sql(f"DROP INDEX {name}")
    started, now, counts = time.monotonic(), time.time(), [0, 0, 0]
    rng = random.Random(1)
    picked: dict[str, Any] = {}
    raw = engine.raw_connection()
    try:
        if sqlite:  # the relay's WAL without its fsyncs: a crash would only lose the fixture
            for pragma in ("journal_mode=WAL", "synchronous=OFF", "cache_size=-1000000"):
                raw.driver_connection.execute(f"PRAGMA {pragma}")  # type: ignore[union-attr]
        for rows in history(kinds(config_path), total, now, rng):
            insert(raw, sqlite, rows)
            raw.commit()
            remember(picked, rows, now)
            counts[0] += len(rows.events)
            counts[1] += len(rows.deliveries)
            counts[2] += len(rows.attempts)
            if sys.stdout.isatty():
                print(f"\r  stored {counts[0]:,} events", end="", flush=True)
    finally:
        raw.close()
    loaded = time.monotonic()
    with engine.begin() as conn:
        create_schema(conn)  # the indexes, built on the full tables
    tidy = "PRAGMA wal_checkpoint(TRUNCATE)" if sqlite else "VACUUM ANALYZE"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql(tidy)
    engine.dispose()
    print(
        f"\r  stored {counts[0]:,} events, {counts[1]:,} deliveries, {counts[2]:,} attempts in "
        f"{loaded - started:.0f} s; indexes and {tidy}: {time.monotonic() - loaded:.0f} s"
    )
    return picked


def insert(raw: Any, sqlite: bool, rows: Rows) -> None:
    tables = [
        ("events", EVENT_COLUMNS, rows.events),
        ("deliveries", DELIVERY_COLUMNS + ", last_error", rows.deliveries),
        ("attempts", ATTEMPT_COLUMNS, rows.attempts),
    ]
    cursor = raw.cursor()
    for table, columns, values in tables:
        if sqlite:
            marks = ", ".join("?" * (columns.count(",") + 1))
            cursor.executemany(f"INSERT INTO {table} ({columns}) VALUES ({marks})", values)
        else:
            with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                for row in values:
                    copy.write_row(row)
    cursor.close()


def remember(picked: dict[str, Any], rows: Rows, now: float) -> None:
    """The event of the first delivery dead after 12 attempts received over 20 days ago, and the
    participation id of the first event received over 25 days ago."""
    old = [e for e in rows.events if e[5] < now - 25 * DAY]
    if old and "participation" not in picked:
        picked["participation"] = json.loads(old[0][4]).get("id") or ""
    for d in rows.deliveries:
        if "event" not in picked and d[4] == "dead" and d[5] == 12 and d[7] > now - 20 * DAY:
            picked["event"] = d[1]


# --- the pages ------------------------------------------------------------------------------------


class Forms(HTMLParser):
    """The forms of a page (action, method, fields with their values or options) and its links
    (href, rel, text)."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.links: list[dict[str, str]] = []
        self._select: str | None = None
        self._in_link = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get")})
            self.forms[-1].update(fields={}, options={}, types={})
        elif tag == "a" and "href" in a:
            self.links.append({"href": a["href"], "rel": a.get("rel", ""), "text": ""})
            self._in_link = True
        elif self.forms and tag in ("input", "select", "textarea", "button") and a.get("name"):
            form, name = self.forms[-1], a["name"]
            form["types"][name] = a.get("type", tag)
            if tag == "select":
                self._select = name
                form["options"][name] = []
            if tag != "button" and (tag != "input" or a.get("type") not in ("checkbox", "radio")):
                form["fields"].setdefault(name, a.get("value", ""))
        elif tag == "option" and self._select and self.forms:
            self.forms[-1]["options"][self._select].append(a.get("value", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None
        elif tag == "a":
            self._in_link = False

    def handle_data(self, data: str) -> None:
        if self._in_link:
            self.links[-1]["text"] += data.strip()


def parse(html: str) -> Forms:
    forms = Forms()
    forms.feed(html)
    return forms


def sign_in(session: requests.Session, base: str) -> None:
    page = session.get(f"{base}/admin", timeout=30)
    form = next((f for f in parse(page.text).forms if "password" in f["types"].values()), None)
    if form is None:
        raise SystemExit(f"no sign-in form at /admin (it answered {page.status_code})")
    fields = dict(form["fields"])
    fields.update({n: PASSWORD for n, t in form["types"].items() if t == "password"})
    answer = session.post(urljoin(page.url, form["action"]), data=fields, timeout=30)
    if answer.status_code != 200 or any(
        "password" in f["types"].values() for f in parse(answer.text).forms
    ):
        raise SystemExit(f"signing in failed: {answer.status_code}, {answer.url}")


def pages(session: requests.Session, base: str, picked: dict[str, Any], depth: int) -> list[Page]:
    """The pages to time, found as a person would: through the list's own filters and links."""
    found = [Page("overview", f"{base}/admin")]
    listing = session.get(f"{base}/admin/deliveries", timeout=30)
    form = next((f for f in parse(listing.text).forms if f["method"].lower() == "get"), None)
    if form is None:
        print("  WARNING: no filter form on /admin/deliveries; only its first page is timed")
        found.append(Page("deliveries, first page", listing.url))
    else:
        url = filtered(listing.url, form, status="delivered", destination="crm")
        deep = follow_next(session, url, depth)
        found.append(Page(f"deliveries, delivered to crm, page {deep[1] + 1}", deep[0]))
        if far := filtered(listing.url, form, status="dead", destination="board", before=25):
            found.append(Page("deliveries, dead to board, before 25 days ago", far))
        if picked.get("participation") and (search := searched(listing.url, form, picked)):
            found.append(Page("deliveries, search by participation id", search))
    found.append(Page("event (dead after 12 attempts)", f"{base}/admin/events/{picked['event']}"))
    found.append(Page("playground", f"{base}/admin/playground"))
    return found


def filtered(url: str, form: dict[str, Any], before: int = 0, **wanted: str) -> str:
    """The list's URL with `wanted` chosen in the selects that offer it; with `before`, a time
    field set to that many days ago ("" when the form has none)."""
    fields = dict(form["fields"])
    for name, options in form["options"].items():
        for value in wanted.values():
            if value in options:
                fields[name] = value
    if before:
        times = [n for n, t in form["types"].items() if t in ("date", "datetime-local")]
        times = [n for n in times if re.search("before|until|to|end", n)] or times[-1:]
        if not times:
            return ""
        at = time.localtime(time.time() - before * DAY)
        kind = form["types"][times[0]]
        fields[times[0]] = time.strftime("%Y-%m-%d" + ("T%H:%M" if kind != "date" else ""), at)
    return submitted(url, form, fields)


def searched(url: str, form: dict[str, Any], picked: dict[str, Any]) -> str:
    search = [n for n, t in form["types"].items() if t in ("search", "text")]
    if not search:
        return ""
    fields = {**form["fields"], search[0]: picked["participation"]}
    return submitted(url, form, fields)


def submitted(url: str, form: dict[str, Any], fields: dict[str, str]) -> str:
    """The URL a GET form on the page at `url` goes to with `fields`."""
    action: str = form["action"] or url.split("?")[0]
    return urljoin(url, action) + "?" + urlencode(fields)


def follow_next(session: requests.Session, url: str, depth: int) -> tuple[str, int]:
    """The URL `depth` "next" links after `url` (fewer when the list ends); how many followed."""
    for n in range(depth):
        forms = parse(session.get(url, timeout=30).text)
        link = next(
            (
                a
                for a in forms.links
                if "next" in a["rel"].split() or re.search(r"next|older", a["text"], re.I)
            ),
            None,
        )
        if link is None:
            print(f"  (the list ended after {n} pages)")
            return url, n
        url = urljoin(url, link["href"])
    return url, depth


@dataclass(slots=True)
class Page:
    name: str
    url: str
    first: float = 0.0
    times: list[float] = field(default_factory=list)
    statuses: set[int] = field(default_factory=set)
    events: int = 0  # links to an event on it: a list that shows nothing proves nothing

    def p95(self) -> float:
        return statistics.quantiles(self.times, n=20, method="inclusive")[18]

    def ok(self) -> bool:
        return self.statuses == {200} and max(statistics.median(self.times), self.p95()) < TARGET_MS


def time_page(session: requests.Session, page: Page, repeat: int) -> None:
    for n in range(repeat + 1):
        started = time.perf_counter()
        answer = session.get(page.url, timeout=60, allow_redirects=False)
        took = (time.perf_counter() - started) * 1000
        page.statuses.add(answer.status_code)
        if n == 0:
            page.first = took
            page.events = len(
                {a["href"] for a in parse(answer.text).links if EVENT.search(a["href"])}
            )
        else:
            page.times.append(took)


# --- main -----------------------------------------------------------------------------------------


def run(storage: str, args: argparse.Namespace) -> list[Page]:
    tmp = Path(tempfile.mkdtemp(prefix="hookrelay-admin-bench-"))
    schema = own_schema(storage)
    url = f"{storage}?options=-csearch_path%3D{schema}" if schema else f"sqlite:///{tmp}/relay.db"
    config = tmp / "config.yaml"
    config.write_text(CONFIG_YAML.format(storage=json.dumps(url)))
    (tmp / "mappings").mkdir()
    for name, text in MAPPINGS.items():
        (tmp / "mappings" / f"{name}.yaml").write_text(text)
    server = None
    try:
        print(f"\n{storage if schema else 'SQLite'} ({tmp}):", flush=True)
        picked = load(url, config, args.events)
        env = {**os.environ, "RELAY_CONFIG": str(config), "RELAY_WORKER": "off"}
        env.update(RELAY_ADMIN_PASSWORD=PASSWORD, NO_PROXY="127.0.0.1", no_proxy="127.0.0.1")
        server = start_server("relay", ["relay:app"], env, tmp, tmp)
        server.wait_ready()
        base = f"http://127.0.0.1:{server.port}"
        with requests.Session() as session:
            session.trust_env = False  # loopback only, whatever proxy the environment names
            sign_in(session, base)
            found = pages(session, base, picked, args.depth)
            for page in found:
                time_page(session, page, args.repeat)
        report(found, storage if schema else "sqlite", server.tail(5))
        return found
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"  kept {tmp}" + (f" and the schema {schema}: {url}" if schema else ""))
        else:
            shutil.rmtree(tmp, ignore_errors=True)
            if schema:
                drop_schema(storage, schema)


def report(found: list[Page], storage: str, log: str) -> None:
    print(f"\n  {'page':<50} {'events':>6} {'first':>7} {'median':>7} {'p95':>7} {'max':>7}  (ms)")
    for p in found:
        flag = "" if p.ok() else "  OVER TARGET" if p.statuses == {200} else f"  {p.statuses}"
        print(
            f"  {p.name:<50} {p.events:>6} {p.first:>7.1f} {statistics.median(p.times):>7.1f} "
            f"{p.p95():>7.1f} {max(p.times):>7.1f}{flag}"
        )
        print(f"    /admin{p.url.split('/admin', 1)[1]}")
    print("  (events: links to an event on the page)")
    if any(not p.ok() for p in found):
        print(f"  relay log, last lines:\n{log}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events stored")
    parser.add_argument(
        "--storage",
        action="append",
        help="sqlite, or a postgresql:// URL (default: both, PostgreSQL at 127.0.0.1:5432/test)",
    )
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per page")
    parser.add_argument("--depth", type=int, default=200, help="list pages to follow")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directories and schemas"
    )
    args = parser.parse_args()
    storages = args.storage or ["sqlite", "postgresql://127.0.0.1:5432/test"]
    print("machine:", *machine(), sep="\n  ")
    print(
        f"settings: {args.events:,} events; gunicorn -c python:hookrelay.gunicorn_conf "
        f"({os.environ.get('WEB_CONCURRENCY', '2')} workers x "
        f"{os.environ.get('GUNICORN_THREADS', '16')} threads), RELAY_WORKER=off; "
        f"{args.repeat} timed requests per page after one untimed; target < {TARGET_MS:.0f} ms"
    )
    ok = True
    for storage in storages:
        ok &= all(p.ok() for p in run(storage, args))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
