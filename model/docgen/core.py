"""One synthetic document per (seed, index): the public ``generate`` and ``documents``.

Every sample draws from its own stream, ``SeedSequence([seed, index])``, so sample i is the same
whether one or a million are asked for and a trainer can make sample i on any worker. All random
choices, the JPEG quality included, are drawn before encoding, so ``jpeg=False`` gives exactly the
image that ``jpeg=True`` then compresses.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import cv2
import numpy as np

from digits.model.docgen import layout, paper, scan
from digits.model.docgen.families import KIND_CONVENTIONS, pick
from digits.model.docgen.text import make_text
from digits.model.kinds import digits_of

KINDS = tuple(KIND_CONVENTIONS)
_INDEX_CACHE: dict[int, tuple[weakref.ref, list[np.ndarray]]] = {}


@dataclass(frozen=True)
class Document:
    """A synthetic scanned field: the image, what was written, its label and how it was made."""

    image: np.ndarray  # HxWx3 uint8 RGB as scanned (JPEG round trip applied if jpeg=True)
    text: str  # as written, e.g. "1.480-"
    label: str  # digits only, e.g. "1480"
    kind: str
    traits: dict[str, str] = field(default_factory=dict)  # family name per trait
    quality: int = 85  # the JPEG quality drawn for this sample
    boxes: tuple[tuple[int, int, int, int], ...] = ()  # where each digit is (layout.Ink.boxes)

    def encoded(self, fmt: str = ".jpg", quality: int = 85) -> bytes:
        """The image as file bytes (".jpg" or ".png"), what the product reads."""
        return scan.encode(self.image, fmt, quality)

    @property
    def gray(self) -> np.ndarray:
        """HxW uint8 greyscale of the image: the trainer's fast path, no encode or decode."""
        return cv2.cvtColor(self.image, cv2.COLOR_RGB2GRAY)


def _by_digit(labels: np.ndarray) -> list[np.ndarray]:
    """Indices of each digit 0-9 in ``labels``, computed once per labels array."""
    hit = _INDEX_CACHE.get(id(labels))
    if hit is not None and hit[0]() is labels:
        return hit[1]
    flat = np.asarray(labels).reshape(-1)
    lists = [np.flatnonzero(flat == d) for d in range(10)]
    missing = [d for d in range(10) if len(lists[d]) == 0]
    if missing:
        raise ValueError(f"labels has no example of digit(s) {missing}")
    with contextlib.suppress(TypeError):  # not weak-referenceable (a list): no caching
        _INDEX_CACHE[id(labels)] = (weakref.ref(labels), lists)
    return lists


def generate(
    images: np.ndarray,
    labels: np.ndarray,
    index: int,
    seed: int = 0,
    kind: str = "amount",
    split: str = "train",
    jpeg: bool = True,
    overrides: dict[str, str] | None = None,
) -> Document:
    """Sample ``index`` of the stream ``seed``: a field of ``kind`` written with ``images``.

    ``images`` (N, 28, 28) uint8 and ``labels`` (N,) are MNIST digits: pass the train split to
    train and the test split to evaluate. ``split`` picks the trait families ("train" or
    "heldout"; see ``FAMILIES``). ``overrides`` fixes some trait families (pictures of one
    family): the traits are drawn as usual first and then replaced, so the rest of the sample's
    stream is unchanged (the same sample with a different background, say).
    """
    if kind not in KIND_CONVENTIONS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    by_digit = _by_digit(labels)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    traits = {
        "background": pick(rng, "background", split),
        "rule": pick(rng, "rule", split),
        "ink": pick(rng, "ink", split),
        "pen": pick(rng, "pen", split),
        "touching": pick(rng, "touching", split),
        "convention": pick(rng, "convention", split, among=KIND_CONVENTIONS[kind]),
        "degradation": pick(rng, "degradation", split),
    }
    traits.update(overrides or {})
    quality = int(rng.integers(50, 96))
    text = make_text(rng, traits["convention"])
    ink = layout.write(rng, text, images, by_digit, traits["touching"], traits["pen"])
    h, w = ink.alpha.shape
    gray = scan.scans_gray(rng, traits["degradation"])
    sheet = paper.background(rng, traits["background"], h, w, gray)
    rule = paper.rules(rng, traits["rule"], h, w, ink)
    colour = scan.ink_colour(rng, traits["ink"])
    image = scan.degrade(rng, traits["degradation"], scan.compose(sheet, rule, ink.alpha, colour))
    if jpeg:
        image = scan.jpeg_round_trip(image, quality)
    return Document(image, text, digits_of(text), kind, traits, quality, ink.boxes)


def documents(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    seed: int = 0,
    kind: str = "amount",
    split: str = "train",
    jpeg: bool = True,
) -> list[Document]:
    """Samples 0 to ``count - 1`` of the stream ``seed`` (each the same as ``generate`` gives)."""
    return [generate(images, labels, i, seed, kind, split, jpeg) for i in range(count)]
