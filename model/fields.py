"""Whole fields (zip codes, cheque amounts) read as strings: segmentation by recognition.

Cutting a field into digits by geometry alone fails exactly where fields are hard: a broken stroke
looks like two digits, two touching digits look like one. So the field is over-segmented into ink
blobs and candidate cuts, every plausible grouping is classified (all fields of a batch together),
and a small lattice search keeps the reading whose digits are most confident under mild geometric
priors and the field's format (a zip code has 5 or 9 digits). The field's confidence is the product
of its digits' confidences times the share its reading holds among the alternatives the lattice
found, so an ambiguous cut lowers it even when each digit looks clean, and discounted by any ink
left loose beside one digit (a stroke too faint for the threshold, a broken-off bar), which the
network never saw. Separators are told apart by shape and by position against the fitted baseline.

This module is the public face: :func:`read_fields` and what it returns, and the scoring of the
lattice's paths. The pieces live in :mod:`digits.model.segment` (ink, rules, blobs, layout, marks),
:mod:`digits.model.cuts` (touching digits) and :mod:`digits.model.lattice` (candidate readings and
the path search); the kinds of field and their format checks in :mod:`digits.model.kinds`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np

from digits.model import imageops, kinds, variants
from digits.model.card import SHIPPED_FIELD_DIGITS
from digits.model.inference import Classifier, _agreed
from digits.model.lattice import (
    INVALID,
    SHARE_TEMPERATURE,
    Edge,
    Guide,
    Plan,
    add_cuts,
    paths,
    plan,
)
from digits.model.normalize import DEFAULT_LIMITS, INK_MID, Limits, ScanError, decode

# The segmenter's own threshold, when it reads alone (its solo figures in ``digits evaluate
# --fields``): on composed 5-digit zip fields, seeds 0, 1 and 2, 0.9 sent about 15% of fields with
# separated digits to review and left 99.6-100% of the rest right. A job's fields are judged by
# the pair of readers instead (model.consensus, model.review.FIELD_REVIEW_THRESHOLDS).
SEGMENTER_THRESHOLD = 0.9
# A ZIP+4 is about 10:1 and amounts get long; the pixel and byte caps stay the single-crop ones.
FIELD_LIMITS = dataclasses.replace(DEFAULT_LIMITS, max_aspect=40.0)
# Review reason: the field had more pieces of ink than any field holds (lattice.MAX_PIECES), and
# only the largest were read. A speckled fax, a photograph, a crop of the wrong place: whatever
# the readers then agree on, a person looks (consensus.WHATEVER_CONFIDENCE).
CROWDED = "too_many_marks"


@dataclass(frozen=True)
class FieldDigits:
    """The segmenter's digit networks: ``cuts`` (the field digit network, ``model.pieces``) reads
    every crop of a field; ``apart`` (the single-digit cnn) reads again each piece of ink read
    alone, and there the two agree by their geometric mean.

    The field digit network learned cuts: tied zeros, ligature stubs, bold strokes thinned by a
    cut. A digit written apart is what the cnn learned (MNIST, and the writers' shapes real scans
    show, ``distort.writer_digit``), and the field network, fine-tuned away from it, reads those
    worse: on composed zips of MNIST test digits the segmenter read 96.6% with it where it read
    97.6% with the cnn. Two networks that learned different things rarely err alike, so the mean
    of their log-probabilities (a class must suit both, as the views of a crop do in
    ``inference._agreed``) reads the pieces read alone better than either; a cut, which the cnn
    never learned, stays the field network's alone. docs/fields.md has the figures.
    """

    cuts: Classifier
    apart: Classifier

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        apart: str | Path | None = None,
        threads: int | None = None,
    ) -> FieldDigits:
        """The field digit network at ``path`` (default the shipped one) with the cnn at
        ``apart`` (default ``DIGITS_MODEL``, else the shipped cnn)."""
        return cls(
            Classifier.load(path or SHIPPED_FIELD_DIGITS, threads), Classifier.load(apart, threads)
        )

    @property
    def version(self) -> str:
        """The field digit network's: what a field item's model_version names."""
        return self.cuts.version

    @property
    def card(self) -> dict:
        return self.cuts.card

    def read(self, pixels: np.ndarray, alone: np.ndarray) -> np.ndarray:
        """(n, 28, 28) crops to (n, 10) probabilities; ``alone`` marks the crops of one piece
        of ink each, which both networks read."""
        probs = probabilities(self.cuts, pixels)
        if alone.any():
            apart = probabilities(self.apart, pixels[alone])
            probs[alone] = _agreed(np.stack([probs[alone], apart]))
        return probs


@dataclass(frozen=True)
class DigitGuess:
    digit: int
    confidence: float
    top3: list[tuple[int, float]]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the scan's pixels: where a reviewer looks
    loops: int = 0  # closed loops its crop draws (an 8 two, a 0 or a 6 one): imageops.loops
    # Read from one piece of ink alone, not from a cut or from pieces read together: where the
    # pair weighs the segmenter's digit more (consensus.WHOLE_WEIGHT). Mostly a digit written
    # apart; now and then a fragment of a broken one read by itself.
    whole: bool = False


@dataclass(frozen=True)
class FieldReading:
    """One field's answer. ``status`` is ``ok``, ``blank`` or ``error``; only ``ok`` has text."""

    status: str
    kind: str
    text: str | None = None
    confidence: float | None = None
    needs_review: bool = False
    valid: bool | None = None  # the text passes its kind's check
    digits: list[DigitGuess] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why it needs review
    error: str | None = None
    ignored: int = 0  # pieces of ink left unread (lattice.MAX_PIECES): reason CROWDED

    def as_dict(self) -> dict:
        return asdict(self)


def read_fields(
    networks: FieldDigits,
    images: Sequence[bytes],
    kind: str = "digits",
    threshold: float = SEGMENTER_THRESHOLD,
    limits: Limits = FIELD_LIMITS,
) -> list[FieldReading]:
    """Read a batch of field scans: JSON-able readings, one per scan, in order.

    A bad scan becomes an ``error`` item, never a failed batch. The worker and ``classify`` call
    :func:`read_decoded` through :func:`digits.model.consensus.read_pairs`, which decodes each
    scan once for both readers.
    """
    return read_decoded(networks, decode_all(images, limits), kind, threshold)


def decode_all(
    images: Sequence[bytes], limits: Limits = FIELD_LIMITS
) -> list[np.ndarray | Exception]:
    """Each scan decoded to grey, or the error that stopped it (one bad scan sinks nothing)."""
    out: list[np.ndarray | Exception] = []
    for data in images:
        try:
            out.append(decode(data, limits))
        except Exception as exc:  # noqa: BLE001 - becomes that scan's error item
            out.append(exc)
    return out


def read_decoded(
    networks: FieldDigits,
    grays: Sequence[np.ndarray | Exception],
    kind: str = "digits",
    threshold: float = SEGMENTER_THRESHOLD,
    guides: Sequence[Guide | None] | None = None,
) -> list[FieldReading]:
    """Read decoded field scans (or their decoding errors, which become ``error`` readings).

    Candidate digits of all fields go through the network together: one batch for the blobs, one
    for the cuts of those that may hold touching digits.

    ``guides`` holds what another reader (the sequence reader, in ``consensus.read_pairs``) says
    of each field, or None: how many digits, and where they meet. The blobs it puts a boundary in
    are also cut there, and the field is read as that many digits when the lattice has such a
    path; the segmenter still chooses every cut and every digit itself, and its confidence is the
    reading's share among the readings of that length. Where it cannot find that many digits it
    reads the field freely. This is how a pair of readers works where cuts are the hard part:
    one says how many and where, the other checks each digit (tied zeros "000" are one blob to
    the segmenter, which alone reads them as one or two zeros).
    """
    kinds.kind(kind)  # an unknown kind is the caller's mistake, not one scan's: refuse the batch
    if guides is not None and len(guides) != len(grays):
        raise ValueError(f"{len(guides)} guides for {len(grays)} fields")
    told = list(guides) if guides is not None else [None] * len(grays)
    out: list[FieldReading | None] = [None] * len(grays)
    plans: dict[int, Plan] = {}
    for i, gray in enumerate(grays):
        try:
            if isinstance(gray, Exception):
                raise gray
            plans[i] = plan(gray)
        except Exception as exc:  # noqa: BLE001 - one odd scan must not sink the batch
            out[i] = _failed(kind, exc)
    first = dict(zip(plans, _classify(networks, list(plans.values()), 0), strict=True))
    done = {i: len(p.crops) for i, p in plans.items()}
    for i in list(plans):
        try:
            whole = _spelled_whole(plans[i], first[i], kind, threshold, told[i])
            if whole is not None:
                out[i] = whole
                del plans[i]
            else:
                add_cuts(plans[i], first[i], kind, told[i])
        except Exception as exc:  # noqa: BLE001
            out[i] = _failed(kind, exc)
            del plans[i]
    starts = [done[i] for i in plans]
    second = dict(zip(plans, _classify(networks, list(plans.values()), starts), strict=True))
    for i, p in plans.items():
        try:
            probs = np.concatenate([first[i][: done[i]], second[i]])
            guide = told[i]
            count = guide.count if guide else None
            out[i] = _reading(p, probs, kind, threshold, count)
        except Exception as exc:  # noqa: BLE001
            out[i] = _failed(kind, exc)
    return cast(list[FieldReading], out)  # every slot is filled above


def _spelled_whole(
    plan: Plan, probs: np.ndarray, kind: str, threshold: float, guide: Guide | None
) -> FieldReading | None:
    """The field's reading from its blobs read whole, when that already spells the digits the
    other reader read (``guide.digits``); else None, and the field's blobs are cut.

    Cuts are how the segmenter finds digits that touch or are tied; where each blob read whole is
    already a digit of the other reader's text, there is nothing left to find, and the cuts only
    cost: about 25 of a field's 34 crops, each normalized and read three times. Two fifths of
    the generator's amounts and of the real cheques, two thirds to four fifths of its composed
    zips, are such fields. The pair still compares two readings of every digit: the network read each blob,
    and the sequence reader the line. What the cuts would have added are rival readings, so the
    segmenter's share among them (its confidence) is a little higher than with the cuts; on the
    validation documents no set read a field less right or accepted a wrong one more
    (docs/fields.md, session 20). A blob of a field that is cut may still be spared
    (``lattice._read_as_placed``).
    """
    if guide is None or not guide.digits:
        return None
    reading = _reading(plan, probs, kind, threshold, guide.count)
    if reading.status == "error" or kinds.digits_of(reading.text) != guide.digits:
        return None
    plan.work = None  # the cuts' working images are no longer needed
    return reading


def _failed(kind: str, exc: Exception) -> FieldReading:
    if isinstance(exc, ScanError):
        return FieldReading("error", kind, error=str(exc))
    return FieldReading("error", kind, error=f"cannot read this field: {exc!r}")


def _classify(
    networks: FieldDigits, plans: list[Plan], starts: int | list[int]
) -> list[np.ndarray]:
    """Probabilities for each plan's crops from its start on, all plans in one batch."""
    starts = [starts] * len(plans) if isinstance(starts, int) else starts
    crops = [c for p, s in zip(plans, starts, strict=True) for c in p.crops[s:]]
    alone: list[bool] = []  # the crops of one piece of ink each (FieldDigits.read)
    for p, s in zip(plans, starts, strict=True):
        whole = set(p.whole.values())
        alone += [c in whole for c in range(s, len(p.crops))]
    pixels = np.stack(crops) if crops else np.zeros((0, 28, 28), np.float32)
    probs = networks.read(pixels, np.array(alone, bool))
    ends = np.cumsum([len(p.crops) - s for p, s in zip(plans, starts, strict=True)])
    return np.split(probs, ends[:-1]) if plans else []


# --- test-time variants ---------------------------------------------------------------------------


def probabilities(classifier: Classifier, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities averaged over the crop and two variants: a pen a pixel wider and one
    a pixel narrower.

    Fields multiply their digits' confidences, so a confidently wrong digit costs a whole field;
    a mistake rarely survives all the variants, so the average both errs less and is less sure
    when it errs. All variants of all crops go through the network as one batch.

    Slanted by 8 degrees either way as well (five looks, until session 16), the pair read the
    validation fields no better (``field_rules --count 1000``, seed 100: chosen text right
    89.58% against 89.53% with three; amounts accepted at their threshold 48.3% against 48.6%,
    2 wrong either way; zips 38.3% and 0 wrong against 37.9% and 1 of 757), and on the real
    samples the guided segmenter read 92 right against 95 with three: the network costs two
    fifths less a field.
    """
    n = len(pixels)
    if n == 0:
        return np.zeros((0, 10), np.float32)
    x = np.asarray(pixels, np.float32)
    batch = np.concatenate([x, variants.thicker(x), variants.thinner(x)])
    return classifier.probabilities(batch).reshape(-1, n, 10).mean(0)


# --- reading: the best path through the lattice ---------------------------------------------------


def _reading(
    plan: Plan, probs: np.ndarray, kind: str, threshold: float, expected: int | None = None
) -> FieldReading:
    """Best reading by lattice score plus the field check; its share of the candidates' mass.

    With ``expected``, only the paths of that many digits compete, when there are any.
    """
    if not any(e.crops for edges in plan.edges for e in edges):
        crowded = [CROWDED] if plan.ignored else []  # nothing read of a crowded scan: a person's
        return FieldReading(
            "blank", kind, needs_review=bool(crowded), reasons=crowded, ignored=plan.ignored
        )
    if not np.all(np.isfinite(probs)):
        return FieldReading("error", kind, error="model returned non-finite probabilities")
    form = kinds.kind(kind)
    with np.errstate(divide="ignore"):
        logp = np.log(probs.max(1))
    named = [str(digit) for digit in probs.argmax(1).tolist()]  # each crop's digit, once
    best: dict[str, tuple[float, list[Edge]]] = {}  # each text by its likeliest segmentation
    mass: dict[str, float] = {}  # and by all the segmentations that read it
    passes: dict[str, bool] = {}  # and whether it has the form of its kind
    for score, path in paths(plan, logp):
        # A path through an edge its own prior rules out (a double cut at one of cuts' fallback
        # lines, which have no ink value to price it by) is no reading: were it the only one of
        # the guide's count, its share would be 0/0.
        if not any(e.crops for e in path) or not math.isfinite(score):
            continue
        text = "".join(e.mark + "".join(named[c] for c in e.crops) for e in path)
        if text not in passes:
            passes[text] = form.check(text)
        score += 0.0 if passes[text] else INVALID
        mass[text] = float(np.logaddexp(mass.get(text, -math.inf), score / SHARE_TEMPERATURE))
        if text not in best or score > best[text][0]:
            best[text] = (score, path)
    if not best:
        return FieldReading("error", kind, error="no reading: the field could not be segmented")
    # Told the count, only readings of that many digits compete, for the pick and for the share
    # (rivals of every length made the pair accept fewer fields on the validation set, 7.4% of
    # amounts at 0.98 instead of 12.4%, none wrong either way).
    counted = [t for t in best if sum(ch.isdigit() for ch in t) == expected] if expected else []
    among = counted or list(best)
    text = max(among, key=lambda t: best[t][0])
    # Picked by its best segmentation (summing would favour texts with many poor ones), but sure
    # only as far as the ways to cut the field into an answer of its kind agree on it: a reading
    # that fails the check is no rival to one that passes (had it won, the field would be flagged
    # as not a zip anyway). The scores mix heuristic priors with log-probabilities and count a
    # reading once per near-identical cut, so their raw ratio overstates the runner-up's chances.
    rivals = [mass[t] for t in among if passes[t] or not passes[text]]
    share = math.exp(mass[text] - float(np.logaddexp.reduce(rivals)))
    return _assemble(plan, probs, text, best[text][1], share, passes[text], kind, threshold)


def _assemble(
    plan: Plan,
    probs: np.ndarray,
    text: str,
    path: list[Edge],
    share: float,
    valid: bool,
    kind: str,
    threshold: float,
) -> FieldReading:
    """The reading of ``path``: each digit's guesses and box in scan pixels, the field's confidence
    and why it needs review."""
    digits = []
    alone = set(plan.whole.values())
    for c in (c for e in path for c in e.crops):
        order = np.argsort(probs[c])[::-1][:3]
        top3 = [(int(d), round(float(probs[c][d]), 6)) for d in order]
        x0, y0, x1, y1 = (int(round(v * plan.scale)) for v in plan.boxes[c])
        closed = imageops.loops(plan.crops[c], INK_MID)
        guess = DigitGuess(top3[0][0], top3[0][1], top3, (x0, y0, x1, y1), closed, c in alone)
        digits.append(guess)
    # Loose ink by one digit discounts the field as much as it weighs against that digit's own, over
    # the level round its other digits: scanner noise and paper texture leave some by every digit.
    strays = [e.stray for e in path if e.crops]
    explained = max(0.0, 1.0 - (max(strays) - float(np.median(strays))))
    confidence = share * explained * math.prod(d.confidence for d in digits)
    reasons = [] if confidence >= threshold else ["low_confidence"]
    reasons += [] if valid else [f"not_{kind}"]
    reasons += [CROWDED] if plan.ignored else []
    return FieldReading(
        "ok",
        kind,
        text,
        round(confidence, 6),
        bool(reasons),
        valid,
        digits,
        reasons,
        ignored=plan.ignored,
    )
