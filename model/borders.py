"""Form lines in a crop: the frame of the cell a digit was written in, and the rule under it.

A crop cut from a form by its template's coordinates often keeps part of its cell's frame: a
printed line along one edge or more, as dark as the ink and longer than any stroke; a digit
written on a printed line has it through its foot. Left in, the line is the largest piece of
ink, and a frame darkens the border the paper is read from (:mod:`digits.model.paper`): with the
whole frame a crop reads as light ink on dark paper. Scan-like MNIST test digits with a line along
one edge were read right 32-43% of the time, with the whole frame 8%, on a rule 39%, and 7-56% of
such crops were accepted wrong; with the lines painted over here, 96-98% are read right and
at most about 1% accepted wrong (``python -m digits.cli.devtools.cell_borders --seed 1``;
docs/evaluation.md has the table).

Form readers remove such lines before reading, and this finds them the same way: a morphological
opening with a line SPAN of the crop's side long keeps only straight runs of dark pixels that long
(gaps of a few pixels, where noise lifts a pale line over the threshold, bridged first; a crop is
looked at only when a row or column is that dark before bridging). A run of at most THICK of the
crop's smaller side is a line of the frame when it starts or ends within BAND of an edge, and a
rule when it runs across the crop over RULE_SPAN of its width (never down it: that is a one's
stem). What is never touched: arrays under MIN_SIDE pixels a side (MNIST-style 28x28 arrays,
16x16 bitmaps, whose digits are stretched edge to edge), crops whose other ink spans over REST of
them both ways (a digit stretched to fill its box: a seven's bar, a two's foot), a rule where the
other ink spans the crop across (a crop cut tight from side to side, whose bar is as straight),
and light ink on dark paper. The lines are painted over before anything else is measured: a
frame's with the paper just inside it, a rule's with the darker of the rows beside it, so strokes
crossing it stay whole.

Another frame is not printed but added: a flat pad of white or black round a scan, a client's
padding to a size. :func:`padded` finds it, and normalization marks such a crop for a person.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np

from digits.model import imageops
from digits.model.paper import ring_of

SPAN = 0.8  # a frame's line runs straight along at least this share of the crop's side...
BAND = 0.15  # ...lies within this share of the crop's smaller side from its edge...
THICK = 0.1  # ...and is at most this share of the smaller side thick (MIN_THICK pixels at least)
MIN_THICK = 2
RULE_SPAN = 0.95  # a line across the crop, away from the edges, is a rule when it crosses this
REST = 0.9  # ...and the rest of the ink spans at most this share of the crop across
DARK = 0.2  # dark: under the crop's mean by this share of the way to its darkest pixel
MIN_RANGE = 0.1  # a crop with less contrast than this has no line to find
MIN_SIDE = 29  # normalize.FIELD + 1: 28x28 MNIST-style arrays and 16x16 bitmaps are never looked at
# A pad round a crop (:func:`padded`): edge rows and columns within PAD_FLAT of one grey level,
# which no pixel inside comes within PAD_REACH of, PAD_APART from the paper just inside it.
PAD_FLAT = 0.04
PAD_REACH = 0.01
PAD_APART = 0.1


class Line(NamedTuple):
    """A line found along rows ``start`` to ``stop`` (columns, in a transposed mask)."""

    start: int
    stop: int
    pixels: np.ndarray  # which of those rows' pixels are the line's
    edge: bool  # a frame's line along an edge; else a rule across the crop


def clear(work: np.ndarray) -> np.ndarray:
    """The grey working copy (ink dark) with its frame's lines and any rule across it painted
    over; ``work`` itself, untouched, when it has none.

    Cheap where there is none (docs/performance.md): only a crop with a row or column dark for
    most of its length (before gaps are bridged) is looked at closely.
    """
    h, w = work.shape
    if min(h, w) < MIN_SIDE:
        return work
    image = work if work.flags.c_contiguous else np.ascontiguousarray(work)
    low, high = cv2.minMaxLoc(image)[:2]
    mean = cv2.mean(image)[0]
    # Dark ink on light paper: mostly paper, so the mean lies nearer the light end. Light ink on
    # dark paper (its dark margins are no frame) is left to the paper step as it is.
    if mean - low < MIN_RANGE or high - mean > mean - low:
        return work
    threshold = mean - DARK * (mean - low)
    side = min(h, w)
    # The dark pixels of each row and column, counted in OpenCV's float arithmetic (about half
    # the cost of comparing and counting booleans): exact, as counts under 2**24 are.
    ones = cv2.threshold(image, threshold, 1.0, cv2.THRESH_BINARY_INV)[1]
    rows = cv2.reduce(ones, 1, cv2.REDUCE_SUM)
    cols = cv2.reduce(ones, 0, cv2.REDUCE_SUM)
    if cv2.minMaxLoc(rows)[1] < SPAN * w and cv2.minMaxLoc(cols)[1] < SPAN * h:
        return work  # nearly every crop: no row or column that dark anywhere
    if not (
        _worth_a_look(rows.ravel(), w, side, rules=True)
        or _worth_a_look(cols.ravel(), h, side, rules=False)
    ):
        return work
    dark = ones > 0
    # Rules only across: a stroke down the whole crop is a one's or a seven's stem.
    across = _lines(dark, side, rules=True)
    down = _lines(np.ascontiguousarray(dark.T), side, rules=False)
    if not (across or down):
        return work
    band = np.zeros_like(dark)
    for line in across:
        band[max(0, line.start - 1) : line.stop + 1] = True
    for line in down:
        band[:, max(0, line.start - 1) : line.stop + 1] = True
    rest = dark & ~band
    # A digit stretched to fill its box has such runs too (a seven's bar, a two's foot), but the
    # rest of it then fills the crop both ways; a frame's digit leaves paper beside it. A crop
    # cut tight from side to side has its bar across it as straight as a rule: a rule must also
    # cross paper at one end of the rest of the ink at least.
    wide = _extent(rest, 0) > REST * w
    if wide and _extent(rest, 1) > REST * h:
        return work
    if wide:
        across = [line for line in across if line.edge]
    if not (across or down):
        return work
    out = image.copy()
    for lines, view in ((across, out), (down, out.T)):  # the transpose writes through to out
        # The innermost first: an outer line of a double frame is painted from the paper
        # inside both, not from the inner line.
        for line in sorted(lines, key=lambda k: -min(k.start, len(view) - k.stop)):
            _paint(view, line)
    return out


def _worth_a_look(counts: np.ndarray, length: int, side: int, rules: bool) -> bool:
    """Does a row (or column) in the band along either edge hold SPAN of its ``length`` pixels
    dark, or (``rules``) any row RULE_SPAN of them? ``counts`` are the dark pixels of each."""
    span = math.ceil(SPAN * length)
    most = counts.max()
    if most < span:
        return False
    if rules and most >= math.ceil(RULE_SPAN * length):
        return True
    band = max(MIN_THICK, math.ceil(BAND * side))
    return bool(counts[:band].max() >= span or counts[-band:].max() >= span)


def _lines(dark: np.ndarray, side: int, rules: bool) -> list[Line]:
    """The horizontal lines of a boolean mask of dark pixels: a frame's along its top or bottom
    edge, and (``rules``) rules across it; transpose for the vertical ones. ``side`` is the
    crop's smaller side, which the band and the thickness are shares of."""
    h, w = dark.shape
    span = math.ceil(SPAN * w)
    band = max(MIN_THICK, math.ceil(BAND * side))
    # Noise lifts a few pixels of a pale line over the threshold: gaps that short are bridged
    # first, then only runs of ``span`` are kept. Not ``segment.long_runs``: its opening ends a
    # run at the crop's edge, where OpenCV's default lets a run go on past it, and measured that
    # way whole frames read 95.2% right instead of 96.7% (``cell_borders --seed 1``).
    lined = imageops.bridged(dark).view(np.uint8)
    straight = cv2.morphologyEx(lined, cv2.MORPH_OPEN, np.ones((1, span), np.uint8)).view(bool)
    thick = max(MIN_THICK, round(THICK * side))
    rule = math.ceil(RULE_SPAN * w)
    found = []
    for start, stop in _runs(straight.any(axis=1)):
        if stop - start > thick:
            continue
        pixels = straight[start:stop]
        edge = stop <= band or start >= h - band
        if edge or (rules and np.count_nonzero(pixels.any(axis=0)) >= rule):
            found.append(Line(start, stop, pixels, edge))
    return found


def _paint(image: np.ndarray, line: Line) -> None:
    """Paint one line's pixels, and a pixel round them for their rims: a frame's with the row
    just past them on the crop's inner side (the paper there, its gradient and its noise, and a
    stroke that touched the line carried over the rows it hid); a rule's with the darker of the
    rows just above and below it, so a stroke that crosses it stays whole and paper stays paper
    (a stroke that only touched it is carried over it, as by a frame's)."""
    h = image.shape[0]
    lo, hi = max(0, line.start - 1), min(h, line.stop + 1)
    grown = np.zeros((hi - lo, image.shape[1]), bool)
    grown[line.start - lo : line.stop - lo] = line.pixels
    grown = imageops.dilate(grown, 1)
    if line.edge:
        inner = hi if line.start < h - line.stop else lo - 1  # away from the nearer edge
        if not 0 <= inner < h:
            return  # a line as tall as the crop is no frame: _lines never passes one
        source = image[inner]
    else:
        source = np.minimum(image[max(0, lo - 1)], image[min(h - 1, hi)])
    image[lo:hi] = np.where(grown, source, image[lo:hi])


def _extent(mask: np.ndarray, axis: int) -> int:
    """How far the mask's pixels reach across ``axis`` 0 (columns) or down 1 (rows), from the
    first to the last inclusive (0 when it has none)."""
    found = np.flatnonzero(mask.any(axis=axis))
    return int(found[-1] - found[0] + 1) if len(found) else 0


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flags.view(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def padded(gray: np.ndarray) -> bool:
    """Is the crop inside a flat frame that is not its paper: a client's white or black padding
    round a scan (docs/evaluation.md, "Crops padded with a flat margin")?

    The normalizer takes such a frame for the paper and the greyer paper inside it for ink, and
    reads garbage, often sure of it (8 px of white round scan-like crops: 22% right, 13% accepted
    wrong); such a crop goes to a person. A clean crop's margin is as flat, but it is its paper:
    its digit's grey edges reach the margin's level, or the paper just inside is at it.
    """
    h, w = gray.shape
    if h < 3 or w < 3:
        return False
    image = np.ascontiguousarray(gray, np.float32)
    # Each side's outermost line first: on scanned paper none is flat, and nearly every crop
    # stops here.
    top = _flat_run(image, range(h))
    if top == h:
        return False  # all flat: a blank crop
    bottom = _flat_run(image, range(h - 1, top, -1))
    left = _flat_run(image, range(w), columns=True)
    right = _flat_run(image, range(w - 1, left, -1), columns=True)
    if not (top or bottom or left or right):
        return False
    sides = (image[:top], image[h - bottom :], image[:, :left], image[:, w - right :])
    pad = np.concatenate([side.ravel() for side in sides])
    if pad.max() - pad.min() > PAD_FLAT:
        return False  # flat sides of different levels: not one pad
    level = float(pad.mean())
    inner = image[top : h - bottom, left : w - right]
    darkest, lightest = cv2.minMaxLoc(inner)[:2]
    reach = level - lightest if level > lightest else darkest - level  # 0 or less: inside its range
    return reach > PAD_REACH and abs(float(np.median(ring_of(inner))) - level) > PAD_APART


def _flat_run(image: np.ndarray, lines: range, columns: bool = False) -> int:
    """How many of ``lines`` (rows, or ``columns``; in that order) are flat, from the first on."""
    count = 0
    for line in lines:
        low, high = cv2.minMaxLoc(image[:, line : line + 1] if columns else image[line])[:2]
        if high - low > PAD_FLAT:
            break
        count += 1
    return count
