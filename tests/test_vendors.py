"""Trello, Mailchimp and Brevo through the relay, against strict fakes of their APIs.

The fakes check every request against the vendor's own API description (tests/fakes/vendors.py),
so these tests also prove the shipped mappings produce requests the real APIs accept.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hookrelay.destinations import Context
from hookrelay.destinations.mailchimp import Mailchimp
from hookrelay.errors import ConfigError
from tests.conftest import ROOT, participation, vendor_config
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
)

EMAIL = "zoe.lefevre@example.com"  # the sample participant
NO_EMAIL = "fields: {email: variables.nope, merge_fields: {FNAME: variables.firstname}}"
QUIZ_LABEL = {"id": "5abbe4b7ddc1b351ef9614a3", "idBoard": TRELLO_BOARD, "name": "quiz"}


def shipped(name: str) -> str:
    return (ROOT / "mappings" / f"{name}.yaml").read_text(encoding="utf-8")


@pytest.fixture
def vendor_relay(tmp_path, start_relay, monkeypatch):
    """Start the relay with one destination, fed by `mapping`; secrets from the environment."""
    monkeypatch.setenv("TRELLO_KEY", TRELLO_KEY)
    monkeypatch.setenv("TRELLO_TOKEN", TRELLO_TOKEN)
    monkeypatch.setenv("MAILCHIMP_API_KEY", MAILCHIMP_KEY)
    monkeypatch.setenv("BREVO_API_KEY", BREVO_KEY)

    def start(destination: str, mapping: str):
        return start_relay(vendor_config(tmp_path, destination, mapping))

    return start


def deliver(relay, body: bytes = b"") -> tuple[str, list[dict]]:
    """Post one participation; its delivery's final status and attempt log."""
    assert relay.post(body or participation(1)).status_code == 202
    (status,) = relay.wait_settled()
    (event,) = relay.events()
    return status, relay.attempts(event["deliveries"][0]["id"])


# --- Trello --------------------------------------------------------------------------------------


@pytest.fixture
def trello() -> Iterator[TrelloFake]:
    with TrelloFake(labels=[*TRELLO_LABELS, QUIZ_LABEL]) as fake:
        yield fake


def trello_destination(fake: TrelloFake, list_id: str = TRELLO_LIST) -> str:
    return (
        f'{{type: trello, list_id: "{list_id}", key: "${{TRELLO_KEY}}", '
        f'token: "${{TRELLO_TOKEN}}", base_url: "{fake.base_url}"}}'
    )


def test_trello_card_with_labels_resolved_by_name(trello, vendor_relay):
    relay = vendor_relay(trello_destination(trello), shipped("winner_card"))
    assert deliver(relay)[0] == "delivered"
    (card,) = trello.cards
    assert card["name"] == "Zoë Lefèvre — Quiz d'été — Gagnez un vélo électrique"
    assert card["desc"].startswith("Score: ") and "\n• " in card["desc"]
    assert [label["name"] for label in card["labels"]] == ["quiz"]
    create = trello.requests[-1]
    assert create.headers["Authorization"].startswith("OAuth oauth_consumer_key=")
    assert create.query == {}  # the key, token and card travel in headers and body, not the URL


def test_trello_reads_the_board_labels_once(trello, vendor_relay):
    relay = vendor_relay(trello_destination(trello), shipped("winner_card"))
    for n in range(3):
        relay.post(participation(n))
    assert relay.wait_settled() == ["delivered"] * 3
    assert [r.method for r in trello.requests].count("GET") == 2  # the list, then its labels


def test_trello_unknown_label_is_dead_with_its_name(trello, vendor_relay):
    mapping = "fields: {name: id, labels: \"['Newsletter', 'Gagnants']\"}"
    status, attempts = deliver(vendor_relay(trello_destination(trello), mapping))
    assert status == "dead"
    assert "no label named 'Gagnants'" in attempts[-1]["detail"]
    assert not trello.cards


@pytest.mark.parametrize("kind", [429, "429_key", 500])
def test_trello_retries_429_and_5xx(kind, trello, vendor_relay):
    trello.fail(trello.error(kind))
    status, attempts = deliver(vendor_relay(trello_destination(trello), "fields: {name: id}"))
    assert status == "delivered"
    assert [a["http_status"] for a in attempts] == [int(str(kind)[:3]), None]
    assert len(trello.cards) == 1
    # a 5xx may come after Trello made the card: the log says the retry may duplicate it
    assert ("may make a duplicate" in attempts[0]["detail"]) == (kind == 500)


def test_trello_bad_list_is_dead_with_trellos_words_and_a_hint(trello, vendor_relay):
    relay = vendor_relay(
        trello_destination(trello, "5abbe4b7ddc1b351ef96ffff"), "fields: {name: id}"
    )
    status, attempts = deliver(relay)
    assert status == "dead"
    assert "answered 400: invalid value for idList" in attempts[0]["detail"]
    assert "Check `list_id`" in attempts[0]["detail"]


def test_trello_record_without_a_name_is_skipped(trello, vendor_relay):
    status, attempts = deliver(vendor_relay(trello_destination(trello), "fields: {desc: id}"))
    assert status == "skipped"
    assert "no name in the record" in attempts[0]["detail"]
    assert not trello.seen


# --- Mailchimp -----------------------------------------------------------------------------------


@pytest.fixture
def mailchimp() -> Iterator[MailchimpFake]:
    with MailchimpFake() as fake:
        yield fake


def mailchimp_destination(fake: MailchimpFake, extra: str = "") -> str:
    return (
        f'{{type: mailchimp, list_id: "{MAILCHIMP_LIST}", api_key: "${{MAILCHIMP_API_KEY}}", '
        f'base_url: "{fake.base_url}"{extra}}}'
    )


def test_mailchimp_subscribes_a_new_member_with_merge_fields_and_tags(mailchimp, vendor_relay):
    assert deliver(vendor_relay(mailchimp_destination(mailchimp), shipped("newsletter")))[0] == (
        "delivered"
    )
    member = mailchimp.members[EMAIL]
    assert member["status"] == "subscribed"
    assert member["merge_fields"] == {"FNAME": "Zoë", "LNAME": "Lefèvre"}  # the "0" opt-in left out
    assert member["tags"] == ["quiz-summer"]
    assert all("status" not in put for put in mailchimp.puts)


def test_mailchimp_double_opt_in_makes_new_members_pending(mailchimp, vendor_relay):
    relay = vendor_relay(
        mailchimp_destination(mailchimp, ", status_if_new: pending"),
        "fields: {email: variables.email}",
    )
    assert deliver(relay)[0] == "delivered"
    assert mailchimp.members[EMAIL]["status"] == "pending"


def test_mailchimp_updates_an_existing_member_and_never_resubscribes(mailchimp, vendor_relay):
    mailchimp.seed(EMAIL, "unsubscribed", merge_fields={"FNAME": "Zoe", "CITY": "Liège"})
    status, _ = deliver(vendor_relay(mailchimp_destination(mailchimp), shipped("newsletter")))
    assert status == "delivered"
    member = mailchimp.members[EMAIL]
    assert member["status"] == "unsubscribed"
    assert member["merge_fields"] == {"FNAME": "Zoë", "LNAME": "Lefèvre", "CITY": "Liège"}


@pytest.mark.parametrize("status", [429, 500, 503])
def test_mailchimp_retries_429_and_5xx(status, mailchimp, vendor_relay):
    mailchimp.fail(mailchimp.error(status))
    final, attempts = deliver(vendor_relay(mailchimp_destination(mailchimp), shipped("newsletter")))
    assert final == "delivered"
    assert [a["http_status"] for a in attempts] == [status, None]
    assert mailchimp.members[EMAIL]["tags"] == ["quiz-summer"]


@pytest.mark.parametrize(
    ("prepare", "words"),
    [
        (lambda f: f.seed(EMAIL, "unsubscribed", compliance=True), "Member In Compliance State"),
        (lambda f: f.forget(EMAIL), "Forgotten Email"),
    ],
)
def test_mailchimp_refusal_is_dead_with_its_words_but_not_the_email(
    prepare, words, mailchimp, vendor_relay
):
    prepare(mailchimp)
    status, attempts = deliver(
        vendor_relay(mailchimp_destination(mailchimp), shipped("newsletter"))
    )
    assert status == "dead"
    (attempt,) = attempts
    assert attempt["http_status"] == 400 and words in attempt["detail"]
    assert EMAIL not in attempt["detail"]


def test_mailchimp_record_without_email_is_skipped(mailchimp, vendor_relay):
    status, attempts = deliver(vendor_relay(mailchimp_destination(mailchimp), NO_EMAIL))
    assert status == "skipped" and "no email in the record" in attempts[0]["detail"]
    assert not mailchimp.seen


def test_mailchimp_data_centre_comes_from_the_key():
    destination = Mailchimp("m", Context(Path("."), 5.0), api_key="abc-us21", list_id="l1")
    assert destination.members.startswith("https://us21.api.mailchimp.com/3.0/lists/l1/")
    with pytest.raises(ConfigError) as caught:
        Mailchimp("m", Context(Path("."), 5.0), api_key="abc", list_id="l1")
    assert caught.value.key == "api_key" and "abc" not in caught.value.message


def test_mailchimp_destinations_on_one_account_share_10_connections():
    def make():
        return Mailchimp("m", Context(Path("."), 5.0), api_key="k-us1", list_id="l1")

    assert make().connections is make().connections


# --- Brevo ---------------------------------------------------------------------------------------


@pytest.fixture
def brevo() -> Iterator[BrevoFake]:
    with BrevoFake() as fake:
        yield fake


def brevo_destination(fake: BrevoFake, list_ids: str = "[7]") -> str:
    return (
        f'{{type: brevo, api_key: "${{BREVO_API_KEY}}", list_ids: {list_ids}, '
        f'base_url: "{fake.base_url}"}}'
    )


def test_brevo_creates_a_contact_in_the_lists(brevo, vendor_relay):
    assert deliver(vendor_relay(brevo_destination(brevo), shipped("brevo_contact")))[0] == (
        "delivered"
    )
    contact = brevo.contacts[EMAIL]
    assert contact["attributes"] == {"FIRSTNAME": "Zoë", "LASTNAME": "Lefèvre"}
    assert contact["listIds"] == [7]
    assert brevo.requests[-1].json()["updateEnabled"] is True


def test_brevo_updates_an_existing_contact(brevo, vendor_relay):
    brevo.seed(EMAIL, {"FIRSTNAME": "Zoe", "CITY": "Liège"}, list_ids=[2])
    assert deliver(vendor_relay(brevo_destination(brevo), shipped("brevo_contact")))[0] == (
        "delivered"
    )
    contact = brevo.contacts[EMAIL]
    assert contact["attributes"] == {"FIRSTNAME": "Zoë", "LASTNAME": "Lefèvre", "CITY": "Liège"}
    assert sorted(contact["listIds"]) == [2, 7]


def test_brevo_list_ids_from_the_record_win(brevo, vendor_relay):
    mapping = "fields: {email: variables.email, list_ids: '[`2`]'}"
    assert deliver(vendor_relay(brevo_destination(brevo), mapping))[0] == "delivered"
    assert brevo.contacts[EMAIL]["listIds"] == [2]


@pytest.mark.parametrize("status", [429, 500])
def test_brevo_retries_429_and_5xx(status, brevo, vendor_relay):
    brevo.fail(brevo.error(status))
    final, attempts = deliver(vendor_relay(brevo_destination(brevo), shipped("brevo_contact")))
    assert final == "delivered"
    assert [a["http_status"] for a in attempts] == [status, None]


def test_brevo_unknown_list_is_dead_with_brevos_words(brevo, vendor_relay):
    status, attempts = deliver(
        vendor_relay(brevo_destination(brevo, "[99]"), shipped("brevo_contact"))
    )
    assert status == "dead"
    assert "List ID does not exist" in attempts[0]["detail"]
    assert "Check `list_ids`" in attempts[0]["detail"]


def test_brevo_record_without_email_is_skipped(brevo, vendor_relay):
    status, attempts = deliver(vendor_relay(brevo_destination(brevo), NO_EMAIL))
    assert status == "skipped" and "no email in the record" in attempts[0]["detail"]
    assert not brevo.seen
