"""A Google service account: its JSON key, and access tokens refreshed with google-auth.

Tokens are refreshed on the relay's own session, never through `AuthorizedSession`: after its first
request that starts lookups on a Google host (iamcredentials) the relay was not told about.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import google.auth.exceptions
import google.auth.transport.requests
import requests
from google.oauth2 import service_account

from hookrelay.errors import ConfigError, Permanent, RetryLater


class ServiceAccount:
    def __init__(self, key: Any, base_dir: Path, scopes: list[str]) -> None:
        """`key`: the key's JSON itself (from an environment variable), or its file's path."""
        self.credentials = _credentials(str(key).strip(), base_dir, scopes)
        self.email = str(self.credentials.service_account_email)

    def token(self, session: requests.Session) -> str:
        """A valid access token, refreshed when it has expired; callers serialise the refresh."""
        creds = self.credentials
        if not creds.valid:
            try:
                creds.refresh(google.auth.transport.requests.Request(session))  # type: ignore[no-untyped-call]
            except google.auth.exceptions.RefreshError as exc:
                why = exc.args[0] if exc.args else type(exc).__name__
                message = f"Google refused the service account {self.email}: {why}"
                if exc.retryable:
                    raise RetryLater(message) from None
                raise Permanent(message + ". Check the key in `credentials`") from None
            except google.auth.exceptions.TransportError as exc:
                raise RetryLater(
                    f"Google's token endpoint could not be reached ({type(exc.args[0]).__name__})"
                ) from None
        return str(creds.token)

    def drop_token(self) -> None:
        """Google stopped accepting the token (revoked, or expired early): get a new one next."""
        self.credentials.token = None


def _credentials(text: str, base_dir: Path, scopes: list[str]) -> service_account.Credentials:
    if not text.startswith("{"):
        try:
            text = (base_dir / text).read_text()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the service account key file ({exc.strerror}); give its path or "
                "the key's JSON itself",
                key="credentials",
            ) from None
    try:
        credentials: service_account.Credentials
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            json.loads(text), scopes=scopes
        )
        return credentials
    except (ValueError, KeyError, TypeError) as exc:
        problem = "not JSON" if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise ConfigError(
            f"not a service account key ({problem}): download one from Google Cloud, "
            "IAM > Service accounts > Keys > Add key > JSON",
            key="credentials",
        ) from None
