"""The running relay: the current configuration, the store and the delivery worker, shared by the
web app, `relay worker` and the CLI."""

from __future__ import annotations

import logging
import os

from hookrelay.config import Config
from hookrelay.store import Store
from hookrelay.worker import Worker

logger = logging.getLogger(__name__)


class Relay:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.storage, config.storage_timeout)
        self.worker = Worker(self)
        if os.environ.get("DYNO") and self.store.engine.dialect.name == "sqlite":
            logger.warning(
                "running on a dyno with SQLite: its disk is ephemeral and stored events "
                "are lost at the next restart; set DATABASE_URL to a PostgreSQL database"
            )


def configure_logging() -> None:
    """One format for the relay's own log lines; ids and names only, never payload values."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("RELAY_LOG_LEVEL", "INFO"),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
