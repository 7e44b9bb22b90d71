"""Ballpoint pen strokes from MNIST glyphs, and the pen marks that go between digits.

MNIST digits were written with a felt-tip and blurred into thick blobs; cheque amounts are written
with ballpoints, whose lines are thin (1.5 to 3 px in a 50 px crop) and of even width. So each glyph
is thinned to its centre line (Zhang-Suen, vectorised through a 3x3 neighbourhood code and a lookup
table) and later redrawn with a round pen of the sampled width. The centre line of a glyph never
changes, so it is cached by the glyph's bytes: generation on the fly pays for thinning once per
MNIST image, not once per sample.

Everything here draws into a uint8 "centre-line" canvas at ``SUPER`` times the final resolution;
``pen`` turns that into strokes of the pen's width and shrinks it, so digits, separators, ties and
flags all come out in the same pen.
"""

from __future__ import annotations

import hashlib
import math

import cv2
import numpy as np
from numpy.typing import ArrayLike

SUPER = 2  # the canvas is drawn this much larger, then shrunk with area averaging (soft edges)
_SKELETON_CACHE: dict[bytes, np.ndarray] = {}
_CACHE_LIMIT = 120_000  # a little over MNIST's 70,000 glyphs


def _zhang_suen_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion tables for the two Zhang-Suen sub-iterations, indexed by the 8-neighbour code.

    Bit k of the code is neighbour P(k+2) of the usual numbering: P2 north, then clockwise.
    """
    first = np.zeros(256, np.uint8)
    second = np.zeros(256, np.uint8)
    for code in range(256):
        p = [(code >> k) & 1 for k in range(8)]  # P2..P9
        b = sum(p)
        a = sum(1 for k in range(8) if p[k] == 0 and p[(k + 1) % 8] == 1)
        p2, _, p4, _, p6, _, p8, _ = p
        if 2 <= b <= 6 and a == 1:
            first[code] = int(p2 * p4 * p6 == 0 and p4 * p6 * p8 == 0)
            second[code] = int(p2 * p4 * p8 == 0 and p2 * p6 * p8 == 0)
    return first, second


_FIRST, _SECOND = _zhang_suen_tables()
_CODE_KERNEL = np.array([[128, 1, 2], [64, 0, 4], [32, 16, 8]], np.float32)


def thin(binary: np.ndarray, max_iter: int = 20) -> np.ndarray:
    """Centre line of a 0/1 uint8 image, one pixel wide and 8-connected (Zhang-Suen)."""
    img = binary.copy()
    for _ in range(max_iter):
        changed = False
        for table in (_FIRST, _SECOND):
            code = cv2.filter2D(img, cv2.CV_16S, _CODE_KERNEL, borderType=cv2.BORDER_CONSTANT)
            delete = table[code] & img
            if delete.any():
                img ^= delete
                changed = True
        if not changed:
            break
    return img


def skeleton(glyph: np.ndarray) -> np.ndarray:
    """Centre line of a 28x28 MNIST glyph at 56x56, cropped to its ink, uint8 0..255 (cached).

    Thinning at double size keeps curves round instead of 28-pixel staircases; a light blur before
    the threshold removes the notches that would otherwise grow into spurs.
    """
    key = hashlib.blake2b(glyph.tobytes(), digest_size=16).digest()
    hit = _SKELETON_CACHE.get(key)
    if hit is not None:
        return hit
    big = cv2.resize(glyph, (56, 56), interpolation=cv2.INTER_LINEAR)
    big = cv2.GaussianBlur(big, (5, 5), 1.0)
    binary = (big > 96).astype(np.uint8)
    line = thin(binary)
    ys, xs = np.nonzero(line)
    if len(ys) == 0:  # an empty glyph: draw a short stroke rather than nothing
        line[20:36, 28] = 1
        ys, xs = np.nonzero(line)
    crop = line[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] * np.uint8(255)
    if len(_SKELETON_CACHE) >= _CACHE_LIMIT:
        _SKELETON_CACHE.clear()
    _SKELETON_CACHE[key] = crop
    return crop


def warp_glyph(
    line: np.ndarray,
    height: float,
    slant: float,
    angle_deg: float,
    intensity: float,
    pad: int,
    aspect: float = 1.0,
) -> np.ndarray:
    """The centre line scaled to ``height`` canvas pixels, sheared by ``slant``, rotated, uint8.

    ``aspect`` narrows the glyph: MNIST digits were fitted into a square box, which makes zeros
    rounder and wider than the narrow digits people write in an amount box.

    One affine resampling per glyph (chained ones blur), into a patch just big enough for the
    result plus ``pad`` pixels for the pen. Upscaling by linear interpolation keeps the line
    connected; its soft edge survives the pen dilation as anti-aliasing.
    """
    h0, w0 = line.shape
    s = height / max(h0, 4)
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    # x' = s*(aspect*x - slant*y), y' = s*y, then the rotation, all about the crop centre
    m00, m01 = ca * s * aspect, -ca * s * slant - sa * s
    m10, m11 = sa * s * aspect, -sa * s * slant + ca * s
    hx, hy = w0 / 2, h0 / 2
    ex, ey = abs(m00) * hx + abs(m01) * hy, abs(m10) * hx + abs(m11) * hy  # half extents
    out_w = int(math.ceil(2 * ex)) + 2 * pad + 2
    out_h = int(math.ceil(2 * ey)) + 2 * pad + 2
    tx = pad + 1 + ex - (m00 * hx + m01 * hy)
    ty = pad + 1 + ey - (m10 * hx + m11 * hy)
    m = np.array([[m00, m01, tx], [m10, m11, ty]], np.float32)
    patch = cv2.warpAffine(line, m, (out_w, out_h), flags=cv2.INTER_LINEAR)
    return np.minimum(
        cv2.convertScaleAbs(patch, alpha=255 * intensity / 110), np.uint8(255 * intensity)
    )


def top_point(patch: np.ndarray) -> tuple[int, int]:
    """(x, y) of the highest ink in a patch: where a one's lead-in flag starts."""
    rows = np.flatnonzero(patch.max(axis=1) > 80)
    y = int(rows[0]) if len(rows) else 0
    return int(np.argmax(patch[y])), y


def pen(canvas: np.ndarray, width: float) -> np.ndarray:
    """Strokes of a round pen ``width`` final pixels wide along the centre lines: float 0..1, final size.

    Grey dilation of the centre-line canvas with a disc (the pen tip), then area shrinking by
    ``SUPER``: the shrink averages sub-pixel coverage, so widths between whole pixels come out as
    lighter edge pixels, which is what a scanned ballpoint line looks like.
    """
    d = max(1, int(round(width * SUPER - 1.2)))
    if d > 1:
        tip = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))
        canvas = cv2.dilate(canvas, tip)
    h, w = canvas.shape
    small = cv2.resize(canvas, (w // SUPER, h // SUPER), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) * np.float32(1 / 255)


def _pts(points: ArrayLike) -> np.ndarray:
    """Float canvas points as the fixed-point int32 array cv2's shift argument expects."""
    return np.round(np.asarray(points, float) * 16).astype(np.int32).reshape(-1, 1, 2)


def polyline(canvas: np.ndarray, points: ArrayLike, value: int = 255) -> None:
    """A centre line through ``points`` (x, y canvas pixels), anti-aliased, sub-pixel placed."""
    cv2.polylines(canvas, [_pts(points)], False, value, 1, cv2.LINE_AA, 4)


def curve(p0: ArrayLike, p1: ArrayLike, bow: float, n: int = 9) -> np.ndarray:
    """Points of a quadratic arc from ``p0`` to ``p1`` bulging ``bow`` pixels to its left."""
    a, b = np.asarray(p0, float), np.asarray(p1, float)
    d = b - a
    normal = np.array([d[1], -d[0]]) / (np.hypot(*d) + 1e-6)
    ctrl = (a + b) / 2 + normal * bow
    t = np.linspace(0, 1, n)[:, None]
    return (1 - t) ** 2 * a + 2 * (1 - t) * t * ctrl + t**2 * b


def mark(
    canvas: np.ndarray, ch: str, x: float, base: float, h: float, rng: np.random.Generator
) -> float:
    """Draw separator or trailing mark ``ch`` from ``x`` on baseline ``base``; return its advance.

    ``h`` is the digit height. Marks are what real writers make: a dot is a tiny blob, a comma a
    short tick through the baseline, a dash a flat stroke at mid height, the long dash a line that
    fills the rest of the field against alterations.
    """
    r = rng.uniform
    if ch == ".":
        cx, cy = x + r(0.06, 0.14) * h, base - r(0.0, 0.08) * h
        rad = r(0.03, 0.07) * h
        blob = (
            np.asarray(cv2.ellipse2Poly((0, 0), (16, 16), int(r(0, 360)), 0, 360, 45), float) / 16
        )
        polyline(canvas, blob * rad + [cx, cy])
        cv2.circle(canvas, (int(cx), int(cy)), max(1, int(rad * 0.7)), 255, -1)
        return r(0.22, 0.35) * h
    if ch == ",":
        cx, cy = x + r(0.08, 0.16) * h, base - r(0.02, 0.1) * h
        polyline(
            canvas, curve([cx + 0.03 * h, cy], [cx - r(0.04, 0.12) * h, cy + r(0.18, 0.3) * h], 2)
        )
        return r(0.22, 0.35) * h
    if ch == "-":
        y = base - r(0.3, 0.5) * h
        length = r(0.25, 0.5) * h
        x0 = x + r(0.05, 0.2) * h
        polyline(canvas, [[x0, y + r(-1, 1)], [x0 + length, y + r(-2, 1)]])
        return x0 - x + length + r(0.1, 0.2) * h
    if ch == "—":
        y = base - r(0.2, 0.45) * h
        length = r(0.9, 2.2) * h
        x0 = x + r(0.05, 0.25) * h
        polyline(canvas, curve([x0, y], [x0 + length, y + r(-0.15, 0.1) * h], r(-2, 2)))
        return x0 - x + length + 2
    if ch == "/":
        x0 = x + r(0.05, 0.12) * h
        polyline(
            canvas, [[x0, base + r(0.0, 0.15) * h], [x0 + r(0.3, 0.5) * h, base - r(0.8, 1.05) * h]]
        )
        return r(0.5, 0.7) * h
    if ch == "$":
        return _dollar(canvas, x, base, h, rng)
    if ch == " ":
        return r(0.4, 0.8) * h
    return 0.0


def _dollar(canvas: np.ndarray, x: float, base: float, h: float, rng: np.random.Generator) -> float:
    """A dollar sign: an S from two arcs and a bar through it (the peso sign looks the same)."""
    hh = h * rng.uniform(0.85, 1.05)
    rad = hh / 4
    cx = x + rad + 0.1 * h
    top = base - hh
    upper = np.asarray(cv2.ellipse2Poly((0, 0), (100, 100), 0, 90, 330, 15), float) / 100
    lower = np.asarray(cv2.ellipse2Poly((0, 0), (100, 100), 0, -90, 150, 15), float) / 100
    s_shape = np.vstack(
        [
            (upper[::-1] * [rad * 1.1, rad]) + [cx, top + rad],
            (lower * [rad * 1.1, rad]) + [cx, top + 3 * rad],
        ]
    )
    polyline(canvas, s_shape)
    bar_x = cx + rng.uniform(-0.05, 0.05) * h
    polyline(canvas, [[bar_x + 0.04 * h, top - 0.12 * h], [bar_x - 0.04 * h, base + 0.12 * h]])
    return 2 * rad * 1.1 + rng.uniform(0.25, 0.45) * h


def _trimmed(canvas: np.ndarray) -> np.ndarray:
    """A drawn centre line cut to its ink's box, as the MNIST skeletons are."""
    x, y, w, h = cv2.boundingRect(canvas)
    return canvas[y : y + h, x : x + w]


def looped_nine(rng: np.random.Generator) -> np.ndarray:
    """The centre line of a nine as many Chilean (and other) cheque writers make it: a small
    tilted loop high on the left, closed onto a long straight stem that drops from its right
    side. A network trained on MNIST alone reads it as an eight (the loop over a stem whose foot
    curls back); drawn here at the skeleton's 56 px.
    """
    canvas = np.zeros((56, 56), np.uint8)
    radius = rng.uniform(6, 10)
    squash = rng.uniform(0.75, 1.0)
    centre = np.array([rng.uniform(18, 24), rng.uniform(8, 11) + radius * squash])
    # The loop is drawn anticlockwise from its right side and closes back there.
    start = np.radians(rng.uniform(-20, 20))
    angles = start - np.linspace(0, np.radians(rng.uniform(330, 370)), 18)
    loop = np.stack(
        [centre[0] + radius * np.cos(angles), centre[1] + radius * squash * np.sin(angles)], axis=1
    )
    top = loop[-1]
    foot = np.array([top[0] + rng.uniform(-4, 2), rng.uniform(46, 53)])
    stem = curve(top, foot, rng.uniform(-2, 2))
    # The foot often hooks back to the left, sometimes far enough to look like the bottom of
    # an eight: the shape both of our readers misread on real cheques.
    hook = rng.random()
    if hook < 0.3:
        tail = [curve(foot, foot + [rng.uniform(-6, -2), rng.uniform(-3, 0)], 0.5)]
    elif hook < 0.6:
        tail = [curve(foot, foot + [rng.uniform(-14, -7), rng.uniform(-9, -3)], rng.uniform(2, 5))]
    else:
        tail = []
    polyline(canvas, np.concatenate([loop, stem, *tail]))
    return _trimmed(canvas)


def crossed_nine(
    rng: np.random.Generator,
    tick_reach: tuple[float, float] = (0.45, 1.0),
    foot_y: tuple[float, float] = (48, 54),
) -> np.ndarray:
    """The centre line of a nine whose loop crosses itself at the waist, the way most nines on
    the real Chilean cheques are written: the pen starts low beside the stem, rises through the
    waist into the loop, goes round it and back through the waist, and drops as the stem. The
    start stays as a short tick under the crossing, so the waist looks like an eight's and the
    stem like the bottom of one; readers trained on MNIST and on :func:`looped_nine` alone read
    these "8" (219 read 218, 33779 read 33778, 9557 read 8557 by both readers).
    """
    canvas = np.zeros((56, 56), np.uint8)
    radius = rng.uniform(8.5, 12.5)
    squash = rng.uniform(0.8, 1.1)
    centre = np.array([rng.uniform(22, 30), rng.uniform(4, 8) + radius * squash])
    side = -1.0 if rng.random() < 0.7 else 1.0  # the tick's side: mostly the left
    # The waist sits under the round of the loop, which makes it a teardrop pointing down.
    waist = centre + [rng.uniform(-0.15, 0.3) * radius, radius * squash * rng.uniform(1.1, 1.45)]
    tick = waist + [side * rng.uniform(*tick_reach) * radius, rng.uniform(0.3, 0.8) * radius]
    # Round the loop from the waist, leaving on the side away from the tick (y grows downward,
    # so with the tick on the left the angle falls: bottom, right, top, left, bottom).
    a0 = np.arctan2((waist[1] - centre[1]) / squash, waist[0] - centre[0])
    angles = a0 + side * np.linspace(0.35, 2 * np.pi - 0.35, 20)
    loop = np.stack(
        [centre[0] + radius * np.cos(angles), centre[1] + radius * squash * np.sin(angles)], axis=1
    )
    foot = np.array([waist[0] + rng.uniform(-7, 3), rng.uniform(*foot_y)])
    stem = curve(waist, foot, rng.uniform(-3, 3))
    polyline(canvas, np.concatenate([curve(tick, waist, rng.uniform(-1, 1), 5), loop, stem]))
    return _trimmed(canvas)


def looped_two(rng: np.random.Generator) -> np.ndarray:
    """The centre line of a two whose foot is a small loop before the base stroke, a common
    cursive habit; MNIST has few, and readers trained on it see a nine or an eight in it.
    """
    canvas = np.zeros((56, 56), np.uint8)
    w = rng.uniform(16, 26)
    x0, top = rng.uniform(12, 18), rng.uniform(4, 9)
    arch = np.asarray(cv2.ellipse2Poly((0, 0), (100, 100), 0, 200, 360, 12), float) / 100
    head = arch * [w / 2, rng.uniform(7, 11)] + [x0 + w / 2, top + 9]
    low = np.array([x0 + rng.uniform(-1, 4), rng.uniform(40, 46)])
    diagonal = curve(head[-1], low, rng.uniform(-3, 3))
    r = rng.uniform(3, 6)
    # the loop: from the diagonal's end round anticlockwise and out to the right along the base
    angles = np.linspace(np.pi * 0.2, np.pi * 2.1, 12)
    loop = np.stack([low[0] + r * np.cos(angles), low[1] + r * 0.8 * np.sin(angles)], axis=1)
    base = curve(loop[-1], [x0 + w + rng.uniform(0, 6), low[1] + rng.uniform(-3, 2)], 1)
    polyline(canvas, np.concatenate([head, diagonal, loop, base]))
    return _trimmed(canvas)


def looped_one(rng: np.random.Generator) -> np.ndarray:
    """The centre line of a one written as a cursive ell: the pen rises from low on the left,
    crosses where the stem will be, turns over a narrow loop at the top and comes down as the
    stem. Half of the ones on the real cheque samples that the segmenter misread were drawn
    so (1056 read 2056, 109 read 409, 10.000 read 20.050): MNIST has none, and the flag of
    :func:`one_flag` is a straight or bowed stroke that never closes a loop. At 56 px.
    """
    canvas = np.zeros((56, 56), np.uint8)
    apex = np.array([rng.uniform(24, 32), rng.uniform(3, 8)])
    r = rng.uniform(3.0, 6.0)  # half the loop's width
    drop = rng.uniform(1.0, 2.5) * r  # how far its sides run down before they cross
    # Over the top from the right side to the left one (y grows downward).
    t = np.linspace(0, np.pi, 9)
    top = np.stack([apex[0] + r * np.cos(t), apex[1] + r - r * np.sin(t)], axis=1)
    start = np.array([apex[0] - rng.uniform(8, 16), rng.uniform(28, 44)])
    rise = curve(start, top[0] + [0, drop], rng.uniform(-2, 3), 10)
    foot = np.array([apex[0] + rng.uniform(-2, 3), rng.uniform(48, 54)])
    stem = curve(top[-1] + [0, drop], foot, rng.uniform(-2, 2), 10)
    polyline(canvas, np.concatenate([rise, top, stem]))
    return _trimmed(canvas)


def one_flag(rng: np.random.Generator, tx: float, ty: float, size: float) -> np.ndarray:
    """The lead-in stroke of a one, ending at its top (``tx``, ``ty``): short and high (a serif),
    or long and from near the baseline, so the one reads as a caret with a stem (a lambda) the way
    Chilean and many European writers make it. A reader that never saw the long one reads "11".
    """
    if rng.random() < 0.55:
        start = [tx - rng.uniform(0.3, 0.7) * size, ty + rng.uniform(0.6, 1.0) * size]
        bow = rng.uniform(-0.12, 0.04) * size
    else:
        start = [tx - rng.uniform(0.2, 0.6) * size, ty + rng.uniform(0.25, 0.6) * size]
        bow = rng.uniform(-0.05, 0.05) * size
    return curve(start, [tx, ty], bow)
