"""`http`: POST each record as JSON to a URL, with Standard Webhooks headers.

Every request carries `webhook-id: msg_<delivery id>`, the same on every retry and replay, so a
receiver that dedupes on it sees each participation once. With a `secret`, requests are signed as
Standard Webhooks describes: base64 HMAC-SHA256 of "<id>.<timestamp>.<body>".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any, ClassVar

from hookrelay.destinations import Context, Record, _http
from hookrelay.errors import ConfigError


class Http:
    type: ClassVar[str] = "http"
    required: ClassVar[tuple[str, ...]] = ()
    batch_size, batch_wait, limit, exclusive = 1, 0.0, None, None

    def __init__(
        self,
        name: str,
        context: Context,
        *,
        url: str,
        secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.name, self.timeout = name, context.timeout
        self.url = _http.check_url(url)
        self.key = _secret_key(secret) if secret else None
        if headers is not None and not (
            isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
        ):
            raise ConfigError("expected a mapping of header names to text values", key="headers")
        self.headers = {str(k): v for k, v in (headers or {}).items()}
        self.secrets = [secret or "", *self.headers.values()]
        self.session = _http.session()

    def send(self, records: list[Record]) -> None:
        for record in records:
            body = _json(record.fields)
            _http.request(
                self.session,
                "POST",
                self.url,
                timeout=self.timeout,
                data=body,
                headers=self.signed_headers(record.delivery_id, body),
                what=f"the endpoint of {self.name}",
                secrets=self.secrets,
            )

    def signed_headers(
        self, delivery_id: str, body: bytes, now: float | None = None
    ) -> dict[str, str]:
        msg_id, timestamp = f"msg_{delivery_id}", str(int(now if now is not None else time.time()))
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
        }
        if self.key is not None:
            signed = f"{msg_id}.{timestamp}.".encode() + body
            digest = hmac.new(self.key, signed, hashlib.sha256).digest()
            headers["webhook-signature"] = "v1," + base64.b64encode(digest).decode()
        return headers


def _json(fields: dict[str, Any]) -> bytes:
    """UTF-8 JSON; with \\u escapes when a lone surrogate (from a participation's escaped text)
    could not be encoded otherwise."""
    try:
        return json.dumps(fields, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(fields).encode()


def _secret_key(secret: Any) -> bytes:
    """`whsec_<base64>` as Standard Webhooks defines it; any other text is used as it is."""
    text = str(secret)
    if not text.startswith("whsec_"):
        return text.encode()
    try:
        return base64.b64decode(text[len("whsec_") :], validate=True)
    except binascii.Error:
        raise ConfigError("a whsec_ secret must be base64 after the prefix", key="secret") from None
