"""`brevo`: create or update a contact (`POST /contacts` with `updateEnabled: true`).

With `updateEnabled` the call is an upsert, safe to retry: an existing contact's attributes are
updated and the lists added. Brevo allows about 10 contact requests a second per key; the process
keeps to that.
"""

from __future__ import annotations

from typing import Any, ClassVar

from hookrelay import limits
from hookrelay.destinations import Context, Record, _http
from hookrelay.errors import ConfigError, Permanent


class Brevo:
    type: ClassVar[str] = "brevo"
    required: ClassVar[tuple[str, ...]] = ("email",)
    batch_size, batch_wait, exclusive = 1, 0.0, None

    def __init__(
        self,
        name: str,
        context: Context,
        *,
        api_key: str,
        list_ids: list[int] | None = None,
        base_url: str = "https://api.brevo.com/v3",
    ) -> None:
        self.name, self.timeout = name, context.timeout
        self.api_key = str(api_key)
        self.list_ids = _list_ids(list_ids or [])
        if self.list_ids is None:
            raise ConfigError("expected a list of Brevo list ids (numbers)", key="list_ids")
        self.url = _http.check_url(base_url, "base_url") + "/contacts"
        self.limit = limits.shared("brevo", self.api_key, lambda: limits.RateLimit(10, 1.0))
        self.session = _http.session()

    def send(self, records: list[Record]) -> None:
        for record in records:
            fields = record.fields
            email = str(fields["email"]).strip()
            contact: dict[str, Any] = {"email": email, "updateEnabled": True}
            if fields.get("attributes"):
                if not isinstance(fields["attributes"], dict):
                    raise Permanent(
                        "attributes must be a mapping of Brevo attributes; fix the mapping"
                    )
                contact["attributes"] = fields["attributes"]
            list_ids = _list_ids(fields["list_ids"]) if "list_ids" in fields else self.list_ids
            if list_ids is None:
                raise Permanent(
                    "list_ids must be a list of Brevo list ids (numbers); fix the mapping"
                )
            if list_ids:
                contact["listIds"] = list_ids
            self.limit.acquire()
            _http.request(
                self.session,
                "POST",
                self.url,
                timeout=self.timeout,
                what=f"Brevo ({self.name})",
                secrets=[self.api_key, email],
                json=contact,
                headers={"api-key": self.api_key, "Accept": "application/json"},
                hints={
                    401: "Check `api_key` (Brevo: SMTP & API > API keys)",
                    404: "Check `list_ids` (Contacts > Lists: the number beside each list)",
                },
            )


def _list_ids(value: Any) -> list[int] | None:
    """Whole numbers (or digits as text) from a list or one value; None if one is anything else."""
    items = value if isinstance(value, list) else [value]
    if all(
        isinstance(v, int) and not isinstance(v, bool) or isinstance(v, str) and v.isdigit()
        for v in items
    ):
        return [int(v) for v in items]
    return None
