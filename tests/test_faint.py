"""Faint digits on grainy paper (docs/evaluation.md, "Faint digits on grainy paper"): a pen digit
whose strokes stand only NOISE_SIGMAS to MIN_SNR noise deviations clear of the paper's grain is
read, not left blank, and goes to a person however sure the network is, because a stroke's faint
part may have been lost (a zero read as a one at 0.999 was one of them)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from digits.model.docgen import strokes
from digits.model.inference import Classifier, Prediction
from digits.model.normalize import normalize_many
from digits.model.review import FAINT_INK, ItemStatus
from digits.worker.queue.tasks import _result


def ballpoint_on_grain(image: np.ndarray, seed: int, contrast: float) -> bytes:
    """A digit as the real cheques' cut digits come: a thin pen line ``contrast`` grey levels
    darker than paper whose grain (12 levels, a couple of pixels across) survives the
    normalizer's smoothing, cut tight, JPEG. ``contrast`` 0 is the grain alone."""
    rng = np.random.default_rng(seed)
    patch = strokes.warp_glyph(strokes.skeleton(image), 26.0, 0.1, 0.0, 1.0, 3)
    pen = cv2.dilate(patch, np.ones((2, 2), np.uint8)).astype(np.float32) / 255
    ink = np.clip(cv2.GaussianBlur(pen, (0, 0), 0.6) * 1.5, 0, 1)
    grain = cv2.GaussianBlur(rng.normal(0, 1, ink.shape), (0, 0), 1.2)
    grey = 175 + 12 * grain / grain.std() - contrast * ink
    return cv2.imencode(".jpg", np.clip(grey, 0, 255).astype(np.uint8))[1].tobytes()


@pytest.fixture(scope="module")
def faint_digits(mnist) -> list[bytes]:
    return [ballpoint_on_grain(mnist.x_test[i], i, 80) for i in range(60)]


def test_faint_pen_digits_are_read_and_marked_the_grain_alone_stays_blank(mnist, faint_digits):
    crops = normalize_many(faint_digits)
    # Cores had to stand MIN_SNR (6) deviations clear before: 15 of these 60 were blank.
    assert sum(c.blank for c in crops) <= 10
    assert 5 <= sum(c.faint for c in crops) <= 20
    grain = normalize_many([ballpoint_on_grain(mnist.x_test[i], 1000 + i, 0) for i in range(60)])
    assert sum(not c.blank for c in grain) <= 3
    bold = normalize_many([ballpoint_on_grain(mnist.x_test[i], i, 160) for i in range(60)])
    assert not any(c.blank or c.faint for c in bold)


def test_a_faint_reading_goes_to_a_person_however_sure(faint_digits):
    predictions = Classifier.load().classify(faint_digits)
    faint = [p for p in predictions if p.faint]
    assert any(p.confidence >= 0.99 for p in faint)  # sure, yet not trusted alone
    assert all(p.needs_review and p.status == "ok" and p.digit is not None for p in faint)
    assert all(
        not p.needs_review for p in predictions if not p.faint and (p.confidence or 0) >= 0.95
    )


def test_evaluate_labelled_counts_faint_digits_as_flagged_at_every_threshold(
    faint_digits, mnist, tmp_path
):
    from digits.model.evaluate import evaluate_labelled
    from tests.labelled import write_labelled

    write_labelled(tmp_path, zip(faint_digits, mnist.y_test, strict=False))
    report, _ = evaluate_labelled(Classifier.load(), tmp_path)
    faint = int(report.to_a_person.sum())
    assert faint >= 5
    for row in report.as_dict()["review_curve"]:  # even at 0: a person sees each faint one
        assert row["flagged"] * report.n >= faint - 1e-6


def test_the_workers_row_says_why_a_sure_faint_digit_awaits_a_person():
    sure = Prediction("ok", digit=1, confidence=0.999, top3=[(1, 0.999)], faint=True)
    row = _result("k1", sure, None, threshold=0.95)
    assert row.status == ItemStatus.NEEDS_REVIEW and row.details == {"reasons": [FAINT_INK]}
    assert row.final is None and row.source is None  # a person gives the answer
    plain = _result("k2", Prediction("ok", 1, 0.999, [(1, 0.999)]), None, threshold=0.95)
    assert plain.status == ItemStatus.OK and plain.details is None and plain.final == "1"


def test_classify_says_faint(faint_digits, tmp_path):
    import json

    from click.testing import CliRunner

    from digits.cli.manage import cli

    files = []
    for i, data in enumerate(faint_digits[:30]):
        files.append(tmp_path / f"d{i}.jpg")
        files[-1].write_bytes(data)
    rows = CliRunner().invoke(cli, ["classify", "--json", *map(str, files)]).output.splitlines()
    faint = [row for row in map(json.loads, rows) if row["faint"]]
    assert faint and all(row["needs_review"] for row in faint)
    text = CliRunner().invoke(cli, ["classify", str(files[0]), *map(str, files[1:])]).output
    assert text.count("REVIEW  FAINT") == len(faint)
