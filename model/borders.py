"""Form lines in a crop: the frame of the cell a digit was written in, and the rule under it.

A crop cut from a form by its template's coordinates often keeps part of its cell's frame: a
printed line along one edge or more, as dark as the ink and longer than any stroke; a digit
written on a printed line has it through its foot. Left in, the line is the largest piece of
ink, and a frame darkens the border the paper is read from (:mod:`digits.model.paper`): with the
whole frame a crop reads as light ink on dark paper. Scan-like MNIST test digits with a line along
one edge were read right 32-43% of the time, with the whole frame 8%, on a rule 39%, and 7-56% of
such crops were accepted wrong; with the lines painted over here, 96.7-98.4% are read right and
0.2-1.05% accepted wrong (``python -m digits.cli.devtools.cell_borders --seed 1``;
docs/evaluation.md).

Form readers remove such lines before reading, and this finds them the same way: a morphological
opening with a line SPAN of the crop's side long keeps only straight runs of dark pixels that long
(gaps of a few pixels, where noise lifts a pale line over the threshold, bridged first). A run of
at most THICK of the crop is a line of the frame when it starts or ends within BAND of an edge,
and a rule anywhere when it crosses RULE_SPAN of the crop. Digits stretched to fill their box have
runs as straight along their edges (a seven's bar, a two's foot), so two kinds of crop are never
touched: arrays under MIN_SIDE pixels a side (MNIST-style 28x28 arrays, 16x16 bitmaps), and crops
whose other ink spans over REST of them both ways. The lines are painted over before anything
else is measured: a frame's with the paper just inside it, a rule's with the darker of the rows
beside it, so strokes crossing it stay whole.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SPAN = 0.8  # a frame's line runs straight along at least this share of the crop's side...
BAND = 0.15  # ...lies within this share of the other side from its edge...
THICK = 0.1  # ...and is at most this share of the other side thick (MIN_THICK pixels at least)
MIN_THICK = 2
DARK = 0.2  # dark: under the crop's mean by this share of the way to its darkest pixel
MIN_RANGE = 0.1  # a crop with less contrast than this has no line to find
MIN_SIDE = 29  # smaller arrays (28x28 MNIST-style, 16x16 bitmaps) hold digits edge to edge
_BRIDGE = np.ones((1, 5), np.uint8)  # gaps of up to four pixels along a line
REST = 0.9  # the rest of the ink spans at most this share of the side the lines run along
RULE_SPAN = 0.95  # a line away from the edges is a printed rule when it crosses this much of it


def clear(work: np.ndarray) -> np.ndarray:
    """The grey working copy (float32, ink dark) with its frame's lines painted over from the
    paper beside them; ``work`` itself, untouched, when it has none.

    Cheap where there is none (about 10 us a crop): only a crop whose edge's band holds a row or
    column dark for most of its length is looked at closely.
    """
    h, w = work.shape
    if min(h, w) < MIN_SIDE:
        return work
    work = np.ascontiguousarray(work)
    low = cv2.minMaxLoc(work)[0]
    mean = cv2.mean(work)[0]
    if mean - low < MIN_RANGE:
        return work
    dark = work < np.float32(mean - DARK * (mean - low))
    counts = dark.view(np.uint8)
    rows = cv2.reduce(counts, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    cols = cv2.reduce(counts, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()
    if not (_edge_full(rows, w) or _edge_full(cols, h)):
        return work
    across, down = _lines(dark), _lines(np.ascontiguousarray(dark.T))
    if not (across or down):
        return work
    # A digit stretched to fill its box has such runs too (a seven's bar, a two's foot), but the
    # rest of it then fills the crop both ways; a frame's digit leaves paper beside it.
    band = np.zeros_like(dark)
    for start, stop, *_ in across:
        band[max(0, start - 1) : stop + 1] = True
    for start, stop, *_ in down:
        band[:, max(0, start - 1) : stop + 1] = True
    rest = dark & ~band
    if _extent(rest, 0) > REST * w and _extent(rest, 1) > REST * h:
        return work
    out = work.copy()
    for lines, view in ((across, out), (down, out.T)):  # the transpose writes through to out
        for start, stop, pixels, edge in lines:
            _paint(view, start, stop, pixels, edge)
    return out


def _edge_full(counts: np.ndarray, length: int) -> bool:
    """Does a row (or column) in the band along either edge hold SPAN of its ``length`` pixels
    dark, or any row RULE_SPAN of them? ``counts`` are the dark pixels of each."""
    span = math.ceil(SPAN * length)
    most = counts.max()
    if most < span:  # nearly every crop: no row that dark anywhere
        return False
    if most >= math.ceil(RULE_SPAN * length):
        return True
    band = max(MIN_THICK, math.ceil(BAND * len(counts)))
    return bool(counts[:band].max() >= span or counts[-band:].max() >= span)


def _lines(dark: np.ndarray) -> list[tuple[int, int, np.ndarray, bool]]:
    """The frame's horizontal lines in a boolean mask of dark pixels (along its top or bottom
    edge), as (first row, row after the last, their pixels); transpose for the vertical ones."""
    h, w = dark.shape
    span = math.ceil(SPAN * w)
    band = max(MIN_THICK, math.ceil(BAND * h))
    # Noise lifts a few pixels of a pale line over the threshold: gaps that short are bridged
    # first, then only runs of ``span`` are kept.
    bridged = cv2.morphologyEx(dark.view(np.uint8), cv2.MORPH_CLOSE, _BRIDGE)
    straight = cv2.morphologyEx(bridged, cv2.MORPH_OPEN, np.ones((1, span), np.uint8)).view(bool)
    thick = max(MIN_THICK, round(THICK * h))
    rule = math.ceil(RULE_SPAN * w)
    found = []
    for start, stop in _runs(straight.any(axis=1)):
        if stop - start > thick:
            continue
        pixels = straight[start:stop]
        edge = stop <= band or start >= h - band
        if edge or np.count_nonzero(pixels.any(axis=0)) >= rule:
            found.append((start, stop, pixels, edge))
    return found


def _paint(image: np.ndarray, start: int, stop: int, pixels: np.ndarray, edge: bool) -> None:
    """Paint one line's pixels (rows ``start`` to ``stop``), and a pixel round them for their
    rims: a frame's with the row just past them on the crop's inner side (the paper there, its
    gradient and its noise, and a stroke that touched the line carried over the rows it hid);
    a rule across the crop with the darker of the rows just above and below it, so a stroke
    that crosses it stays whole and paper stays paper."""
    h = image.shape[0]
    lo, hi = max(0, start - 1), min(h, stop + 1)
    grown = np.zeros((hi - lo, image.shape[1]), bool)
    grown[start - lo : stop - lo] = pixels
    grown = cv2.dilate(grown.view(np.uint8), np.ones((3, 3), np.uint8)).view(bool)
    if edge:
        inner = hi if start < h - stop else lo - 1  # the side away from the nearer edge
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
