"""Field kinds: the format each kind accepts and the value its text stands for.

These double as examples of use: ``kind("amount").check("1.480-")`` says whether a reading has the
form of an amount, ``kind("amount").normalize("1.480-")`` gives "1480", the value to key on.
"""

from __future__ import annotations

import dataclasses

import pytest

from digits.model import fieldgen
from digits.model.kinds import KINDS, NAMES, FieldKind, check, kind


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1234", "1234"),
        ("12.50", "12.50"),
        ("623,68", "623.68"),  # two digits after the only separator: cents
        ("1,234", "1234"),
        ("1,234.56", "1234.56"),
        ("1.234,56", "1234.56"),
        ("1,234,567.89", "1234567.89"),
        ("18.014", "18014"),  # Chilean style: dots group thousands, no cents
        ("1.480-", "1480"),  # a closing dash against tampering
        ("1500-", "1500"),
        ("300.", "300"),  # a closing dot
        ("2550.", "2550"),
        ("10,00.", "10.00"),
        ("2.550.-", "2550"),  # both marks written together
        ("25,-", "25"),  # a comma and a dash: no cents
        ("1.234,-", "1234"),
        ("0.50", "0.50"),
    ],
)
def test_amounts_as_written_and_their_value(text, value):
    amount = kind("amount")
    assert amount.check(text)
    assert amount.normalize(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "12.5",
        "1,23.45",
        "1.2.3",
        "1500--",
        "-1500",
        ".50",
        ",50",
        "1500-.",
        "1.23,4",
        "1234,",  # a comma closes nothing without its dash
        "$1500",  # neither reader outputs "$"
        "1500/-",
        "",
        "12a",
    ],
)
def test_what_is_not_an_amount(text):
    assert not kind("amount").check(text)
    with pytest.raises(ValueError, match="not a amount field"):
        kind("amount").normalize(text)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("12345", True),
        ("02134", True),
        ("12345-6789", True),
        ("123456789", True),  # a ZIP+4 written without its dash
        ("1234", False),
        ("123456", False),
        ("12345-678", False),
        ("12345-", False),
        ("12345.6789", False),
    ],
)
def test_zip_codes(text, ok):
    assert kind("zip").check(text) is ok
    if ok:  # a ZIP+4 always has its dash, leading zeros stay
        assert kind("zip").normalize(text) == (text if len(text) != 9 else "12345-6789")


def test_digits_are_digits_perhaps_grouped_by_dashes():
    digits = kind("digits")
    assert digits.check("0042") and digits.normalize("0042") == "0042"
    assert digits.check("12-345-6") and digits.normalize("12-345-6") == "123456"
    assert not digits.check("4.2") and not digits.check("-42") and not digits.check("42-")
    assert not digits.check("")


def test_each_kind_describes_what_a_reader_may_output():
    for name, k in KINDS.items():
        assert k.name == name
        assert set(k.separators) <= set(k.alphabet) and set("0123456789") <= set(k.alphabet)
        assert not set(k.separators) & set("0123456789")
    assert KINDS["zip"].separators == "-" and KINDS["digits"].separators == "-"
    assert set(KINDS["amount"].separators) == set(".,-")
    assert KINDS["zip"].digit_counts == (5, 9) and KINDS["amount"].digit_counts == ()


def test_an_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown field kind 'iban'.*'zip', 'amount', 'digits'"):
        kind("iban")


def test_kinds_are_frozen_data():
    with pytest.raises(dataclasses.FrozenInstanceError):
        kind("zip").name = "postcode"  # type: ignore[misc]
    assert isinstance(kind("zip"), FieldKind)


def test_the_names_in_their_stable_order():
    assert NAMES == ("zip", "amount", "digits")
    assert check("1.480-", "amount") and not check("1.480-", "zip")


def test_generated_texts_have_a_value():
    import numpy as np

    rng = np.random.default_rng(0)
    for name in NAMES:
        for _ in range(50):
            text = fieldgen.random_text(name, rng, plus4=0.5)
            value = kind(name).normalize(text)
            assert value.replace(".", "").replace("-", "").isdigit()
