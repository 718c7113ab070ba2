"""Where alerts go: `slack` (an incoming webhook: Slack, Mattermost, Teams workflows take
{"text": ...}), `email` (SMTP from $SMTP_URL, STARTTLS) and `http` (JSON, signed as Standard
Webhooks when `secret` is set, as the http destination signs).

A channel sends one message and returns what the other side answered, in one line, or raises
AlertFailed saying why; it never says a secret (a webhook's URL is one).
"""

from __future__ import annotations

import email.message
import hashlib
import json
import smtplib
import ssl
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import unquote, urlsplit

import requests

from hookrelay.alerts.messages import Message, mask
from hookrelay.destinations import Context, _http
from hookrelay.destinations.http import Http
from hookrelay.errors import ConfigError, RelayError

TIMEOUT = 10.0  # seconds one channel has to take a message


class AlertFailed(RelayError):
    """The channel did not take the message; it is tried again later."""


class Channel(Protocol):
    type: ClassVar[str]
    key: str  # stable across restarts: which channel an outbox row is for
    label: str  # what logs and `relay alert-test` call it: never a secret

    def send(self, message: Message) -> str: ...


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


class Slack:
    type: ClassVar[str] = "slack"

    def __init__(self, *, url: str) -> None:
        self.url = _http.check_url(url)
        self.key, self.label = _key(self.type, url), f"slack ({urlsplit(url).hostname})"
        self.session = _http.session()

    def send(self, message: Message) -> str:
        return _post(self.session, self.url, {"text": message.text()}, {}, self.label, [self.url])


class Webhook:
    type: ClassVar[str] = "http"

    def __init__(self, *, url: str, secret: str | None = None) -> None:
        self.signer = Http("alerts", Context(Path("."), TIMEOUT), url=url, secret=secret)
        self.url, self.secrets = self.signer.url, [url, secret or ""]
        self.key, self.label = _key(self.type, url), f"http ({urlsplit(url).hostname})"

    def send(self, message: Message) -> str:
        body = json.dumps(message.webhook(), ensure_ascii=False).encode()
        headers = self.signer.signed_headers(message.id, body)
        return _post(self.signer.session, self.url, body, headers, self.label, self.secrets)


def _post(
    session: requests.Session,
    url: str,
    body: bytes | dict[str, Any],
    headers: dict[str, str],
    label: str,
    secrets: list[str],
) -> str:
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", **headers}
    try:
        answer = _http.request(
            session,
            "POST",
            url,
            timeout=TIMEOUT,
            data=data,
            headers=headers,
            what=label,
            secrets=secrets,
        )
    except RelayError as exc:
        raise AlertFailed(exc.message) from None
    return f"{answer.status_code} {_http.excerpt(answer.text, secrets)}".strip()


class Email:
    """One message to `to` through the SMTP server of $SMTP_URL: smtp://user:pass@host:587 upgrades
    with STARTTLS (a server that does not offer it gets no password, unless it is on this
    machine); smtps://...:465 speaks TLS from the start."""

    type: ClassVar[str] = "email"

    def __init__(self, *, to: str | list[str], sender: str | None = None, smtp_url: str) -> None:
        recipients = [to] if isinstance(to, str) else to
        if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
            raise ConfigError("expected an email address, or a list of them", key="to")
        server = urlsplit(smtp_url)
        if server.scheme not in ("smtp", "smtps") or not server.hostname:
            raise ConfigError(
                "SMTP_URL must look like smtp://user:password@host:587 or smtps://...:465",
                key="type",
            )
        self.to, self.server = tuple(recipients), server
        user = unquote(server.username or "")
        self.sender = sender or (user if "@" in user else f"hookrelay@{server.hostname}")
        self.key = _key(self.type, *self.to)
        self.label = f"email ({server.hostname})"  # no address: labels go to the log

    def send(self, message: Message) -> str:
        mail = email.message.EmailMessage()
        mail["Subject"], mail["From"], mail["To"] = message.title, self.sender, ", ".join(self.to)
        mail["Message-ID"] = f"<{message.id}@hookrelay>"
        mail.set_content(message.text())
        server, host = self.server, self.server.hostname or ""
        port = server.port or (465 if server.scheme == "smtps" else 587)
        try:
            if server.scheme == "smtps":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    host, port, timeout=TIMEOUT, context=ssl.create_default_context()
                )
            else:
                smtp = smtplib.SMTP(host, port, timeout=TIMEOUT)
            with smtp:
                self._secure(smtp, host)
                if server.username:
                    smtp.login(unquote(server.username), unquote(server.password or ""))
                refused = smtp.send_message(mail)
        except (smtplib.SMTPException, OSError) as exc:
            raise AlertFailed(f"{self.label} via {host}:{port}: {mask(_smtp_error(exc))}") from None
        return f"accepted by {host}:{port} for {len(self.to) - len(refused)} of {len(self.to)}"

    def _secure(self, smtp: smtplib.SMTP, host: str) -> None:
        if self.server.scheme == "smtps":
            return
        smtp.ehlo()
        if smtp.has_extn("starttls"):
            smtp.starttls(context=ssl.create_default_context())
            smtp.ehlo()
        elif self.server.username and host not in ("127.0.0.1", "::1", "localhost"):
            raise AlertFailed(
                f"{host} does not offer STARTTLS: the SMTP password would travel in clear"
            )


def _smtp_error(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else ""
        return f"{exc.smtp_code} {text}".strip()
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "every recipient was refused"
    return str(exc) or type(exc).__name__


CHANNELS: dict[str, type[Slack | Webhook | Email]] = {c.type: c for c in (Slack, Webhook, Email)}
