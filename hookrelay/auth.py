"""Is this request really from the source? Header, Basic, signature and address checks.

Every comparison is constant-time and every configured check runs, so neither the answer nor its
timing says which check failed. Parsing untrusted headers never raises anything but our rejections.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.datastructures import Authorization, Headers

from hookrelay.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from hookrelay.document import Document, Key

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Qualifio-Signature"


@dataclass(frozen=True, slots=True)
class Auth:
    """Every configured check must pass; an Auth without any (`auth: none`) accepts anyone."""

    header: tuple[str, str] | None = None
    basic: tuple[str, str] | None = None
    signature_secrets: tuple[str, ...] = ()
    allow_ips: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def is_open(self) -> bool:
        return self == Auth()


CHECKS = ("header", "basic", "signature", "allow_ips")


def load_auth(doc: Document, value: Any, key: Key) -> Auth:
    """A source's `auth:` section: at least one check, or `none` said in so many words, so a
    secret that was left unset never turns a source into one that accepts anyone."""
    if value == "none":
        return Auth()
    if not value:
        raise doc.error(
            key,
            "a source needs at least one check (signature, header, basic or allow_ips); "
            "write `auth: none` to accept requests from anyone",
        )
    spec = doc.table(value, key, CHECKS)
    header = basic = None
    if "header" in spec:
        h = doc.table(spec["header"], key + ("header",), ("name", "value"))
        header = (
            doc.string(h.get("name"), key + ("header", "name")),
            doc.string(h.get("value"), key + ("header", "value")),
        )
    if "basic" in spec:
        b = doc.table(spec["basic"], key + ("basic",), ("username", "password"))
        basic = (
            doc.string(b.get("username"), key + ("basic", "username")),
            doc.string(b.get("password"), key + ("basic", "password")),
        )
    secrets: tuple[str, ...] = ()
    if "signature" in spec:
        s = doc.table(spec["signature"], key + ("signature",), ("secrets",))
        secrets = _secrets(doc, s.get("secrets"), key + ("signature", "secrets"))
    networks = []
    for i, raw in enumerate(spec.get("allow_ips") or []):
        try:
            networks.append(ipaddress.ip_network(str(raw), strict=False))
        except ValueError:
            raise doc.error(
                key + ("allow_ips", i),
                f"expected an address or network such as 203.0.113.0/24, got {raw!r}",
            ) from None
    return Auth(header, basic, secrets, tuple(networks))


def _secrets(doc: Document, value: Any, key: Key) -> tuple[str, ...]:
    """The secrets listed, less the empty ones (an unset `${OLD_SECRET:-}`); at least one."""
    items = value if isinstance(value, list) else [value]
    secrets = tuple(doc.string(v, key + (i,)) for i, v in enumerate(items) if v != "")
    if not secrets:
        raise doc.error(
            key,
            "no secret to check signatures with (each one listed is empty); set the variable "
            "that holds it",
        )
    return secrets


def check_address(auth: Auth, address: str | None, source: str) -> None:
    """:raise Forbidden: the source has an allow-list and the client is not on it."""
    if not auth.allow_ips:
        return
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        ip = None
    if ip is None or not any(ip in network for network in auth.allow_ips):
        logger.warning("source %s: address not allowed", source)
        raise Forbidden("this address may not post to this source")


def authenticate(
    auth: Auth, headers: Headers, basic: Authorization | None, body: bytes, source: str
) -> None:
    """:raise Unauthorized: any configured check failed (the answer does not say which)."""
    failed = []
    if auth.header is not None:
        name, expected = auth.header
        if not _equal(headers.get(name, ""), expected):
            failed.append("header")
    if auth.basic is not None:
        username, password = auth.basic
        given = (
            (basic.username or "", basic.password or "")
            if basic and basic.type == "basic"
            else ("", "")
        )
        if not (_equal(given[0], username) & _equal(given[1], password)):
            failed.append("basic")
    if auth.signature_secrets and not verify_signature(
        headers.get(SIGNATURE_HEADER, ""), body, auth.signature_secrets
    ):
        failed.append("signature")
    if failed:
        logger.warning("source %s: %s check failed", source, " and ".join(failed))
        raise Unauthorized("missing or wrong credentials")


def sign(body: bytes, secret: str) -> str:
    """The X-Qualifio-Signature value Qualifio sends for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(header: str, body: bytes, secrets: tuple[str, ...]) -> bool:
    """`sha256=<hex or base64 HMAC-SHA256 of the raw body>` with any of `secrets` (rotation)."""
    given = _digest(header)
    matches = [
        hmac.compare_digest(hmac.new(s.encode(), body, hashlib.sha256).digest(), given)
        for s in secrets
    ]  # every secret is tried, so timing says nothing of which matched
    return given != b"" and any(matches)


def _digest(header: str) -> bytes:
    scheme, _, value = header.strip().partition("=")
    if scheme.lower() != "sha256" or not value:
        return b""
    try:
        if len(value) == 64:
            return bytes.fromhex(value)
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        return b""


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())
