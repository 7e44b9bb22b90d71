"""Field kinds as data: what a zip code, an amount or a run of digits may look like, and its value.

A kind used to be a bare string with its format check in one module and the list of names copied
into every other (the generator, the worker's schema, the command line). Everything a reader, the
generator or a report needs to know about a kind lives here instead, once: the characters a reader
may output, which of them are separators, the format check on the text as written, and how that
text becomes the value a bank or a post office keys on ("1.480-" is 1480).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

DIGITS = "0123456789"


@dataclass(frozen=True)
class FieldKind:
    """One kind of field. ``pattern`` must match the whole text as written (separators and all)."""

    name: str
    alphabet: str  # every character a reader may output for this kind
    separators: str  # the characters of ``alphabet`` that are not digits
    pattern: re.Pattern[str]
    normalizer: Callable[[str], str]  # text that passes ``pattern`` -> its value
    # How many digits a field of this kind has when that is fixed (a zip code: 5 or 9), else empty.
    # The segmenter looks harder for touching digits when it finds another count.
    digit_counts: tuple[int, ...] = ()
    # Its writers close nines with a crossing over a stem (the Chilean cheques): such a nine is an
    # eight with one loop to every reader here, so an agreed 8 that closes fewer than two loops is
    # sent to a person (consensus.OPEN_EIGHT). Off where an open 8 is just a quickly written 8.
    open_eights_reviewed: bool = False
    # What an agreed field's confidence is (consensus.agreed_confidence): the sequence reader's
    # probability of its digits, whatever marks stand between them (True), or the geometric mean
    # of both readers' confidences in their whole strings.
    ranked_by_line: bool = False
    # Its fields are often written with the digits apart (envelopes, forms): where the readers
    # differ, a digit the segmenter read from a blob alone counts consensus.WHOLE_WEIGHT. The
    # validation zips composed that way read better with it; the generator's handwritten
    # documents (amounts, digit runs, and zip documents too) a little worse.
    digits_apart: bool = False

    def check(self, text: str) -> bool:
        """Does ``text`` have the form of this kind? A reading that fails goes to review."""
        return bool(self.pattern.fullmatch(text))

    def normalize(self, text: str) -> str:
        """The value ``text`` stands for: separators resolved, trailing marks dropped.

        Only text that passes :meth:`check` has a value; anything else raises ValueError, because
        guessing what a malformed amount meant is exactly the mistake a reader must not make.
        """
        if not self.check(text):
            raise ValueError(f"{text!r} is not a {self.name} field")
        return self.normalizer(text)


# An amount as cheques are written: plain with optional cents (1234, 12.50, 623,68), thousands
# grouped by commas (1,234.56) or by dots (1.234,56; 18.014), and then at most one closing mark
# against tampering: a dash or a dot ("1500-", "300.", "1.480-"), a dot and a dash ("2.550.-"), or
# a comma and a dash for "no cents" ("25,-"). A "/-" or a leading "$" is not here: neither reader
# outputs "/" or "$".
_PLAIN = r"\d+(?:[.,]\d{2})?"
_COMMA_GROUPS = r"\d{1,3}(?:,\d{3})+(?:\.\d{2})?"
_DOT_GROUPS = r"\d{1,3}(?:\.\d{3})+(?:,\d{2})?"
_TRAILING = r"(?:[.,]-|[-.])?"
AMOUNT = re.compile(rf"(?:{_PLAIN}|{_COMMA_GROUPS}|{_DOT_GROUPS}){_TRAILING}")
# A ZIP or a ZIP+4, whose dash writers often leave out or replace with a space (which no reader
# outputs): "123456789" is the ZIP+4 12345-6789.
ZIP = re.compile(r"\d{5}(?:-?\d{4})?")
# A run of digits, perhaps grouped by dashes as account and reference numbers are written.
DIGIT_RUN = re.compile(r"\d+(?:-\d+)*")


def _amount_value(text: str) -> str:
    """Digits, with a "." before the cents when there are any.

    In every accepted form a separator inside the amount is followed by digits, so a dot or dash at
    the end is a closing mark; and thousands groups always have three digits, so two digits after
    the last separator are cents, whichever of "." and "," the writer used for them.
    """
    body = text.removesuffix("-")
    body = body[:-1] if body.endswith((".", ",")) else body
    whole, cents = body, ""
    if len(body) >= 3 and body[-3] in ".,":
        whole, cents = body[:-3], "." + body[-2:]
    return re.sub(r"[.,]", "", whole) + cents


def _zip_value(text: str) -> str:
    """ "12345" or "12345-6789": a ZIP+4 always with its dash, leading zeros kept."""
    digits = text.replace("-", "")
    return digits if len(digits) == 5 else f"{digits[:5]}-{digits[5:]}"


def _digits_only(text: str) -> str:
    return text.replace("-", "")


ZIP_KIND = FieldKind("zip", DIGITS + "-", "-", ZIP, _zip_value, (5, 9), digits_apart=True)
AMOUNT_KIND = FieldKind(
    "amount",
    DIGITS + ".,-",
    ".,-",
    AMOUNT,
    _amount_value,
    open_eights_reviewed=True,
    ranked_by_line=True,
)
DIGITS_KIND = FieldKind("digits", DIGITS + "-", "-", DIGIT_RUN, _digits_only)

KINDS: dict[str, FieldKind] = {k.name: k for k in (ZIP_KIND, AMOUNT_KIND, DIGITS_KIND)}
# The names in a stable order, for command-line choices and schema checks.
NAMES: tuple[str, ...] = tuple(KINDS)


def kind(name: str) -> FieldKind:
    """The kind called ``name``; a ValueError that lists the choices for anything else."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown field kind {name!r}; choose from {NAMES}") from None


def digits_of(text: str | None) -> str:
    """The digits of a reading, left to right: what the two readers must agree on (and what the
    segmenter compares with the sequence reader's digits before it cuts, ``fields``)."""
    return "".join(c for c in text or "" if c.isdigit())


def check(text: str, name: str) -> bool:
    """Does ``text`` have the form of a field of kind ``name``? (The readers' older signature.)"""
    return kind(name).check(text)
