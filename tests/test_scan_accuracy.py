"""End to end on scan-like digits: bytes -> normalize -> the shipped model, as the worker does it.

The figure that matters is not accuracy on clean MNIST but on what a scanner produces; the issue's
bar is the clean accuracy minus half a point on the full test set. Here a few hundred digits keep
the test quick, so the bar is a plain 0.97 (the full figure is measured by `digits evaluate`).
"""

from __future__ import annotations

import numpy as np
import pytest

from digits.model.inference import default_model_path
from digits.model.normalize import Crop, normalize_many
from digits.model.scanlike import scanlike_set

SAMPLE = 300


@pytest.fixture(scope="module")
def network():
    path = default_model_path()
    if not path.is_file():
        pytest.skip(f"no trained model at {path}")
    import keras

    return keras.saving.load_model(path, compile=False)


def test_scan_like_digits_are_read_at_least_97_percent_right(network, mnist):
    picks = np.arange(0, len(mnist.x_test), len(mnist.x_test) // SAMPLE)[:SAMPLE]
    crops = normalize_many(scanlike_set(mnist.x_test[picks], seed=0))
    assert all(isinstance(c, Crop) and not c.blank for c in crops), "every digit must be found"
    pixels = np.stack([c.pixels for c in crops])[..., None]
    guesses = network.predict(pixels, batch_size=512, verbose=0).argmax(axis=1)
    accuracy = float((guesses == mnist.y_test[picks]).mean())
    assert accuracy >= 0.97, f"scan-like accuracy {accuracy:.3f} on {SAMPLE} digits"
