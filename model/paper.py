"""Which side of the paper the ink is on, and the paper under it: the first step of normalization.

A crop's paper is a plane (brightness plus a gradient: uneven lighting and scanner falloff at the
scale of one digit), estimated from 4x4 blocks of the crop; ink is the contrast against it, positive
whichever polarity the crop has. :func:`ink_contrast` is the entry point
(:mod:`digits.model.normalize` calls it on the working copy of each crop).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from itertools import compress
from operator import mul

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


def ink_contrast(work: np.ndarray) -> np.ndarray:
    """Ink as positive contrast above the paper, whichever polarity the crop has.

    Polarity first: against a plane through the block medians, ink is the side the blocks'
    extremes stray to (noise and a gradient stray both ways, strokes one way only). Then the paper
    is a plane (brightness plus a gradient: uneven lighting and scanner falloff at the scale of one
    digit) refitted to a paper-side percentile of each block, which ink only moves where it covers
    most of the block: a bold digit in a tight crop drags block medians, not these. The plane's
    level need not be exact: the paper level is measured again on the contrast.
    """
    h, w = work.shape
    grid = _grid(h, w)
    blocks: np.ndarray = work[: grid.bh * grid.ny, : grid.bw * grid.nx].reshape(
        grid.ny, grid.bh, grid.nx, grid.bw
    )
    blocks = blocks.swapaxes(1, 2).reshape(grid.ny * grid.nx, grid.bh * grid.bw)  # a copy
    # Sorting rows is vectorised: an order of magnitude faster than partitions at five ranks.
    blocks.sort(axis=1)
    low, dark_side, middle, light_side, high = blocks[:, grid.ranks].T.tolist()
    bilevel = _bilevel(blocks, (low, dark_side, middle, light_side, high))
    if bilevel is not None:
        # A 1-bit bitmap has no lighting to model, and a plane fitted to a bold digit that fills
        # its box tilts into the ink: the paper is simply the level the ink is not.
        dark, bright = bilevel
        return (work - dark) if _light_bitmap(work, dark, bright) else (bright - work)
    start = grid.fit(middle, grid.median_start(middle))
    light = _light_ink(work, grid.at_blocks(*start), low, high, middle)
    if light:
        values = [-v for v in dark_side]  # flipped, so that ink can only pull values down
        ink = grid.paper(values, grid.shifted(values, (-start[0], -start[1], -start[2])))
        ink += work
    else:
        ink = grid.paper(light_side, grid.shifted(light_side, start))
        ink -= work
    if float(ink.min()) < -SUNK and np.count_nonzero(ink < -SUNK) > SUNK_SHARE * ink.size:
        return _flat_paper(work, light)
    return ink


def _flat_paper(work: np.ndarray, light: bool) -> np.ndarray:
    """Ink against a flat paper at the level of the crop's palest paper-side pixels: for a bold
    digit covering nearly every block, whose plane sank into the strokes (a share of the crop
    came out far paler than "paper"), and whose lighting no block can show anyway."""
    values = work.ravel()
    rank = round((1.0 - FLAT_PAPER_SHARE) * (values.size - 1))
    if light:  # dark paper: its level is the dark end
        return work - float(np.partition(values, values.size - 1 - rank)[values.size - 1 - rank])
    return float(np.partition(values, rank)[rank]) - work


def _bilevel(blocks: np.ndarray, ranked: tuple[list[float], ...]) -> tuple[float, float] | None:
    """The two grey levels of a 1-bit bitmap (form scanners, fax, bitmap data sets); None for
    any other crop, which has more levels than two. ``ranked`` are the blocks' order statistics
    (darkest first): one of them between the extremes settles it for nearly every grey scan
    without a pass over the pixels."""
    darkest, lightest = min(ranked[0]), max(ranked[-1])
    if lightest - darkest < 0.5:
        return None
    if any(darkest < v < lightest for values in ranked[1:-1] for v in values):
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


def _light_ink(
    work: np.ndarray, plane: list[float], low: list[float], high: list[float], middle: list[float]
) -> bool:
    """Light ink on dark paper? Which way the blocks' extremes stray from the median plane.

    When ink covers over half a tight crop the medians are ink, and the paper is what strays: then
    the crop's border, which is paper nearly everywhere, settles it. A "light" verdict stands
    unless the border is lighter than the medians; a "dark" one falls only when the border is far
    darker than them (DARK_PAPER of the crop's range): a bold white digit filling an MNIST-style
    array, 1.3% of which were read inverted, not paper in a shadow or a vignette.
    """
    dark = light = 0.0
    for level, darkest, lightest in zip(plane, low, high, strict=True):
        if level - darkest > TAIL_MARGIN:
            dark += level - darkest - TAIL_MARGIN
        if lightest - level > TAIL_MARGIN:
            light += lightest - level - TAIL_MARGIN
    medians = sorted(middle)[len(middle) // 2]
    if light <= dark:
        far = medians - DARK_PAPER * (max(high) - min(low))
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
    """The 4x4 blocks (fewer on tiny images) the paper is estimated from, and the plane fit.

    Sixteen values are too few for numpy to pay off: the fit is plain float arithmetic.
    """

    ny: int
    nx: int
    bh: int
    bw: int
    ranks: list[int]  # the order statistics taken from each block's sorted pixels
    ys: list[float]  # block centres relative to the image centre
    xs: list[float]
    rows: np.ndarray  # (h, 1): each pixel row's y relative to the image centre
    cols: np.ndarray  # (w,): each pixel column's x

    def at_blocks(self, a: float, b: float, c: float) -> list[float]:
        return [a + b * y + c * x for y, x in zip(self.ys, self.xs, strict=True)]

    def render(self, a: float, b: float, c: float) -> np.ndarray:
        return self.rows * np.float32(b) + (self.cols * np.float32(c) + np.float32(a))

    @staticmethod
    def median_start(values: list[float]) -> tuple[float, float, float]:
        """A flat plane at the median: least squares would start pulled towards a thick digit."""
        return sorted(values)[len(values) // 2], 0.0, 0.0

    def shifted(self, values: list[float], coef: tuple[float, float, float]):
        """Another plane's slopes at these values' median level: a start with the gradient in."""
        offsets = sorted(v - p for v, p in zip(values, self.at_blocks(*coef), strict=True))
        return coef[0] + offsets[len(offsets) // 2], coef[1], coef[2]

    def fit(self, values: list[float], start) -> tuple[float, float, float]:
        """One least-squares round over the blocks near ``start``: the others hold ink (of either
        polarity: these are medians)."""
        residual = [abs(v - p) for v, p in zip(values, self.at_blocks(*start), strict=True)]
        spread = 2.5 * 1.4826 * sorted(residual)[len(residual) // 2]
        limit = spread if spread > PLANE_TOLERANCE else PLANE_TOLERANCE
        keep = [r <= limit for r in residual]
        return self._least_squares(values, keep) if sum(keep) >= 4 else start

    def paper(self, values: list[float], start) -> np.ndarray:
        """The paper under values that ink can only pull down, as an image.

        Blocks far below the plane hold ink and are dropped; how far is far comes from the scatter
        above the plane, which ink cannot inflate.
        """
        coef, used = start, None
        for _ in range(2):
            residual = [v - p for v, p in zip(values, self.at_blocks(*coef), strict=True)]
            above = sorted(r for r in residual if r >= 0.0)
            spread = 2.5 * 1.4826 * above[len(above) // 2] if above else 0.0
            limit = spread if spread > PLANE_TOLERANCE else PLANE_TOLERANCE
            keep = [r >= -limit for r in residual]
            if keep == used or sum(keep) < 4:
                break  # the same blocks again would give the same plane
            used = keep
            coef = self._least_squares(values, keep)
        return self.render(*coef)

    def _least_squares(self, values: list[float], keep: list[bool]) -> tuple[float, float, float]:
        """The normal equations over the kept blocks, summed by C-level iteration (compress)."""
        ys, xs = list(compress(self.ys, keep)), list(compress(self.xs, keep))
        vs = list(compress(values, keep))
        n, sy, sx = float(len(vs)), sum(ys), sum(xs)
        syy, sxx, sxy = sum(map(mul, ys, ys)), sum(map(mul, xs, xs)), sum(map(mul, xs, ys))
        sv, syv, sxv = sum(vs), sum(map(mul, ys, vs)), sum(map(mul, xs, vs))
        return _solve3(((n, sy, sx), (sy, syy, sxy), (sx, sxy, sxx)), (sv, syv, sxv))


@functools.lru_cache(maxsize=256)
def _grid(h: int, w: int) -> _Grid:
    ny, nx = min(4, h), min(4, w)
    bh, bw = h // ny, w // nx
    last = bh * bw - 1
    shares = (TAIL_SHARE, PAPER_SHARE, 0.5, 1 - PAPER_SHARE, 1 - TAIL_SHARE)
    yc = [(i + 0.5) * bh - 0.5 - (h - 1) / 2 for i in range(ny)]
    xc = [(j + 0.5) * bw - 0.5 - (w - 1) / 2 for j in range(nx)]
    return _Grid(
        ny=ny,
        nx=nx,
        bh=bh,
        bw=bw,
        ranks=[round(q * last) for q in shares],
        ys=[y for y in yc for _ in xc],
        xs=[x for _ in yc for x in xc],
        rows=(np.arange(h, dtype=np.float32) - np.float32((h - 1) / 2))[:, None],
        cols=np.arange(w, dtype=np.float32) - np.float32((w - 1) / 2),
    )


def _solve3(m, v) -> tuple[float, float, float]:
    """Cramer's rule for the 3x3 normal equations; a singular system falls back to a flat plane."""
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    if abs(det) < 1e-9:
        return v[0] / max(a, 1.0), 0.0, 0.0
    x = v[0] * (e * i - f * h) - b * (v[1] * i - f * v[2]) + c * (v[1] * h - e * v[2])
    y = a * (v[1] * i - f * v[2]) - v[0] * (d * i - f * g) + c * (d * v[2] - v[1] * g)
    z = a * (e * v[2] - v[1] * h) - b * (d * v[2] - v[1] * g) + v[0] * (d * h - e * g)
    return x / det, y / det, z / det
