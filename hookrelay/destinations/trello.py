"""`trello`: one card per record on a list (`POST /cards`).

Card creation is not idempotent: when Trello may have created the card but its answer was lost (a
timeout, a 5xx), the retry can make a second card, and the attempt log says so. Label names are
resolved to ids once per board, again only when a name is not found. The key and token travel in
the Authorization header and the card in a JSON body, so neither lands in a proxy's access log.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Any, ClassVar

from hookrelay import limits
from hookrelay.destinations import Context, Record, _http
from hookrelay.errors import ConfigError, Permanent

DESC_MAX = 16384  # characters; Trello refuses a longer description
LABEL_ID = re.compile(r"[0-9a-f]{24}")


class Trello:
    type: ClassVar[str] = "trello"
    required: ClassVar[tuple[str, ...]] = ("name",)
    batch_size, batch_wait, exclusive = 1, 0.0, None

    def __init__(
        self,
        name: str,
        context: Context,
        *,
        key: str,
        token: str,
        list_id: str,
        base_url: str = "https://api.trello.com/1",
    ) -> None:
        self.name, self.timeout = name, context.timeout
        self.list_id = str(list_id)
        self.base_url = _http.check_url(base_url, "base_url")
        if not key or not token:
            raise ConfigError("a Trello key and token are both needed", key="key")
        self.auth = f'OAuth oauth_consumer_key="{key}", oauth_token="{token}"'
        self.secrets = [str(key), str(token)]
        # 100 requests per 10 s per token, 300 per key, across every worker of the process
        self.limit = limits.shared("trello-token", str(token), lambda: limits.RateLimit(100, 10))
        self.key_limit = limits.shared("trello-key", str(key), lambda: limits.RateLimit(300, 10))
        self.session = _http.session()
        self._labels: dict[str, str] | None = None  # name -> id on the list's board
        self._labels_at = 0.0
        self._labels_lock = threading.Lock()

    def send(self, records: list[Record]) -> None:
        for record in records:
            card = self._card(record.fields)
            self._call("POST", "/cards", json=card, idempotent=False)

    def _card(self, fields: dict[str, Any]) -> dict[str, Any]:
        card: dict[str, Any] = {"idList": self.list_id, "name": str(fields["name"])}
        if fields.get("desc"):
            desc = str(fields["desc"])
            card["desc"] = desc if len(desc) <= DESC_MAX else desc[: DESC_MAX - 1] + "…"
        for option in ("due", "pos"):
            if fields.get(option) not in (None, ""):
                card[option] = fields[option]
        labels = fields.get("labels")
        if labels:
            card["idLabels"] = ",".join(self._label_ids(labels))
        return card

    def _label_ids(self, labels: Any) -> list[str]:
        wanted = [str(x) for x in (labels if isinstance(labels, list) else [labels])]
        names = [x for x in wanted if not LABEL_ID.fullmatch(x)]
        known = self._board_labels(refresh=False) if names else {}
        if any(n not in known for n in names):
            known = self._board_labels(refresh=True)  # created since we looked?
        missing = [n for n in names if n not in known]
        if missing:
            raise Permanent(
                f"no label named {', '.join(map(repr, missing))} on the board of list "
                f"{self.list_id}; create it in Trello or fix the mapping's labels, then replay"
            )
        return [known.get(x, x) for x in wanted]

    def _board_labels(self, refresh: bool) -> dict[str, str]:
        """The board's labels by name, read at most once a minute."""
        with self._labels_lock:
            stale = time.monotonic() - self._labels_at > 60
            if self._labels is None or (refresh and stale):
                board = self._call("GET", f"/lists/{self.list_id}", params={"fields": "idBoard"})
                found = self._call("GET", f"/boards/{board['idBoard']}/labels")
                self._labels = {label["name"]: label["id"] for label in found if label["name"]}
                self._labels_at = time.monotonic()
            return self._labels

    def _call(self, method: str, path: str, idempotent: bool = True, **kwargs: Any) -> Any:
        self.limit.acquire()
        self.key_limit.acquire()
        response = _http.request(
            self.session,
            method,
            self.base_url + path,
            timeout=self.timeout,
            what=f"Trello ({self.name})",
            secrets=self.secrets,
            idempotent=idempotent,
            headers={"Authorization": self.auth},
            hints={
                400: "Check `list_id` (open a card of the list, add .json to its address, "
                "and read idList) and the mapping's due, pos and labels",
                401: "Check `key` and `token` (trello.com/power-ups/admin, then the token link "
                "on your Power-Up's API key page)",
                404: "Check `list_id`; the list may have been deleted or archived",
            },
            **kwargs,
        )
        return response.json()
