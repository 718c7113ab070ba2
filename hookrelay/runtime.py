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
        if os.environ.get("DYNO") and self.store.dialect == "sqlite":
            logger.warning(
                "running on a dyno with SQLite: its disk is ephemeral and stored events are lost "
                "at the next restart; set DATABASE_URL to a PostgreSQL database"
            )

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
            logger.error(
                "config change refused, the last good configuration keeps running:\n%s", exc
            )
            return False
        for setting in ("storage", "storage_timeout", "trusted_proxy_hops"):
            if getattr(config, setting) != getattr(self.config, setting):
                logger.warning("%s changed: it takes effect at the next restart", setting)
        self.config, self.config_problems = config, []
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


def configure_logging() -> None:
    """One format for the relay's own log lines; ids and names only, never payload values."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("RELAY_LOG_LEVEL", "INFO"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
