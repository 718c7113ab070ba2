"""A real SMTP server on 127.0.0.1:<free port> (aiosmtpd) for the alert tests: it records every
message it accepts and can be told to refuse the next ones, to answer slowly, to offer STARTTLS
with a certificate of its own, and to require a login.

It is strict like a real server, so that a relay bug shows here rather than at a customer's
provider: a recipient (or sender) that is not a syntactically valid address is refused (553), a
message before AUTH is refused when credentials are configured (530), and with STARTTLS nothing
but EHLO, NOOP, STARTTLS and QUIT is allowed before the TLS handshake (530).
"""

from __future__ import annotations

import asyncio
import datetime
import email
import email.policy
import ipaddress
import logging
import re
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# RFC 5321/5322 addresses, with RFC 6531's UTF-8: a dot-atom local part, then a domain of
# letter-digit-hyphen labels or an address literal such as [127.0.0.1].
_U = "\u0080-\U0010ffff"
_ATOM = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~{_U}-]+"
_LABEL = rf"[A-Za-z0-9{_U}](?:[A-Za-z0-9{_U}-]*[A-Za-z0-9{_U}])?"
_ADDRESS = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}(?:\.{_LABEL})*|\[[^\[\]\\\s]+\])")


@dataclass
class Mail:
    """A message the server accepted (250 after DATA)."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    raw: bytes


class FakeSmtp:
    """`with FakeSmtp(starttls=..., username=..., password=...) as smtp:` serves until the block
    ends; the relay is pointed at `smtp.url` (and, with STARTTLS, trusts `smtp.cert_path`)."""

    def __init__(
        self,
        *,
        starttls: bool = False,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self.starttls = starttls
        self.username, self.password = username, password
        self.mails: list[Mail] = []  # the messages accepted, in order
        self.delay = 0.0  # seconds to wait before answering DATA (to provoke client timeouts)
        self.connections = 0  # SMTP sessions opened
        self.cert_path: Path | None = None  # the PEM certificate offered by STARTTLS
        self._failures: list[str] = []
        self._lock = threading.Lock()
        # Bound now, so that url and port are known before the server starts and no other
        # process can take the port in between.
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.host: str = self._socket.getsockname()[0]
        self.port: int = self._socket.getsockname()[1]
        login = f"{quote(username, safe='')}:{quote(password or '', safe='')}@" if username else ""
        self.url = f"smtp://{login}{self.host}:{self.port}"
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._controller: _Controller | None = None
        self._log_level = logging.NOTSET

    def __enter__(self) -> FakeSmtp:
        tls = None
        if self.starttls:
            self._tmp = tempfile.TemporaryDirectory(prefix="fake-smtp-")
            self.cert_path, key_path = _self_signed(Path(self._tmp.name))
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.cert_path, key_path)
        # aiosmtpd logs every command and each line of DATA: that would land in the tests'
        # captured logs, which the privacy guard (tests/conftest.py) reads as the relay's own.
        # On ERROR it keeps only its failures.
        log = logging.getLogger("mail.log")
        self._log_level = log.level
        log.setLevel(logging.ERROR)
        self._controller = _Controller(
            self,
            self._socket,
            tls_context=tls,
            require_starttls=self.starttls,
            authenticator=self._authenticate if self.username is not None else None,
            # AUTH in clear text only on a server without STARTTLS (as some internal ones are)
            auth_require_tls=self.starttls or self.username is None,
        )
        try:
            self._controller.start()
        except BaseException:
            self.__exit__()
            raise
        self.connections = 0  # start() opened one session, to check that the server answers
        return self

    def __exit__(self, *exc: object) -> None:
        if self._controller is not None:
            self._controller.stop()
        self._socket.close()  # the server closed it, unless it never started
        if self._tmp is not None:
            self._tmp.cleanup()
        logging.getLogger("mail.log").setLevel(self._log_level)

    def fail(self, *codes: str) -> None:
        """Refuse the next messages at DATA, one per reply, e.g. "451 4.3.0 try again later"."""
        with self._lock:
            self._failures.extend(codes)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Mail]:
        """Wait until `count` messages were accepted; returns the accepted ones (fewer if the
        time ran out, for the test's assertion to show)."""
        deadline = time.monotonic() + timeout
        while len(self.mails) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.mails)

    # aiosmtpd's hooks, called in the server's thread. A hook that answers itself must also
    # update the envelope, as aiosmtpd does only when a hook is absent.

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        # aiosmtpd's own auth_required would do, but it warns (an error under the tests'
        # filterwarnings) when AUTH is allowed without TLS.
        if self.username is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if not _ADDRESS.fullmatch(address):
            return "553 5.1.7 Error: malformed sender address"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if not _ADDRESS.fullmatch(address):
            return "553 5.1.3 Error: malformed address"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """A client that hangs up during the delay cancels this: nothing recorded, no failure
        used up."""
        if self.delay:
            await asyncio.sleep(self.delay)
        raw = envelope.original_content or b""
        assert envelope.mail_from is not None
        with self._lock:
            if self._failures:
                return self._failures.pop(0)
            # raw is as sent, with CRLF line ends; message has "\n", as a mail client shows it
            message = email.message_from_bytes(
                raw.replace(b"\r\n", b"\n"), policy=email.policy.default
            )
            self.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), message, raw))
        return "250 2.0.0 OK: queued"

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        """aiosmtpd's authenticator: PLAIN and LOGIN hand over a LoginPassword. handled=False
        lets aiosmtpd answer a refusal (535); it would otherwise wait for us to."""
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            (self.username or "").encode(),
            (self.password or "").encode(),
        )
        return AuthResult(success=ok, handled=False)


class _Controller(Controller):
    """aiosmtpd's threaded Controller, serving on a socket bound beforehand rather than binding
    a port itself, counting sessions (it makes one SMTP instance per connection) and dropping
    those still open when it stops."""

    def __init__(self, fake: FakeSmtp, sock: socket.socket, **smtp: Any) -> None:
        host, port = sock.getsockname()
        # server_hostname: without it every session would look up the machine's FQDN
        super().__init__(fake, hostname=host, port=port, server_hostname="localhost", **smtp)
        self._fake, self._socket = fake, sock
        self._sessions: list[SMTP] = []

    def stop(self, no_assert: bool = False) -> None:
        # aiosmtpd's stop() cancels the sessions' tasks, but a TLS session then waits for the
        # client's close_notify, after the loop has closed: its socket would leak (a
        # ResourceWarning, an error in the tests). Aborted, it closes at once.
        self.loop.call_soon_threadsafe(self._abort_sessions)
        super().stop(no_assert)

    def _abort_sessions(self) -> None:
        for session in self._sessions:
            if isinstance(session.transport, asyncio.Transport):
                session.transport.abort()

    def _create_server(self) -> Awaitable[asyncio.AbstractServer]:
        return self.loop.create_server(self._factory_invoker, sock=self._socket)

    def factory(self) -> SMTP:
        self._fake.connections += 1
        session = SMTP(self.handler, **self.SMTP_kwargs)
        self._sessions.append(session)
        return session


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, signed by its own key: a client trusts it by
    loading cert.pem as its CA file. Returns (cert.pem, key.pem)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
