"""A single crop the network is unsure of is read again as its test-time variants
(``inference.SECOND_LOOK``); a crop it is sure of costs one reading."""

from __future__ import annotations

from typing import cast

import numpy as np
import pytest

from digits.model import variants
from digits.model.inference import SECOND_LOOK, Classifier, _agreed, default_model_path
from digits.model.normalize import Crop, normalize_many
from digits.model.scanlike import scanlike_set


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    path = default_model_path()
    if not path.is_file():
        pytest.skip(f"no trained model at {path}")
    return Classifier.load(path)


def _pixels(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) / 255.0)[None]  # one crop, no aspect views: (1, 28, 28)


def test_a_sure_crop_is_read_once_and_an_unsure_one_as_four_looks_together(classifier, mnist):
    sure = _pixels(mnist.x_test[0])  # a plain 7
    # Half a 4 and half a 9 laid over each other: a crop no network can be sure of.
    fours, nines = np.flatnonzero(mnist.y_test == 4), np.flatnonzero(mnist.y_test == 9)
    blend = 0.5 * (_pixels(mnist.x_test[fours[0]]) + _pixels(mnist.x_test[nines[0]]))
    once = classifier.probabilities(np.concatenate([sure, blend]))
    assert once[0].max() >= SECOND_LOOK > once[1].max()

    read = classifier.read([sure, blend])

    np.testing.assert_allclose(read[0], once[0], atol=1e-6)  # the sure crop: as it was read
    looks = [blend, variants.thicker(blend), variants.rotated(blend, 8.0)]
    looks.append(variants.rotated(blend, -8.0))
    logs = np.mean(
        [np.log(np.maximum(classifier.probabilities(look)[0], 1e-12)) for look in looks], axis=0
    )
    expected = np.exp(logs) / np.exp(logs).sum()  # the readings' normalized geometric mean
    np.testing.assert_allclose(read[1], expected, atol=1e-5)
    assert not np.allclose(read[1], once[1], atol=1e-3)  # the variants did change the answer
    assert abs(float(read[1].sum()) - 1.0) < 1e-4
    # It was chosen for the cnn: any other network (the mlp baseline, a card-less file) reads once.
    other = Classifier(classifier.model, {**classifier.card, "arch": "mlp"})
    np.testing.assert_allclose(other.read([blend])[0], once[1], atol=1e-6)


def _batch(mnist) -> list[Crop]:
    """Scan-like digits, stretched 16x16 bitmaps (each read with its aspect views too) and the
    blend of a 4 and a 9, as crop files through the normalizer."""
    from digits.model import robustness

    fours, nines = np.flatnonzero(mnist.y_test == 4), np.flatnonzero(mnist.y_test == 9)
    blend = mnist.x_test[fours[0]] // 2 + mnist.x_test[nines[0]] // 2
    files = scanlike_set(mnist.x_test[:24], seed=3)
    files += robustness.crops(mnist.x_test[24:72], "bitmap16_stretched")
    files += robustness.crops(blend[None], "clean")
    crops = normalize_many(files)
    assert all(isinstance(c, Crop) and not c.blank for c in crops)
    return cast(list[Crop], crops)


def test_a_batch_reads_each_crop_as_it_would_be_read_alone(classifier, mnist):
    crops = _batch(mnist)
    seen = [np.stack([c.pixels, *c.views]) for c in crops]
    first = [classifier.probabilities(s) for s in seen]  # one look, each view apart
    unsure = [i for i, c in enumerate(crops) if c.views and _agreed(first[i]).max() < SECOND_LOOK]
    assert unsure, "some stretched bitmap is unsure: the views of re-read crops are split right"
    predictions = classifier.classify_crops(crops, threshold=0.0)
    alone = [classifier.read([s])[0] for s in seen]
    assert [p.digit for p in predictions] == [int(r.argmax()) for r in alone]
    np.testing.assert_allclose(
        [p.confidence for p in predictions], [r.max() for r in alone], atol=1e-5
    )


def test_a_second_look_that_fails_leaves_the_first_readings(classifier, mnist, monkeypatch, caplog):
    crops = _batch(mnist)
    first = [_agreed(classifier.probabilities(np.stack([c.pixels, *c.views]))) for c in crops]

    def broken(x, degrees):
        raise RuntimeError("no rotation today")

    monkeypatch.setattr(variants, "rotated", broken)
    predictions = classifier.classify_crops(crops, threshold=0.0)
    assert all(p.status == "ok" for p in predictions)
    assert [p.digit for p in predictions] == [int(f.argmax()) for f in first]
    np.testing.assert_allclose(
        [p.confidence for p in predictions], [f.max() for f in first], atol=1e-5
    )
    assert "second look" in caplog.text and "first readings stand" in caplog.text


def test_each_variant_keeps_the_crops_format_and_changes_the_digit(mnist):
    crops = mnist.x_test[:8].astype(np.float32) / 255.0
    for made in (variants.thicker(crops), variants.thinner(crops), variants.rotated(crops, 8.0)):
        assert made.shape == crops.shape and made.dtype == np.float32
        assert made.min() >= 0.0 and made.max() <= 1.0
        assert all(not np.allclose(a, b) for a, b in zip(made, crops, strict=True))
    assert (variants.thicker(crops) >= crops - 1e-6).all()  # a wider pen only adds ink
    assert (variants.thinner(crops) <= crops + 1e-6).all()  # a narrower one only takes it away
