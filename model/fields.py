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
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from digits.model.inference import Classifier
from digits.model.normalize import DEFAULT_LIMITS, Limits, ScanError, decode, normalize_gray

KINDS = ("zip", "amount", "digits")
# From the accuracy-versus-review curves of composed 5-digit zip fields (``digits evaluate
# --fields``, seeds 0, 1 and 2): at 0.9 about 15% of fields with separated digits go to review and
# 99.6-100% of the rest are right; at 0.85 12%, but seed 2 then falls to 99.4%.
FIELD_REVIEW_THRESHOLD = 0.9
# A ZIP+4 is about 10:1 and amounts get long; the pixel and byte caps stay the single-crop ones.
FIELD_LIMITS = dataclasses.replace(DEFAULT_LIMITS, max_aspect=40.0)
# Larger scans are shrunk first: digits stay well above 28 px and the time per field stays flat.
MAX_PIXELS = 400_000
CHECKS = {
    "zip": re.compile(r"\d{5}(-\d{4})?"),
    "amount": re.compile(r"\d+([.,]\d{2})?|\d{1,3}(,\d{3})+(\.\d{2})?|\d{1,3}(\.\d{3})+(,\d{2})?"),
    "digits": re.compile(r"\d+"),
}


@dataclass(frozen=True)
class DigitGuess:
    digit: int
    confidence: float
    top3: list[tuple[int, float]]
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the scan's pixels: where a reviewer looks


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

    def as_dict(self) -> dict:
        return asdict(self)


def check(text: str, kind: str) -> bool:
    """Does ``text`` have the form of a ``kind`` field (``zip``, ``amount`` or ``digits``)?"""
    return bool(CHECKS[kind].fullmatch(text))


def read_fields(
    classifier: Classifier,
    images: Sequence[bytes],
    kind: str = "digits",
    threshold: float = FIELD_REVIEW_THRESHOLD,
    limits: Limits = FIELD_LIMITS,
) -> list[FieldReading]:
    """Read a batch of field scans: JSON-able readings, one per scan, in order.

    A bad scan becomes an ``error`` item, never a failed batch: this is the worker's entry point.
    Candidate digits of all fields go through the network together: one batch for the blobs, one
    for the cuts of those that may hold touching digits.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown field kind {kind!r}; choose from {KINDS}")
    out: list[FieldReading | None] = [None] * len(images)
    plans: dict[int, _Plan] = {}
    for i, data in enumerate(images):
        try:
            plans[i] = _plan(decode(data, limits))
        except Exception as exc:  # noqa: BLE001 - one odd scan must not sink the batch
            out[i] = _failed(kind, exc)
    first = dict(zip(plans, _classify(classifier, list(plans.values()), 0), strict=True))
    done = {i: len(p.crops) for i, p in plans.items()}
    for i in list(plans):
        try:
            _add_cuts(plans[i], first[i], kind)
        except Exception as exc:  # noqa: BLE001
            out[i] = _failed(kind, exc)
            del plans[i]
    starts = [done[i] for i in plans]
    second = dict(zip(plans, _classify(classifier, list(plans.values()), starts), strict=True))
    for i, plan in plans.items():
        try:
            probs = np.concatenate([first[i][: done[i]], second[i]])
            out[i] = _reading(plan, probs, kind, threshold)
        except Exception as exc:  # noqa: BLE001
            out[i] = _failed(kind, exc)
    return out  # type: ignore[return-value] - every slot is filled above


def _failed(kind: str, exc: Exception) -> FieldReading:
    if isinstance(exc, ScanError):
        return FieldReading("error", kind, error=str(exc))
    return FieldReading("error", kind, error=f"cannot read this field: {exc!r}")


def _classify(
    classifier: Classifier, plans: list[_Plan], starts: int | list[int]
) -> list[np.ndarray]:
    """Probabilities for each plan's crops from its start on, all plans in one batch."""
    starts = [starts] * len(plans) if isinstance(starts, int) else starts
    crops = [c for p, s in zip(plans, starts, strict=True) for c in p.crops[s:]]
    probs = probabilities(classifier, np.stack(crops) if crops else np.zeros((0, 28, 28)))
    ends = np.cumsum([len(p.crops) - s for p, s in zip(plans, starts, strict=True)])
    return np.split(probs, ends[:-1]) if plans else []


def probabilities(classifier: Classifier, pixels: np.ndarray) -> np.ndarray:
    """Class probabilities averaged over the crop and four variants (pen width, slant).

    Fields multiply their digits' confidences, so a confidently wrong digit costs a whole field;
    a mistake rarely survives all the variants, so the average both errs less and is less sure
    when it errs. All variants of all crops go through the network as one batch.
    """
    n = len(pixels)
    if n == 0:
        return np.zeros((0, 10), np.float32)
    x = np.asarray(pixels, np.float32)
    batch = np.concatenate([x, _thicker(x), _thinner(x), _rotated(x, 8.0), _rotated(x, -8.0)])
    return classifier.probabilities(batch).reshape(-1, n, 10).mean(0)


def _thicker(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    grown = np.max([p[:, i : i + 28, j : j + 28] for i in range(3) for j in range(3)], 0)
    return 0.5 * (x + grown)


def _thinner(x: np.ndarray) -> np.ndarray:
    p = np.pad(x, ((0, 0), (0, 1), (0, 1)), constant_values=1.0)
    return np.min([p[:, i : i + 28, j : j + 28] for i in range(2) for j in range(2)], 0)


def _rotated(x: np.ndarray, degrees: float) -> np.ndarray:
    """Bilinear rotation about the centre, for the whole batch at once."""
    a = math.radians(degrees)
    yy, xx = np.mgrid[0:28, 0:28] - 13.5
    sy = math.cos(a) * yy - math.sin(a) * xx + 13.5
    sx = math.sin(a) * yy + math.cos(a) * xx + 13.5
    y0, x0 = np.floor(sy).astype(int), np.floor(sx).astype(int)
    fy, fx = sy - y0, sx - x0
    p = np.pad(x, ((0, 0), (1, 2), (1, 2)))
    y0, x0 = np.clip(y0 + 1, 0, 29), np.clip(x0 + 1, 0, 29)
    return (
        p[:, y0, x0] * (1 - fy) * (1 - fx)
        + p[:, y0, x0 + 1] * (1 - fy) * fx
        + p[:, y0 + 1, x0] * fy * (1 - fx)
        + p[:, y0 + 1, x0 + 1] * fy * fx
    )


# --- ink ------------------------------------------------------------------------------------------


def ink_map(gray: np.ndarray) -> np.ndarray:
    """Ink strength in [0, 1] whatever the polarity, with uneven paper (gradients) removed."""
    g = np.asarray(gray, np.float32)
    lo, med, hi = np.percentile(g, [1, 50, 99])
    if hi - med > med - lo:  # the rare tail is the ink: here it is light on dark paper
        g = 1.0 - g
    raw = np.clip(_paper(g) - g, 0, None)
    peak = float(np.percentile(raw, 99.9))
    if peak < 0.08:  # nothing darker than the paper by more than scanner noise
        return np.zeros_like(g)
    core = raw[raw > 0.5 * peak]
    return np.clip(raw / float(np.median(core)), 0, 1)


def _paper(g: np.ndarray) -> np.ndarray:
    """The paper's brightness: a smooth surface fitted to the pixels that are not ink.

    Least squares on 1, y, x and x^2 (fields are long, so shading can bend along them), refitted
    twice without the pixels far below the fit. Block percentiles fail here: a bold digit can fill
    a whole block, and the paper under it then reads as ink-dark.
    """
    h, w = g.shape
    step = max(1, int(math.sqrt(g.size / 20_000)))
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    y, x = (ys.ravel() - h / 2) / max(h, w), (xs.ravel() - w / 2) / max(h, w)
    design = np.stack([np.ones_like(x), y, x, x * x], 1)
    values = g[::step, ::step].ravel()
    use = np.ones(len(values), bool)
    for _ in range(3):
        coef = np.linalg.lstsq(design[use], values[use], rcond=None)[0]
        residual = values - design @ coef
        spread = max(1.4826 * float(np.median(np.abs(residual[use]))), 0.005)
        use = residual > -2.5 * spread
    yy = (np.arange(h) - h / 2)[:, None] / max(h, w)
    xx = (np.arange(w) - w / 2)[None, :] / max(h, w)
    return (coef[0] + coef[1] * yy + coef[2] * xx + coef[3] * xx * xx).astype(np.float32)


def binarize(ink: np.ndarray) -> np.ndarray:
    return ink > ink_threshold(ink)


def ink_threshold(ink: np.ndarray) -> float:
    """Otsu's threshold on ink strength, kept in a sane band so faint or bold pens both work."""
    hist, edges = np.histogram(ink, bins=64, range=(0, 1))
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * edges[:-1])
    total, grand = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (grand * weight - total * mean) ** 2 / (weight * (total - weight))
    t = float(edges[int(np.nanargmax(between[:-1]))]) if total else 0.5
    return min(max(t, 0.3), 0.6)


# --- rules (underlines, boxes) --------------------------------------------------------------------


def remove_rules(mask: np.ndarray) -> np.ndarray:
    """Drop printed underlines and boxes but keep the digit strokes that cross them.

    A rule is a run far longer than the field is tall; a box side spans from its top rule to its
    bottom one. Only pixels whose run across the rule is no thicker than the rule are removed.
    """
    h, w = mask.shape
    flat = _long_runs(_closed(mask), max(0.4 * w, 1.5 * h)) & mask
    if not flat.any():
        return mask
    thin = _run_lengths(mask.T).T <= _thickness(flat, axis=0) + 2  # noqa: SIM300
    out = mask & ~(flat & thin)
    rows = np.flatnonzero(flat.any(1))
    if rows[-1] - rows[0] > 0.5 * h:  # a top and a bottom rule: look for the box's sides
        tall = _long_runs(out.T, 0.85 * (rows[-1] - rows[0])).T
        if tall.any():
            out &= ~(tall & (_run_lengths(out) <= _thickness(tall, axis=1) + 2))
    return out


def _closed(mask: np.ndarray, gap: int = 2) -> np.ndarray:
    """Rows with gaps of up to ``2 * gap`` pixels bridged: scanned rules break up in places."""
    p = np.pad(mask, ((0, 0), (gap, gap)))
    w = mask.shape[1]
    grown = np.logical_or.reduce([p[:, k : k + w] for k in range(2 * gap + 1)])
    p = np.pad(grown, ((0, 0), (gap, gap)), constant_values=True)
    return np.logical_and.reduce([p[:, k : k + w] for k in range(2 * gap + 1)])


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row, start and end (exclusive) of every horizontal run of True, in row-major order."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)
    return rows, starts, ends


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """Each pixel's horizontal run length (0 off the ink)."""
    rows, starts, ends = _runs(mask)
    out = np.zeros(mask.shape, np.int32)
    for r, s, e in zip(rows, starts, ends, strict=True):
        out[r, s:e] = e - s
    return out


def _long_runs(mask: np.ndarray, length: float) -> np.ndarray:
    rows, starts, ends = _runs(mask)
    out = np.zeros(mask.shape, bool)
    for r, s, e in zip(rows, starts, ends, strict=True):
        if e - s >= length:
            out[r, s:e] = True
    return out


def _thickness(lines: np.ndarray, axis: int) -> int:
    counts = lines.sum(axis)
    return int(np.median(counts[counts > 0]))


# --- components -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Blob:
    """A connected piece of ink (8-connected), by its label in the field's label image."""

    label: int
    x0: int
    y0: int
    x1: int  # exclusive
    y1: int
    area: int

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def cx(self) -> float:
        return (self.x0 + self.x1) / 2

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2


def components(mask: np.ndarray) -> tuple[np.ndarray, list[Blob]]:
    """Label image and blobs, by union-find over horizontal runs (no scipy; runs are few)."""
    rows, starts, ends = _runs(mask)
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = np.searchsorted(rows, np.arange(mask.shape[0] + 1))
    for r in range(1, mask.shape[0]):
        a, a_end, b, b_end = first[r - 1], first[r], first[r], first[r + 1]
        while a < a_end and b < b_end:  # runs of two rows touch if they overlap or meet diagonally
            if starts[a] <= ends[b] and starts[b] <= ends[a]:
                ra, rb = root(a), root(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            if ends[a] < ends[b]:
                a += 1
            else:
                b += 1
    roots = np.array([root(i) for i in range(len(rows))], dtype=np.int64)
    ids, run_label = np.unique(roots, return_inverse=True)
    labels = np.zeros(mask.shape, np.int32)
    for r, s, e, lab in zip(rows, starts, ends, run_label + 1, strict=True):
        labels[r, s:e] = lab
    blobs = []
    for lab in range(1, len(ids) + 1):
        mine = run_label + 1 == lab
        blobs.append(
            Blob(
                lab,
                int(starts[mine].min()),
                int(rows[mine].min()),
                int(ends[mine].max()),
                int(rows[mine].max()) + 1,
                int((ends[mine] - starts[mine]).sum()),
            )
        )
    return labels, blobs


# --- layout: size, baseline, marks ----------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What a field's writing looks like: digit height, pen width, and its top and base lines."""

    height: float
    stroke: float
    slope: float  # of both lines, rows per column: the paper is rarely straight
    top: float  # row of the top line at column 0
    base: float

    def rel(self, x: float, y: float) -> float:
        """0 on the top line, 1 on the baseline."""
        top = self.top + self.slope * x
        return (y - top) / max(self.base - self.top, 1.0)


def layout(blobs: list[Blob], mask: np.ndarray) -> Layout | None:
    """Height from blobs at least half as tall as the tallest, so marks and specks don't count."""
    sizable = [b for b in blobs if b.area >= 4]
    if not sizable:
        return None
    tallest = max(b.h for b in sizable)
    big = [b for b in sizable if b.h >= 0.5 * tallest]
    xs = np.array([b.cx for b in big])
    slope = 0.0
    if len(big) >= 3 and np.ptp(xs) > 0:
        bottoms = np.array([b.y1 for b in big], float)
        slope = float(np.clip(np.polyfit(xs, bottoms, 1)[0], -0.1, 0.1))
    top = float(np.median([b.y0 - slope * b.cx for b in big]))
    base = float(np.median([b.y1 - slope * b.cx for b in big]))
    return Layout(float(np.median([b.h for b in big])), _stroke(mask), slope, top, base)


def _stroke(mask: np.ndarray) -> float:
    """Pen width: twice the ink area over its outline, which is a long stroke's width."""
    p = np.pad(mask, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    outline = int((mask & ~inner).sum())
    return max(1.0, 2.0 * float(mask.sum()) / max(outline, 1))


def mark(b: Blob, lay: Layout, blobs: list[Blob]) -> list[tuple[str, float]]:
    """What separator ``b`` may be, with probabilities; empty when it cannot be one.

    A hyphen is flat and floats mid-line; a dot sits on the baseline; a comma is a dot whose tail
    dips below it. Anything lying over a digit's span is a piece of that digit, not a separator.
    """
    height = lay.height
    if b.h > 0.5 * height or b.w > 1.3 * height:
        return []
    for other in blobs:
        if other.h >= 0.5 * height and min(b.x1, other.x1) - max(b.x0, other.x0) > 0.4 * b.w:
            return []
    rel = lay.rel(b.cx, b.cy)
    if b.w >= 1.2 * b.h and b.w >= 0.15 * height and b.h <= 0.35 * height and 0.25 <= rel <= 0.8:
        return [("-", float(np.clip((b.w / b.h - 1.0) / 0.6, 0.1, 1.0)))]  # sure when flat
    if b.w <= 0.35 * height and min(b.w, b.h) >= 0.5 * lay.stroke and rel >= 0.7:
        below = lay.rel(b.cx, b.y1) - 1.0  # how far the mark reaches under the baseline
        if below > 0.35:
            return []
        if b.h > 1.5 * b.w:
            return [(",", 1.0)]
        comma = float(np.clip((below - 0.06) / 0.12, 0.0, 1.0))  # sure below 6%, sure past 18%
        return [(c, p) for c, p in ((",", comma), (".", 1.0 - comma)) if p > 0]
    return []


def is_speck(b: Blob, lay: Layout) -> bool:
    return max(b.w, b.h) < 0.2 * lay.height or b.area < 0.25 * lay.stroke**2


# --- plan: candidate segmentations and their crops ------------------------------------------------

FAINT = 0.5  # loose ink counts down to this share of the ink threshold
STRAY_REACH = 0.3  # and this far round a digit's box, in digit heights
SKIP = math.log(0.5)  # dropping a small blob that no digit claims
SKIP_MARK = math.log(0.05)  # dropping one shaped and placed like a separator
SPLIT = math.log(0.1)  # base rate: most blobs are one digit, a touching pair is the exception
MARK = math.log(0.9)  # a blob shaped and placed like a separator usually is one
SIDE_BY_SIDE = math.log(0.2)  # two full-height blobs read as one digit
AS_DIGIT = math.log(0.1)  # ...so it is seldom a digit or a piece of the digit beside it
INVALID = math.log(0.02)  # a reading that fails its field's check (a zip of 6 digits)
SLOPES = (-0.3, 0.0, 0.3)  # cut lines follow the writing's slant, columns per row
KEEP = 8  # readings kept per lattice node and digit count
WIDE, NARROW = 1.0, 0.5  # blob widths, in digit heights, always and never tried as two digits
SURE = 0.99  # a blob read alone with less confidence than this is also tried as two digits
CUTS = 6  # candidate splits tried per blob (and two double cuts for very wide ones)
ZIP_DIGITS = (5, 9)
# Lattice scores are sharpened by this before they are weighed against each other (see _reading).
# Chosen on composed zips (separated seeds 0-4, touching 0-2), checked on separated seeds 5-14:
# 1.8 points fewer fields flagged, the same share right among the rest (README).
SHARE_TEMPERATURE = 0.5


@dataclass(frozen=True)
class _Edge:
    """A lattice step: pieces ``start..end-1`` read as ``crops`` (one digit each) or as a mark."""

    end: int
    crops: tuple[int, ...]
    prior: float
    mark: str = ""
    stray: float = 0.0  # loose ink near it over its own (see _stray)


@dataclass(eq=False)
class _Plan:
    """One field's lattice: its pieces, the edges out of each, and the crops the edges read."""

    scale: float  # scan pixels per working pixel
    pieces: list[Blob] = field(default_factory=list)
    edges: list[list[_Edge]] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    whole: dict[int, int] = field(default_factory=dict)  # piece -> crop of it read alone
    work: tuple | None = None  # ink, labels, layout, loose ink: kept until the cuts are planned


def _plan(gray: np.ndarray) -> _Plan:
    gray, scale = _shrink(gray)
    ink = ink_map(gray)
    plan = _Plan(scale)
    if not ink.any():
        return plan
    threshold = ink_threshold(ink)
    mask = ink > threshold
    kept = remove_rules(mask)
    labels, blobs = components(kept)
    lay = layout(blobs, kept)
    if lay is None:
        return plan
    marks = {b.label: mark(b, lay, blobs) for b in blobs}
    plan.pieces = sorted(
        (b for b in blobs if marks[b.label] or not is_speck(b, lay)), key=lambda b: b.cx
    )
    loose = _loose_ink(plan, ink, labels, lay, marks, threshold, mask & ~kept)
    for i, piece in enumerate(plan.pieces):
        edges = _digit_edges(plan, ink, labels, lay, i, marks, loose)
        edges += [_Edge(i + 1, (), MARK + math.log(p), c) for c, p in marks[piece.label]]
        plan.edges.append(edges)
    plan.work = (ink, labels, lay, loose)
    return plan


def _loose_ink(
    plan: _Plan,
    ink: np.ndarray,
    labels: np.ndarray,
    lay: Layout,
    marks: dict,
    threshold: float,
    rules: np.ndarray,
) -> np.ndarray:
    """Ink that no digit-sized piece or separator accounts for: specks, small pieces, and strokes
    too faint to pass the threshold (down to ``FAINT`` of it), off the rules and their rims."""
    solid = [b.label for b in plan.pieces if b.h >= 0.5 * lay.height or marks[b.label]]
    claimed = _dilate(_dilate(np.isin(labels, solid) | rules))
    return np.where((ink > FAINT * threshold) & ~claimed, ink, 0.0)


def _stray(
    ink: np.ndarray, labels: np.ndarray, loose: np.ndarray, group: list[Blob], lay: Layout
) -> float:
    """Loose ink near a candidate digit, as a share of the digit's own ink.

    A reading that leaves ink around a digit unexplained may have lost part of it: a 9 whose faint
    loop fell under the threshold is a clean 1, a 7 whose bar broke off is a clean 1. The network
    cannot know what it was not shown, so the field's confidence has to.
    """
    m = round(STRAY_REACH * lay.height)
    x0, y0 = max(min(b.x0 for b in group) - m, 0), max(min(b.y0 for b in group) - m, 0)
    x1, y1 = max(b.x1 for b in group) + m, max(b.y1 for b in group) + m
    own = np.isin(labels[y0:y1, x0:x1], [b.label for b in group])
    near = _dilate(_dilate(own))
    return float(loose[y0:y1, x0:x1][~near].sum() / max(float(ink[y0:y1, x0:x1][own].sum()), 1e-6))


def _add_cuts(plan: _Plan, probs: np.ndarray, kind: str) -> None:
    """Add split edges for the blobs that may hold touching digits.

    Which ones is decided after a first look: wide blobs always; narrower ones (a "1" touching
    its neighbour is barely wider than one digit) when read alone they look unsure, or when a zip
    code lacks digits. Cutting every blob would multiply the crops for little gain.
    """
    if plan.work is None:
        return
    ink, labels, lay, loose = plan.work
    plan.work = None
    height = lay.height
    full = [i for i, b in enumerate(plan.pieces) if b.h >= 0.5 * height]
    short = kind == "zip" and len(full) not in ZIP_DIGITS
    for i in full:
        piece, crop = plan.pieces[i], plan.whole.get(i)
        unsure = crop is None or probs[crop].max() < SURE or short
        if piece.w >= WIDE * height or (piece.w >= NARROW * height and unsure):
            stray = _stray(ink, labels, loose, [piece], lay)
            plan.edges[i].extend(_cut_edges(plan, ink, labels, piece, lay, i, stray))


def _shrink(gray: np.ndarray) -> tuple[np.ndarray, float]:
    if gray.size <= MAX_PIXELS:
        return gray, 1.0
    f = math.sqrt(MAX_PIXELS / gray.size)
    size = (max(1, round(gray.shape[1] * f)), max(1, round(gray.shape[0] * f)))
    small = Image.fromarray(np.asarray(gray, np.float32), "F").resize(size, Image.Resampling.BOX)
    return np.asarray(small), gray.shape[1] / size[0]


def _digit_edges(
    plan: _Plan,
    ink: np.ndarray,
    labels: np.ndarray,
    lay: Layout,
    i: int,
    marks: dict,
    loose: np.ndarray,
) -> list[_Edge]:
    """From piece ``i``: skip it, or read it with up to two more as one digit."""
    pieces, height = plan.pieces, lay.height
    piece = pieces[i]
    skip = SKIP_MARK if marks[piece.label] else SKIP
    edges = [_Edge(i + 1, (), skip)] if piece.h < 0.5 * height else []
    for j in range(i + 1, min(i + 3, len(pieces)) + 1):
        group = pieces[i:j]
        if j - i > 1 and max(b.x1 for b in group) - min(b.x0 for b in group) > 1.5 * height:
            break
        crop = _add_crop(plan, ink, labels, [b.label for b in group])
        if crop is not None:
            prior = _shape_prior(plan.boxes[crop], lay) + _join_prior(group, lay)
            prior += AS_DIGIT * sum(bool(marks[b.label]) for b in group)
            edges.append(_Edge(j, (crop,), prior, stray=_stray(ink, labels, loose, group, lay)))
            if j == i + 1:
                plan.whole[i] = crop
    return edges


def _shape_prior(box: tuple[int, int, int, int], lay: Layout) -> float:
    """Log prior that a box of this size is one digit: not a fragment, not two digits wide."""
    w, h = (box[2] - box[0]) / lay.height, (box[3] - box[1]) / lay.height
    return 12 * min(0.0, h - 0.6) + 4 * min(0.0, 1.5 - h) + 6 * min(0.0, 1.1 - w)


def _join_prior(group: list[Blob], lay: Layout) -> float:
    """Pieces of one digit overlap or nearly touch; a clear gap between them argues for two.

    Two full-height blobs side by side are two digits far more often than one broken digit.
    """
    ordered = sorted(group, key=lambda b: b.x0)
    reach, gap, tall = ordered[0].x1, 0, 0
    for left, b in zip(ordered, ordered[1:], strict=False):
        gap, reach = max(gap, b.x0 - reach), max(reach, b.x1)
        apart = b.x0 >= left.x1 - 0.3 * min(left.w, b.w)  # a slant may overlap a little
        tall += min(left.h, b.h) >= 0.6 * lay.height and apart
    return -max(0.0, gap - 0.5 * lay.stroke) / lay.stroke + SIDE_BY_SIDE * tall


def _cut_edges(
    plan: _Plan,
    ink: np.ndarray,
    labels: np.ndarray,
    piece: Blob,
    lay: Layout,
    i: int,
    stray: float,
) -> list[_Edge]:
    """Touching digits: the blob split in two (or three, when very wide) at its thinnest joins."""
    mine = labels[piece.y0 : piece.y1, piece.x0 : piece.x1] == piece.label
    lines = _cut_lines(mine, lay)
    options = [(parts, SPLIT - max(0.0, cost - 1.2)) for parts, cost in _splits(mine, lines, lay)]
    if piece.w >= 1.4 * lay.height:
        options += _double_cuts(mine, lines, lay)
    edges = []
    for parts, prior in options:
        crops = [
            _add_crop(plan, ink, labels, [piece.label], (piece.x0, piece.y0, part))
            for part in parts
        ]
        if None not in crops:
            shapes = sum(_shape_prior(plan.boxes[c], lay) for c in crops)
            edges.append(_Edge(i + 1, tuple(crops), prior + shapes, stray=stray))
    return edges


def _sheared(shape: tuple[int, int], slope: float) -> np.ndarray:
    """Each pixel's column measured along the slant: lines of constant value are cut lines."""
    h, w = shape
    return np.arange(w)[None, :] - slope * (np.arange(h)[:, None] - (h - 1) / 2)


def _cut_lines(mine: np.ndarray, lay: Layout) -> list[tuple[float, float, float]]:
    """(ink crossed, position, slope) at the minima of the blob's ink profile along each slant."""
    least = max(1.5 * lay.stroke, 0.15 * lay.height)  # narrowest digit a cut may leave: a "1"
    found = []
    for slope in SLOPES:
        coord = _sheared(mine.shape, slope)[mine]
        lo = coord.min()
        profile = np.convolve(
            np.bincount(np.round(coord - lo).astype(int)), [0.25, 0.5, 0.25], "same"
        )
        for p in range(math.ceil(least), len(profile) - math.ceil(least)):
            if profile[p] <= profile[p - 1] and profile[p] <= profile[p + 1]:
                found.append((float(profile[p]), lo + p, slope))
    even = [
        (math.inf, lo + f * (hi - lo), 0.0)
        for f in (0.3, 0.4, 0.5, 0.6, 0.7)
        for lo, hi in [(0, mine.shape[1] - 1)]
    ]
    return _distinct(sorted(found), lay.stroke)[:4] + even


def _splits(mine: np.ndarray, lines: list, lay: Layout) -> list[tuple[list[np.ndarray], float]]:
    """Two-way splits: along each cut line, cut every stroke it crosses or only one of them.

    Cutting a single crossing (the join) keeps each digit's own strokes whole even where the two
    overlap in x, which no straight cut can do; the cost is the ink cut, in strokes.
    """
    found: dict[bytes, tuple[list[np.ndarray], float]] = {}
    for _, p, slope in lines:
        coord = _sheared(mine.shape, slope)
        band = mine & (np.abs(coord - p) <= 0.75)
        seg_labels, segs = components(band)
        choices = [band] + ([seg_labels == s.label for s in segs] if len(segs) > 1 else [])
        for removed in choices:
            parts = _two_sides(mine, removed, coord < p)
            if parts is None:
                continue
            cost = removed.sum() / (1.5 * lay.stroke)
            key = parts[0].tobytes()
            if key not in found or cost < found[key][1]:
                found[key] = (parts, cost)
    return sorted(found.values(), key=lambda pc: pc[1])[:CUTS]


def _two_sides(
    mine: np.ndarray, removed: np.ndarray, left_side: np.ndarray
) -> list[np.ndarray] | None:
    """The blob minus ``removed``, its pieces sent to the side of the line most of each lies on.

    None when a large piece still straddles the line (the cut did not separate) or a side is tiny.
    """
    rest = mine & ~removed
    labels, pieces = components(rest)
    left = removed & left_side
    total = mine.sum()
    for piece in pieces:
        part = labels == piece.label
        share = (part & left_side).sum() / piece.area
        if min(share, 1 - share) > 0.2 and piece.area > 0.1 * total:
            return None
        if share >= 0.5:
            left |= part
    right = mine & ~left
    if min(left.sum(), right.sum()) < 0.12 * total:
        return None
    return [left, right]


def _double_cuts(mine: np.ndarray, lines: list, lay: Layout) -> list[tuple[list, float]]:
    """Three touching digits: straight cuts at two well-separated lines of the same slant."""
    out = []
    for n, (va, pa, sa) in enumerate(lines):
        for vb, pb, sb in lines[n + 1 :]:
            if sa == sb and abs(pa - pb) >= 0.3 * lay.height and len(out) < 2:
                coord = _sheared(mine.shape, sa)
                a, b = sorted((pa, pb))
                parts = [mine & (coord < a), mine & (coord >= a) & (coord < b), mine & (coord >= b)]
                cost = (va + vb) / lay.stroke
                out.append((parts, 2 * SPLIT - max(0.0, cost - 2.4)))
    return out


def _distinct(cands: list[tuple[float, float, float]], apart: float) -> list:
    """Best cuts first, dropping any that nearly repeats a better one."""
    kept: list[tuple[float, float, float]] = []
    for c in cands:
        if all(abs(c[1] - k[1]) >= apart or c[2] != k[2] for k in kept):
            kept.append(c)
    return kept


def _add_crop(
    plan: _Plan, ink: np.ndarray, labels: np.ndarray, ids: list[int], part=None
) -> int | None:
    """Normalize the ink of blobs ``ids`` (or of ``part``, a mask at an origin) like a single crop.

    Returns the crop's index, or None when nothing is left. Anti-aliased edge pixels come along,
    but never ink that belongs to another blob or to the other side of a cut.
    """
    if part is None:
        blobs = [b for b in plan.pieces if b.label in ids]
        x0, y0 = min(b.x0 for b in blobs), min(b.y0 for b in blobs)
        x1, y1 = max(b.x1 for b in blobs), max(b.y1 for b in blobs)
        inside = np.isin(labels[y0:y1, x0:x1], ids)
    else:
        x0, y0, inside = part
        y1, x1 = y0 + inside.shape[0], x0 + inside.shape[1]
    rows, cols = np.nonzero(inside)
    if len(rows) < 2:
        return None
    # One pixel of slack for the anti-aliased rim, taken from the field where it exists.
    top, left = min(y0, 1), min(x0, 1)
    bottom, right = min(ink.shape[0] - y1, 1), min(ink.shape[1] - x1, 1)
    inside = np.pad(inside, ((top, bottom), (left, right)))
    y0, x0, y1, x1 = y0 - top, x0 - left, y1 + bottom, x1 + right
    grown = _dilate(inside) & ~((labels[y0:y1, x0:x1] > 0) & ~inside)
    # Paper all round, so that the paper is the majority whichever way normalize judges polarity.
    margin = max(y1 - y0, x1 - x0) // 2 + 2
    pixels = np.pad(np.where(grown, ink[y0:y1, x0:x1], 0.0).astype(np.float32), margin)
    crop = normalize_gray(1.0 - pixels)
    if crop.blank:
        return None
    plan.crops.append(crop.pixels)
    rows, cols = rows + top, cols + left
    plan.boxes.append(
        (
            x0 + int(cols.min()),
            y0 + int(rows.min()),
            x0 + int(cols.max()) + 1,
            y0 + int(rows.max()) + 1,
        )
    )
    return len(plan.crops) - 1


def _dilate(mask: np.ndarray) -> np.ndarray:
    p = np.pad(mask, 1)
    h, w = mask.shape
    return np.logical_or.reduce([p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)])


# --- reading: the best path through the lattice ---------------------------------------------------


def _reading(plan: _Plan, probs: np.ndarray, kind: str, threshold: float) -> FieldReading:
    """Best reading by lattice score plus the field check; its share of the candidates' mass."""
    if not any(e.crops for edges in plan.edges for e in edges):
        return FieldReading("blank", kind)
    if not np.all(np.isfinite(probs)):
        return FieldReading("error", kind, error="model returned non-finite probabilities")
    with np.errstate(divide="ignore"):
        logp = np.log(probs.max(1))
    best: dict[str, tuple[float, list[_Edge]]] = {}  # each text by its likeliest segmentation
    mass: dict[str, float] = {}  # and by all the segmentations that read it
    passes: dict[str, bool] = {}  # and whether it has the form of its kind
    for score, path in _paths(plan, logp):
        if not any(e.crops for e in path):
            continue
        text = "".join(e.mark + "".join(str(int(probs[c].argmax())) for c in e.crops) for e in path)
        if text not in passes:
            passes[text] = check(text, kind)
        score += 0.0 if passes[text] else INVALID
        mass[text] = float(np.logaddexp(mass.get(text, -math.inf), score / SHARE_TEMPERATURE))
        if text not in best or score > best[text][0]:
            best[text] = (score, path)
    if not best:
        return FieldReading("error", kind, error="no reading: the field could not be segmented")
    text = max(best, key=lambda t: best[t][0])
    # Picked by its best segmentation (summing would favour texts with many poor ones), but sure
    # only as far as the ways to cut the field into an answer of its kind agree on it: a reading
    # that fails the check is no rival to one that passes (had it won, the field would be flagged
    # as not a zip anyway). The scores mix heuristic priors with log-probabilities and count a
    # reading once per near-identical cut, so their raw ratio overstates the runner-up's chances.
    rivals = [m for t, m in mass.items() if passes[t]] if passes[text] else mass.values()
    share = math.exp(mass[text] - float(np.logaddexp.reduce(list(rivals))))
    return _assemble(plan, probs, text, best[text][1], share, kind, threshold)


def _paths(plan: _Plan, logp: np.ndarray) -> list[tuple[float, list[_Edge]]]:
    """The ``KEEP`` best paths for every digit count: the field check picks among them later."""
    n = len(plan.pieces)
    best: list[dict[int, list[tuple[float, list[_Edge]]]]] = [{} for _ in range(n + 1)]
    best[0][0] = [(0.0, [])]
    for i in range(n):
        for count, paths in best[i].items():
            for e in plan.edges[i]:
                step = e.prior + float(sum(logp[c] for c in e.crops))
                kept = best[e.end].setdefault(count + len(e.crops), [])
                kept.extend((score + step, path + [e]) for score, path in paths)
                kept.sort(key=lambda sp: -sp[0])
                del kept[KEEP:]
    return [sp for paths in best[n].values() for sp in paths]


def _assemble(
    plan: _Plan,
    probs: np.ndarray,
    text: str,
    path: list[_Edge],
    share: float,
    kind: str,
    threshold: float,
) -> FieldReading:
    digits = []
    for c in (c for e in path for c in e.crops):
        order = np.argsort(probs[c])[::-1][:3]
        top3 = [(int(d), round(float(probs[c][d]), 6)) for d in order]
        box = tuple(int(round(v * plan.scale)) for v in plan.boxes[c])
        digits.append(DigitGuess(top3[0][0], top3[0][1], top3, box))
    # Loose ink by one digit discounts the field as much as it weighs against that digit's own, over
    # the level round its other digits: scanner noise and paper texture leave some by every digit.
    strays = [e.stray for e in path if e.crops]
    explained = max(0.0, 1.0 - (max(strays) - float(np.median(strays))))
    confidence = share * explained * math.prod(d.confidence for d in digits)
    valid = check(text, kind)
    reasons = [] if confidence >= threshold else ["low_confidence"]
    reasons += [] if valid else [f"not_{kind}"]
    return FieldReading(
        "ok", kind, text, round(confidence, 6), bool(reasons), valid, digits, reasons
    )
