"""Who needs a person: an item's status words, the review thresholds, and the one review rule.

Every path that turns a reading into an item's status goes through :func:`decide`, judged by the
threshold :func:`threshold_for` picks for the job (the submitter's choice from ``Settings``, else
the kind's default). Light on purpose (no numpy, no TensorFlow): the store and the CLI import it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

DIGIT = "digit"  # a job's items are single digits, or whole fields of a kind (fields.KINDS)
# The knee of the accuracy-versus-rejection curve on the scan-like test set (docs/evaluation.md):
# 1.45% flagged leaves 99.89% of the rest right; 0.99 would flag twice as many for 0.05 point more.
REVIEW_THRESHOLD = 0.95
# A field's confidence is a product over its digits, so the digit default is stricter for a field
# than for a digit. From the accuracy-versus-review curves of composed 5-digit zip fields
# (``digits evaluate --fields``): at 0.9 about 13% of fields with separated digits go to review
# and 99.6% of the rest are right.
FIELD_REVIEW_THRESHOLD = 0.9
LOW_CONFIDENCE = "low_confidence"  # the review reason for a confidence under the threshold


class ItemStatus(StrEnum):
    """An item's status, as stored (the strings are the database's and the CLI's)."""

    PENDING = "pending"  # submitted, its chunk not written yet
    OK = "ok"
    NEEDS_REVIEW = "needs_review"
    BLANK = "blank"  # no ink: no guess
    ERROR = "error"  # with the reason


class Verdict(NamedTuple):
    status: ItemStatus
    reasons: list[str]  # why it needs review: LOW_CONFIDENCE, "not_<kind>"


def threshold_for(kind: str, chosen: float | None = None) -> float:
    """The review threshold a job of ``kind`` is judged by: ``chosen`` (DIGITS_REVIEW_THRESHOLD,
    or the submitter's), else the kind's default."""
    if chosen is not None:
        return chosen
    return REVIEW_THRESHOLD if kind == DIGIT else FIELD_REVIEW_THRESHOLD


def decide(
    status: str, confidence: float | None, threshold: float, failed_check: str | None = None
) -> Verdict:
    """The item's status from the reader's (``ok``, ``blank`` or ``error``) and its confidence.

    An ``ok`` reading needs review when its confidence is under ``threshold`` or it failed its
    kind's format check (``failed_check`` names it, e.g. ``not_zip``). Judge the confidence as
    stored (rounded), so that the review list is exactly the rows under the job's threshold.
    """
    if status != ItemStatus.OK:
        return Verdict(ItemStatus(status), [])
    reasons = []
    if confidence is None or confidence < threshold:
        reasons.append(LOW_CONFIDENCE)
    if failed_check:
        reasons.append(failed_check)
    return Verdict(ItemStatus.NEEDS_REVIEW if reasons else ItemStatus.OK, reasons)
