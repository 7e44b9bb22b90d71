"""The segmentation-free field reader: a convolutional trunk, a BiLSTM and CTC.

The segmenter (``fields.py``) must decide where one digit ends before it can read it, and real
cheques defeat exactly that decision: tied zeros, overlapping pairs, a baseline running into a
stroke. This reader never cuts: the trunk turns a height-normalized line of ink into a sequence of
column features, the BiLSTM reads them in both directions, and CTC lets the network place each
character wherever it sees it (keras-io ``captcha_ocr`` / ``handwriting_recognition`` shape).

Its confidence is the probability of the whole string under the network: the CTC forward sum over
every alignment that spells it (``exp(-ctc_loss)``), not a product of per-digit guesses, so two
plausible readings of one blob share the probability instead of both looking sure.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from digits.model.card import SHIPPED_FIELD_MODEL, read_card, version
from digits.model.kinds import digits_of

if TYPE_CHECKING:
    import keras

# Index 0 is CTC's blank; characters are 1..len(ALPHABET). Separators are read, not skipped, so
# that the format check sees "1.480" and a separator never has to pass for a digit.
ALPHABET = "0123456789.,-"
HEIGHT = 32  # every line is scaled to this height; the width follows the aspect ratio
MAX_WIDTH = 512  # wider lines are squeezed: 16:1, longer than any ZIP+4 or amount
POOL = 4  # the trunk halves the width twice: one CTC step per 4 input columns
PAD = 64  # lines are padded with paper to a multiple of this many columns
FIELD_MODEL_ENV = "DIGITS_FIELD_MODEL"
# Characters the generator writes that the reader folds into its alphabet: long dashes are dashes.
FOLD = str.maketrans({"\u2014": "-", "\u2013": "-", "_": "-"})


def crnn(classes: int = len(ALPHABET) + 1) -> keras.Model:
    """(HEIGHT, width, 1) ink in [0, 1] -> (width / POOL, classes) logits; blank is class 0."""
    import keras  # here, not at the top: a worker's parent imports this module and must never
    from keras import layers  # start TensorFlow before it forks its children

    inputs = keras.Input((HEIGHT, None, 1), name="line")
    x = inputs
    for filters, pool in ((32, (2, 2)), (64, (2, 2)), (96, (2, 1)), (128, (2, 1))):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D(pool)(x)
    # (2, width/4, 128) -> a sequence of width/4 column features
    x = layers.Permute((2, 1, 3))(x)
    x = layers.Reshape((-1, (HEIGHT // 16) * 128))(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.2)(x)
    x = layers.Bidirectional(layers.LSTM(96, return_sequences=True, dropout=0.1))(x)
    outputs = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="field")


def ctc_loss(y_true, y_pred):
    """CTC on padded labels (0 = padding, characters 1..n) against the logits of every step.

    Lines are padded on the right with blank paper, which the network learns to read as blank, so
    every step of the batch counts as input.
    """
    import keras

    labels = keras.ops.cast(y_true, "int32")
    label_length = keras.ops.sum(keras.ops.cast(labels > 0, "int32"), axis=1)
    steps = keras.ops.shape(y_pred)[1]
    logit_length = keras.ops.full((keras.ops.shape(y_pred)[0],), steps, dtype="int32")
    return keras.ops.ctc_loss(labels, y_pred, label_length, logit_length, mask_index=0)


def encode_text(text: str) -> list[int]:
    """Text as written -> class indices; characters outside the alphabet ($, /) are not read."""
    return [ALPHABET.index(c) + 1 for c in text.translate(FOLD) if c in ALPHABET]


def line_pixels(gray: np.ndarray) -> np.ndarray:
    """A grey scan in [0, 1] (0 = black) -> float32 (HEIGHT, width) ink in [0, 1], paper at 0.

    Ink is what is darker than the paper: the paper's level (the median) is subtracted and the
    darkest strokes set to 1, so pale blue ink and a dark ballpoint look alike. Patterns and
    printed lines are left for the network, which learned them from the generator.
    """
    ink = 1.0 - np.asarray(gray, np.float32)
    paper = float(np.median(ink))
    top = float(np.percentile(ink, 99.5))
    ink = np.clip((ink - paper) / max(top - paper, 0.08), 0.0, 1.0)
    return cv2.resize(ink, (line_width(ink), HEIGHT), interpolation=cv2.INTER_AREA)


def line_width(gray: np.ndarray) -> int:
    """Columns of a scan's line once scaled to HEIGHT rows (at most MAX_WIDTH)."""
    h, w = gray.shape[:2]
    return int(min(MAX_WIDTH, max(POOL * 2, round(w * HEIGHT / h))))


def padded_width(width: int) -> int:
    """Lines are padded to a multiple of 64 columns: the compiled forward pass then sees a handful
    of shapes, not one per batch (each new shape is a retrace costing seconds)."""
    return -(-width // PAD) * PAD


def batch_lines(lines: Sequence[np.ndarray]) -> np.ndarray:
    """Lines of different widths -> one (n, HEIGHT, width, 1) batch, padded with paper on the right."""
    width = padded_width(max(line.shape[1] for line in lines))
    out = np.zeros((len(lines), HEIGHT, width, 1), np.float32)
    for i, line in enumerate(lines):
        out[i, :, : line.shape[1], 0] = line
    return out


@dataclass(frozen=True)
class LineReading:
    """What the sequence reader saw: the text with separators, and the string's probability."""

    text: str
    confidence: float
    # Where each character of ``text`` sits: the centre of its steps on the best path of the plain
    # view, as a share of the scan's width; empty when that view read something else. The
    # segmenter cuts touching digits between them (``lattice.Guide``).
    centres: tuple[float, ...] = ()
    # The line's logits in every view, (views, steps, classes), temperature applied: what
    # :meth:`probability` weighs another text with. None for a reading made by hand.
    logits: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)
    # The probability that the line's digits are these, whatever separators stand between or
    # after them (:func:`digits_probability`, averaged over the views like ``confidence``): what
    # the pair must be sure of when its readers spelled the same digits. None for a reading made
    # by hand: ``confidence`` stands for it.
    digits_confidence: float | None = None
    # The best path's own text where this reading replaced it with one of a count the field's
    # kind can have (``consensus.kind_reading``); empty for a reading as the network spelled it.
    fitted_from: str = ""

    @property
    def digits_sure(self) -> float:
        """``digits_confidence``, or the whole string's where none was measured."""
        return self.confidence if self.digits_confidence is None else self.digits_confidence

    @property
    def digits(self) -> str:
        return digits_of(self.text)

    def probability(self, texts: Sequence[str]) -> np.ndarray:
        """How likely the line spells each of ``texts``, as the reading's own confidence is
        measured (the string's probability averaged over the views): the pair weighs the
        segmenter's digits with it where the two readers differ (``consensus.joint_text``)."""
        if self.logits is None:
            raise ValueError("this reading kept no logits to weigh other texts with")
        views = len(self.logits)
        labels = [encode_text(t) for t in texts for _ in range(views)]
        probs = string_probability(np.concatenate([self.logits] * len(texts)), labels)
        return probs.reshape(len(texts), views).mean(1)

    def digit_centres(self) -> tuple[float, ...]:
        """The centres of the digits alone (separators dropped), or () when none were placed."""
        if len(self.centres) != len(self.text):
            return ()
        return tuple(x for c, x in zip(self.text, self.centres, strict=True) if c.isdigit())


# --- views ------------------------------------------------------------------------------------
# Every line is read in several views, the way a person tilts a cheque to read it: as scanned,
# slanted either way, a size smaller and with a bolder pen. Each view's best reading is a
# candidate; the one with the highest probability averaged over the views is kept, with that
# average as its confidence: a reading that one view doubts loses probability, which is what makes
# a confident wrong reading rarer. The views were chosen before measuring (what varies most
# between writers and scanners), and each costs one more forward pass of the network.
VIEWS = ("plain", "slant_right", "slant_left", "smaller", "bolder")
SLANT = 0.2  # the slanted views' shear: columns moved per row
SMALLER = 0.85
SIDE = 4  # paper columns added on each side, so that a slanted view loses no ink at the edges


def _shear(line: np.ndarray, k: float) -> np.ndarray:
    h, w = line.shape
    # k > 0: rows above the middle move right
    m = np.array([[1, -k, k * h / 2], [0, 1, 0]], np.float32)
    return cv2.warpAffine(line, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)


def _smaller(line: np.ndarray) -> np.ndarray:
    h, w = line.shape
    small = cv2.resize(line, (round(w * SMALLER), round(h * SMALLER)), interpolation=cv2.INTER_AREA)
    out = np.zeros_like(line)
    top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out


def views(line: np.ndarray) -> list[np.ndarray]:
    """The line (from :func:`line_pixels`) in every view of VIEWS, all of one width."""
    line = np.pad(line, ((0, 0), (SIDE, SIDE)))
    return [
        line,
        _shear(line, SLANT),
        _shear(line, -SLANT),
        _smaller(line),
        cv2.dilate(line, np.ones((2, 2), np.uint8)),
    ]


def greedy(logits: np.ndarray) -> list[list[int]]:
    """Best path per line: the most likely class at every step, repeats merged, blanks dropped."""
    return [label for label, _ in greedy_steps(logits)]


def greedy_steps(logits: np.ndarray) -> list[tuple[list[int], list[float]]]:
    """Best path per line with the centre step of each character's run of steps."""
    out = []
    for path in logits.argmax(-1):
        starts = np.flatnonzero(np.concatenate([[True], path[1:] != path[:-1]]))
        ends = np.append(starts[1:], len(path))
        kept = path[starts] != 0
        centres = (starts[kept] + ends[kept] - 1) / 2
        out.append((path[starts][kept].tolist(), centres.tolist()))
    return out


def string_probability(logits: np.ndarray, labels: list[list[int]]) -> np.ndarray:
    """P(label | line) for each line: the CTC forward sum over all alignments of that label.

    The forward recursion in log space over every line at once, (lines, 2 * longest + 1) states
    per step in numpy: TensorFlow's eager ``ctc_loss`` did the same sum a Python loop step at a
    time and took a seventh of a field's reading time.
    """
    n, steps, _ = logits.shape
    if n == 0:
        return np.zeros(0, np.float64)
    wide = logits.astype(np.float64)
    logp = wide - np.logaddexp.reduce(wide, axis=2)[..., None]
    longest = max((len(label) for label in labels), default=0)
    states = 2 * longest + 1
    extended = np.zeros((n, states), np.int64)  # blank (0) between and around the characters
    for i, label in enumerate(labels):
        extended[i, 1 : 2 * len(label) : 2] = label
    # A state may skip the blank before it when it is a character unlike the one two back.
    skip = np.zeros((n, states), bool)
    skip[:, 2:] = (extended[:, 2:] != 0) & (extended[:, 2:] != extended[:, :-2])
    rows = np.arange(n)[:, None]
    emit = logp[rows, :, extended].transpose(0, 2, 1)  # (lines, steps, states)
    alpha = np.full((n, states), -np.inf)
    alpha[:, 0] = emit[:, 0, 0]
    if states > 1:
        alpha[:, 1] = emit[:, 0, 1]
    for t in range(1, steps):
        stay = alpha
        step = np.concatenate([np.full((n, 1), -np.inf), alpha[:, :-1]], axis=1)
        jump = np.concatenate([np.full((n, 2), -np.inf), alpha[:, :-2]], axis=1)
        jump = np.where(skip, jump, -np.inf)
        alpha = np.logaddexp(np.logaddexp(stay, step), jump) + emit[:, t]
    ends = np.array([2 * len(label) for label in labels])
    last = alpha[np.arange(n), ends]
    before = np.where(ends > 0, alpha[np.arange(n), np.maximum(ends - 1, 0)], -np.inf)
    return np.exp(np.logaddexp(last, before))


SEPARATORS = [ALPHABET.index(c) + 1 for c in ALPHABET if not c.isdigit()]


def digits_probability(logits: np.ndarray, digits: Sequence[str]) -> np.ndarray:
    """P(the line's digits are ``digits``, with any separators anywhere) for each line.

    Every separator's probability at each step is added to the blank's and CTC sums the digits
    alone: a path that writes "3.296" or "3296." collapses, with its marks as blanks, to the same
    "3296", and blanks already part repeated digits as a mark between them would. So this is
    exactly the sum of the string probabilities of every text with these digits. On real
    cheques the reader is often unsure whether a dot is written ("3.296" at 0.64 against "3296"),
    which says nothing about the amount's digits (0.999 of them).
    """
    wide = logits.astype(np.float64)
    probs = np.exp(wide - np.logaddexp.reduce(wide, axis=-1)[..., None])
    folded = np.delete(probs, SEPARATORS, axis=-1)
    folded[..., 0] += probs[..., SEPARATORS].sum(-1)
    labels = [[int(c) + 1 for c in text] for text in digits]
    return string_probability(np.log(np.maximum(folded, 1e-300)), labels)


def agree_views(logits: np.ndarray, temperature: float = 1.0) -> list[LineReading]:
    """Lines' readings from the logits of their views, (lines, views, steps, classes).

    Each view's best path is a candidate; the one with the highest probability averaged over all
    the views is the reading, and that average is its confidence. Its ``centres`` are in steps
    here (the plain view's, when it read the same); :meth:`SequenceReader.read` makes them
    shares of the scan's width.
    """
    n, v = logits.shape[:2]
    scaled = logits / temperature
    best_paths = [greedy_steps(scaled[i]) for i in range(n)]  # every view's, the plain one first
    candidates = [list(dict.fromkeys(tuple(label) for label, _ in paths)) for paths in best_paths]
    rows = [(i, j) for i in range(n) for _ in candidates[i] for j in range(v)]
    labels = [list(c) for i in range(n) for c in candidates[i] for _ in range(v)]
    probs = string_probability(np.stack([scaled[i, j] for i, j in rows]), labels)
    out, at = [], 0
    for i in range(n):
        means = []
        for _ in candidates[i]:
            means.append(float(probs[at : at + v].mean()))
            at += v
        best = int(np.argmax(means))
        label, steps = best_paths[i][0]
        centres = tuple(steps) if tuple(label) == candidates[i][best] else ()
        text = decode_label(candidates[i][best])
        out.append(LineReading(text, min(1.0, means[best]), centres, scaled[i]))
    if not out:
        return out
    digits = [reading.digits for reading in out for _ in range(v)]
    sure = digits_probability(scaled.reshape(n * v, *scaled.shape[2:]), digits).reshape(n, v)
    return [
        dataclasses.replace(reading, digits_confidence=min(1.0, float(sure[i].mean())))
        for i, reading in enumerate(out)
    ]


class SequenceReader:
    """A loaded field model with its card; build one per process and keep it."""

    def __init__(self, model: keras.Model, card: dict):
        import tensorflow as tf

        self.model = model
        self.card = card
        self.version = version(card)
        self.temperature = float(card.get("temperature", 1.0))

        def forward(x):  # a def, not a lambda: autograph cannot read a lambda's source here
            return model(x, training=False)

        self._forward = tf.function(
            forward,
            input_signature=[tf.TensorSpec([None, HEIGHT, None, 1], tf.float32)],
            reduce_retracing=True,
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> SequenceReader:
        import keras

        path = Path(path or os.environ.get(FIELD_MODEL_ENV) or SHIPPED_FIELD_MODEL)
        model = keras.models.load_model(path, compile=False)
        return cls(model, read_card(path))

    def logits_of(self, lines: Sequence[np.ndarray]) -> np.ndarray:
        """Raw logits (before the temperature) of lines already through :func:`line_pixels`."""
        return np.asarray(self._forward(batch_lines(lines)))

    def view_logits(
        self, grays: Sequence[np.ndarray], batch: int = 24
    ) -> list[tuple[list[int], np.ndarray]]:
        """Raw logits of every view of decoded grey scans, as (indices, (lines, views, steps,
        classes)) groups of lines padded to one width.

        ``batch`` lines go through the network at once, each in every view: 120 images, about
        the 128 single lines of one pass before there were views, so a worker's peak memory
        stays where it was.

        Lines share a batch only with lines padded to the same width, so every line is read over
        exactly its own padded steps: its reading never depends on its neighbours in a chunk.
        """
        seen = [views(line_pixels(g)) for g in grays]
        widths = [padded_width(v[0].shape[1]) for v in seen]
        groups = []
        for width in sorted(set(widths)):
            same = [i for i, w in enumerate(widths) if w == width]
            for start in range(0, len(same), batch):
                chosen = same[start : start + batch]
                logits = self.logits_of([view for i in chosen for view in seen[i]])
                groups.append((chosen, logits.reshape(len(chosen), len(VIEWS), *logits.shape[1:])))
        return groups

    def read(self, grays: Sequence[np.ndarray]) -> list[LineReading]:
        """Read decoded grey scans: each one's text and the probability of that whole string,
        agreed over the views."""
        out: list[LineReading | None] = [None] * len(grays)
        for chosen, logits in self.view_logits(grays):
            for i, reading in zip(chosen, agree_views(logits, self.temperature), strict=True):
                width = line_width(grays[i])
                centres = tuple(((s + 0.5) * POOL - SIDE) / width for s in reading.centres)
                out[i] = dataclasses.replace(reading, centres=centres)
        return [r for r in out if r is not None]  # every slot is filled above


def decode_label(label: Sequence[int]) -> str:
    return "".join(ALPHABET[i - 1] for i in label)
