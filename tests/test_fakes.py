"""The vendor fakes are strict: they refuse what the real APIs refuse, in the vendors' own error
shapes, and keep the state tests assert on. These tests check the fakes, not the relay."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.fakes.vendors import (
    BREVO_KEY,
    MAILCHIMP_KEY,
    MAILCHIMP_LIST,
    TRELLO_BOARD,
    TRELLO_KEY,
    TRELLO_LABELS,
    TRELLO_LIST,
    TRELLO_TOKEN,
    BrevoFake,
    MailchimpFake,
    TrelloFake,
    subscriber_hash,
)

EMAIL = "jane.doe@example.org"
TEXT = "text/plain; charset=utf-8"
AUTH = {"key": TRELLO_KEY, "token": TRELLO_TOKEN}
LABEL = TRELLO_LABELS[0]["id"]
OTHER_BOARD_LIST, OTHER_BOARD = "5abbe4b7ddc1b351ef9615ff", "5abbe4b7ddc1b351ef9616ff"


@pytest.fixture
def trello() -> Iterator[TrelloFake]:
    with TrelloFake(lists={TRELLO_LIST: TRELLO_BOARD, OTHER_BOARD_LIST: OTHER_BOARD}) as fake:
        yield fake


@pytest.fixture
def mailchimp() -> Iterator[MailchimpFake]:
    with MailchimpFake() as fake:
        yield fake


@pytest.fixture
def brevo() -> Iterator[BrevoFake]:
    with BrevoFake() as fake:
        yield fake


# -- Trello


def test_trello_creates_cards_from_query_or_json_body(trello: TrelloFake) -> None:
    query = {**AUTH, "idList": TRELLO_LIST, "name": "Jane", "idLabels": LABEL}
    query["due"] = "2026-12-01T10:00:00.000Z"  # a date-time, though the spec says `date`
    r = requests.post(f"{trello.base_url}/cards", params=query, timeout=5)
    assert r.status_code == 200, r.text
    oauth = f'OAuth oauth_consumer_key="{TRELLO_KEY}", oauth_token="{TRELLO_TOKEN}"'
    body = {"idList": TRELLO_LIST, "name": "Joe", "idLabels": [LABEL], "pos": 3.5}
    r = requests.post(
        f"{trello.base_url}/cards", json=body, headers={"Authorization": oauth}, timeout=5
    )
    assert r.status_code == 200, r.text
    assert [c["name"] for c in trello.cards] == ["Jane", "Joe"]
    assert trello.cards[1]["labels"] == [TRELLO_LABELS[0]]
    assert r.json()["idBoard"] == TRELLO_BOARD


def test_trello_refuses_what_the_real_api_refuses(trello: TrelloFake) -> None:
    def post(**params: str) -> requests.Response:
        return requests.post(f"{trello.base_url}/cards", params=params, timeout=5)

    r = post()
    assert (r.status_code, r.headers["Content-Type"], r.text) == (401, TEXT, "invalid key")
    assert post(key=TRELLO_KEY, token="nope").text == "invalid token"
    cases = {
        "5abbe4b7ddc1b351ef9699aa": "invalid value for idList",  # no such list
        "not-an-id": "invalid value for idList (",  # against the spec's pattern, with the reason
    }
    for list_id, message in cases.items():
        r = post(**AUTH, idList=list_id)
        assert (r.status_code, r.headers["Content-Type"]) == (400, TEXT)
        assert r.text.startswith(message), r.text
    assert post(**AUTH, idList=OTHER_BOARD_LIST, idLabels=LABEL).text == (
        "invalid value for idLabels"  # a label of another board
    )
    body = {"idList": TRELLO_LIST, "desc": "x" * 16385}
    r = requests.post(f"{trello.base_url}/cards", params=AUTH, json=body, timeout=5)
    assert (r.status_code, r.text) == (400, "invalid value for desc (longer than 16384 characters)")
    assert "due" in post(**AUTH, idList=TRELLO_LIST, due="next week").text
    assert "idlist" in post(**AUTH, idlist=TRELLO_LIST).text  # undeclared (misspelt) parameter
    assert trello.cards == [] and len(trello.seen) == 8


def test_trello_lists_and_labels(trello: TrelloFake) -> None:
    r = requests.get(f"{trello.base_url}/lists/{TRELLO_LIST}", params=AUTH, timeout=5)
    assert r.json()["idBoard"] == TRELLO_BOARD
    r = requests.get(f"{trello.base_url}/boards/{TRELLO_BOARD}/labels", params=AUTH, timeout=5)
    assert [x["name"] for x in r.json()] == ["Newsletter", "VIP"]
    r = requests.get(f"{trello.base_url}/lists/5abbe4b7ddc1b351ef9699aa", params=AUTH, timeout=5)
    assert r.status_code == 404


def test_trello_rate_limit_and_scripted_failures() -> None:
    with TrelloFake(rate=(2, 10.0)) as trello:
        trello.fail(trello.error(500))
        statuses = [
            requests.post(
                f"{trello.base_url}/cards", params={**AUTH, "idList": TRELLO_LIST}, timeout=5
            ).status_code
            for _ in range(3)
        ]
        assert statuses == [500, 200, 429]
        assert (len(trello.seen), len(trello.requests)) == (3, 1)
        assert trello.seen[-1].query["idList"] == TRELLO_LIST
    assert trello.error(429).body == {
        "error": "API_TOKEN_LIMIT_EXCEEDED",
        "message": "Rate limit exceeded",
    }


def test_trello_refuses_an_invalid_request_even_when_a_failure_is_scripted(
    trello: TrelloFake,
) -> None:
    trello.fail(trello.error(503))
    r = requests.post(f"{trello.base_url}/cards", params=AUTH, timeout=5)
    assert r.status_code == 400 and "idList" in r.text
    r = requests.post(f"{trello.base_url}/cards", params={**AUTH, "idList": TRELLO_LIST}, timeout=5)
    assert r.status_code == 503


# -- Mailchimp


def put_member(
    fake: MailchimpFake, body: dict[str, object], key: str = MAILCHIMP_KEY, email: str = EMAIL
) -> requests.Response:
    url = f"{fake.base_url}/lists/{MAILCHIMP_LIST}/members/{subscriber_hash(email)}"
    return requests.put(url, json=body, auth=("anystring", key), timeout=5)


def test_mailchimp_put_is_an_upsert_that_keeps_unsubscribed_people_unsubscribed(
    mailchimp: MailchimpFake,
) -> None:
    body = {"email_address": EMAIL, "status_if_new": "subscribed", "merge_fields": {"FNAME": "J"}}
    assert put_member(mailchimp, body).json()["status"] == "subscribed"
    mailchimp.members[EMAIL]["status"] = "unsubscribed"
    body = {**body, "merge_fields": {"LNAME": "D"}, "language": "fr"}
    r = put_member(mailchimp, body, email="john.roe@example.org")  # another address's hash
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "email_address"
    assert put_member(mailchimp, body).json()["status"] == "unsubscribed"
    member = mailchimp.members[EMAIL]
    assert member["merge_fields"] == {"FNAME": "J", "LNAME": "D"} and member["language"] == "fr"
    assert not any("status" in b for b in mailchimp.puts)


def test_mailchimp_errors_are_problem_json(mailchimp: MailchimpFake) -> None:
    body = {"email_address": EMAIL, "status_if_new": "subscribed"}
    r = put_member(mailchimp, body, key="0" * 32 + "-us6")
    assert r.headers["Content-Type"].startswith("application/problem+json")
    assert (r.status_code, r.json()["title"]) == (401, "API Key Invalid")
    r = put_member(mailchimp, {"email_address": EMAIL})
    assert (r.status_code, r.json()["title"]) == (400, "Invalid Resource")
    assert "status_if_new" in r.json()["errors"][0]["message"]
    r = put_member(mailchimp, {**body, "tags": ["VIP"]})  # PUT takes no tags: use …/tags
    assert r.status_code == 400 and "tags" in r.json()["errors"][0]["message"]
    mailchimp.seed(EMAIL, "unsubscribed", compliance=True)
    r = put_member(mailchimp, body)
    assert r.json()["title"] == "Member In Compliance State" and "type" not in r.json()
    assert EMAIL in r.json()["detail"]
    mailchimp.forget(EMAIL)
    assert put_member(mailchimp, body).json()["title"] == "Forgotten Email Not Subscribed"
    url = f"{mailchimp.base_url}/lists/nope/members/{subscriber_hash(EMAIL)}"
    r = requests.put(url, json=body, auth=("x", MAILCHIMP_KEY), timeout=5)
    assert (r.status_code, r.json()["title"]) == (404, "Resource Not Found")


def test_mailchimp_tags(mailchimp: MailchimpFake) -> None:
    url = f"{mailchimp.base_url}/lists/{MAILCHIMP_LIST}/members/{subscriber_hash(EMAIL)}/tags"
    tags = {"tags": [{"name": "VIP", "status": "active"}]}
    r = requests.post(url, json=tags, auth=("x", MAILCHIMP_KEY), timeout=5)
    assert r.status_code == 404  # no such member yet
    mailchimp.seed(EMAIL, tags=["Old"])
    tags["tags"].append({"name": "Old", "status": "inactive"})
    r = requests.post(url, json=tags, auth=("x", MAILCHIMP_KEY), timeout=5)
    assert (r.status_code, r.content) == (204, b"")
    assert mailchimp.members[EMAIL]["tags"] == ["VIP"]
    r = requests.post(url, json={"tags": [{"name": "X"}]}, auth=("x", MAILCHIMP_KEY), timeout=5)
    assert r.status_code == 400 and "status" in r.json()["errors"][0]["message"]


def test_mailchimp_rate_limit() -> None:
    with MailchimpFake(rate=(1, 10.0)) as mailchimp:
        body = {"email_address": EMAIL, "status_if_new": "subscribed"}
        assert [put_member(mailchimp, body).status_code for _ in range(2)] == [200, 429]
        assert put_member(mailchimp, body).json()["title"] == "Too Many Requests"


# -- Brevo


def post_contact(
    fake: BrevoFake, body: dict[str, object], key: str = BREVO_KEY
) -> requests.Response:
    return requests.post(
        f"{fake.base_url}/contacts", json=body, headers={"api-key": key}, timeout=5
    )


def test_brevo_creates_then_updates_only_with_update_enabled(brevo: BrevoFake) -> None:
    body = {"email": EMAIL, "attributes": {"FNAME": "Jane"}, "listIds": [2]}
    r = post_contact(brevo, body)
    assert (r.status_code, r.json()) == (201, {"id": 1})
    assert {"x-sib-ratelimit-limit", "x-sib-ratelimit-remaining", "x-sib-ratelimit-reset"} <= {
        k.lower() for k in r.headers
    }
    r = post_contact(brevo, body)
    assert (r.status_code, r.json()) == (
        400,
        {"code": "duplicate_parameter", "message": "Contact already exist"},
    )
    r = post_contact(
        brevo, {**body, "attributes": {"LNAME": "Doe"}, "listIds": [7], "updateEnabled": True}
    )
    assert (r.status_code, r.content) == (204, b"")
    contact = brevo.contacts[EMAIL]
    assert contact["attributes"] == {"FNAME": "Jane", "LNAME": "Doe"}
    assert contact["listIds"] == [2, 7]


def test_brevo_refusals(brevo: BrevoFake) -> None:
    r = post_contact(brevo, {"email": EMAIL}, key="wrong")
    assert (r.status_code, r.json()) == (401, {"code": "unauthorized", "message": "Key not found"})
    r = post_contact(brevo, {"email": EMAIL, "listIds": [99]})
    assert (r.status_code, r.json()["code"]) == (404, "document_not_found")
    r = post_contact(brevo, {"email": "not-an-address"})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter")
    assert "email" in r.json()["message"]
    r = post_contact(brevo, {"email": EMAIL, "listIds": ["2"]})
    assert r.status_code == 400 and "integer" in r.json()["message"]
    assert brevo.contacts == {}


def test_brevo_rate_limit() -> None:
    with BrevoFake(rate=(1, 10.0)) as brevo:
        assert post_contact(brevo, {"email": EMAIL}).headers["x-sib-ratelimit-remaining"] == "0"
        r = post_contact(brevo, {"email": EMAIL})
        assert (r.status_code, r.json()["code"]) == (429, "too_many_requests")
        assert r.headers["x-sib-ratelimit-limit"] == "1"
        assert int(r.headers["x-sib-ratelimit-reset"]) in range(1, 11)
