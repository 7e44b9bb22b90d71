"""Scanned crop bytes to MNIST-like 28x28 input: the one normalization every path goes through.

An MNIST model only works on input that looks like MNIST: white ink on black, the digit fitted into
a 20x20 box (aspect ratio kept, anti-aliased) and placed by its centre of mass in a 28x28 field.
Real crops are dark ink on uneven paper, any size, off-centre, noisy and JPEG-compressed, so each
step here undoes one of those differences and nothing else: decode safely (:mod:`.decode`), paint
out a form's lines (:mod:`.borders`), remove the paper (a fitted plane, so gradients go too:
:mod:`.paper`), suppress noise, keep the digit's ink components (not specks, nor a neighbour's
stroke at a side: :mod:`.neighbours`), and rebuild the digit the way MNIST was built. Numpy,
Pillow (decoding) and OpenCV (:mod:`.imageops`) keep a worker light; every threshold is relative
to the noise and ink contrast measured on the crop itself, never tuned to the synthetic scans.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from digits.model import borders, imageops, neighbours
from digits.model.decode import (  # noqa: F401 - re-exported: fields.py and inference.py import them from here
    DEFAULT_LIMITS,
    BadGeometry,
    Limits,
    ScanError,
    check_shape,
    decode,
)
from digits.model.paper import ink_contrast, ink_contrasts, paper_and_ink, ring_of

FIELD = 28  # MNIST's canvas
BOX = 20  # MNIST fitted each digit's longer side to this many pixels
CENTER = 14.0  # MNIST's centre of mass (test set: mean 13.99 and 14.01), not the geometric 13.5
WORK_SIDE = 128  # larger crops are box-averaged down first: 20 output pixels need far fewer
COARSE_SIDE = 32  # components are labelled on a grid at most this size: it bridges tiny gaps
BATCH_DECODE = 64  # normalize_many decodes this many crops before normalizing them...
DECODED_BUDGET = 4_000_000  # ...or fewer, once their decoded pixels reach this many

# Thresholds are shares of the crop's own ink level or multiples of its own noise (how far ink
# stands above the paper at all is paper.py's: paper_and_ink).
LINK_SHARE = 0.25  # parts of the digit are traced through ink down to this share of its level
INK_MID = 0.45  # the binary ink boundary sits at this share of the stroke's own peak...
EDGE_RAMP = 0.1  # ...softened by this half-width (same units), so sub-pixel position survives
MIN_STROKE = 0.06  # strokes thinner than this share of the digit's box are thickened...
TARGET_STROKE = 0.08  # ...to this: MNIST's thinnest percent (its median is 0.11)
SUPERSAMPLE = 2  # a small digit is resampled to this multiple of the output before the cut
DIRECT_SCALE = 0.75  # at or below this scale the cut is made on the source pixels themselves
KEEP_SHARE = 0.1  # components under this share of the largest one's ink are specks: dropped
BLOB_SHARE = 0.3  # components over this share of the largest count as separate blobs
MIN_EXTENT = 0.12  # the largest component must span this share of the crop's longer side


@dataclass(frozen=True)
class Crop:
    """A normalized crop: MNIST-like pixels, or ``None`` when there is no ink to read."""

    pixels: np.ndarray | None  # (28, 28) float32 in [0, 1], white ink on black; None when blank
    blobs: int  # number of large separate ink components found (0 when blank)
    # The ink spans a square crop both ways (FILLED_SHARE): the digit may have been stretched to
    # fill its box, as bitmap data sets store digits, and its aspect ratio is then lost.
    fills_box: bool = False
    # For such a crop, the digit again at each of ASPECT_VIEWS' narrower widths: the classifier
    # reads them all and multiplies what they say (``inference.Classifier.classify_crops``).
    views: tuple[np.ndarray, ...] = ()
    # Cores only NOISE_SIGMAS to MIN_SNR noise deviations clear of the paper (paper.py): read, but
    faint: bool = False  # a person accepts it: a stroke's faint part may be lost (a zero as a one)
    two_digits: bool = False  # two digits side by side (neighbours.side_by_side): a person too
    framed: bool = False  # inside a flat pad that is not its paper (borders.padded): a person too

    @property
    def blank(self) -> bool:
        return self.pixels is None

    @property
    def multiple_blobs(self) -> bool:
        return self.blobs > 1


# ----------------------------------------------------------------------------------- normalization


def normalize(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Crop:
    """decode + normalize_gray, with aspect views for a crop that fills its box"""
    gray = decode(data, limits)
    return _with_views(gray, _normalize_gray(gray, decoded=True))


def normalize_many(
    items: Sequence[bytes],
    limits: Limits = DEFAULT_LIMITS,
    lap: Callable[[str], object] | None = None,
) -> list[Crop | ScanError]:
    """the batch form: one broken item becomes its ScanError in the list, never an exception for
    the batch. ``lap`` (a worker's ``StageClock.lap``) is called with "decode" as each group's
    decoding ends and with "normalize" as its normalizing does."""
    mark = lap or (lambda stage: None)
    results: list[Crop | ScanError] = []
    pending: list[np.ndarray | ScanError] = []
    held = 0
    for item in items:
        try:
            gray = decode(item, limits)
            held += gray.size
            pending.append(gray)
        except ScanError as exc:
            pending.append(exc)
        if len(pending) >= BATCH_DECODE or held >= DECODED_BUDGET:
            mark("decode")
            results.extend(_normalize_decoded(pending))
            mark("normalize")
            pending, held = [], 0
    mark("decode")
    results.extend(_normalize_decoded(pending))
    mark("normalize")
    return results


def _normalize_decoded(pending: list[np.ndarray | ScanError]) -> list[Crop | ScanError]:
    """The second half of a group. Decoding a group first and normalizing it after is about a fifth
    faster than alternating crop by crop: Pillow's decoder and the numpy code otherwise evict each
    other from the CPU caches. A group is bounded in count and in decoded pixels held, and its
    papers are fitted together (:func:`paper.ink_contrasts`)."""
    grays = [g for g in pending if not isinstance(g, ScanError)]
    works = [_working_copy(gray, decoded=True) for gray in grays]
    framed = [borders.padded(work) for work in works]
    works = [borders.clear(work) for work in works]
    crops = iter(
        _with_views(gray, _marked(_from_contrast(ink), pad))
        for gray, ink, pad in zip(grays, ink_contrasts(works), framed, strict=True)
    )
    return [g if isinstance(g, ScanError) else next(crops) for g in pending]


# Widths, as shares of the height, at which a crop that fills its box is read again. A digit
# stretched to a square box was, before, narrower than tall by a share its bitmap no longer says:
# about 0.4 for a one, 0.7 for most digits. Chosen on MNIST's validation digits drawn as 16x16
# stretched bitmaps: read as is 98.1%, the five views' product 99.1% (read rate at 0.1% error
# 84.9% to 97.1%); the test digits report it (`digits evaluate --robustness`).
ASPECT_VIEWS = (0.85, 0.7, 0.55, 0.4)
FILLED_SHARE = 0.85  # ink spanning this share of a square crop both ways fills its box
VIEW_HEIGHT = 64  # a small bitmap is enlarged to this many rows (pixels repeated) before narrowing


def _with_views(gray: np.ndarray, crop: Crop) -> Crop:
    """A decoded crop normalized (``crop``), plus its aspect views when it is a bitmap its ink fills.

    Only bitmaps: tight grey crops of digits that kept their aspect fill their box too (27 of
    the 10,000 scan-like test crops), and reading those narrower cost two of them. Nor one that
    had a frame cleared (``borders``): narrowed from the scan, the views would have it back."""
    if not (crop.fills_box and _one_bit(gray)):
        return crop
    if borders.clear(work := _working_copy(gray, decoded=True)) is not work:
        return crop
    works = [_working_copy(_narrowed(gray, share), decoded=True) for share in ASPECT_VIEWS]
    views = (_from_contrast(ink) for ink in ink_contrasts(works))  # their papers in one fit
    return dataclasses.replace(crop, views=tuple(v.pixels for v in views if v.pixels is not None))


def _one_bit(gray: np.ndarray) -> bool:
    """Only two grey levels: a bitmap, the way data sets of stretched digits store them."""
    low, high = float(gray.min()), float(gray.max())
    return not np.count_nonzero((gray > low) & (gray < high))


def _narrowed(gray: np.ndarray, share: float) -> np.ndarray:
    """The crop at ``share`` of its width, on a margin of its own paper (the level most of its
    border shows), as a crop of the digit drawn narrower would come."""
    h, w = gray.shape
    k = max(1, -(-VIEW_HEIGHT // h))
    big = cv2.resize(gray, (w * k, h * k), interpolation=cv2.INTER_NEAREST) if k > 1 else gray
    narrow = cv2.resize(big, (max(2, round(w * k * share)), h * k), interpolation=cv2.INTER_AREA)
    paper = float(np.median(ring_of(gray)))
    return cv2.copyMakeBorder(narrow, 2 * k, 2 * k, 2 * k, 2 * k, cv2.BORDER_CONSTANT, value=paper)


def normalize_gray(gray: np.ndarray, keep_edges: bool = True) -> Crop:
    """an already decoded 2-D grey image in [0,1], any polarity -> Crop (also the pieces of
    multi-digit fields, which pass ``keep_edges=False``: see :func:`_normalize_gray`)"""
    return _normalize_gray(gray, decoded=False, keep_edges=keep_edges)


def normalize_ink(ink: np.ndarray) -> Crop:
    """A field's piece (``lattice.add_crop``): ink strength in [0, 1] on a margin of zeros -> Crop.
    Its ink map is contrast against the paper already, so the piece skips the paper step (a third
    of its time) and is otherwise what ``normalize_gray(1 - ink, keep_edges=False)`` makes of it.
    """
    return _normalize_gray(ink, decoded=True, keep_edges=False, is_ink=True)


def _normalize_gray(
    gray: np.ndarray, decoded: bool, keep_edges: bool = True, is_ink: bool = False
) -> Crop:
    """normalize_gray; ``decoded`` arrays come from decode() and need no checking; ``is_ink``
    ones are already ink against their paper (:func:`normalize_ink`).

    The 3x3 smoothing runs over whole windows. With ``keep_edges`` the crop's edge is repeated
    once round it first: a digit stretched to fill its box (16x16 bitmap data sets) has its
    strokes on the outermost pixels, and dropping that ring lost them (87% read on such bitmaps,
    98% padded). Without, the ring is dropped as before: a field's piece has a paper margin all
    round (``lattice.add_crop``), and its pixels stay those the field digit network trained on.
    """
    work = _working_copy(gray, decoded)
    framed = False
    if keep_edges and not is_ink:  # a crop of its own, perhaps cut from a form's cell or padded
        framed = borders.padded(work)
        work = borders.clear(work)
    ink = (work if work is not gray else work.copy()) if is_ink else ink_contrast(work)
    return _marked(_from_contrast(ink, keep_edges), framed)


def _marked(crop: Crop, framed: bool) -> Crop:
    """``crop``, marked for a person when it lay inside a pad that is not its paper."""
    return dataclasses.replace(crop, framed=True) if framed and not crop.blank else crop


def _from_contrast(ink: np.ndarray, keep_edges: bool = True) -> Crop:
    """The rest of :func:`_normalize_gray`, from the working copy's ink against its paper (which
    this may change in place)."""
    if keep_edges:
        smooth = _smooth(imageops.pad_edge(ink, 1))
    else:
        smooth = _smooth(ink)
        ink = ink[1:-1, 1:-1]
    found = paper_and_ink(smooth, pattern=keep_edges)
    if found is None:
        return Crop(pixels=None, blobs=0)
    paper, level, floor, faint = found
    smooth -= np.float32(paper)
    link = max(LINK_SHARE * level, floor)
    grid = _Coarse.of(smooth)
    # Parts are traced through fainter ink than the stroke boundary (as hysteresis thresholds do),
    # so a thin or faint stroke whose core wavers stays one part instead of a trail of specks.
    parts = _components(grid, smooth, link, sides=keep_edges)
    if parts is None:
        return Crop(pixels=None, blobs=0)
    keep, blobs, two = parts
    # Each stroke is cut at a share of its own peak (a thin or faint stroke never reaches the
    # level of the darkest ink), but never below the level that parts are traced through.
    peak = grid.neighbourhood_max(smooth.shape)
    np.maximum(peak, np.float32(link / INK_MID), out=peak)
    mask = smooth > peak * np.float32(INK_MID)
    ink -= np.float32(paper)
    ink /= peak
    if keep is not None:
        ink *= keep
        mask &= keep
    if not mask.any():
        return Crop(pixels=None, blobs=0)
    return Crop(_fit_to_field(ink, mask), blobs, _fills_box(ink), faint=faint, two_digits=two)


def _fills_box(ink: np.ndarray) -> bool:
    """Does the ink (relative to its stroke's peak) span a square crop both ways, up to a pixel
    or two the bitmap's threshold left blank at its sides? A digit crop with margins does not."""
    h, w = ink.shape
    if abs(h - w) > 1:
        return False
    strong = ink > INK_MID
    rows, cols = np.flatnonzero(strong.any(axis=1)), np.flatnonzero(strong.any(axis=0))
    if not len(rows):
        return False
    return min(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1) >= FILLED_SHARE * min(h, w)


class _Coarse(NamedTuple):
    """The smoothed contrast max-pooled to at most COARSE_SIDE a side: the grid components are
    labelled on (cheap enough for every crop, and a gap of a pixel or two in a broken stroke does
    not split a digit), and the neighbourhoods that strokes' own peaks are read from."""

    pooled: np.ndarray
    factor: int

    @classmethod
    def of(cls, smooth: np.ndarray) -> _Coarse:
        h, w = smooth.shape
        factor = max(1, math.ceil(max(h, w) / COARSE_SIDE))
        if factor == 1:
            return cls(pooled=smooth, factor=1)
        ph, pw = h + (-h % factor), w + (-w % factor)
        if (ph, pw) != (h, w):
            smooth = cv2.copyMakeBorder(smooth, 0, ph - h, 0, pw - w, cv2.BORDER_CONSTANT, value=0)
        return cls(pooled=imageops.cell_max(smooth, factor), factor=factor)

    def neighbourhood_max(self, shape: tuple[int, int]) -> np.ndarray:
        """Each pixel's local peak: the maximum over its grid cell and the eight around it."""
        near = imageops.dilate(self.pooled, 1 if self.factor > 1 else 2)
        if self.factor > 1:
            near = imageops.enlarge(near, self.factor)
        return near[: shape[0], : shape[1]]  # a fresh array either way: safe to change in place


def _working_copy(gray: np.ndarray, decoded: bool) -> np.ndarray:
    """Float32, at most WORK_SIDE on the longer side: 20 output pixels need no more, and
    box-averaging keeps thin strokes as grey rather than dropping them."""
    work = gray
    if not decoded:  # a caller's array: check what decode() guarantees
        gray = np.asarray(gray)
        if gray.ndim != 2:
            raise BadGeometry(f"expected a 2-D grey image, got shape {gray.shape}")
        check_shape(gray.shape[1], gray.shape[0], DEFAULT_LIMITS)  # as decode() refuses it
        work = gray.astype(np.float32, copy=False)
        if not math.isfinite(float(work.sum())):
            work = np.nan_to_num(work, nan=1.0, posinf=1.0, neginf=0.0)
    if min(work.shape) < 3:  # the 3x3 smoothing needs three rows and columns
        work = np.pad(work, [(0, max(0, 3 - n)) for n in work.shape], mode="edge")
    factor = math.ceil(max(work.shape) / WORK_SIDE)
    return _block_mean(work, factor) if factor > 1 else work


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    """Box average by adding strided views: numpy's mean over two axes of a reshaped array took
    ten times as long (180 to 400 us a crop, a tenth of a worker's time)."""
    h, w = image.shape
    h, w = h - h % factor, w - w % factor  # a partial last block is under one output pixel: dropped
    image = image[:h, :w]
    out = image[::factor, ::factor].astype(np.float32, copy=True)
    for dy in range(factor):
        for dx in range(factor):
            if dy or dx:
                out += image[dy::factor, dx::factor]
    out *= np.float32(1.0 / (factor * factor))
    return out


def _smooth(image: np.ndarray) -> np.ndarray:
    """3x3 binomial blur over whole windows (one pixel smaller all round): noise drops by more than
    half while strokes barely widen. [1, 2, 1] is [1, 1] twice, so four additions do it."""
    rows = image[:-1] + image[1:]
    rows = rows[:-1] + rows[1:]
    out = rows[:, :-1] + rows[:, 1:]
    out = out[:, :-1] + out[:, 1:]
    out *= np.float32(1.0 / 16.0)
    return out


def _components(
    grid: _Coarse, smooth: np.ndarray, link: float, sides: bool
) -> tuple[np.ndarray | None, int, bool] | None:
    """Which ink to keep (None: all), the blob count and whether two digits stand side by side
    there; None when no component can be a digit. Specks (under KEEP_SHARE of the largest) are
    dropped so that they cannot stretch the digit's box, and with ``sides`` (a crop of its own)
    a neighbour's stroke at the crop's side (:mod:`.neighbours`, which also says what two are).
    """
    h, w = smooth.shape
    found = imageops.components(grid.pooled > np.float32(link))
    if not found.count:
        return None
    # As arrays: a piece of a field on patterned paper can hold many specks above the link.
    areas = found.boxes[:, imageops.AREA]
    largest = int(np.argmax(areas))  # the first of equals, as before
    if not _big_enough(_fine_extent(smooth, link, found.boxes[largest], grid.factor), h, w):
        return None
    biggest = float(areas[largest])
    wanted = areas >= KEEP_SHARE * biggest
    two = False
    if sides and len(areas) > 1:  # one part: nothing beside it
        wanted &= ~neighbours.at_sides(found.boxes, largest, grid.pooled.shape[1])
        two = neighbours.side_by_side(found.boxes[wanted], BLOB_SHARE)
    blobs = int(np.count_nonzero(wanted & (areas >= BLOB_SHARE * biggest)))  # those read
    if wanted.all():
        return None, blobs, two
    keep = imageops.keep(found, wanted)
    if grid.factor > 1:
        keep = imageops.enlarge(keep, grid.factor)[:h, :w]
    return keep, blobs, two


def _fine_extent(smooth: np.ndarray, link: float, box: np.ndarray, factor: int) -> int:
    """The part's extent in working pixels: a speck straddling two grid cells is still a speck.

    ``box`` is the part's row of :attr:`imageops.Components.boxes`, in grid cells.
    """
    x0, y0, x1, y1, _area = box.tolist()
    extent = max(y1 - y0, x1 - x0)
    if factor == 1 or (extent - 2) * factor >= MIN_EXTENT * max(smooth.shape):
        return extent * factor  # clearly big enough: only borderline parts need a fine look
    window = smooth[y0 * factor : y1 * factor, x0 * factor : x1 * factor] > np.float32(link)
    rows = np.flatnonzero(window.any(axis=1))
    cols = np.flatnonzero(window.any(axis=0))
    return int(max(rows[-1] - rows[0], cols[-1] - cols[0])) + 1


def _big_enough(extent: int, h: int, w: int) -> bool:
    """A digit spans a fair part of its crop; a dot or a speck on empty paper does not."""
    return extent >= max(2.0, MIN_EXTENT * max(h, w))


def _fit_to_field(ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MNIST's own recipe: a binary digit, its box scaled to 20 px, its centre of mass at (14, 14).

    The digit is cut at its stroke boundary where the source has enough pixels per output pixel and
    area-averaged straight into the 28x28 field, so a grey edge means partial coverage as in MNIST.
    A smaller digit is resampled to SUPERSAMPLE times the output first, so the cut is not blocky.
    The centre of mass is placed exactly rather than MNIST's nearest whole pixel: the middle of
    what the network saw in training. Resampling is a matrix product on each side: cheaper than a
    round trip through Pillow, and zero outside the crop by construction.
    """
    h, w = ink.shape
    # The binary digit's profiles give its box and, to well under a pixel, the cut's mass centre.
    row_mass, col_mass = imageops.profiles(mask)
    rows, cols = np.flatnonzero(row_mass), np.flatnonzero(col_mass)
    side = int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
    total = float(row_mass.sum())
    grow = _thickening(mask, total, side)
    scale = BOX / (side + 2 * grow)  # a Python float
    cy = float(row_mass @ _STEPS[:h]) / total
    cx = float(col_mass @ _STEPS[:w]) / total
    # Source pixel i covers [i, i + 1), so its centre is i + 0.5: the field's origin in the source.
    top, left = cy + 0.5 - (CENTER + 0.5) / scale, cx + 0.5 - (CENTER + 0.5) / scale
    if scale <= DIRECT_SCALE:
        cut = imageops.dilate(_cut(ink), round(grow))
        down, across = _area_weights(top, left, scale, max(h, w))
        field = down[:, :h] @ cut @ across[:, :w].T
    else:
        fine_scale = scale * SUPERSAMPLE
        fine = _linear_weights(top, fine_scale, h) @ ink @ _linear_weights(left, fine_scale, w).T
        pairs = _pair_means()
        field = pairs @ imageops.dilate(_cut(fine), round(grow * fine_scale)) @ pairs.T
    np.maximum(field, 0.0, out=field)  # ufuncs: np.clip's Python wrapper costs more than this
    return np.minimum(field, 1.0, out=field)


def _thickening(mask: np.ndarray, area: float, side: int) -> float:
    """How far to grow a thin-penned digit (in working pixels) so that its strokes, scaled to the
    field, are as thick as MNIST's thinner ones: a fine pen at a high resolution otherwise gives
    hairlines the network never saw. Width is read as twice the area over the perimeter."""
    edges = int(
        np.count_nonzero(mask[1:] != mask[:-1]) + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
    )
    width = 2.0 * area / max(edges, 1)
    if width >= MIN_STROKE * side:
        return 0.0
    return (TARGET_STROKE * side - width) / 2.0


def _area_weights(top: float, left: float, scale: float, size: int) -> np.ndarray:
    """(2, FIELD, size): output pixel j averages source [origin + j/scale, origin + (j+1)/scale),
    for the rows (from ``top``) and the columns (from ``left``) at once. The share of source pixel
    i left of an edge e is clip(e - i, 0, 1); a pixel's weight is that share's step between edges.
    """
    edges = _STEPS[: FIELD + 1] * np.float32(1.0 / scale)
    share = np.array((top, left), np.float32)[:, None, None] + edges[:, None] - _STEPS[:size]
    np.maximum(share, 0.0, out=share)
    np.minimum(share, 1.0, out=share)
    weights = share[:, 1:] - share[:, :-1]
    weights *= np.float32(scale)
    return weights


def _linear_weights(origin: float, scale: float, size: int) -> np.ndarray:
    """(FIELD * SUPERSAMPLE, size): bilinear interpolation at the fine pixels' centres."""
    centres = _STEPS[: FIELD * SUPERSAMPLE] * np.float32(1.0 / scale)
    centres += np.float32(origin + 0.5 / scale - 0.5)
    distance = np.abs(centres[:, None] - _STEPS[:size])
    return np.maximum(1.0 - distance, 0.0, out=distance)


_STEPS = np.arange(max(WORK_SIDE, FIELD * SUPERSAMPLE) + 1, dtype=np.float32)  # 0, 1, 2, ...


@functools.lru_cache(maxsize=1)
def _pair_means() -> np.ndarray:
    """(FIELD, FIELD * SUPERSAMPLE): each output pixel the mean of SUPERSAMPLE fine ones."""
    return np.kron(
        np.eye(FIELD, dtype=np.float32), np.full(SUPERSAMPLE, 1.0 / SUPERSAMPLE, np.float32)
    )


def _cut(ink: np.ndarray) -> np.ndarray:
    """Binary ink at the stroke boundary (ink relative to its stroke's peak), with a narrow ramp so
    that sub-pixel position survives."""
    edge = ink * np.float32(0.5 / EDGE_RAMP)
    edge += np.float32(0.5 - INK_MID / (2.0 * EDGE_RAMP))
    np.maximum(edge, 0.0, out=edge)
    return np.minimum(edge, 1.0, out=edge)
