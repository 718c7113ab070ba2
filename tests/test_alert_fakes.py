"""The alert tests' fakes, checked over real sockets with standard clients: FakeSmtp with
smtplib (plain, STARTTLS, login, refusals), TcpProxy with psycopg to the tests' PostgreSQL.
These tests check the fakes, not the relay."""

from __future__ import annotations

import smtplib
import socket
import ssl
import threading
import time
from email.message import EmailMessage

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.conftest import PG_URL, pg_available
from tests.fakes.smtp import FakeSmtp
from tests.fakes.tcp import TcpProxy

SENDER, TO = "relay@example.net", "ops@example.net"


def message(subject: str = "Deliveries failing") -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDER, TO, subject
    msg.set_content("3 deliveries to hook failed.\n")
    return msg


def client(smtp: FakeSmtp) -> smtplib.SMTP:
    return smtplib.SMTP(smtp.host, smtp.port, timeout=5)


def unverified() -> ssl.SSLContext:
    """TLS that trusts any certificate, as a relay told not to verify would."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- FakeSmtp


def test_smtp_records_an_accepted_message() -> None:
    with FakeSmtp() as smtp, client(smtp) as c:
        assert smtp.url == f"smtp://127.0.0.1:{smtp.port}"
        c.send_message(message("Zoë's alert"))  # a name the privacy guard forbids in logs
        [mail] = smtp.wait_for(1)
    assert (mail.mail_from, mail.rcpt_tos) == (SENDER, [TO])
    assert mail.message["Subject"] == "Zoë's alert"
    assert mail.message.get_content() == "3 deliveries to hook failed.\n"
    assert b"Subject:" in mail.raw
    assert smtp.connections == 1


def test_smtp_refuses_a_malformed_recipient_and_keeps_the_others() -> None:
    with FakeSmtp() as smtp, client(smtp) as c:
        refused = c.sendmail(SENDER, [TO, "not-an-address"], message().as_bytes())
        assert refused == {"not-an-address": (553, b"5.1.3 Error: malformed address")}
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            c.sendmail(SENDER, ["ops@@example.net"], message().as_bytes())
        assert [m.rcpt_tos for m in smtp.wait_for(1)] == [[TO]]


def test_smtp_fail_refuses_the_next_messages_in_order() -> None:
    with FakeSmtp() as smtp, client(smtp) as c:
        smtp.fail("451 4.3.0 try again later", "554 5.0.0 no")
        with pytest.raises(smtplib.SMTPDataError) as first:
            c.send_message(message())
        assert first.value.smtp_code == 451
        with pytest.raises(smtplib.SMTPDataError) as second:
            c.send_message(message())
        assert second.value.smtp_code == 554
        assert smtp.mails == []
        c.send_message(message())
        assert len(smtp.wait_for(1)) == 1


def test_smtp_delay_makes_a_client_time_out() -> None:
    with FakeSmtp() as smtp:
        smtp.delay = 0.5
        with smtplib.SMTP(smtp.host, smtp.port, timeout=0.2) as c:
            with pytest.raises((TimeoutError, smtplib.SMTPServerDisconnected)):
                c.send_message(message("timed out"))
        smtp.delay = 0
        with client(smtp) as c:
            c.send_message(message("on time"))
        time.sleep(0.5)  # past the first one's delay: given up by its client, it is not kept
        assert [m.message["Subject"] for m in smtp.mails] == ["on time"]
        assert smtp.connections == 2


def test_smtp_starttls_with_the_generated_certificate() -> None:
    with FakeSmtp(starttls=True) as smtp, client(smtp) as c:
        assert smtp.cert_path is not None
        c.ehlo()
        with pytest.raises(smtplib.SMTPSenderRefused) as plain:
            c.sendmail(SENDER, [TO], message().as_bytes())
        assert plain.value.smtp_code == 530  # STARTTLS is required
        trusted = ssl.create_default_context(cafile=smtp.cert_path)
        c.starttls(context=trusted)
        c.send_message(message())
        assert len(smtp.wait_for(1)) == 1


def test_smtp_starttls_certificate_names_localhost_and_an_unverified_context_works() -> None:
    with FakeSmtp(starttls=True) as smtp:
        assert smtp.cert_path is not None
        trusted = ssl.create_default_context(cafile=smtp.cert_path)
        with smtplib.SMTP("localhost", smtp.port, timeout=5) as c:
            c.starttls(context=trusted)  # the certificate is valid for localhost too
        with client(smtp) as c:
            with pytest.raises(ssl.SSLCertVerificationError):
                c.starttls(context=ssl.create_default_context())  # not a known CA
        with client(smtp) as c:
            c.starttls(context=unverified())
            c.send_message(message())
        assert len(smtp.wait_for(1)) == 1


def test_smtp_login_is_required_and_checked() -> None:
    with FakeSmtp(username="alerts", password="p@ss word") as smtp:
        assert smtp.url == f"smtp://alerts:p%40ss%20word@127.0.0.1:{smtp.port}"
        with client(smtp) as c:
            with pytest.raises(smtplib.SMTPSenderRefused) as before:
                c.send_message(message())
            assert before.value.smtp_code == 530
            with pytest.raises(smtplib.SMTPAuthenticationError):
                c.login("alerts", "wrong")
        for mechanism in ("PLAIN", "LOGIN"):
            with client(smtp) as c:
                c.ehlo()
                c.esmtp_features["auth"] = mechanism  # smtplib would pick CRAM-MD5, PLAIN, LOGIN
                c.login("alerts", "p@ss word")
                c.send_message(message(mechanism))
        assert [m.message["Subject"] for m in smtp.wait_for(2)] == ["PLAIN", "LOGIN"]


def test_smtp_login_over_starttls_only() -> None:
    with FakeSmtp(starttls=True, username="alerts", password="pw") as smtp, client(smtp) as c:
        c.ehlo()
        assert not c.has_extn("auth")
        c.starttls(context=ssl.create_default_context(cafile=smtp.cert_path))
        c.ehlo()
        c.login("alerts", "pw")
        c.send_message(message())
        assert len(smtp.wait_for(1)) == 1


def test_smtp_without_credentials_offers_no_login() -> None:
    with FakeSmtp() as smtp, client(smtp) as c:
        with pytest.raises(smtplib.SMTPNotSupportedError):
            c.login("alerts", "pw")


@pytest.mark.parametrize("starttls", [False, True])
def test_smtp_stops_with_a_client_still_connected(starttls: bool) -> None:
    with FakeSmtp(starttls=starttls) as smtp:
        c = client(smtp)
        if starttls:
            c.starttls(context=unverified())
        c.noop()
    with pytest.raises(smtplib.SMTPServerDisconnected):
        c.noop()
    c.close()


# -- TcpProxy


def pg_target() -> tuple[str, int]:
    if not pg_available():
        pytest.fail(f"PostgreSQL does not answer at {PG_URL}; .ci/run starts it")
    params = conninfo_to_dict(PG_URL)
    return str(params.get("host", "127.0.0.1")), int(params.get("port") or 5432)


def connect(proxy: TcpProxy) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(PG_URL, host="127.0.0.1", port=proxy.port, connect_timeout=2)


def test_proxy_forwards_to_postgres() -> None:
    with TcpProxy(*pg_target()) as proxy, connect(proxy) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_proxy_cut_breaks_open_and_new_connections_until_restore() -> None:
    with TcpProxy(*pg_target()) as proxy:
        conn = connect(proxy)
        assert conn.execute("select 1").fetchone() == (1,)
        proxy.cut()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
        assert conn.closed
        with pytest.raises(psycopg.OperationalError):
            connect(proxy)
        proxy.restore()
        with connect(proxy) as again:
            assert again.execute("select 2").fetchone() == (2,)


def test_proxy_leaves_nothing_behind() -> None:
    before = set(threading.enumerate())
    with TcpProxy(*pg_target()) as proxy:
        conn = connect(proxy)
        conn.execute("select 1")
    assert set(threading.enumerate()) <= before  # every thread joined
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select 1")  # __exit__ closed the connection it carried
    conn.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
