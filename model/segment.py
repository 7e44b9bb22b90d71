"""A field's ink in pieces: ink strength, printed rules removed, connected blobs, the writing's
layout (digit height, pen width, baseline) and which small blobs may be separators.

This is the geometry the field reader (:mod:`digits.model.fields`) builds its lattice on. The
morphology and labelling run in OpenCV (directly or through :mod:`digits.model.imageops`); what is
left in numpy is what OpenCV has no call for (the paper fit, Otsu on float ink, the run profile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from digits.model import imageops

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
    """Otsu's threshold on ink strength, kept in a sane band so faint or bold pens both work.

    On 64 bins of the float ink rather than OpenCV's 256 of uint8: the band and the readings were
    tuned on these bins, and the histogram is a small share of a field's time.
    """
    hist, edges = np.histogram(ink, bins=64, range=(0, 1))
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * edges[:-1])
    total, grand = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (grand * weight - total * mean) ** 2 / (weight * (total - weight))
    t = float(edges[int(np.nanargmax(between[:-1]))]) if total else 0.5
    return min(max(t, 0.3), 0.6)


def dilate(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """A boolean mask grown by ``radius`` pixels (a square); outside the image counts as paper."""
    return imageops.dilate(np.ascontiguousarray(mask, bool), radius)


# --- rules (underlines, boxes) --------------------------------------------------------------------


def remove_rules(mask: np.ndarray) -> np.ndarray:
    """Drop printed underlines and boxes but keep the digit strokes that cross them.

    A rule is a run far longer than the field is tall; a box side spans from its top rule to its
    bottom one. Only pixels whose run across the rule is no thicker than the rule are removed.
    """
    h, w = mask.shape
    flat = long_runs(imageops.bridged(mask), max(0.4 * w, 1.5 * h)) & mask
    if not flat.any():
        return mask
    thin = ~long_runs(mask, _thickness(flat, axis=0) + 3, vertical=True)
    out = mask & ~(flat & thin)
    rows = np.flatnonzero(flat.any(1))
    if rows[-1] - rows[0] > 0.5 * h:  # a top and a bottom rule: look for the box's sides
        tall = long_runs(out, 0.85 * (rows[-1] - rows[0]), vertical=True)
        if tall.any():
            out &= ~(tall & ~long_runs(out, _thickness(tall, axis=1) + 3))
    return out


def _u8(mask: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mask, bool).view(np.uint8)


def long_runs(mask: np.ndarray, length: float, vertical: bool = False) -> np.ndarray:
    """The pixels of the runs (rows, or columns when ``vertical``) at least ``length`` long.

    An opening by a line of that length: it keeps exactly the pixels some such line fits over.
    The erosion counts the outside as paper, so a run cut by the image edge is as long as it looks.
    """
    n = max(1, math.ceil(length))
    limit = mask.shape[0] if vertical else mask.shape[1]
    if n > limit:
        return np.zeros(mask.shape, bool)
    kernel = np.ones((n, 1) if vertical else (1, n), np.uint8)
    # Anchored at the line's first pixel, then at its last, so that even lengths stay exact.
    start, end = ((0, 0), (0, n - 1)) if vertical else ((0, 0), (n - 1, 0))
    core = cv2.erode(_u8(mask), kernel, anchor=start, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.dilate(core, kernel, anchor=end).view(bool)


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
    """Label image and blobs, numbered from 1 in the raster order of each blob's first pixel."""
    found = imageops.components(mask)
    blobs = [Blob(k, *map(int, box)) for k, box in enumerate(found.boxes.tolist(), 1)]
    return found.labels, blobs


def with_labels(labels: np.ndarray, ids: list[int]) -> np.ndarray:
    """Where ``labels`` is one of ``ids``: a lookup table, far cheaper than np.isin per call."""
    lut = np.zeros(int(labels.max(initial=0)) + 1, bool)
    lut[[i for i in ids if i < len(lut)]] = True
    return lut[labels]


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
    return Layout(float(np.median([b.h for b in big])), stroke_width(mask), slope, top, base)


_CROSS = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))


def stroke_width(mask: np.ndarray) -> float:
    """Pen width: twice the ink area over its outline, which is a long stroke's width.

    The outline is the ink an erosion by a cross removes, the image edge counting as paper.
    """
    inner = cv2.erode(_u8(mask), _CROSS, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    area = int(np.count_nonzero(mask))
    outline = area - int(np.count_nonzero(inner))
    return max(1.0, 2.0 * float(area) / max(outline, 1))


def tall_spans(blobs: list[Blob], lay: Layout) -> np.ndarray:
    """The spans (x0, x1) of the blobs at least half a digit high: the digits, or their large
    parts, that a mark must not lie over (:func:`mark`)."""
    return np.array([(b.x0, b.x1) for b in blobs if b.h >= 0.5 * lay.height], int).reshape(-1, 2)


def mark(b: Blob, lay: Layout, digits: np.ndarray) -> list[tuple[str, float]]:
    """What separator ``b`` may be, with probabilities; empty when it cannot be one.

    A hyphen is flat and floats mid-line; a dot sits on the baseline; a comma is a dot whose tail
    dips below it. Anything lying over a digit's span (``digits``: the field's
    :func:`tall_spans`, found once for all its blobs: a speckled scan has thousands) is a piece
    of that digit, not a separator.
    """
    height = lay.height
    if b.h > 0.5 * height or b.w > 1.3 * height:
        return []
    found = _shaped_mark(b, lay)
    if found:
        overlap = np.minimum(b.x1, digits[:, 1]) - np.maximum(b.x0, digits[:, 0])
        if np.any(overlap > 0.4 * b.w):
            return []
    return found


def _shaped_mark(b: Blob, lay: Layout) -> list[tuple[str, float]]:
    """What separator ``b`` may be by its shape and its place on the line alone."""
    height = lay.height
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
