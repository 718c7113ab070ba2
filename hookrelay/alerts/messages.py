"""What an alert says: the kind, the destination, how many and the last error, with a link to the
admin console; never a participant's data. The last error is masked where it is noted (emails,
and every text value of the payloads it came from), so a vendor that quotes a record back cannot
carry it into a message."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

Kind = Literal["dead", "backlog", "config_refused", "storage", "test"]
EMAIL = re.compile(r"[^\s@<>()\[\]\"',;:]+@[^\s@<>()\[\]\"',;:]+\.[A-Za-z0-9-]{2,}")
LONGEST = 300  # characters of an error a message keeps


@dataclass(frozen=True, slots=True)
class Message:
    id: str
    kind: Kind
    subject: str  # a destination's name, or "" for the relay as a whole
    resolved: bool  # the condition cleared
    count: int  # occurrences not told before (dead deliveries, refused edits, waiting ones)
    total: int  # occurrences since it started
    since: float | None
    last_error: str | None
    link: str | None  # the admin console's page that shows it, from `public_url`
    relay: str = "hookrelay"  # which relay says so: public_url's host when there is one

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Message:
        return cls(**json.loads(text))

    @property
    def title(self) -> str:
        """One line: an email's subject, and the first line of every other channel's text."""
        what = {
            "dead": f"{_many(self.count, 'delivery', 'deliveries')} to {self.subject} ended dead",
            "backlog": f"deliveries to {self.subject} are held up: "
            f"{_many(self.count, 'delivery', 'deliveries')} waiting",
            "config_refused": f"{_many(self.count, 'edit')} of the configuration refused",
            "storage": "the database does not answer",
            "test": "test alert: this channel works",
        }[self.kind]
        if not self.resolved:
            return f"[{self.relay}] {what}"
        back = {
            "dead": f"{self.subject} delivers again",
            "backlog": f"deliveries to {self.subject} flow again",
            "config_refused": "the configuration loads again",
            "storage": "the database answers again",
            "test": "",
        }[self.kind]
        return f"[{self.relay}] resolved: {back}" + (f"; before that, {what}" if self.count else "")

    def text(self) -> str:
        """The whole message: Slack's text, an email's body, a webhook's `text`."""
        lines = [self.title]
        if self.since:
            lines.append(f"Since {_clock(self.since)}" + self._in_all())
        if self.last_error:
            lines.append(f"Last error: {self.last_error}")
        if self.kind == "dead" and not self.resolved:
            lines.append("Replay them from the admin console once the cause is fixed.")
        if self.kind == "config_refused" and not self.resolved:
            lines.append("The last good configuration keeps running.")
        if self.link:
            lines.append(self.link)
        return "\n".join(lines)

    def _in_all(self) -> str:
        if self.kind not in ("dead", "config_refused") or self.total <= self.count:
            return ""
        return f"; {self.total} in all"

    def webhook(self) -> dict[str, Any]:
        """The JSON an `http` channel posts."""
        return {
            "type": "resolved" if self.resolved else "alert",
            **{k: v for k, v in asdict(self).items() if k not in ("id", "resolved")},
            "text": self.text(),
        }


def mask(text: str | None, payloads: Iterable[str] = ()) -> str | None:
    """`text` without email addresses or any text value found in the `payloads` (JSON), shortened
    to LONGEST characters."""
    if not text:
        return text
    for value in sorted({v for p in payloads for v in _values(p)}, key=len, reverse=True):
        text = text.replace(value, "[…]")
    text = EMAIL.sub("[email]", text)
    return text if len(text) <= LONGEST else text[: LONGEST - 1] + "…"


def _values(payload: str) -> Iterator[str]:
    """Every text value of a JSON document of three characters or more (shorter ones, such as
    "1" or "fr", would mask words of the error itself)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack += node.values()
        elif isinstance(node, list):
            stack += node
        elif isinstance(node, str) and len(node.strip()) >= 3:
            yield node.strip()


def _many(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))
