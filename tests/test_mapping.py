"""Mappings: fields, literals, when, drop, omit_empty; the source formats they read."""

from __future__ import annotations

import json

import jmespath
import pytest

from hookrelay.document import Document
from hookrelay.errors import Permanent, Skip
from hookrelay.expressions import OPTIONS, compile_expression
from hookrelay.functions import Functions
from hookrelay.mapping import load_mapping
from hookrelay.sources import normalise
from tests.conftest import sample

EXTRA = sorted(n[len("_func_") :] for n in vars(Functions) if n.startswith("_func_"))


def mapping(tmp_path, text):
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return load_mapping(Document(path), "m")


def payload(name):
    return normalise("qualifio", json.loads(sample(name)))


def test_v2_variables_come_from_form_optins_and_questionnaire():
    variables = payload("v2-complete.json")["variables"]
    assert variables["email"] == "zoe.lefevre@example.com"
    assert (variables["newsletter_optin"], variables["partners_optin"], variables["sms_optin"]) == (
        "1",
        "0",
        "",
    )
    assert variables["q1_tour_year"] == "1903"
    assert variables["bike_photo"].startswith("https://files.qualifio.com/")
    assert payload("v2-complete.json")["form"][0]["variable"] == "firstname"  # raw kept beside


def test_v1_variables_are_crm_merged_with_sso():
    variables = payload("v1-participation.json")["variables"]
    assert (
        variables["email"] == "jan.peeters@example.com" and variables["EMAIL"] == variables["email"]
    )
    assert (variables["dailynews"], variables["label1_bit"]) == ("1", "0")


def test_several_responses_give_a_list_and_none_give_null():
    data = {
        "id": "x",
        "questionnaire": [
            {"variable": "many", "responses": [{"value": "a"}, {"value": "b"}]},
            {"variable": "none", "responses": []},
        ],
    }
    assert normalise("qualifio", data)["variables"] == {"many": ["a", "b"], "none": None}


def test_fields_literals_and_nested_output(tmp_path):
    m = mapping(
        tmp_path,
        """
fields:
  email: lower(variables.email)
  source: "'qualifio'"
  score: questionnaire[0].score
  person:
    first: variables.firstname
    tags: "['quiz', campaign.type]"
""",
    )
    assert m.apply(payload("v2-complete.json")) == {
        "email": "zoe.lefevre@example.com",
        "source": "qualifio",
        "score": 10,
        "person": {"first": "Zoë", "tags": ["quiz", "QUIZZ"]},
    }


def test_when_rejects_with_its_expression(tmp_path):
    m = mapping(tmp_path, "when: \"state == 'COMPLETED'\"\nfields: {id: id}\n")
    with pytest.raises(Skip, match="when: state == 'COMPLETED'"):
        m.apply(payload("v2-incomplete.json"))


def test_drop_applies_to_listed_fields_only_at_any_depth(tmp_path):
    m = mapping(
        tmp_path,
        """
fields:
  partners: variables.partners_optin
  nested: {partners: variables.partners_optin, newsletter: variables.newsletter_optin}
drop: {values: ["0"], fields: [nested.partners]}
""",
    )
    assert m.apply(payload("v2-complete.json")) == {"partners": "0", "nested": {"newsletter": "1"}}


def test_drop_without_fields_applies_everywhere_and_omit_empty(tmp_path):
    m = mapping(
        tmp_path,
        """
fields:
  partners: variables.partners_optin
  sms: variables.sms_optin
  missing: variables.nothing_here
  nested: {partners: variables.partners_optin, sms: variables.sms_optin}
  count: "`0`"
drop: {values: ["0"]}
omit_empty: true
""",
    )
    assert m.apply(payload("v2-complete.json")) == {"count": 0}  # the number 0 is not "0"


@pytest.mark.parametrize(
    ("expression", "data", "expected"),
    [
        ("lower(a)", {"a": "Zo@X.BE"}, "zo@x.be"),
        ("upper(a)", {"a": "be"}, "BE"),
        ("trim(a)", {"a": " 1050 "}, "1050"),
        ("title(a)", {"a": "namur"}, "Namur"),
        ("replace(a, '/', '')", {"a": "0470/12.34"}, "047012.34"),
        ("split(a, ',')", {"a": "a,b"}, ["a", "b"]),
        ("concat(a, ' ', b, c)", {"a": "Zo", "b": 7}, "Zo 7"),
        ("coalesce(a, b, c)", {"a": "", "b": None, "c": "x"}, "x"),
        ("default(a, 'none')", {"a": ""}, "none"),
        ("default(a, 'none')", {"a": "0"}, "0"),
        ("to_bool(a)", {"a": "1"}, True),
        ("to_bool(a)", {"a": "0"}, False),
        ("to_bool(a)", {"a": "maybe"}, None),
        ("from_unix(a)", {"a": "1563972535"}, "2019-07-24T12:48:55Z"),
        ("from_unix(a)", {"a": "not a time"}, None),
        ("format_date(a, '%d/%m/%Y')", {"a": "2024-06-14T09:17:48.000Z"}, "14/06/2024"),
        ("format_date(a, '%Y')", {"a": "garbage"}, None),
        ("md5(a)", {"a": "x"}, "9dd4e461268c8034f5c8564e155c67a6"),
        (
            "sha256(a)",
            {"a": "x"},
            "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881",
        ),
        ("pick([['id', id], ['n', n]])", {"id": "x", "n": 1}, {"id": "x", "n": 1}),
    ],
)
def test_functions(expression, data, expected):
    assert jmespath.search(expression, data, options=OPTIONS) == expected


@pytest.mark.parametrize("function", EXTRA)
def test_every_function_gives_null_for_null(function):
    args = {
        "replace": "a, 'x', 'y'",
        "split": "a, ','",
        "format_date": "a, '%Y'",
        "default": "a, b",
        "concat": "a",
    }.get(function, "a")
    expected = {"concat": "", "now": None}.get(function)
    result = jmespath.search(
        f"{function}({'' if function == 'now' else args})", {}, options=OPTIONS
    )
    assert result == expected or (function == "now" and result.endswith("Z"))


def test_wrong_types_are_refused_without_quoting_the_value(tmp_path):
    m = mapping(tmp_path, "fields: {email: lower(variables)}\n")
    with pytest.raises(Permanent) as caught:
        m.apply(payload("v2-complete.json"))
    assert "zoe" not in caught.value.message and caught.value.message.startswith("field email:")


SAME_AS_JMESPATH = [
    "id",
    "campaign.channel.website.name",
    "variables.nope.deeper",
    "form[0].responses[0].value",
    "form[-1].variable",
    "form[99]",
    "form[].variable",
    "questionnaire[].responses[].value",
    "questionnaire[].responses[].value[]",
    "optins[?response == '1'].variable",
    "form[:2].id",
    "[id, state]",
    "{i: id, s: state}",
    "id || state",
    "nope || state",
    "id && state",
    "nope && state",
    "!nope",
    "state == 'COMPLETED'",
    "state != 'COMPLETED'",
    "campaign.id > `5`",
    "sum(questionnaire[].score)",
    "length(form)",
    "`[1, [2, 3]]`[]",
    "campaign | name",
    "join(', ', form[].variable)",
    "lower(variables.email)",
    "concat('a', `1`, nope)",
    "campaign.themes[0].code",
    "@.state",
    "keys(browser)",
    "sort_by(form, &id)[0].variable",
    "max_by(questionnaire, &score).variable",
    "map(&variable, optins)",
    "variables.*",
    "to_string(campaign.id)",
    "'raw'",
    "`null`",
    "questionnaire[?score > `0`] | [0].variable",
    "form[?variable == 'email'].responses[0].value",
]


@pytest.mark.parametrize("expression", SAME_AS_JMESPATH)
def test_compiled_expressions_give_what_jmespath_gives(tmp_path, expression):
    data = payload("v2-complete.json")
    compiled = compile_expression(Document(write_yaml(tmp_path)), expression, ("x",))
    assert compiled.search(data) == jmespath.search(expression, data, options=OPTIONS)


def write_yaml(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return path


# Wrong types: text functions refuse (the delivery is dead, naming the field and the kinds);
# converters, hashes and combinators, made to be forgiving, give null or a best effort instead.
@pytest.mark.parametrize(
    ("expression", "outcome"),
    [
        ("lower(campaign)", "refused"),
        ("upper(campaign)", "refused"),
        ("trim(campaign)", "refused"),
        ("title(campaign)", "refused"),
        ("replace(campaign, 'a', 'b')", "refused"),
        ("split(campaign.id, ',')", "refused"),
        ("to_bool(campaign)", None),
        ("from_unix(campaign)", None),
        ("format_date(campaign, '%Y')", None),
        ("pick(state)", {}),
        ("concat(campaign.id, '-', state)", "987654-COMPLETED"),
        ("coalesce(form[99], campaign.id)", 987654),
        (
            "default(campaign.themes, 'x')",
            [{"code": "SUMMER_2024", "description": "Campagnes été 2024"}],
        ),
        ("md5(campaign.id)", "6c44e5cd17f0019c64b042e4a745412a"),
        ("sha256(`true`)", "b5bea41b6c623f7c09f1bf24dcae58ebab3c0cdd90ad966bc43a45b44867e12b"),
    ],
)
def test_functions_on_wrong_types(tmp_path, expression, outcome):
    m = mapping(tmp_path, f'fields: {{x: "{expression}"}}\n')
    if outcome == "refused":
        with pytest.raises(Permanent, match=r"^field x: \w+\(.*\): expected a string, got "):
            m.apply(payload("v2-complete.json"))
    else:
        assert m.apply(payload("v2-complete.json")) == {"x": outcome}


@pytest.mark.parametrize(
    ("score", "expected"), [(0, 0), (0.0, 0.0), (7, 7), (None, "none"), ("", "none")]
)
def test_or_keeps_zero_which_jmespath_counts_as_true(tmp_path, score, expected):
    m = mapping(tmp_path, "fields: {score: \"score || 'none'\"}\n")
    result = m.apply({"score": score})["score"]
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("score", "delivered"), [(0, True), (0.0, True), (3, True), (None, False), ("", False)]
)
def test_when_on_a_number_delivers_zero(tmp_path, score, delivered):
    m = mapping(tmp_path, "when: score\nfields: {score: score}\n")
    if delivered:
        assert m.apply({"score": score}) == {"score": score}
    else:
        with pytest.raises(Skip, match="^when: score$"):
            m.apply({"score": score})


@pytest.mark.parametrize("expression", ["format_date(n, '%Y')", "from_unix(n)"])
@pytest.mark.parametrize(
    "n",
    [1e300, -1e300, 99999999999999999999, "99999999999999999999", 10**400],
    ids=["1e300", "-1e300", "20 digits", "20 digits as text", "10**400"],
)
def test_dates_beyond_the_calendar_are_null(tmp_path, expression, n):
    m = mapping(tmp_path, f'fields: {{x: "{expression}"}}\n')
    assert m.apply({"n": n}) == {"x": None}


def nested(value, depth):
    for _ in range(depth):
        value = [value]
    return value


# Any failure on a payload is Permanent (retrying cannot help), named by its expression and the
# kinds of value, never by the value (it may be someone's email address) nor by Python's names.
@pytest.mark.parametrize(
    ("expression", "data", "problem"),
    [
        ("abs(a)", {"a": "zoe@example.com"}, "expected a number, got a string"),
        (
            "join(', ', a)",
            {"a": "zoe@example.com"},
            "expected an array of strings, got a string",
        ),
        (
            "join(', ', a)",
            {"a": ["zoe@example.com", 4]},
            "expected an array of strings, got an array holding a number",
        ),
        (
            "sort(a)",
            {"a": {"email": "zoe@example.com"}},
            "expected an array of strings or an array of numbers, got an object",
        ),
        ("max(a)", {}, "expected an array of numbers or an array of strings, got null"),
        ("lower(a)", {"a": ["zoe@example.com"]}, "expected a string, got an array"),
        (
            "lower(trim(a))",
            {"a": {"email": "zoe@example.com"}},
            "trim() expected a string, got an object",
        ),
        ("sum(a)", {"a": [10**400, 0.5]}, "a number is too large to compute with"),
        ("to_string(a)", {"a": nested("zoe@example.com", 5000)}, "a value is nested too deep"),
        (
            "a[::0]",
            {"a": ["zoe@example.com"]},
            "cannot be computed on this payload (a value of a kind it cannot take)",
        ),
        (
            "merge(a, b)",
            {"a": {}, "b": "zoe@example.com"},
            "cannot be computed on this payload (a value of a kind it cannot take)",
        ),
    ],
)
def test_failures_on_a_payload_are_permanent_and_keep_its_values_out(
    tmp_path, expression, data, problem
):
    m = mapping(tmp_path, f'fields: {{x: "{expression}"}}\n')
    with pytest.raises(Permanent) as caught:
        m.apply(data)
    assert caught.value.message == f"field x: {expression}: {problem}"
    assert "Error" not in caught.value.message
    assert "zoe" not in caught.value.message and "10000" not in caught.value.message
