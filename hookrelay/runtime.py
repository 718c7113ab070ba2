"""The running relay: the current configuration, the store and the delivery worker, shared by the
web app, `relay worker` and the CLI.

Every process watches config.yaml and mappings/*.yaml and swaps in a new configuration when they
change and it is valid. An invalid edit is refused: its problems are logged and shown on /readyz,
and the last good configuration keeps running.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import sqlalchemy as sa

from hookrelay import metrics, preflight
from hookrelay.alerts.alerter import Alerter
from hookrelay.config import Config, Fingerprint, fingerprint, load_config
from hookrelay.document import Document
from hookrelay.errors import ConfigError, RelayError, StorageUnavailable
from hookrelay.store import Store
from hookrelay.worker import Worker

logger = logging.getLogger(__name__)


class Verdict(NamedTuple):
    """What became of the configuration last read, in one value that other threads read whole:
    when its files were last edited, and why it was refused (nothing: it runs)."""

    edited_at: float
    problems: tuple[str, ...] = ()


def _edited(seen: Fingerprint) -> float:
    return max((mtime for _, mtime, _ in seen), default=0) / 1e9


SETTLE = 0.2  # seconds an edited file must stay unchanged before the watch reads it


class Relay:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.loaded_at = time.time()  # when this configuration took effect
        self.verdict = Verdict(_edited(config.fingerprint))
        self.store = open_store(config)
        self.worker = Worker(self)
        self.alerter = Alerter(self)
        self._seen = config.fingerprint  # taken by load_config before it read the files

    def start(self, deliver: bool) -> None:
        """Start what runs beside the requests: the config watch, the metrics flush, the alerts,
        and with `deliver` the delivery worker (whose process also watches the storage)."""
        self.watch()
        metrics.FLUSHER.start(self.store)
        self.alerter.start(watch_storage=deliver)
        if deliver:
            self.worker.start()

    @property
    def config_problems(self) -> list[str]:
        """Why the last edit was refused, if it was (the last good configuration runs)."""
        return list(self.verdict.problems)

    def warn(self) -> None:
        """At start-up: refuse a mapping whose own tests fail, as a reload does, then say what the
        person running the relay must know.

        :raise InvalidConfig: a mapping's test fails (one whose payload cannot be read is not run).
        """
        preflight.refuse_failing_tests(self.config)
        for warning in preflight.find_warnings(self.config):
            logger.warning("%s", warning)
        for name, source in self.config.sources.items():
            if source.auth.is_open:
                logger.warning("source %s accepts requests from anyone (auth: none)", name)
        if os.environ.get("DYNO") and self.store.dialect == "sqlite":
            logger.warning(
                "running on a dyno with SQLite: its disk is ephemeral and stored events are lost "
                "at the next restart; set DATABASE_URL to a PostgreSQL database"
            )
        for name, destination in self.config.destinations.items():
            if os.environ.get("DYNO") and destination.type == "file":
                logger.warning(
                    "destination %s writes %s on the dyno's ephemeral disk: the file is lost at "
                    "each restart and deploy; send to a google_sheets or http destination instead",
                    name,
                    destination.path,
                )

    def problems(self) -> list[str]:
        """Why this process cannot do its work: a thread of it that died."""
        found = self.worker.problems() + self.alerter.problems()
        if not self.store.writer_is_alive():
            found.append("the commit writer thread is not alive")
        return found

    def reload_if_changed(self) -> bool:
        """Load the configuration again if a file changed; True when a new one took effect."""
        now = fingerprint(self.config.path)
        if now == self._seen:
            return False
        self._seen = now  # taken before reading: an edit made during the load is seen next time
        try:
            config = load_config(self.config.path)
            preflight.refuse_failing_tests(config)  # a mapping whose tests fail: refused too
        except ConfigError as exc:
            self.verdict = Verdict(_edited(now), tuple(str(exc).splitlines()))
            logger.error("config change refused, the last good configuration keeps running")
            for problem in self.config_problems:
                logger.error("config change refused: %s", problem)
            return False
        for setting in ("storage", "storage_timeout", "trusted_proxy_hops"):
            if getattr(config, setting) != getattr(self.config, setting):
                logger.warning("%s changed: it takes effect at the next restart", setting)
        self.config, self.loaded_at = config, time.time()
        self.verdict = Verdict(_edited(now))
        self.worker.config_changed()
        logger.info(
            "config reloaded: %d routes, %d mappings", len(config.routes), len(config.mappings)
        )
        for warning in preflight.find_warnings(config):
            logger.warning("%s", warning)
        return True

    def watch(self, interval: float | None = None) -> None:
        """Check for changes every `interval` seconds: $RELAY_RELOAD_SECONDS, default 2, 0 never."""
        seconds = (
            interval if interval is not None else float(os.environ.get("RELAY_RELOAD_SECONDS", 2))
        )
        if seconds > 0:
            threading.Thread(
                target=self._watch, args=(seconds,), name="reload", daemon=True
            ).start()

    def _watch(self, seconds: float) -> None:
        """Reload an edit once its files stayed unchanged SETTLE seconds: an editor that empties a
        file, then writes it, must not have the empty file read (and refused) in between."""
        while True:
            time.sleep(seconds)
            try:
                edited = fingerprint(self.config.path)
                if edited == self._seen:
                    continue
                while True:  # until the files stay unchanged SETTLE seconds
                    time.sleep(SETTLE)
                    if (now := fingerprint(self.config.path)) == edited:
                        break
                    edited = now
                self.reload_if_changed()
            except Exception:  # a bug here must not stop the watching; the old config runs on
                logger.exception("config reload failed")


def open_store(config: Config) -> Store:
    """The configured storage, opened, its tables created or upgraded.

    :raise StorageUnavailable: it cannot be opened: one line saying why and what to do, with
        the URL's password masked.
    """
    where = f"cannot open storage {_masked(config.storage)}"
    setting = f"`storage` in {config.path}"
    if not config.storage.startswith(("sqlite:", "postgres")):
        raise StorageUnavailable(
            f"{where}: expected sqlite:///path or postgresql://...; fix {setting}"
        )
    folder = _sqlite_folder_problem(config.storage)
    if folder:  # said before SQLite tries, which would also log its failed lock
        raise StorageUnavailable(f"{where}: {folder}: create it, or change {setting}")
    try:
        return Store(config.storage, config.storage_timeout)
    except sa.exc.ArgumentError:
        raise StorageUnavailable(
            f"{where}: expected sqlite:///path or postgresql://...; fix {setting}"
        ) from None
    except sa.exc.SQLAlchemyError as exc:
        raise StorageUnavailable(
            f"{where}: {storage_problem(exc)}; is the database running, and {setting} right?"
        ) from None


def storage_problem(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's own first line ("... port 5432 failed: Connection refused"), which names
    the server but never the password."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first.removeprefix("connection failed: ")


def _masked(url: str) -> str:
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(not a database URL)"


def _sqlite_folder_problem(url: str) -> str | None:
    """Why a SQLite database that does not exist yet cannot be created there, or None."""
    path = Path(url[len("sqlite:///") :].split("?")[0])
    if not url.startswith("sqlite:///") or path.exists():
        return None
    if not path.parent.is_dir():
        return f"the folder {path.parent} does not exist"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"the database is not there yet, and the folder {path.parent} is not writable"
    return None


EXAMPLE_SECRET = "dev-secret-change-me"  # config.yaml's default: public, as is this repository
LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: 127.x, ::1, localhost or a Unix socket. Any
    other name counts as reachable: it may resolve to any address."""
    if host == "localhost" or host.startswith(("unix:", "fd://")):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_example_secret(config: Config, hosts: Iterable[str]) -> list[str]:
    """Warnings for the sources that still accept the example secret, which anyone can read.

    :raise RelayError: a source does, and the relay listens beyond loopback (one of `hosts` is
        not) or runs on a dyno: anyone could sign a participation for it.
    """
    exposed = [h for h in hosts if not is_loopback(h)]
    warnings = []
    for name, source in config.sources.items():
        auth = source.auth
        if EXAMPLE_SECRET not in (*auth.signature_secrets, *(auth.basic or ())[1:]):
            continue
        variable = _example_variable(config.path, name)
        todo = (
            f"set {variable} to your Qualifio webhook's secret"
            if variable
            else f"write ${{QUALIFIO_SECRET}} in its place in {config.path} and set that variable"
        )
        said = f"source {name} accepts the example secret {EXAMPLE_SECRET!r}"
        if exposed or os.environ.get("DYNO"):
            where = f"would listen on {exposed[0]}" if exposed else "runs on a dyno (DYNO is set)"
            raise RelayError(f"{said}, which anyone can read, and the relay {where}: {todo}")
        warnings.append(
            f"{said}: fine on this machine, refused when the relay listens on any other "
            f"address; {todo}"
        )
    return warnings


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _example_variable(path: Path, source: str) -> str | None:
    """The ${VAR} that gave `source` the example secret, found on the lines of its `auth:`."""
    try:
        doc = Document(path)
        lines = path.read_text(encoding="utf-8").splitlines()
    except (RelayError, OSError):  # changed since it was loaded: the message goes without it
        return None
    numbers = sorted({n for key, n in doc.lines.items() if key[:3] == ("sources", source, "auth")})
    for number in numbers:
        for variable, default in _VARIABLE.findall(lines[number - 1]):
            if EXAMPLE_SECRET in (default, os.environ.get(variable)):
                return str(variable)
    return None


class OneLineFormatter(logging.Formatter):
    """Each message on one line: a line break or other control character that came from a
    request (a path, a source name) is escaped, so no client can forge a log line. Tracebacks,
    which the relay writes itself, keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(CONTROL)
        return super().formatMessage(record)


CONTROL = {c: repr(chr(c))[1:-1] for c in [*range(32), 127, 0x85, 0x2028, 0x2029] if chr(c) != " "}


def configure_logging() -> None:
    """One format for the relay's own log lines; ids and names only, never payload values."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("RELAY_LOG_LEVEL", "INFO"))
