"""What config.yaml says about alerts: the channels (`alerts:`), the triggers (`alert_on:`), how
often (`alert_every:`, `alert_wait:`) and where links point (`public_url:`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from hookrelay.alerts.channels import CHANNELS, Channel
from hookrelay.document import Document, Key
from hookrelay.errors import ConfigError

TRIGGERS = ("dead", "backlog", "config_refused", "storage")


@dataclass(frozen=True, slots=True)
class Alerting:
    channels: tuple[Channel, ...] = ()
    dead: bool = True  # a delivery ended dead
    backlog: float | None = 900.0  # seconds the oldest pending delivery may wait; None: never
    config_refused: bool = True
    storage: float | None = 60.0  # seconds the database may not answer; None: never
    every: float = 600.0  # at most one message per kind and destination this often
    wait: float = 30.0  # a first occurrence waits this long for others to join its message
    public_url: str | None = None

    @property
    def relay(self) -> str:
        """How messages name this relay: public_url's host, else "hookrelay"."""
        host = urlsplit(self.public_url).hostname if self.public_url else None
        return host or "hookrelay"

    def link(self, kind: str, subject: str) -> str | None:
        """The admin console's page that shows what an alert is about."""
        if not self.public_url:
            return None
        status = {"dead": "dead", "backlog": "pending"}.get(kind)
        if not status:
            return f"{self.public_url}/admin"
        query = urlencode({"status": status, "destination": subject}, quote_via=quote)
        return f"{self.public_url}/admin/deliveries?{query}"


def load_alerting(doc: Document, data: dict[str, Any]) -> Alerting:
    """The alert settings of config.yaml's top level `data`; defaults as Alerting's."""
    channels = data.get("alerts") or []
    if not isinstance(channels, list):
        raise doc.error(("alerts",), "expected a list of channels, such as {type: slack, url: ...}")
    on = doc.table(data.get("alert_on"), ("alert_on",), TRIGGERS)
    public_url = data.get("public_url")
    if public_url is not None:
        public_url = doc.string(public_url, ("public_url",)).rstrip("/")
        if not public_url.startswith(("http://", "https://")):
            raise doc.error(("public_url",), "expected the admin console's https:// address")
    return Alerting(
        channels=tuple(_channel(doc, ("alerts", i), c) for i, c in enumerate(channels)),
        dead=doc.boolean(on.get("dead", True), ("alert_on", "dead")),
        backlog=_optional_duration(doc, on.get("backlog", "15m"), ("alert_on", "backlog")),
        config_refused=doc.boolean(on.get("config_refused", True), ("alert_on", "config_refused")),
        storage=_optional_duration(doc, on.get("storage", "1m"), ("alert_on", "storage")),
        every=doc.duration(data.get("alert_every", "10m"), ("alert_every",)),
        wait=doc.duration(data.get("alert_wait", "30s"), ("alert_wait",)),
        public_url=public_url,
    )


def _optional_duration(doc: Document, value: Any, key: Key) -> float | None:
    """A duration, or false/off for never."""
    if value is False or str(value).strip().lower() in ("false", "off"):
        return None
    return doc.duration(value, key)


_OPTIONS = {"slack": ("url",), "http": ("url", "secret"), "email": ("to", "from")}


def _channel(doc: Document, key: Key, spec: Any) -> Channel:
    options = dict(doc.table(spec, key))
    kind = options.pop("type", None)
    if kind not in CHANNELS:
        raise doc.error(
            key + ("type",),
            f"unknown alert channel type {kind!r}; expected one of {', '.join(sorted(CHANNELS))}",
        )
    doc.table(options, key, ("type", *_OPTIONS[kind]))
    if kind == "email":
        smtp_url = os.environ.get("SMTP_URL", "")
        if not smtp_url:
            raise doc.error(
                key + ("type",),
                "an email channel sends through $SMTP_URL, which is not set; set it to "
                "smtp://user:password@host:587",
            )
        options = {"to": options.get("to"), "sender": options.get("from"), "smtp_url": smtp_url}
    else:
        if "url" not in options:
            raise doc.error(key, f"a {kind} channel needs 'url'")
        options = {k: doc.string(v, key + (k,)) for k, v in options.items()}
    try:
        return CHANNELS[kind](**options)
    except ConfigError as exc:
        raise doc.error(key + ((exc.key,) if exc.key else ()), exc.message) from None
