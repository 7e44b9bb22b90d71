"""Which side of the paper the ink is on, and the paper under it: the first step of normalization.

A crop's paper is a plane (brightness plus a gradient: uneven lighting and scanner falloff at the
scale of one digit), estimated from 4x4 blocks of the crop; ink is the contrast against it, positive
whichever polarity the crop has. :func:`ink_contrasts` is the entry point
(:mod:`digits.model.normalize` calls it on the working copies of a group of crops).

The planes of a group are fitted together. Per crop, each block's order statistics are read off
its sorted pixels (numpy does that well); the fits that follow are a few dozen operations on
sixteen numbers each, which crop by crop cost more in Python's per-operation overhead than in
arithmetic (a third of a crop's normalization). Fitted as (crops, blocks) arrays, every step runs
once for the group. The arithmetic is the one-crop arithmetic the fits had before they were
grouped, in the same order: every sum left to right (``np.cumsum``), every median the upper one of
the blocks it is taken over. So a crop's paper does not depend on the group it came in, and every
normalized crop is what it was before (3,000 benchmark files, 2,329 field pieces and a fuzz of
31,000 synthetic crops compared; only the sign of a zero contrast can differ, on a caller's array
holding -0.0). A group of one pays the arrays' overhead: a crop normalized alone takes about a
quarter of a millisecond more than one in a group.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

TAIL_SHARE = 0.0  # polarity looks at each block's darkest and lightest pixel...
TAIL_MARGIN = 0.03  # ...where they stray further than this from the paper plane
PAPER_SHARE = 0.1  # paper-side percentile of a block: ink moves it only when covering 90% of it
PLANE_TOLERANCE = 0.02  # blocks this close to the paper plane are never rejected as ink
# A plane with over SUNK_SHARE of the crop more than SUNK paler than it sank into the ink; the
# paper is then flat, at the level of the crop's FLAT_PAPER_SHARE palest pixels (paper side).
SUNK = 0.15
SUNK_SHARE = 0.05
FLAT_PAPER_SHARE = 0.05
DARK_PAPER = 0.3  # a border this share of the crop's range darker than its medians is dark paper
SPREAD = 2.5 * 1.4826  # blocks within this many robust deviations (MAD) of a plane are paper
BLOCKS = 4  # blocks a side (fewer on an image under four pixels a side)
MIN_FIT = 4  # a plane is refitted only to at least this many blocks
# Columns of a block's order statistics (_Grid.ranks), darkest first.
LOW, DARK_SIDE, MIDDLE, LIGHT_SIDE, HIGH = range(5)

# How far ink must stand above the paper (:func:`paper_and_ink`). Multiples of the crop's own
# noise, but for MIN_CONTRAST, which with TAIL_MARGIN says what cannot be ink at all.
MIN_CONTRAST = 0.1  # ink fainter than this against the paper (25 grey levels) is a stain, not ink
NOISE_SIGMAS = 5.0  # a smoothed pixel must stand this many noise deviations above the paper...
MIN_SNR = 6.0  # ...and stroke cores this many, or the crop is faint (docs/evaluation.md "Faint")
# ...or, on patterned paper, this many times the darkness the crop's border ring reaches at its
# PATTERN_QUANTILE, where that is less (docs/evaluation.md "Digits on security paper").
PATTERN_FACTOR = 3.0
PATTERN_QUANTILE = 0.95


def ink_contrast(work: np.ndarray) -> np.ndarray:
    """One crop's ink as positive contrast above its paper (:func:`ink_contrasts`)."""
    return ink_contrasts([work])[0]


class Levels(NamedTuple):
    """What a smoothed contrast image says of its paper and its ink (:func:`paper_and_ink`)."""

    paper: float  # the paper's level
    level: float  # the stroke cores' contrast above it
    floor: float  # the least contrast above it that can be ink
    faint: bool  # cores under MIN_SNR noise deviations: read, but not trusted alone


def paper_and_ink(smooth: np.ndarray, pattern: bool = False) -> Levels | None:
    """The paper's level, its ink's and the floor between them; None when nothing stands out.

    Paper and its noise come from the 5th and 15th percentiles, which stay on the paper even when a
    bold digit covers most of a tight crop (the median would not). The core contrast is a high
    percentile of the pixels clear of the floor, so one dark speck cannot set it.

    The floor is NOISE_SIGMAS deviations of those percentiles: on plain paper, its noise. On
    security paper (guilloche lines, meshes, tints) and coarse grain the spread is the pattern's,
    which is structured, and five of its deviations lay above the fainter side of many a ballpoint
    stroke: that side was lost (a zero read as a one) or the whole digit left blank. With
    ``pattern`` (a crop of its own, whose margins are paper) the border ring shows how dark the
    paper itself gets, and the floor need be no more than PATTERN_FACTOR times that: above the
    pattern, below the strokes. The pattern lifts the paper's level read off the percentiles too,
    and where the ring's quantile lies under it the floor goes to its least (security digits read
    better so than with the deviations' floor kept there). It only ever lowers the floor, and a
    tight crop whose border holds ink keeps the deviations'. A field's pieces (no ``pattern``)
    lie on zero margins by construction. ``faint`` stays the deviations' verdict: a person still
    sees such a digit.
    """
    # Every other pixel of a smoothed image tells the same story at a quarter of the sorting cost;
    # one vectorised sort beats partitions at several ranks.
    ordered = (smooth[::2, ::2] if min(smooth.shape) >= 16 else smooth).flatten()
    ordered.sort()
    n = ordered.size
    upper, lower = float(ordered[(15 * n) // 100]), float(ordered[n // 20])
    sigma = (upper - lower) / 0.6089  # the same two ranks of a normal distribution, in sigmas
    paper = upper + 1.0364 * sigma
    floor = NOISE_SIGMAS * sigma
    if pattern and floor > 0.5 * MIN_CONTRAST:  # under that, the floor is MIN_CONTRAST's anyway
        ring = ring_of(smooth)
        rank = round(PATTERN_QUANTILE * (ring.size - 1))
        darkest = float(np.partition(ring, rank)[rank]) - paper
        floor = min(floor, PATTERN_FACTOR * darkest)
    floor = max(floor, 0.5 * MIN_CONTRAST)
    first_clear = int(np.searchsorted(ordered, paper + floor, side="right"))
    clear = n - first_clear
    if clear <= 0:
        return None
    level = float(ordered[first_clear + int(0.9 * (clear - 1))]) - paper
    return None if level < MIN_CONTRAST else Levels(paper, level, floor, level < MIN_SNR * sigma)


def ink_contrasts(works: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Each crop's ink as positive contrast above its paper, whichever polarity the crop has.

    Polarity first: against a plane through the block medians, ink is the side the blocks'
    extremes stray to (noise and a gradient stray both ways, strokes one way only). Then the paper
    is a plane (brightness plus a gradient: uneven lighting and scanner falloff at the scale of one
    digit) refitted to a paper-side percentile of each block, which ink only moves where it covers
    most of the block: a bold digit in a tight crop drags block medians, not these. The plane's
    level need not be exact: the paper level is measured again on the contrast.
    """
    out: list[np.ndarray | None] = [None] * len(works)
    fitted: list[int] = []
    grids: list[_Grid] = []
    ranked: list[np.ndarray] = []
    for i, work in enumerate(works):
        grid = _grid(*work.shape)
        tiles = work[: grid.bh * grid.ny, : grid.bw * grid.nx].reshape(
            grid.ny, grid.bh, grid.nx, grid.bw
        )
        blocks = tiles.swapaxes(1, 2).reshape(grid.ny * grid.nx, grid.bh * grid.bw)  # a copy
        # Sorting rows is vectorised: an order of magnitude faster than partitions at five ranks.
        blocks.sort(axis=1)
        stats = blocks[:, grid.ranks].astype(np.float64)
        bilevel = _bilevel(blocks, stats)
        if bilevel is not None:
            # A 1-bit bitmap has no lighting to model, and a plane fitted to a bold digit that fills
            # its box tilts into the ink: the paper is simply the level the ink is not.
            dark, bright = bilevel
            out[i] = (work - dark) if _light_bitmap(work, dark, bright) else (bright - work)
        else:
            fitted.append(i)
            grids.append(grid)
            ranked.append(stats)
    if fitted:
        planes = _Planes.of(grids, ranked)
        for i, ink in zip(fitted, planes.contrasts([works[i] for i in fitted], grids), strict=True):
            out[i] = ink
    assert all(ink is not None for ink in out), "every crop has its contrast by now"
    return out  # type: ignore[return-value]


def _flat_paper(work: np.ndarray, light: bool) -> np.ndarray:
    """Ink against a flat paper at the level of the crop's palest paper-side pixels: for a bold
    digit covering nearly every block, whose plane sank into the strokes (a share of the crop
    came out far paler than "paper"), and whose lighting no block can show anyway."""
    values = work.ravel()
    rank = round((1.0 - FLAT_PAPER_SHARE) * (values.size - 1))
    if light:  # dark paper: its level is the dark end
        return work - float(np.partition(values, values.size - 1 - rank)[values.size - 1 - rank])
    return float(np.partition(values, rank)[rank]) - work


def _bilevel(blocks: np.ndarray, stats: np.ndarray) -> tuple[float, float] | None:
    """The two grey levels of a 1-bit bitmap (form scanners, fax, bitmap data sets); None for
    any other crop, which has more levels than two. ``stats`` are the blocks' order statistics
    (darkest first): one of them between the extremes settles it for nearly every grey scan
    without a pass over the pixels."""
    darkest, lightest = float(stats[:, LOW].min()), float(stats[:, HIGH].max())
    if lightest - darkest < 0.5:
        return None
    inner = stats[:, DARK_SIDE:HIGH]
    if np.any((inner > darkest) & (inner < lightest)):
        return None
    between = (blocks > darkest) & (blocks < lightest)
    return None if between.any() else (darkest, lightest)


def _light_bitmap(work: np.ndarray, dark: float, bright: float) -> bool:
    """Light ink on a 1-bit bitmap? The paper is the level most of the border shows; a digit
    stretched to its box touches every side, but covers little of any."""
    ring = ring_of(work)
    dark_share = float(np.count_nonzero(ring < (dark + bright) / 2)) / ring.size
    if dark_share != 0.5:
        return dark_share > 0.5
    return bool(np.count_nonzero(work < (dark + bright) / 2) > work.size / 2)  # the ink: the lesser


def _light_ink(work: np.ndarray, dark: float, light: float, medians: float, span: float) -> bool:
    """Light ink on dark paper? Which way the blocks' extremes stray from the median plane:
    ``dark`` and ``light`` are how far they stray each way (:meth:`_Planes._strays`), ``medians``
    the blocks' median level and ``span`` the crop's range (lightest block extreme less darkest).

    When ink covers over half a tight crop the medians are ink, and the paper is what strays: then
    the crop's border, which is paper nearly everywhere, settles it. A "light" verdict stands
    unless the border is lighter than the medians; a "dark" one falls only when the border is far
    darker than them (DARK_PAPER of the crop's range): a bold white digit filling an MNIST-style
    array, 1.3% of which were read inverted, not paper in a shadow or a vignette.
    """
    if light <= dark:
        far = medians - DARK_PAPER * span
        # The corners and the edges' middles first: on paper that is not dark, none is.
        h, w = work.shape
        probes = work[[0, 0, 0, h // 2, h // 2, -1, -1, -1], [0, w // 2, -1, 0, -1, 0, w // 2, -1]]
        if np.count_nonzero(probes < far) < 3:
            return False
        return _border(work) < far
    return _border(work) <= medians + 2 * TAIL_MARGIN


def _border(work: np.ndarray) -> float:
    """The median of the crop's outermost ring of pixels."""
    ring = ring_of(work)
    return float(np.partition(ring, ring.size // 2)[ring.size // 2])


def ring_of(image: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels, each once: where a crop's paper shows even when its ink
    covers most of it."""
    return np.concatenate((image[0], image[-1], image[1:-1, 0], image[1:-1, -1]))


@dataclass(frozen=True)
class _Grid:
    """The 4x4 blocks (fewer on tiny images) the paper is estimated from."""

    ny: int
    nx: int
    bh: int
    bw: int
    ranks: list[int]  # the order statistics taken from each block's sorted pixels
    ys: list[float]  # block centres relative to the image centre
    xs: list[float]
    rows: np.ndarray  # (h, 1): each pixel row's y relative to the image centre
    cols: np.ndarray  # (w,): each pixel column's x

    def render(self, a: float, b: float, c: float) -> np.ndarray:
        return self.rows * np.float32(b) + (self.cols * np.float32(c) + np.float32(a))


@functools.lru_cache(maxsize=256)
def _grid(h: int, w: int) -> _Grid:
    """The grid of an h x w crop. Crops of one shape share it, but a batch's shapes seldom repeat
    (2,233 shapes among 3,000 of the benchmark's files), so each side is also cached on its own
    (:func:`_side`) and a new shape only pairs them: 3 us instead of 8 on a miss."""
    ny, bh, yc, rows = _side(h)
    nx, bw, xc, cols = _side(w)
    last = bh * bw - 1
    return _Grid(
        ny=ny,
        nx=nx,
        bh=bh,
        bw=bw,
        ranks=[round(q * last) for q in _SHARES],
        ys=[y for y in yc for _ in xc],
        xs=[x for _ in yc for x in xc],
        rows=rows[:, None],
        cols=cols,
    )


_SHARES = (TAIL_SHARE, PAPER_SHARE, 0.5, 1 - PAPER_SHARE, 1 - TAIL_SHARE)


@functools.lru_cache(maxsize=1024)
def _side(n: int) -> tuple[int, int, list[float], np.ndarray]:
    """One side of n pixels: its block count and block size, the blocks' centres and each pixel's
    coordinate, both relative to the middle of the side. The coordinates are shared by every grid
    with this side, so they are read-only."""
    count = min(BLOCKS, n)
    size = n // count
    centres = [(i + 0.5) * size - 0.5 - (n - 1) / 2 for i in range(count)]
    coords = np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2)
    coords.flags.writeable = False
    return count, size, centres, coords


Plane = tuple[np.ndarray, np.ndarray, np.ndarray]  # level, y slope, x slope: one of each a crop


@dataclass(frozen=True)
class _Planes:
    """The blocks of a group of crops as (crops, blocks) arrays, and the plane fits on them.

    A crop with fewer than BLOCKS x BLOCKS blocks (an image under four pixels a side) fills the
    rest of its row with blocks that ``valid`` leaves out of every sum, median and verdict.
    """

    ys: np.ndarray  # block centres' y, 0 where not valid
    xs: np.ndarray
    valid: np.ndarray  # bool
    stats: np.ndarray  # (crops, blocks, 5): each block's order statistics, darkest first
    # (5, crops, blocks): y, x, y * y, x * x, x * y of each block, and (3, crops, blocks): 1, y, x,
    # the factors of the normal equations' sums that do not depend on the values fitted
    moments: np.ndarray
    factors: np.ndarray

    @classmethod
    def of(cls, grids: Sequence[_Grid], ranked: Sequence[np.ndarray]) -> _Planes:
        """The blocks of crops with these grids and these order statistics (one row a block)."""
        n, most = len(grids), BLOCKS * BLOCKS
        ys, xs = np.zeros((n, most)), np.zeros((n, most))
        valid = np.zeros((n, most), bool)
        stats = np.zeros((n, most, 5))
        for i, (grid, blocks) in enumerate(zip(grids, ranked, strict=True)):
            k = len(blocks)
            ys[i, :k], xs[i, :k], valid[i, :k], stats[i, :k] = grid.ys, grid.xs, True, blocks
        moments = np.stack((ys, xs, ys * ys, xs * xs, xs * ys))
        return cls(ys, xs, valid, stats, moments, np.stack((np.ones_like(ys), ys, xs)))

    def contrasts(self, works: Sequence[np.ndarray], grids: Sequence[_Grid]) -> list[np.ndarray]:
        """Each crop's ink against its paper plane (or flat paper, when the plane sank); ``grids``
        are the crops' own, as :meth:`of` was given them."""
        middle = self.stats[:, :, MIDDLE]
        medians = self._median(middle, self.valid)
        start = self._fit(middle, (medians, np.zeros_like(medians), np.zeros_like(medians)))
        dark, light = self._strays(start)
        lightest = np.where(self.valid, self.stats[:, :, HIGH], -np.inf).max(axis=1)
        span = lightest - np.where(self.valid, self.stats[:, :, LOW], np.inf).min(axis=1)
        flipped = np.array(
            [
                _light_ink(work, d, li, m, s)
                for work, d, li, m, s in zip(
                    works,
                    dark.tolist(),
                    light.tolist(),
                    medians.tolist(),
                    span.tolist(),
                    strict=True,
                )
            ]
        )
        # Light ink: the dark side, flipped, so that ink can only pull values down.
        values = np.where(
            flipped[:, None], -self.stats[:, :, DARK_SIDE], self.stats[:, :, LIGHT_SIDE]
        )
        base = _where(flipped, (-start[0], -start[1], -start[2]), start)
        coef = self._paper(values, self._shifted(values, base))
        out = []
        levels, downs, acrosses = (part.tolist() for part in coef)
        planes = zip(works, grids, levels, downs, acrosses, strict=True)
        for i, (work, grid, a, b, c) in enumerate(planes):
            ink = grid.render(a, b, c)
            if flipped[i]:
                ink += work
            else:
                ink -= work
            if float(ink.min()) < -SUNK and np.count_nonzero(ink < -SUNK) > SUNK_SHARE * ink.size:
                ink = _flat_paper(work, bool(flipped[i]))
            out.append(ink)
        return out

    def _at(self, coef: Plane) -> np.ndarray:
        """The planes' levels at the blocks' centres."""
        a, b, c = coef
        return a[:, None] + b[:, None] * self.ys + c[:, None] * self.xs

    @staticmethod
    def _median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Each row's upper median over ``mask`` (inf for a row with none)."""
        ordered = np.sort(np.where(mask, values, np.inf), axis=1)
        return ordered[np.arange(len(values)), mask.sum(axis=1) // 2]

    def _fit(self, values: np.ndarray, start: Plane) -> Plane:
        """One least-squares round over the blocks near ``start``: the others hold ink (of either
        polarity: these are medians)."""
        residual = np.abs(values - self._at(start))
        spread = SPREAD * self._median(residual, self.valid)
        limit = np.where(spread > PLANE_TOLERANCE, spread, PLANE_TOLERANCE)
        keep = self.valid & (residual <= limit[:, None])
        return _where(keep.sum(axis=1) >= MIN_FIT, self._least_squares(values, keep), start)

    def _strays(self, plane: Plane) -> tuple[np.ndarray, np.ndarray]:
        """How far each crop's darkest and lightest block extremes stray past TAIL_MARGIN from
        the plane, summed over its blocks: ink is the side they stray to."""
        level = self._at(plane)
        below = level - self.stats[:, :, LOW]
        above = self.stats[:, :, HIGH] - level
        dark = np.where(self.valid & (below > TAIL_MARGIN), below - TAIL_MARGIN, 0.0)
        light = np.where(self.valid & (above > TAIL_MARGIN), above - TAIL_MARGIN, 0.0)
        return _sums(dark), _sums(light)

    def _shifted(self, values: np.ndarray, coef: Plane) -> Plane:
        """Another plane's slopes at these values' median level: a start with the gradient in."""
        return coef[0] + self._median(values - self._at(coef), self.valid), coef[1], coef[2]

    def _paper(self, values: np.ndarray, start: Plane) -> Plane:
        """The paper under values that ink can only pull down.

        Blocks far below the plane hold ink and are dropped; how far is far comes from the scatter
        above the plane, which ink cannot inflate. Two rounds; a round that keeps the blocks the
        last one kept (or too few) ends the fit where it is.
        """
        coef, used = start, None
        going = np.ones(len(values), bool)
        for _ in range(2):
            residual = values - self._at(coef)
            above = self.valid & (residual >= 0.0)
            spread = np.where(above.any(axis=1), SPREAD * self._median(residual, above), 0.0)
            limit = np.where(spread > PLANE_TOLERANCE, spread, PLANE_TOLERANCE)
            keep = self.valid & (residual >= -limit[:, None])
            going &= keep.sum(axis=1) >= MIN_FIT
            if used is not None:
                going &= (keep != used).any(axis=1)
            used = keep
            coef = _where(going, self._least_squares(values, keep), coef)
        return coef

    def _least_squares(self, values: np.ndarray, keep: np.ndarray) -> Plane:
        """The normal equations over each crop's kept blocks, by Cramer's rule; a singular system
        falls back to a flat plane."""
        terms = np.concatenate((self.moments, self.factors * values)) * keep
        sy, sx, syy, sxx, sxy, sv, syv, sxv = _sums(terms)
        n = keep.sum(axis=1).astype(np.float64)
        a, b, c, d, e, f, g, h, i = n, sy, sx, sy, syy, sxy, sx, sxy, sxx
        det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
        x = sv * (e * i - f * h) - b * (syv * i - f * sxv) + c * (syv * h - e * sxv)
        y = a * (syv * i - f * sxv) - sv * (d * i - f * g) + c * (d * sxv - syv * g)
        z = a * (e * sxv - syv * h) - b * (d * sxv - syv * g) + sv * (d * h - e * g)
        singular = np.abs(det) < 1e-9
        safe = np.where(singular, 1.0, det)
        zero = np.zeros_like(det)
        return (
            np.where(singular, sv / np.maximum(a, 1.0), x / safe),
            np.where(singular, zero, y / safe),
            np.where(singular, zero, z / safe),
        )


def _sums(values: np.ndarray) -> np.ndarray:
    """Sums over the last axis (the blocks), added left to right as the one-crop arithmetic did
    (numpy's pairwise ``sum`` rounds differently in the last bit, and a bit can tip a block in or
    out of the next fit)."""
    return np.cumsum(values, axis=-1)[..., -1]


def _where(choose: np.ndarray, then: Plane, otherwise: Plane) -> Plane:
    """``then``'s plane for the crops ``choose`` picks, ``otherwise``'s for the rest."""
    a, b, c = (np.where(choose, t, o) for t, o in zip(then, otherwise, strict=True))
    return a, b, c
