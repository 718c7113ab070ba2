"""`mailchimp`: add or update an audience member, then tag them.

`PUT /lists/{list}/members/{md5 of the lower-cased email}` is an upsert, safe to retry. It sends
`status_if_new`, never `status`: `status` would re-subscribe people who unsubscribed, which
their consent does not allow. Someone who unsubscribed, bounced or asked to be forgotten is
refused by Mailchimp with a 400 that ends the delivery `dead` with Mailchimp's own words; it is
never retried. Mailchimp allows 10 simultaneous connections per account: the process keeps to that.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any, ClassVar
from urllib.parse import quote

from hookrelay import limits
from hookrelay.destinations import Context, Record, _http
from hookrelay.errors import ConfigError, Permanent

STATUSES = ("subscribed", "pending", "unsubscribed", "transactional")
CONNECTIONS = 10  # simultaneous connections Mailchimp allows per account


class Mailchimp:
    type: ClassVar[str] = "mailchimp"
    required: ClassVar[tuple[str, ...]] = ("email",)
    batch_size, batch_wait, limit, exclusive = 1, 0.0, None, None

    def __init__(
        self,
        name: str,
        context: Context,
        *,
        api_key: str,
        list_id: str,
        status_if_new: str = "subscribed",
        base_url: str | None = None,
    ) -> None:
        self.name, self.timeout = name, context.timeout
        key = str(api_key)
        data_centre = key.rpartition("-")[2]
        if "-" not in key or not data_centre.isalnum():
            raise ConfigError(
                "a Mailchimp API key ends with its data centre, like -us6; copy the whole key "
                "from Profile > Extras > API keys",
                key="api_key",
            )
        if status_if_new not in STATUSES:
            raise ConfigError(f"expected one of {', '.join(STATUSES)}", key="status_if_new")
        self.status_if_new = status_if_new
        self.auth = ("hookrelay", key)  # any user name; the key is the password
        url = base_url or f"https://{data_centre}.api.mailchimp.com/3.0"
        self.members = f"{_http.check_url(url, 'base_url')}/lists/{quote(str(list_id))}/members/"
        self.connections = limits.shared(
            "mailchimp", key, lambda: threading.BoundedSemaphore(CONNECTIONS)
        )
        self.session = _http.session()

    def send(self, records: list[Record]) -> None:
        for record in records:
            fields = record.fields
            email = str(fields["email"]).strip()
            member = self.members + hashlib.md5(email.lower().encode()).hexdigest()
            status = fields.get("status_if_new") or self.status_if_new
            if status not in STATUSES:
                raise Permanent(
                    f"status_if_new {status!r} is not one of {', '.join(STATUSES)}; fix the mapping"
                )
            body: dict[str, Any] = {"email_address": email, "status_if_new": status}
            if fields.get("merge_fields"):
                if not isinstance(fields["merge_fields"], dict):
                    raise Permanent("merge_fields must be a mapping of merge tags; fix the mapping")
                body["merge_fields"] = fields["merge_fields"]
            if fields.get("language"):
                body["language"] = str(fields["language"])
            tags = fields.get("tags") or []
            tags = [str(t) for t in (tags if isinstance(tags, list) else [tags])]
            with self.connections:
                self._call("PUT", member, email, json=body)
                if tags:
                    active = [{"name": t, "status": "active"} for t in tags]
                    self._call("POST", member + "/tags", email, json={"tags": active})

    def _call(self, method: str, url: str, email: str, **kwargs: Any) -> None:
        _http.request(
            self.session,
            method,
            url,
            timeout=self.timeout,
            what=f"Mailchimp ({self.name})",
            secrets=[self.auth[1], email],  # Mailchimp's messages quote the address
            auth=self.auth,
            hints={
                401: "Check `api_key` (Profile > Extras > API keys)",
                404: "Check `list_id`: Audience > Settings > Audience name and defaults",
            },
            **kwargs,
        )
