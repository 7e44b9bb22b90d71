"""Batch inference: the one path from crop bytes to a digit, a confidence and a review flag.

The CLI and the worker both call :meth:`Classifier.classify`, so a crop gets the same answer whichever
way it arrives. Normalized crops go through the network in one compiled forward pass per batch: calling
``model.predict`` per image (the seed's way) spends almost all its time in Keras overhead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from digits.model import variants
from digits.model.card import SHIPPED_MODEL, read_card, version
from digits.model.normalize import DEFAULT_LIMITS, Crop, Limits, ScanError, normalize_many
from digits.model.review import REVIEW_THRESHOLD

log = logging.getLogger(__name__)
MODEL_ENV = "DIGITS_MODEL"
BATCH = 1024
# A crop the network gives less than this is read again as three test-time variants (a wider pen,
# slanted 8 degrees either way: ``variants``), and its probabilities are the normalized product of
# the four readings (as of its aspect views: ``_agreed``). Chosen on MNIST's validation digits
# (the last 5,000 training digits, never trained on) put through every row of `digits evaluate
# --robustness`: against the network alone, accuracy rose on 13 of the 15 rows and fell on none
# (elastic 96.4 -> 96.9%, stretch 99.1 -> 99.3%), the read rate at 0.1% error rose on all 15
# (clean 96.5 -> 98.1%, stray dots 93.6 -> 96.5%), for 5-26% of the crops read four times. The
# mean of the readings instead of their product read as many right but was less calibrated
# (expected calibration error 0.0055 over the rows against 0.0041, 0.0040 alone); 0.999 and 0.95
# did less (read rate at 0.1% error 91.1% and 90.6% against 91.5%, the rows' mean; 90.4% alone).
# docs/evaluation.md has the test set's rows.
SECOND_LOOK = 0.99


@dataclass(frozen=True)
class Prediction:
    """The answer for one crop. ``status`` is ``ok``, ``blank`` or ``error``; only ``ok`` has a digit."""

    status: str
    digit: int | None = None
    confidence: float | None = None
    top3: list[tuple[int, float]] = field(default_factory=list)
    needs_review: bool = False
    multiple_blobs: bool = False
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def default_model_path() -> Path:
    return Path(os.environ.get(MODEL_ENV) or SHIPPED_MODEL)


class Classifier:
    """A loaded model with its card; build one per process and keep it."""

    def __init__(self, model, card: dict):
        import tensorflow as tf

        self.model = model
        self.card = card
        self.version = version(card)
        # Temperature scaling fitted on the training run's validation split (train.calibrate):
        # softmax(log p / T). A card without one (models trained before it) means T = 1.
        temperature = float(card.get("temperature", 1.0))

        def forward(x):
            probs = model(x, training=False)
            if temperature == 1.0:
                return probs
            return tf.nn.softmax(tf.math.log(tf.maximum(probs, 1e-12)) / temperature)

        self._forward = tf.function(
            forward, input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)]
        )

    @classmethod
    def load(cls, path: str | Path | None = None, threads: int | None = None) -> Classifier:
        """Load a ``.keras`` model; ``threads`` caps TensorFlow's pools (one per process in a worker)."""
        import keras
        import tensorflow as tf

        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:  # TensorFlow already started in this process: its pools stay
                log.warning("TensorFlow already running: %d threads not applied", threads)
        path = Path(path) if path else default_model_path()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no model file (train one with `digits train`)")
        return cls(keras.saving.load_model(path, compile=False), read_card(path))

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """(n, 28, 28) floats in [0, 1] to (n, 10) class probabilities, one forward pass per batch."""
        x = np.ascontiguousarray(pixels, dtype=np.float32).reshape(-1, 28, 28, 1)
        if len(x) == 0:
            return np.zeros((0, 10), np.float32)
        return np.concatenate(
            [self._forward(x[i : i + BATCH]).numpy() for i in range(0, len(x), BATCH)]
        )

    def classify(
        self,
        crops: Sequence[bytes],
        threshold: float = REVIEW_THRESHOLD,
        limits: Limits = DEFAULT_LIMITS,
    ) -> list[Prediction]:
        """Normalize and classify a batch; a bad crop becomes an ``error`` item, never a failed batch."""
        return self.classify_crops(normalize_many(crops, limits), threshold)

    def classify_crops(
        self, crops: Sequence[Crop | ScanError], threshold: float = REVIEW_THRESHOLD
    ) -> list[Prediction]:
        """Classify already-normalized crops; falls back to one crop at a time if the batch call fails."""
        inked = [i for i, c in enumerate(crops) if isinstance(c, Crop) and not c.blank]
        probs: dict[int, np.ndarray | Exception] = {}
        if inked:
            seen = [_seen(cast(Crop, crops[i])) for i in inked]
            try:
                probs = dict(zip(inked, self.read(seen), strict=True))
            except Exception:  # noqa: BLE001 - isolate the guilty crop instead of failing them all
                probs = {i: self._read_or_error(s) for i, s in zip(inked, seen, strict=True)}
        return [_prediction(crop, probs.get(i), threshold) for i, crop in enumerate(crops)]

    def read(self, seen: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each crop's class probabilities from its views ((views, 28, 28) each: the crop, then
        any aspect views), with a second look at those the network is unsure of (SECOND_LOOK).
        Two forward passes at most: every view of every crop, then every variant of the unsure."""
        if not seen:
            return []
        first = self.probabilities(np.concatenate(seen))
        probs = [_agreed(p) for p in np.split(first, np.cumsum([len(s) for s in seen])[:-1])]
        unsure = [i for i, p in enumerate(probs) if p.max() < SECOND_LOOK]
        if unsure:
            again = np.concatenate([seen[i] for i in unsure]).astype(np.float32, copy=False)
            looks = [variants.thicker(again), variants.rotated(again, 8.0)]
            looks.append(variants.rotated(again, -8.0))
            later = self.probabilities(np.concatenate(looks)).reshape(len(looks), len(again), 10)
            ends = np.cumsum([len(seen[i]) for i in unsure])[:-1]
            split = [np.split(look, ends) for look in later]
            for n, i in enumerate(unsure):
                probs[i] = _agreed(np.stack([probs[i], *(_agreed(look[n]) for look in split)]))
        return probs

    def _read_or_error(self, seen: np.ndarray) -> np.ndarray | Exception:
        try:
            return self.read([seen])[0]
        except Exception as exc:  # noqa: BLE001
            return exc


def _seen(crop: Crop) -> np.ndarray:
    """What the network reads of a crop: its pixels, then any aspect views (normalize.ASPECT_VIEWS)."""
    return np.stack([crop.pixels, *crop.views])


def _agreed(probs: np.ndarray) -> np.ndarray:
    """One crop's class probabilities from those of its views, (views, 10): their normalized
    product (the mean of log-probabilities), so a class must suit every aspect to stay sure."""
    if len(probs) == 1:
        return probs[0]
    mean = np.log(np.maximum(probs, 1e-12)).mean(axis=0)
    odds = np.exp(mean - mean.max())
    return odds / odds.sum()


def _prediction(
    crop: Crop | ScanError, probs: np.ndarray | Exception | None, threshold: float
) -> Prediction:
    if isinstance(crop, ScanError):
        return Prediction("error", error=str(crop))
    if crop.blank:
        return Prediction("blank")
    if isinstance(probs, Exception):
        return Prediction("error", error=f"model failed on this crop: {probs}")
    if probs is None:  # an inked crop always has its probabilities; none is a bug, not a digit
        return Prediction("error", error="no probabilities were computed for this crop")
    if not np.all(np.isfinite(probs)):
        return Prediction("error", error="model returned non-finite probabilities for this crop")
    order = np.argsort(probs)[::-1][:3]
    confidence = float(probs[order[0]])
    return Prediction(
        "ok",
        digit=int(order[0]),
        confidence=round(confidence, 6),
        top3=[(int(d), round(float(probs[d]), 6)) for d in order],
        needs_review=confidence < threshold,
        multiple_blobs=crop.multiple_blobs,
    )
