"""Digits cut from a cheque's security paper (docs/evaluation.md, "Digits on security paper"):
the paper's pattern sets how faint a stroke may be and still be ink, where the crop's border shows
it, so a ballpoint digit keeps its fainter side instead of losing it or going blank."""

from __future__ import annotations

import cv2
import numpy as np

from digits.model import imageops, paper, scanlike
from digits.model import normalize as normalization
from digits.model.docgen.paper import background
from digits.model.inference import Classifier
from digits.model.normalize import normalize, normalize_many


def floor_of_noise_alone(monkeypatch) -> None:
    """Normalization as it was: the floor five noise deviations, whatever the border shows."""
    monkeypatch.setattr(
        normalization, "paper_and_ink", lambda smooth, pattern=False: paper.paper_and_ink(smooth)
    )


def test_an_eight_on_security_paper_keeps_its_fainter_strokes(mnist, monkeypatch):
    """The robustness row's 278th digit, an eight on patterned paper: its lighter strokes stand
    under five of the pattern's deviations, and traced only above that it was read as a 5."""
    crop = scanlike.security_set(mnist.x_test[:278], seed=0)[277:]
    assert mnist.y_test[277] == 8
    reader = Classifier.load()
    now = reader.classify(crop)[0]
    assert now.digit == 8 and now.confidence > 0.99
    kept = normalize(crop[0]).pixels.sum()
    floor_of_noise_alone(monkeypatch)
    assert reader.classify(crop)[0].digit != 8
    assert normalize(crop[0]).pixels.sum() < 0.9 * kept


def test_digits_cut_from_security_paper_are_read_not_left_blank(mnist, monkeypatch):
    """The robustness row's first 300 digits: 19 were blank and 268 read right before."""
    crops = scanlike.security_set(mnist.x_test[:300], seed=0)
    predictions = Classifier.load().classify(crops)
    assert sum(p.status == "blank" for p in predictions) <= 3
    right = sum(p.digit == y for p, y in zip(predictions, mnist.y_test, strict=False))
    assert right >= 285
    floor_of_noise_alone(monkeypatch)
    assert sum(c.blank for c in normalize_many(crops)) >= 10


def test_a_crop_whose_border_holds_ink_keeps_the_floor_of_its_noise():
    """Cut tight, a digit's strokes run through the border ring: the ring shows ink, not the
    paper's pattern, and the floor stays five noise deviations."""
    rng = np.random.default_rng(0)
    ink = rng.normal(0.0, 0.04, (30, 24)).astype(np.float32)  # grainy paper...
    ink[:, 10:14] += 0.6  # ...a one's stem from the top edge to the bottom one...
    ink[:2, :] += 0.6  # ...and a bar along the top
    smooth = normalization._smooth(imageops.pad_edge(ink, 1))
    found = paper.paper_and_ink(smooth, pattern=True)
    assert found is not None and found.floor > 0.5 * paper.MIN_CONTRAST  # the ring was looked at
    assert found == paper.paper_and_ink(smooth)
    light = smooth.copy()
    light[:, :3] = light[:, -3:] = light[:3] = light[-3:] = 0.02  # the same, paper round it
    assert paper.paper_and_ink(light, pattern=True).floor < paper.paper_and_ink(light).floor


def test_security_paper_digits_are_deterministic_by_seed(mnist):
    first = scanlike.security_set(mnist.x_test[:5], seed=4)
    assert first == scanlike.security_set(mnist.x_test[:5], seed=4)
    assert first != scanlike.security_set(mnist.x_test[:5], seed=5)
    shapes = [cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED).shape for b in first]
    assert all(22 <= s[0] <= 45 for s in shapes)


def test_blank_security_paper_is_read_as_a_digit_no_more_often(monkeypatch):
    """The rule lowers the floor only where the border shows paper lighter than the floor: on
    blank patterned paper the border is as dark as the rest, and blank paper stays as it was."""
    blanks = []
    for seed in range(60):
        rng = np.random.default_rng(seed)
        sheet = background(rng, ("guilloche", "mesh", "rosette")[seed % 3], 34, 28, gray=True)
        pixels = np.clip(np.round(sheet * 255), 0, 255).astype(np.uint8)
        blanks.append(cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes())
    inked = sum(not c.blank for c in normalize_many(blanks))
    assert inked <= 10  # the pattern's own strokes, as before (docs/evaluation.md)
    floor_of_noise_alone(monkeypatch)
    assert inked <= sum(not c.blank for c in normalize_many(blanks))
