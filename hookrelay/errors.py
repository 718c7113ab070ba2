"""Everything hookrelay raises on purpose.

* RelayError
  + ConfigError(path, line, key, message)     config.yaml or a mapping is wrong
    - InvalidConfig(problems)                  several of them, all found in one pass
  + Rejected                                   an inbound request we refuse; .status is our answer
    - BadRequest 400 · Unauthorized 401 · Forbidden 403 · UnknownSource 404
    - RequestTimeout 408 · TooLarge 413 · StorageUnavailable 503 (Retry-After)
  + DeliveryError                              raised by Destination.send()
    - RetryLater(delay=None)                   timeout, connection error, 408, 5xx
      - Throttled(delay)                       429, or our own vendor limit spent: not an attempt
    - Permanent                                400/401/403/404: dead at once, reason kept
      - Refused                                a batch refused for what it holds: split it
    - Skip                                     the record cannot go to this destination

Messages never carry payload values or secrets: they end up in logs and answers.
"""

from __future__ import annotations

import traceback
from pathlib import Path


class RelayError(Exception):
    """The one base: the CLI prints any of these as one line and exits 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RelayError):
    """config.yaml or a mapping file is wrong; says where, what and what is expected."""

    def __init__(
        self,
        message: str,
        path: Path | str | None = None,
        line: int | None = None,
        key: str | None = None,
    ) -> None:
        self.path, self.line, self.key = path, line, key
        super().__init__(message)

    def __str__(self) -> str:
        where = ":".join(str(p) for p in (self.path, self.line) if p is not None)
        what = f"{self.key}: {self.message}" if self.key else self.message
        return f"{where}: {what}" if where else what


class InvalidConfig(ConfigError):
    """Every problem found in one pass over config.yaml and the mappings, one per line."""

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = sorted(problems, key=lambda p: (str(p.path), p.line or 0))
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return self.message


class Rejected(RelayError):
    """An inbound request we refuse; `status` is the HTTP answer."""

    status = 400


class BadRequest(Rejected):
    status = 400


class Unauthorized(Rejected):
    status = 401


class Forbidden(Rejected):
    status = 403


class UnknownSource(Rejected):
    status = 404


class RequestTimeout(Rejected):
    """The request did not all arrive in time (the server's deadline: hookrelay.serving)."""

    status = 408

    def __init__(self, late: TimeoutError) -> None:
        said = str(late) or "the request did not arrive in time"
        super().__init__(f"{said}: nothing was stored, send it again")


class TooLarge(Rejected):
    status = 413


class StorageUnavailable(Rejected):
    """Storage did not answer: Qualifio must retry later, so nothing is lost."""

    status = 503
    retry_after = 30


class DeliveryError(RelayError):
    """Raised by Destination.send(); the worker turns it into the delivery's next state."""


class RetryLater(DeliveryError):
    """A transient failure; `delay` (seconds) comes from Retry-After when the vendor gave one."""

    def __init__(self, message: str, delay: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.delay, self.status = delay, status


class Throttled(RetryLater):
    """The vendor said 429 (`status` set: its whole destination pauses, hookrelay.health), or
    our own allowance for it is spent: sent later, without spending an attempt."""


class Permanent(DeliveryError):
    """Retrying cannot help (400/401/403/404...): the delivery is dead at once, replayable."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Refused(Permanent):
    """A batch refused for what one of its records holds (a 400 for a batch, a value that cannot
    be written): the worker splits the batch until the record at fault stands alone, so its
    neighbours are delivered."""


class Skip(DeliveryError):
    """The record is not for this destination (a required field is missing): ends `skipped`."""


def trace(exc: BaseException) -> str:
    """Where an unexpected exception came from, for the log: each frame's file, line and code,
    and the exception's type, never its message, which may quote a participant's data."""
    frames = traceback.format_list(traceback.extract_tb(exc.__traceback__))
    return "Traceback (most recent call last):\n" + "".join(frames) + type(exc).__name__
