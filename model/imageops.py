"""The image operations crops and fields share, on OpenCV: connected components and dilation.

Normalization (:mod:`digits.model.normalize`) labels the ink of one crop on a coarse grid; field
reading (:mod:`digits.model.fields`) labels the ink of a whole field and counts the loops a digit
closes; both grow ink by dilation.
Each had a hand-written copy of its own; these are the one implementation, in OpenCV's C++.

The results are exactly what the hand-written versions gave, so nothing downstream changes:
components are 8-connected and numbered from 1 in the raster order of their first pixel (the top
row first, then the leftmost pixel in it), which OpenCV's block-based labelling does not promise
by itself; dilation ignores what lies outside the image.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

# Columns of Components.boxes.
X0, Y0, X1, Y1, AREA = range(5)
# ...which are OpenCV's statistics' columns, once width and height become the far edges.
_STATS = (
    cv2.CC_STAT_LEFT,
    cv2.CC_STAT_TOP,
    cv2.CC_STAT_WIDTH,
    cv2.CC_STAT_HEIGHT,
    cv2.CC_STAT_AREA,
)
assert _STATS == (X0, Y0, X1, Y1, AREA)


@dataclass(frozen=True)
class Components:
    """8-connected components of a mask.

    ``labels``: int32 image, 0 off the ink, ``k`` on the k-th component (1-based, raster order of
    each component's first pixel). ``boxes``: int64 (count, 5), row ``k - 1`` for label ``k``:
    x0, y0, x1, y1 (x1 and y1 exclusive) and area (its pixel count).
    """

    labels: np.ndarray
    boxes: np.ndarray

    @property
    def count(self) -> int:
        return len(self.boxes)


def components(mask: np.ndarray) -> Components:
    """Label the 8-connected components of a 2-D boolean (or 0/1) mask; see :class:`Components`."""
    binary = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        binary, connectivity=8, ltype=cv2.CV_32S
    )
    boxes = stats[1:].astype(np.int64)
    boxes[:, X1 : Y1 + 1] += boxes[:, X0 : Y0 + 1]
    if count > 2:
        order = _raster_order(labels, boxes)
        if order is not None:
            lut = np.zeros(count, np.int32)
            lut[order + 1] = np.arange(1, count, dtype=np.int32)
            labels = lut[labels]
            boxes = boxes[order]
    return Components(labels, boxes)


def _raster_order(labels: np.ndarray, boxes: np.ndarray) -> np.ndarray | None:
    """The components' order by first pixel, or None when OpenCV's numbering already is that."""
    ids = np.arange(1, len(boxes) + 1, dtype=labels.dtype)
    top_rows = labels[boxes[:, Y0]]  # each component's top row: its first pixel is in there
    first_col = np.argmax(top_rows == ids[:, None], axis=1)
    key = boxes[:, Y0] * labels.shape[1] + first_col
    if np.all(key[1:] > key[:-1]):
        return None
    return np.argsort(key, kind="stable")


def keep(found: Components, wanted: np.ndarray) -> np.ndarray:
    """A boolean image, true over the components whose ``wanted`` entry (one per component) is set."""
    lut = np.zeros(found.count + 1, bool)
    lut[1:] = wanted
    return lut[found.labels]


def dilate(image: np.ndarray, radius: int) -> np.ndarray:
    """Grey (or boolean) dilation by a square of side ``2 * radius + 1``; outside counts as nothing.

    ``radius`` 0 or less returns ``image`` itself. Float32, uint8 and bool images keep their dtype.
    """
    if radius <= 0:
        return image
    kernel = _square(2 * radius + 1)
    if image.dtype == bool:
        grown = cv2.dilate(np.ascontiguousarray(image).view(np.uint8), kernel)
        return grown.view(bool)
    return cv2.dilate(image, kernel)


def bridged(mask: np.ndarray, gap: int = 2) -> np.ndarray:
    """Rows with gaps of up to ``2 * gap`` pixels bridged: scanned rules break up in places (the
    field's rules, ``segment.remove_rules``, and a crop's frame, ``borders``).

    A horizontal closing; OpenCV's default borders let the image edge neither add nor cut ink.
    """
    kernel = np.ones((1, 2 * gap + 1), np.uint8)
    return cv2.morphologyEx(
        np.ascontiguousarray(mask, bool).view(np.uint8), cv2.MORPH_CLOSE, kernel
    ).view(bool)


def cell_max(image: np.ndarray, factor: int) -> np.ndarray:
    """The maximum of each ``factor`` x ``factor`` cell of a float32 image whose sides are
    multiples of ``factor``: a dilation whose window starts at each pixel, read at the cells'
    corners (one OpenCV call; factor squared strided numpy maxima cost about twice as much)."""
    return cv2.dilate(image, _square(factor), anchor=(0, 0))[::factor, ::factor].copy()


@functools.lru_cache(maxsize=64)
def _square(side: int) -> np.ndarray:
    """A square structuring element, made once: a crop dilates several times, at a few sizes."""
    kernel = np.ones((side, side), np.uint8)
    kernel.flags.writeable = False
    return kernel


def enlarge(image: np.ndarray, factor: int) -> np.ndarray:
    """A float32 (or boolean) image with each pixel repeated ``factor`` times down and across:
    nearest neighbour at a whole factor, one OpenCV call (numpy's two repeats took 5 us on a
    float32 grid, 16 on a boolean one; this 3 and 12).

    Exact for factors up to 16 (normalization's are at most 4: a working copy is at most 128
    px); OpenCV's nearest neighbour rounds the cell edges of some larger ones (49, 98, ...)."""
    if factor > 16:
        raise ValueError(f"enlarge by {factor}: only factors up to 16 repeat exactly")
    if image.dtype == bool:
        return enlarge(np.ascontiguousarray(image).view(np.uint8), factor).view(bool)
    h, w = image.shape
    return cv2.resize(image, (w * factor, h * factor), interpolation=cv2.INTER_NEAREST)


def profiles(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A boolean image's count of true pixels in each row and in each column, as float32 (exact:
    counts far under 2**24): one OpenCV reduction each, twice as fast as numpy's sums."""
    binary = np.ascontiguousarray(mask).view(np.uint8)
    rows = cv2.reduce(binary, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32F)
    cols = cv2.reduce(binary, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32F)
    return rows.ravel(), cols.ravel()


def pad_edge(image: np.ndarray, width: int) -> np.ndarray:
    """``image`` with its outermost pixels repeated ``width`` times all round (OpenCV's replicate
    border): a filter over whole windows then keeps the image's size and its edge pixels."""
    return cv2.copyMakeBorder(image, width, width, width, width, cv2.BORDER_REPLICATE)


# A closed loop must enclose at least this many pixels of a 28x28 crop: a pinhole left where two
# strokes nearly touch is not a loop.
MIN_LOOP = 3


def loops(pixels: np.ndarray, level: float) -> int:
    """How many closed loops the ink over ``level`` draws: the pockets of paper it encloses.

    Paper pockets are 4-connected (ink is 8-connected, so a diagonal step of ink still closes a
    loop); the paper outside the ink is the pocket that touches the border (the crop is padded
    with a ring of paper first), and pockets under MIN_LOOP pixels do not count.
    """
    paper = np.pad((pixels <= level).astype(np.uint8), 1, constant_values=1)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(paper, connectivity=4)
    outside = labels[0, 0]
    areas = stats[:, cv2.CC_STAT_AREA]
    return sum(1 for k in range(1, count) if k != outside and areas[k] >= MIN_LOOP)
