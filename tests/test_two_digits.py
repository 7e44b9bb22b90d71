"""A digit crop that holds two digits side by side (a mis-cut) goes to a person however sure the
network is (``neighbours.side_by_side``, ``review.TWO_DIGITS``); a digit's own parts do not."""

from __future__ import annotations

import cv2
import numpy as np

from digits.model.evaluate import report_from_predictions
from digits.model.inference import Classifier, Prediction
from digits.model.neighbours import side_by_side
from digits.model.normalize import BLOB_SHARE, normalize_gray, normalize_ink
from digits.model.review import TWO_DIGITS, ItemStatus
from digits.worker.queue.tasks import _result

ONE = [10, 4, 16, 30, 120]  # x0, y0, x1 (exclusive), y1, area: a digit 26 rows tall
ZERO = [20, 5, 32, 30, 200]


def two(*parts: list[int]) -> bool:
    return side_by_side(np.array(parts).reshape(-1, 5), BLOB_SHARE)


def test_two_tall_parts_on_columns_of_their_own_are_two_digits():
    assert two(ONE, ZERO)
    assert two([10, 4, 20, 30, 120], ZERO)  # side by side to the column (x1 is exclusive)
    assert two(ZERO, ONE, [12, 31, 14, 33, 30])  # and a small part under them changes nothing


def test_a_digits_own_parts_are_not():
    assert not two(ZERO) and not two()  # one part, none
    assert not two([10, 4, 21, 30, 120], ZERO)  # one column in common: a loop split by a faint pen
    assert not two(ZERO, [34, 5, 38, 12, 80])  # short: a flag or a bar beside the body
    assert not two(ZERO, [34, 5, 37, 30, 40])  # a sliver under BLOB_SHARE of the largest
    assert not two([10, 0, 30, 12, 150], [12, 16, 28, 30, 200])  # one over the other: a broken 8


def crop(*shapes: str) -> np.ndarray:
    """A grey crop (paper 0.9, ink 0.15): a one at the left, a zero or a five's parts beside it."""
    ink = np.zeros((60, 70), np.uint8)
    if "one" in shapes:
        cv2.line(ink, (18, 10), (18, 50), 255, 4)
    if "zero" in shapes:
        cv2.ellipse(ink, (45, 30), (10, 20), 0, 0, 360, 255, 4)
    if "five" in shapes:  # its flag apart from its body, over it: one digit
        cv2.line(ink, (28, 10), (48, 10), 255, 4)
        cv2.ellipse(ink, (38, 36), (11, 13), 0, -200, 120, 255, 4)
    return (0.9 - 0.75 * ink / 255.0).astype(np.float32)


def test_normalization_marks_a_crop_of_two_digits_and_not_one_digit():
    assert normalize_gray(crop("one", "zero")).two_digits
    assert not normalize_gray(crop("zero")).two_digits
    five = normalize_gray(crop("five"))
    assert five.multiple_blobs and not five.two_digits


def test_a_fields_piece_is_never_marked():
    # the field reader judges its cuts itself (lattice): a piece keeps what it holds unflagged
    assert not normalize_ink(1.0 - crop("one", "zero") / 0.9).two_digits


def png(gray: np.ndarray) -> bytes:
    return cv2.imencode(".png", (gray * 255).astype(np.uint8))[1].tobytes()


def test_two_digits_go_to_a_person_however_sure():
    (answer,) = Classifier.load().classify([png(crop("one", "zero"))], threshold=0.0)
    assert answer.two_digits and answer.needs_review and answer.problems == [TWO_DIGITS]
    # and digits evaluate counts it as flagged at every threshold, as a faint digit
    report = report_from_predictions(np.array([answer.digit]), [answer])
    assert report.to_a_person.tolist() == [True]
    assert report.as_dict()["review_curve"][0]["flagged"] == 1.0  # at threshold 0


def test_classify_says_two_digits(tmp_path):
    import json

    from click.testing import CliRunner

    from digits.cli.manage import cli

    (tmp_path / "pair.png").write_bytes(png(crop("one", "zero")))
    (tmp_path / "zero.png").write_bytes(png(crop("zero")))
    files = [str(tmp_path / "pair.png"), str(tmp_path / "zero.png")]
    rows = [
        json.loads(r)
        for r in CliRunner().invoke(cli, ["classify", "--json", *files]).output.splitlines()
    ]
    assert [r["two_digits"] for r in rows] == [True, False] and rows[0]["needs_review"]
    lines = CliRunner().invoke(cli, ["classify", *files]).output.splitlines()
    assert "TWO DIGITS" in lines[0] and "TWO DIGITS" not in lines[1]


def test_the_workers_row_says_why_a_sure_reading_of_two_digits_awaits_a_person():
    sure = Prediction("ok", digit=0, confidence=0.999, top3=[(0, 0.999)], two_digits=True)
    row = _result("k1", sure, None, threshold=0.95)
    assert row.status == ItemStatus.NEEDS_REVIEW and row.details == {"reasons": [TWO_DIGITS]}
    assert row.final is None and row.source is None
