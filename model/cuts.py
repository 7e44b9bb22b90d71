"""Touching digits cut apart: candidate ways to split one blob into two or three digits.

A pair of digits that touch is one blob, and no single cut is right for every pair: the join may
be thin or thick, upright or slanted, and the two digits may overlap in x. So each blob gets a few
candidate cuts along the minima of its ink profile (three slants) plus evenly spaced fallbacks, and
the field reader's lattice (:mod:`digits.model.lattice`) lets the network and the field's format
pick among them. Each option carries a log prior: cutting is the exception, and cutting much ink is
unlikely to be cutting a join.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from digits.model.segment import Layout, components

SPLIT = math.log(0.1)  # base rate: most blobs are one digit, a touching pair is the exception
SLOPES = (-0.3, 0.0, 0.3)  # cut lines follow the writing's slant, columns per row
CUTS = 6  # candidate splits tried per blob (and two double cuts for very wide ones)
# The free splits kept of a blob another reader put a digit boundary in, beside the splits
# through the boundary (``at``; a blob none of those fits keeps CUTS).
# Chosen on validation documents (seed 100: 600 amounts, 400 zip documents, 400 composed zips)
# as the fewest that keep the pair's right and accepted fields within 0.5% of six: with 6, 3, 2
# and 0 the pair read 1,289, 1,289, 1,290 and 1,288 right and accepted 627, 625, 623 and 567
# (2, 2, 2 and 1 wrong); a field costs 35, 30, 28 and 24 ms (docs/fields.md, session 17).
FREE_SPLITS_GUIDED = 2
GUIDED = 2  # the cheapest splits kept through one boundary the other reader gave (cuts.at)
TRIPLE = 1.4  # blob width, in digit heights, from which three touching digits are tried too

Parts = list[np.ndarray]  # one boolean mask per digit, each the blob's shape


def options(mine: np.ndarray, lay: Layout, most: int = CUTS) -> list[tuple[Parts, float]]:
    """Ways to split the blob ``mine`` (its mask, cropped to its box), each with its log prior:
    the ``most`` (at most CUTS) cheapest two-way splits, and the double cuts of a very wide
    blob."""
    lines = cut_lines(mine, lay)
    found = [
        (parts, SPLIT - max(0.0, cost - 1.2)) for parts, cost in splits(mine, lines, lay)[:most]
    ]
    if mine.shape[1] >= TRIPLE * lay.height:
        found += double_cuts(mine, lines, lay)
    return found


def at(mine: np.ndarray, bounds: list[float], lay: Layout) -> list[tuple[Parts, float]]:
    """Splits at the columns ``bounds`` another reader puts between digits (``lattice.Guide``).

    One boundary: the two cheapest two-way splits along the slants through it, the join cut or
    every stroke crossed, priced like any other cut. Several (a run of tied zeros): straight cuts
    at all of them along each slant, one part per digit, priced as that many cuts whatever ink
    they cross (a chain of loops is crossed twice at every joint). They only add candidates; the
    network and the lattice still choose.
    """
    if not bounds:
        return []
    if len(bounds) == 1:
        lines = [(0.0, bounds[0], slope) for slope in SLOPES]
        found = splits(mine, lines, lay)[:GUIDED]
        return [(parts, SPLIT - max(0.0, cost - 1.2)) for parts, cost in found]
    out: list[tuple[Parts, float]] = []
    for slope in SLOPES:
        coord = sheared(mine.shape, slope)
        edges = [-math.inf, *sorted(bounds), math.inf]
        parts = [mine & (coord >= a) & (coord < b) for a, b in zip(edges, edges[1:], strict=False)]
        if all(np.count_nonzero(part) >= 2 for part in parts):
            out.append((parts, len(bounds) * SPLIT))
    return out


def sheared(shape: tuple[int, int], slope: float) -> np.ndarray:
    """Each pixel's column measured along the slant: lines of constant value are cut lines."""
    h, w = shape
    return np.arange(w)[None, :] - slope * (np.arange(h)[:, None] - (h - 1) / 2)


def cut_lines(mine: np.ndarray, lay: Layout) -> list[tuple[float, float, float]]:
    """(ink crossed, position, slope) at the minima of the blob's ink profile along each slant."""
    least = max(1.5 * lay.stroke, 0.15 * lay.height)  # narrowest digit a cut may leave: a "1"
    found = []
    for slope in SLOPES:
        coord = sheared(mine.shape, slope)[mine]
        lo = coord.min()
        profile = np.convolve(
            np.bincount(np.round(coord - lo).astype(int)), [0.25, 0.5, 0.25], "same"
        )
        for p in range(math.ceil(least), len(profile) - math.ceil(least)):
            if profile[p] <= profile[p - 1] and profile[p] <= profile[p + 1]:
                found.append((float(profile[p]), lo + p, slope))
    right = mine.shape[1] - 1
    even = [(math.inf, f * right, 0.0) for f in (0.3, 0.4, 0.5, 0.6, 0.7)]
    return _distinct(sorted(found), lay.stroke)[:4] + even


def splits(mine: np.ndarray, lines: list, lay: Layout) -> list[tuple[Parts, float]]:
    """Two-way splits: along each cut line, cut every stroke it crosses or only one of them.

    Cutting a single crossing (the join) keeps each digit's own strokes whole even where the two
    overlap in x, which no straight cut can do; the cost is the ink cut, in strokes.
    """
    found: dict[bytes, tuple[Parts, float]] = {}
    for _, p, slope in lines:
        coord = sheared(mine.shape, slope)
        band = mine & (np.abs(coord - p) <= 0.75)
        seg_labels, segs = components(band)
        choices = [band] + ([seg_labels == s.label for s in segs] if len(segs) > 1 else [])
        for removed in choices:
            parts = _two_sides(mine, removed, coord < p)
            if parts is None:
                continue
            cost = np.count_nonzero(removed) / (1.5 * lay.stroke)
            key = parts[0].tobytes()
            if key not in found or cost < found[key][1]:
                found[key] = (parts, cost)
    return sorted(found.values(), key=lambda pc: pc[1])[:CUTS]


def _two_sides(mine: np.ndarray, removed: np.ndarray, left_side: np.ndarray) -> Parts | None:
    """The blob minus ``removed``, its pieces sent to the side of the line most of each lies on.

    None when a large piece still straddles the line (the cut did not separate) or a side is tiny.
    """
    rest = mine & ~removed
    # Straight from OpenCV: the pieces' order does not matter here, so no renumbering.
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        rest.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    area = stats[1:, cv2.CC_STAT_AREA]
    share = np.bincount(labels[rest & left_side], minlength=count)[1:] / np.maximum(area, 1)
    total = np.count_nonzero(mine)
    if np.any((np.minimum(share, 1 - share) > 0.2) & (area > 0.1 * total)):
        return None
    to_left = np.zeros(count, bool)
    to_left[1:] = share >= 0.5
    left = (removed & left_side) | to_left[labels]
    right = mine & ~left
    if min(np.count_nonzero(left), np.count_nonzero(right)) < 0.12 * total:
        return None
    return [left, right]


def double_cuts(mine: np.ndarray, lines: list, lay: Layout) -> list[tuple[Parts, float]]:
    """Three touching digits: straight cuts at two well-separated lines of the same slant."""
    out: list[tuple[Parts, float]] = []
    for n, (va, pa, sa) in enumerate(lines):
        for vb, pb, sb in lines[n + 1 :]:
            if sa == sb and abs(pa - pb) >= 0.3 * lay.height and len(out) < 2:
                coord = sheared(mine.shape, sa)
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
