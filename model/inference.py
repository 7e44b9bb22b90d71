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
from digits.model.review import FAINT_INK, FRAMED, REVIEW_THRESHOLD, TWO_DIGITS

log = logging.getLogger(__name__)
MODEL_ENV = "DIGITS_MODEL"
BATCH = 1024
# A crop the network gives less than this is read again as three test-time variants (a wider pen,
# slanted 8 degrees either way: ``variants``), its answer the normalized geometric mean of the four
# readings (``_agreed``). Chosen on MNIST's validation digits through every robustness row by
# `python -m digits.cli.devtools.second_look` (docs/evaluation.md has its table and the test set's).
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
    faint: bool = False  # its ink barely clears the paper (normalize.Crop.faint): a person decides
    two_digits: bool = False  # two digits side by side (normalize.Crop.two_digits): a mis-cut
    framed: bool = False  # inside a pad that is not its paper (normalize.Crop.framed)

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def problems(self) -> list[str]:
        return problems(self)


def problems(read: Crop | Prediction) -> list[str]:
    """Why a person must look at a crop however sure the network is (``review`` reasons): its ink
    is faint, it holds two digits, or it lies inside a pad that is not its paper. The one rule
    for both the prediction's flag and its row."""
    return [FAINT_INK] * read.faint + [TWO_DIGITS] * read.two_digits + [FRAMED] * read.framed


def default_model_path() -> Path:
    return Path(os.environ.get(MODEL_ENV) or SHIPPED_MODEL)


class Classifier:
    """A loaded model with its card; build one per process and keep it."""

    def __init__(self, model, card: dict):
        import tensorflow as tf

        self.model = model
        self.card = card
        self.version = version(card)
        # The second look was chosen for the cnn's recipe; any other network is read once.
        self.second_look = SECOND_LOOK if card.get("arch") == "cnn" else 0.0
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
        return _predictions(crops, probs, threshold)

    def read(self, seen: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each crop's class probabilities from its views ((views, 28, 28) each: the crop, then
        any aspect views), with a second look at those a cnn is unsure of (SECOND_LOOK):
        one ``probabilities`` call for every view of every crop, one for every variant of the
        unsure ones. A second look that fails leaves the first readings, which are sound."""
        if not seen:
            return []
        probs = agreed_each(self.probabilities(np.concatenate(seen)), seen)
        unsure = [i for i, p in enumerate(probs) if p.max() < self.second_look]
        if not unsure:
            return probs
        try:
            looks = self._looks([seen[i] for i in unsure])
        except Exception:  # noqa: BLE001 - the first readings stand; the failure is logged
            log.exception(
                "the second look at %d unsure crops failed; their first readings stand", len(unsure)
            )
            return probs
        for i, crop_looks in zip(unsure, looks, strict=True):
            probs[i] = _agreed(np.stack([probs[i], *crop_looks]))
        return probs

    def _looks(self, seen: list[np.ndarray]) -> list[list[np.ndarray]]:
        """Each crop's readings as every test-time variant, its views combined in each."""
        again = np.concatenate(seen).astype(np.float32, copy=False)
        made = [
            variants.thicker(again),
            variants.rotated(again, 8.0),
            variants.rotated(again, -8.0),
        ]
        later = self.probabilities(np.concatenate(made)).reshape(len(made), len(again), 10)
        per_look = [agreed_each(look, seen) for look in later]
        return [list(crop_looks) for crop_looks in zip(*per_look, strict=True)]

    def _read_or_error(self, seen: np.ndarray) -> np.ndarray | Exception:
        try:
            return self.read([seen])[0]
        except Exception as exc:  # noqa: BLE001
            return exc


def _seen(crop: Crop) -> np.ndarray:
    """What the network reads of a crop: its pixels, then any aspect views (normalize.ASPECT_VIEWS)."""
    if not crop.views:
        return crop.pixels[None]  # nearly every crop: a view of its pixels, nothing copied
    return np.stack([crop.pixels, *crop.views])


def agreed_each(flat: np.ndarray, seen: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Probabilities of every view of every crop, (views in all, 10), back to one row per crop of
    ``seen`` (each (views, 28, 28), in order), its views agreed (:func:`_agreed`)."""
    if len(flat) == len(seen):  # one view each: each crop's row as it is
        return list(flat)
    return [_agreed(p) for p in np.split(flat, np.cumsum([len(s) for s in seen])[:-1])]


def _agreed(probs: np.ndarray) -> np.ndarray:
    """Class probabilities from those of several views or looks (or networks): (looks, 10) for one
    crop, (looks, crops, 10) for many. Their normalized geometric mean (the mean of
    log-probabilities), so a class must suit every one to stay sure."""
    if len(probs) == 1:
        return probs[0]
    mean = np.log(np.maximum(probs, 1e-12)).mean(axis=0)
    odds = np.exp(mean - mean.max(axis=-1, keepdims=True))
    return odds / odds.sum(axis=-1, keepdims=True)


def _predictions(
    crops: Sequence[Crop | ScanError],
    probs: dict[int, np.ndarray | Exception],
    threshold: float,
) -> list[Prediction]:
    """Each crop's answer: those with sound probabilities ranked in one pass (a chunk's 256
    argsorts and roundings one by one cost a fifth as much as its network), the rest blank or
    an error (:func:`_unread`)."""
    out = [_unread(crop, probs.get(i)) for i, crop in enumerate(crops)]
    rows = [i for i, answer in enumerate(out) if answer is None]
    if rows:
        table = np.stack([cast(np.ndarray, probs[i]) for i in rows])
        # Each row's own argsort, reversed: on a tie the later class comes first.
        order = np.argsort(table, axis=1)[:, ::-1][:, :3]
        tops = np.take_along_axis(table, order, axis=1).tolist()
        for i, classes, top in zip(rows, order.tolist(), tops, strict=True):
            crop = cast(Crop, crops[i])
            out[i] = Prediction(
                "ok",
                digit=classes[0],
                confidence=round(top[0], 6),
                top3=[(d, round(p, 6)) for d, p in zip(classes, top, strict=True)],
                needs_review=top[0] < threshold or bool(problems(crop)),
                multiple_blobs=crop.multiple_blobs,
                faint=crop.faint,
                two_digits=crop.two_digits,
                framed=crop.framed,
            )
    return cast(list[Prediction], out)  # every slot is filled above


def _unread(crop: Crop | ScanError, probs: np.ndarray | Exception | None) -> Prediction | None:
    """The answer of a crop that has no digit to give (blank, or an error), or None for one
    whose probabilities are sound."""
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
    return None
