"""The running relay: the current configuration, the store and the delivery worker, shared by the
web app, `relay worker` and the CLI.

Every process watches config.yaml and mappings/*.yaml and swaps in a new configuration when they
change and it is valid. An invalid edit is refused: its problems are logged and shown on /readyz,
and the last good configuration keeps running.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from hookrelay.config import Config, fingerprint, load_config
from hookrelay.errors import ConfigError
from hookrelay.store import Store
from hookrelay.worker import Worker

logger = logging.getLogger(__name__)


class Relay:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.config_problems: list[str] = []  # why the last edit was refused, if it was
        self.store = Store(config.storage, config.storage_timeout)
        self.worker = Worker(self)
        self._seen = config.fingerprint  # taken by load_config before it read the files

    def warn(self) -> None:
        """Say at start-up what the person running the relay must know."""
        for name, source in self.config.sources.items():
            if source.auth.is_open:
                logger.warning("source %s accepts requests from anyone (auth: none)", name)
        if os.environ.get("DYNO") and self.store.dialect == "sqlite":
            logger.warning(
                "running on a dyno with SQLite: its disk is ephemeral and stored events are lost "
                "at the next restart; set DATABASE_URL to a PostgreSQL database"
            )

    def problems(self) -> list[str]:
        """Why this process cannot do its work: a thread of it that died."""
        found = self.worker.problems()
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
        except ConfigError as exc:
            self.config_problems = str(exc).splitlines()
            logger.error("config change refused, the last good configuration keeps running")
            for problem in self.config_problems:
                logger.error("config change refused: %s", problem)
            return False
        for setting in ("storage", "storage_timeout", "trusted_proxy_hops"):
            if getattr(config, setting) != getattr(self.config, setting):
                logger.warning("%s changed: it takes effect at the next restart", setting)
        self.config, self.config_problems = config, []
        self.worker.config_changed()
        logger.info(
            "config reloaded: %d routes, %d mappings", len(config.routes), len(config.mappings)
        )
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
        while True:
            time.sleep(seconds)
            try:
                self.reload_if_changed()
            except Exception:  # a bug here must not stop the watching; the old config runs on
                logger.exception("config reload failed")


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
