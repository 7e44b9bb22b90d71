"""Crops padded with a flat margin (docs/evaluation.md, "Crops padded with a flat margin"): a
scan inside a pure white or black frame that is not its paper is read as before, but goes to a
person whatever its confidence, since the normalizer took the frame for the paper."""

from __future__ import annotations

import cv2
import numpy as np

from digits.model import borders, robustness, scanlike
from digits.model.inference import Classifier
from digits.model.normalize import normalize, normalize_many
from digits.model.review import FRAMED, ItemStatus
from digits.worker.queue.tasks import _result


def framed_by(crop: bytes, value: int, width: int) -> bytes:
    """The crop inside ``width`` pixels of flat ``value``, as a client padding it to size would."""
    image = cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_UNCHANGED)
    image = cv2.copyMakeBorder(image, *[width] * 4, cv2.BORDER_CONSTANT, value=(value,) * 3)
    return cv2.imencode(".png", image)[1].tobytes()


def test_a_scan_inside_a_white_pad_goes_to_a_person_however_sure(mnist):
    scans = scanlike.scanlike_set(mnist.x_test[:100], seed=0)
    padded = [framed_by(scan, 255, 8) for scan in scans]
    reader = Classifier.load()
    predictions = reader.classify(padded)
    assert sum(p.framed for p in predictions) >= 65
    assert all(p.needs_review for p in predictions if p.framed)
    wrong = [p for p, y in zip(predictions, mnist.y_test, strict=False) if p.digit != y]
    assert sum(not p.needs_review for p in wrong) <= 3  # of 100: the frame was read as ink
    assert not any(p.framed for p in reader.classify(scans))  # the same scans as they came


def test_a_black_pad_is_a_frame_too(mnist):
    scans = scanlike.scanlike_set(mnist.x_test[:40], seed=1)
    assert sum(c.framed for c in normalize_many([framed_by(s, 0, 5) for s in scans])) >= 25


def test_a_clean_crops_own_margin_is_its_paper(mnist):
    """Flat margins of the paper's own level: clean PNGs, 1-bit bitmaps, MNIST-style arrays."""
    for row in ("clean", "bitmap32", "bitmap16_stretched", "array28_filled", "thin"):
        crops = normalize_many(robustness.crops(mnist.x_test[:200], row))
        assert sum(c.framed for c in crops) <= 1, row


def test_the_rows_reason_names_the_frame():
    pixels = np.full((40, 40), 255, np.uint8)
    pixels[6:-6, 6:-6] = 170  # grey paper inside a white pad...
    cv2.line(pixels, (20, 10), (20, 30), 40, 3)  # ...and a one on it
    crop = cv2.imencode(".png", pixels)[1].tobytes()
    assert normalize(crop).framed
    assert borders.padded(cv2.imdecode(np.frombuffer(crop, np.uint8), 0) / 255.0)
    prediction = Classifier.load().classify([crop])[0]
    assert prediction.framed and prediction.needs_review
    row = _result("k", prediction, None, threshold=0.95)
    assert row.status == ItemStatus.NEEDS_REVIEW and FRAMED in row.details["reasons"]
