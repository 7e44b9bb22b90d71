"""Writing a text left to right with MNIST digits as pen strokes, the way people fill in a cheque.

Handwritten amounts are not rows of boxed digits: heights and slants wander, the baseline drifts,
neighbours touch or overlap, runs of zeros are chained into one stroke (and some writers make
them small and round, "3.ooo"), ones get a long lead-in flag and sevens a bar. The touching
family decides the gaps; everything else is drawn per digit from the sample's own random stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from digits.model.docgen import strokes
from digits.model.docgen.strokes import SUPER

# Writer shapes MNIST lacks, drawn instead of (or onto) an MNIST glyph this often: nines as a
# loop and a stem (strokes.looped_nine, or crossed at the waist, strokes.crossed_nine), twos
# with a loop at the foot (strokes.looped_two), and ones with a lead-in stroke
# (strokes.one_flag), which on Chilean cheques is the rule, or written as a cursive ell
# (strokes.looped_one).
CHILEAN_NINES = 0.5
CROSSED_NINES = 0.5  # of those, crossed at the waist; the rest looped
LOOPED_TWOS = 0.2
LOOPED_ONES = 0.2
ONE_FLAGS = 0.75  # of the other ones
# Writers who make the zeros of a run small and round, sitting on the baseline like a row of
# letter o's ("3.ooo", "28oo"): seven of the 25 real cheques that field-821229391ce5 misread
# were written so, and MNIST zeros are all full height and upright ovals.
SMALL_ZEROS = 0.3
SMALL_ZERO_SIZE = (0.5, 0.75)  # of the digit height
SMALL_ZERO_ASPECT = (0.95, 1.35)  # width factor (warp_glyph's aspect): round or wider
PEN_WIDTH = {"fine": (1.6, 2.2), "medium": (2.2, 2.9), "bold": (3.1, 4.0)}


@dataclass(frozen=True)
class Ink:
    """The written field: pen coverage 0..1 at final size, and where the writing sits."""

    alpha: np.ndarray  # HxW float32
    baseline: float  # y of the writing's baseline at x = 0, final pixels
    slope: float  # baseline rise per pixel (the writer's skew)
    digit_height: float  # typical digit height, final pixels
    left: int  # x where the ink starts
    right: int  # x where the ink ends
    # Each digit's box (x0, y0, x1, y1, final pixels, exclusive ends), in the text's order, a
    # one's lead-in flag included: the box of the pen's centre line, which the ink overreaches by
    # half a pen width. Where a segmenter should have cut (model.pieces trains on it).
    boxes: tuple[tuple[int, int, int, int], ...] = ()


def _gap(rng: np.random.Generator, touching: str, prev: str, ch: str) -> float:
    """Space before a digit, as a share of digit height (negative: the two overlap)."""
    if touching == "spaced":
        return rng.uniform(0.1, 0.38)
    if touching == "overlap":
        return rng.uniform(-0.16, 0.04)
    if touching == "tied" and prev == "0" and ch == "0":
        return rng.uniform(-0.2, -0.03)
    if touching == "cursive":
        return rng.uniform(-0.06, 0.08)
    return rng.uniform(-0.04, 0.14)  # kerned, and tied between other digits


def _box(patch: np.ndarray) -> tuple[int, int, int, int]:
    """Tight (x0, y0, x1, y1) of the ink in a patch."""
    x, y, w, h = cv2.boundingRect((patch > 40).astype(np.uint8))
    return x, y, x + max(w, 1), y + max(h, 1)


def _paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    """Max-combine ``patch`` into ``canvas`` with its top-left at (x, y), clipped to the canvas."""
    ch, cw = canvas.shape
    ph, pw = patch.shape
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + ph, ch), min(x + pw, cw)
    if y1 <= y0 or x1 <= x0:
        return
    region = canvas[y0:y1, x0:x1]
    np.maximum(region, patch[y0 - y : y1 - y, x0 - x : x1 - x], out=region)


def write(
    rng: np.random.Generator,
    text: str,
    images: np.ndarray,
    by_digit: list[np.ndarray],
    touching: str,
    pen_family: str,
) -> Ink:
    """Draw ``text`` with digits from ``images`` (indices per digit in ``by_digit``)."""
    height = int(rng.integers(40, 61))
    dh = height * rng.uniform(0.55, 0.75)  # digit height, final px
    hc = dh * SUPER
    base0 = (height + dh) / 2 + rng.uniform(-0.05, 0.08) * height
    slope = rng.normal(0, 0.02)
    slant0 = rng.uniform(-0.05, 0.35)
    width_bound = int(hc * (1.6 * len(text) + 4) + 40)
    canvas = np.zeros((height * SUPER, width_bound), np.uint8)
    pad = 2
    x = rng.uniform(0.08, 0.35) * hc + (0.45 * hc if text[:1] == "1" else 0.0)
    left = x
    prev, prev_box = "", (0, 0, 0, 0)
    boxes: list[tuple[float, float, float, float]] = []
    small_zeros = rng.random() < SMALL_ZEROS
    for k, ch in enumerate(text):
        base = (base0 + slope * x / SUPER) * SUPER
        if not ch.isdigit():
            x += strokes.mark(canvas, ch, x, base, hc, rng)
            prev, prev_box = ch, (0, 0, 0, 0)
            continue
        in_run = ch == "0" and "0" in (prev, text[k + 1 : k + 2])
        small = small_zeros and in_run
        if prev.isdigit():
            x += _gap(rng, touching, prev, ch) * hc * (0.6 if small and prev == "0" else 1.0)
        elif prev:
            x += rng.uniform(0.0, 0.1) * hc
        size = hc * rng.uniform(0.88, 1.1)
        aspect = rng.uniform(0.68, 0.95) if ch in "0234568" else rng.uniform(0.8, 1.0)
        if small:
            size = hc * rng.uniform(*SMALL_ZERO_SIZE)
            aspect = rng.uniform(*SMALL_ZERO_ASPECT)
        elif ch == "0" and touching in ("tied", "cursive") and prev == "0":
            size *= rng.uniform(0.8, 0.95)
        looped = ch == "1" and rng.random() < LOOPED_ONES
        if ch == "9" and rng.random() < CHILEAN_NINES:
            crossed = rng.random() < CROSSED_NINES
            line = strokes.crossed_nine(rng) if crossed else strokes.looped_nine(rng)
        elif ch == "2" and rng.random() < LOOPED_TWOS:
            line = strokes.looped_two(rng)
        elif looped:
            line = strokes.looped_one(rng)
        else:
            pool = by_digit[int(ch)]
            line = strokes.skeleton(images[pool[rng.integers(len(pool))]])
        patch = strokes.warp_glyph(
            line,
            size,
            slant0 + rng.normal(0, 0.06),
            rng.normal(0, 3) - np.degrees(slope),
            rng.uniform(0.85, 1.0),
            pad,
            aspect,
        )
        bx0, by0, bx1, by1 = _box(patch)
        px = int(round(x - bx0))
        drop = rng.uniform(0, 0.12) * hc if ch in "79" and rng.random() < 0.3 else 0.0
        py = int(round(base + rng.normal(0, 0.035) * hc + drop - by1))
        _paste(canvas, patch, px, py)
        box = (px + bx0, py + by0, px + bx1, py + by1)
        drawn: tuple[float, float, float, float] = box
        if ch == "1" and not looped and rng.random() < ONE_FLAGS:
            tx, ty = strokes.top_point(patch)
            flag = strokes.one_flag(rng, tx + px, ty + py, size)
            strokes.polyline(canvas, flag)
            lo, hi = flag.min(axis=0), flag.max(axis=0)
            drawn = (min(box[0], lo[0]), min(box[1], lo[1]), max(box[2], hi[0]), max(box[3], hi[1]))
        boxes.append(drawn)
        if ch == "7" and rng.random() < 0.3:  # crossed seven
            ym = (box[1] + box[3]) / 2 + rng.uniform(-0.05, 0.1) * size
            xm = (box[0] + box[2]) / 2
            half = rng.uniform(0.2, 0.3) * size
            strokes.polyline(canvas, [[xm - half, ym + 1], [xm + half, ym - 1]])
        if prev.isdigit() and _tie(rng, touching, prev, ch):
            _ligature(canvas, rng, prev_box, box, prev, ch)
        x = box[2]
        prev, prev_box = ch, box
    right = int(min(x + rng.uniform(0.1, 0.4) * hc, width_bound))
    right -= right % SUPER
    alpha = strokes.pen(canvas[:, :right], rng.uniform(*PEN_WIDTH[pen_family]))
    h, w = alpha.shape
    final = tuple(
        (
            int(np.clip(x0 / SUPER, 0, w)),
            int(np.clip(y0 / SUPER, 0, h)),
            int(np.clip(np.ceil(x1 / SUPER), 0, w)),
            int(np.clip(np.ceil(y1 / SUPER), 0, h)),
        )
        for x0, y0, x1, y1 in boxes
    )
    return Ink(alpha, base0, slope, dh, int(left / SUPER), int(x / SUPER), final)


def _tie(rng: np.random.Generator, touching: str, prev: str, ch: str) -> bool:
    """Whether the pen stays on the paper between two digits."""
    if touching == "tied":
        return prev == "0" and ch == "0" and rng.random() < 0.75
    if touching == "cursive":
        return rng.random() < 0.7
    return touching == "overlap" and prev == "0" and ch == "0" and rng.random() < 0.3


def _ligature(
    canvas: np.ndarray,
    rng: np.random.Generator,
    a: tuple[int, int, int, int],
    b: tuple[int, int, int, int],
    prev: str,
    ch: str,
) -> None:
    """A connecting stroke from digit box ``a`` to the next digit box ``b``.

    Between zeros it runs over the top, where a writer leaves one loop for the next; otherwise
    from low on the right of one digit up to the left of the next, like cursive joins.
    """
    ha, hb = a[3] - a[1], b[3] - b[1]
    if prev == "0" and ch == "0":
        p0 = [a[2] - 0.15 * (a[2] - a[0]), a[1] + rng.uniform(0.1, 0.35) * ha]
        p1 = [b[0] + 0.2 * (b[2] - b[0]), b[1] + rng.uniform(0.05, 0.3) * hb]
        bow = rng.uniform(0.0, 0.12) * ha
    else:
        p0 = [a[2] - 0.1 * (a[2] - a[0]), a[1] + rng.uniform(0.75, 0.95) * ha]
        p1 = [b[0] + 0.1 * (b[2] - b[0]), b[1] + rng.uniform(0.3, 0.6) * hb]
        bow = -rng.uniform(0.0, 0.15) * ha
    strokes.polyline(canvas, strokes.curve(p0, p1, bow))
