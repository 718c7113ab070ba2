"""The alerts thread of each process: judge what there is to tell, compose it once, send it.

Each round (every CHECK_EVERY seconds) reads the small `alerts` and `alert_messages` tables and
takes the write lock only when something changed. Backlogs are looked for less often: that read
goes through every pending delivery. A message a channel did not take is tried again later, on
its own; nothing here runs in a delivery thread, so a channel that hangs or fails holds up no
delivery.

Storage that does not answer cannot be told through the database: each process that delivers
watches it for itself, and tells the channels directly.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from hookrelay import health
from hookrelay.alerts import outbox, state
from hookrelay.alerts.channels import AlertFailed, Channel
from hookrelay.alerts.messages import Message, mask
from hookrelay.alerts.settings import Alerting
from hookrelay.database import new_id
from hookrelay.errors import StorageUnavailable, trace

if TYPE_CHECKING:
    from hookrelay.runtime import Relay

logger = logging.getLogger(__name__)
CHECK_EVERY = 1.0  # seconds between two rounds
BACKLOG_EVERY = 30.0  # seconds between two looks for a backlog, at most (a quarter of `backlog`)
LEASE = 60.0  # seconds a process has to send a message it claimed (channels time out in 10)


class Alerter:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._backlog_at = -BACKLOG_EVERY  # time.monotonic() of the last look
        self._storage: StorageWatch | None = None
        self._failing = False  # a round failed: said once, until one succeeds

    def start(self, watch_storage: bool = False) -> None:
        """Run rounds in a thread; `watch_storage`: this process tells when the database does
        not answer (the processes that deliver do)."""
        self._storage = StorageWatch() if watch_storage else None
        self._thread = threading.Thread(target=self._run, name="alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """No new round; the one under way has `timeout` to end (a channel may take longer:
        it is left to end by itself)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def problems(self) -> list[str]:
        thread = self._thread
        if thread is None or thread.is_alive() or self._stopping.is_set():
            return []
        return [f"thread {thread.name} is not alive"]

    def _run(self) -> None:
        while not self._stopping.wait(CHECK_EVERY):
            self.run_once()

    def run_once(self) -> None:
        """One round. It never raises: a failure is logged (once until a round succeeds), and the
        next round tries again."""
        alerting = self.relay.config.alerting
        if not alerting.channels:
            return
        try:
            self._judge(alerting)
            if any(a.due(alerting, self.relay.store.clock()) for a in self._read()):
                for message in state.compose(self.relay.store, alerting):
                    logger.info("alert composed: %s %s", message.kind, message.subject or "-")
            self._send_outbox(alerting)
        except (SQLAlchemyError, StorageUnavailable) as exc:
            if not self._failing:
                logger.error("storage unavailable to alerts (%s); retrying", type(exc).__name__)
            self._failing = True
            if self._storage:
                self._storage.failed(alerting, exc, self.relay.store.clock())
            return
        except Exception as exc:  # the next round tries again
            if not self._failing:
                logger.error("an alerts round failed; retrying\n%s", trace(exc))
            self._failing = True
            return
        self._failing = False
        if self._storage:
            self._storage.answered(alerting, self.relay.store.clock())

    def _read(self) -> list[state.Alert]:
        return state.read_all(self.relay.store)

    def _judge(self, alerting: Alerting) -> None:
        """Note what this process knows (a refused edit), then clear what no longer holds and
        start what does (a backlog)."""
        store, relay = self.relay.store, self.relay
        now = store.clock()
        found = {(a.kind, a.subject): a for a in self._read()}
        edited_at, problems = relay.verdict  # read once: the reload thread may change it
        refused = found.get(("config_refused", ""))
        if problems and (refused is None or (refused.last_at or 0) < edited_at):
            with store.transaction() as conn:
                state.note(conn, "config_refused", "", 1, mask(problems[0]), now, at=edited_at)
        elif not problems and refused and refused.firing:
            state.clear(store, "config_refused", "", at=edited_at)
        for alert in found.values():
            if alert.kind == "dead" and alert.firing and alert.last_at is not None:
                if state.delivered_since(store, alert.subject, alert.last_at):
                    state.clear(store, "dead", alert.subject, at=alert.last_at)
        every = min(BACKLOG_EVERY, max(CHECK_EVERY, (alerting.backlog or 0) / 4))
        if alerting.backlog and time.monotonic() - self._backlog_at >= every:
            self._backlog_at = time.monotonic()
            self._judge_backlog(alerting.backlog, found)

    def _judge_backlog(self, longest: float, found: dict[tuple[str, str], state.Alert]) -> None:
        store = self.relay.store
        now, waiting = store.clock(), state.waiting(store)
        errors = {h.destination: h.last_error for h in health.read_all(store)}
        for name, (oldest, count) in waiting.items():
            known = found.get(("backlog", name))
            if now - oldest > longest and not (known and known.firing):
                state.start(store, "backlog", name, count, mask(errors.get(name)), oldest)
        for alert in found.values():
            if alert.kind == "backlog" and alert.firing:
                oldest, _ = waiting.get(alert.subject, (now, 0))
                if now - oldest <= longest:
                    state.clear(store, "backlog", alert.subject)

    def _send_outbox(self, alerting: Alerting) -> None:
        store = self.relay.store
        channels = {c.key: c for c in alerting.channels}
        for outgoing in outbox.due(store):
            channel = channels.get(outgoing.channel)
            if channel is None:
                logger.warning("alert %s dropped: its channel left the config", outgoing.id)
                outbox.sent(store, outgoing)
            elif outbox.claim(store, outgoing, LEASE):
                self._send(channel, outgoing)

    def _send(self, channel: Channel, outgoing: outbox.Outgoing) -> None:
        """Send one message; whatever reading or sending it raises is that message's failure."""
        store = self.relay.store
        what = f"alert {outgoing.id} to {channel.label}"
        try:
            message = outgoing.message
            what = f"alert {message.kind} {message.subject or '-'} to {channel.label}"
            answer = channel.send(message)
        except Exception as exc:
            if not isinstance(exc, AlertFailed):
                logger.error("%s: internal error\n%s", what, trace(exc))
            error = (
                exc.message
                if isinstance(exc, AlertFailed)
                else f"internal error ({type(exc).__name__})"
            )
            if store.clock() - outgoing.created_at > outbox.GIVE_UP:
                logger.error("%s not sent for a day; given up: %s", what, error)
                outbox.sent(store, outgoing)
                return
            at = outbox.failed(store, outgoing, error)
            logger.warning("%s failed, next try at %s: %s", what, _clock(at), error)
            return
        outbox.sent(store, outgoing)
        logger.info("%s sent: %s", what, answer)


class StorageWatch:
    """This process's view of the database: down since when, and which channels were told (they
    are the ones that hear it is back)."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.error = ""
        self.told: set[str] = set()

    def failed(self, alerting: Alerting, exc: Exception, now: float) -> None:
        self.down_since = self.down_since or now
        self.error = _storage_error(exc)
        if alerting.storage is None or now - self.down_since < alerting.storage:
            return
        message = _storage_message(alerting, False, self.down_since, self.error)
        for channel in alerting.channels:
            if channel.key not in self.told and _send_now(channel, message):
                self.told.add(channel.key)

    def answered(self, alerting: Alerting, now: float) -> None:
        if self.down_since is None:
            return
        message = _storage_message(alerting, True, self.down_since, self.error)
        for channel in alerting.channels:
            if channel.key in self.told and _send_now(channel, message):
                self.told.discard(channel.key)
        if not self.told:
            self.down_since = None


def _storage_message(alerting: Alerting, resolved: bool, since: float, error: str) -> Message:
    link = alerting.link("storage", "")
    return Message(new_id(), "storage", "", resolved, 0, 0, since, error, link, alerting.relay)


def _storage_error(exc: Exception) -> str:
    from hookrelay.runtime import storage_problem

    if isinstance(exc, SQLAlchemyError):
        return storage_problem(exc)
    return str(exc)


def _send_now(channel: Channel, message: Message) -> bool:
    """Send outside the outbox (storage that does not answer has no outbox); whether the channel
    took it. Whatever it raises is logged, and the next round tries again."""
    what = f"alert {message.kind} to {channel.label}"
    try:
        answer = channel.send(message)
    except AlertFailed as exc:
        logger.warning("%s failed: %s", what, exc.message)
        return False
    except Exception as exc:
        logger.error("%s failed\n%s", what, trace(exc))
        return False
    logger.info("%s sent: %s", what, answer)
    return True


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(at))
