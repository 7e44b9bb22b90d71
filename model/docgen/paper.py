"""Cheque paper and the printed form: security patterns, tints, and the lines around the amount.

Cheques are printed on security paper: fine guilloche lines (sums of sinusoids), meshes of crossing
waves, rosettes, tinted bands. Under a scanner they become faint grey texture with the same stroke
width as the handwriting, which is what makes binarising a cheque hard; a reader that never saw it
learns that every thin line is ink. Curves are computed as numpy point arrays and drawn in one
``cv2.polylines`` call per family, so a background costs tens of microseconds.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from digits.model.docgen.layout import Ink

# pale paper tints (RGB reflectance): white, green, blue, pink, buff, lilac, grey
TINTS = np.array(
    [
        [0.97, 0.97, 0.95],
        [0.86, 0.93, 0.85],
        [0.85, 0.9, 0.96],
        [0.96, 0.88, 0.9],
        [0.95, 0.91, 0.8],
        [0.9, 0.87, 0.95],
        [0.88, 0.88, 0.88],
    ],
    np.float32,
)
GRAY = np.array([0.299, 0.587, 0.114], np.float32)
SHIFT = 3  # polyline points are fixed-point with this many fractional bits


def _draw(layer: np.ndarray, curves: np.ndarray, value: int, thickness: int = 1) -> None:
    """Anti-aliased open polylines for an (n, m, 2) float array of points."""
    pts = np.round(curves * (1 << SHIFT)).astype(np.int32)
    cv2.polylines(layer, list(pts), False, value, thickness, cv2.LINE_AA, SHIFT)


def _waves(rng: np.random.Generator, h: int, w: int, angle: float, spacing: float) -> np.ndarray:
    """Parallel wavy lines at ``angle`` covering an h x w crop: sums of two sinusoids."""
    diag = math.hypot(h, w)
    d = np.array([math.cos(angle), math.sin(angle)])
    n = np.array([-d[1], d[0]])
    centre = np.array([w / 2, h / 2])
    offsets = np.arange(-diag / 2, diag / 2 + spacing, spacing)
    n_pts = max(24, int(diag / 3))
    t = np.arange(n_pts) * (diag / (n_pts - 1)) - diag / 2
    a1, a2 = rng.uniform(1, 6), rng.uniform(0, 3)
    l1, l2 = rng.uniform(25, 90), rng.uniform(8, 30)
    p1, p2 = rng.uniform(0, 2 * math.pi, 2)
    drift = rng.uniform(-0.6, 0.6)  # phase shift per line: the waves shear into a moire
    k = np.arange(len(offsets))[:, None]
    wobble = a1 * np.sin(2 * math.pi * t / l1 + p1 + drift * k) + a2 * np.sin(
        2 * math.pi * t / l2 + p2
    )
    along = t[None, :, None] * d
    across = (offsets[:, None] + wobble)[:, :, None] * n
    return centre + along + across


def _rings(
    rng: np.random.Generator, h: int, w: int, centre: np.ndarray, spacing: float, petals: int
) -> np.ndarray:
    """Concentric rings around ``centre`` whose radius is modulated into ``petals`` lobes."""
    corners = np.array([[0, 0], [w, 0], [0, h], [w, h]], float)
    dist = np.hypot(*(corners - centre).T)
    inside = 0 <= centre[0] <= w and 0 <= centre[1] <= h
    r_lo = 0.0 if inside else max(dist.min() - 8, 0.0)
    radii = np.arange(r_lo + spacing, dist.max() + 8, spacing)
    span = math.pi if inside else min(math.pi, 1.2 * math.hypot(h, w) / max(r_lo, 1.0))
    mid = math.atan2(h / 2 - centre[1], w / 2 - centre[0])
    n_pts = 90 if inside else 60
    theta = np.arange(n_pts) * (2 * span / (n_pts - 1)) + (mid - span)
    amp = rng.uniform(0.5, 3.0)
    twist = rng.uniform(-0.3, 0.3)
    k = np.arange(len(radii))[:, None]
    r = radii[:, None] + amp * np.sin(petals * theta[None, :] + twist * k)
    return np.stack([centre[0] + r * np.cos(theta), centre[1] + r * np.sin(theta)], axis=-1)


def background(
    rng: np.random.Generator, family: str, h: int, w: int, gray: bool = False
) -> np.ndarray:
    """The paper, HxWx3 float32 reflectance, for background ``family`` (HxW if ``gray``).

    A greyscale scan never needs the colour, so it is not computed: a third of the arithmetic.
    """
    tint = TINTS[rng.integers(len(TINTS))] * rng.uniform(0.96, 1.03)
    if gray:
        tint = np.array([tint @ GRAY])
    layer = np.zeros((h, w), np.uint8)  # pattern darkness 0..255
    strength = rng.uniform(0.18, 0.45)
    if family == "guilloche":
        if rng.random() < 0.55:  # big arcs, as on most of the real cheques
            far = rng.uniform(1.0, 3.0) * w
            ang = rng.uniform(0, 2 * math.pi)
            c = np.array([w / 2 + far * math.cos(ang), h / 2 + far * math.sin(ang)])
            _draw(layer, _rings(rng, h, w, c, rng.uniform(3, 6), int(rng.integers(8, 40))), 255)
        else:
            _draw(layer, _waves(rng, h, w, rng.uniform(-0.5, 0.5), rng.uniform(3, 7)), 255)
    elif family == "mesh":
        a = rng.uniform(0.3, 1.1)
        sp = rng.uniform(5, 10)
        strength *= 0.75  # two families of lines: each fainter
        _draw(layer, _waves(rng, h, w, a, sp), 255)
        _draw(
            layer, _waves(rng, h, w, -a + rng.uniform(-0.2, 0.2), sp * rng.uniform(0.8, 1.25)), 255
        )
    elif family == "rosette":
        c = np.array([rng.uniform(0, w), rng.uniform(-0.5, 1.5) * h])
        petals = int(rng.integers(6, 18))
        sp = rng.uniform(3, 6)
        _draw(layer, _rings(rng, h, w, c, sp, petals), 255)
        _draw(layer, _rings(rng, h, w, c + rng.uniform(-4, 4, 2), sp * 1.1, petals), 200)
    elif family == "band":
        _draw(layer, _waves(rng, h, w, rng.uniform(-0.2, 0.2), rng.uniform(3, 6)), 220)
    elif family == "speckle":
        small = rng.random((max(h // 4, 2), max(w // 4, 2)), dtype=np.float32)
        mottle = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        grain = rng.random((h, w), dtype=np.float32)
        layer = np.clip(mottle * 120 + grain * 110 - 60, 0, 255).astype(np.uint8)
        strength = rng.uniform(0.08, 0.2)
    # gentle gradient: tints are printed and scanned unevenly
    shade = np.ones((h, w), np.float32)
    shade *= 1 + (np.arange(w, dtype=np.float32) * np.float32(2 / w) - 1) * np.float32(
        rng.uniform(-0.04, 0.04)
    )
    if family == "band":
        y0 = rng.uniform(-0.2, 0.6) * h
        y1 = y0 + rng.uniform(0.3, 0.6) * h
        rows = np.arange(h, dtype=np.float32)
        edge = np.clip(np.minimum(rows - y0, y1 - rows) / 2 + 0.5, 0, 1)
        shade *= (1 - rng.uniform(0.12, 0.3) * edge)[:, None].astype(np.float32)
    # pattern lines are a darker shade of the tint: paper = shade * (tint - cover * tint * (1 - k * tint))
    pattern_ink = tint * rng.uniform(0.25, 0.6)
    cover = cv2.multiply(layer, 1.0, dtype=cv2.CV_32F, scale=strength / 255)
    if gray:
        return shade * np.float32(tint[0]) - cover * shade * np.float32(
            tint[0] * (1 - pattern_ink[0])
        )
    paper = cv2.merge([shade * np.float32(t) for t in tint])
    paper -= (cover * shade)[:, :, None] * (tint * (1 - pattern_ink)).astype(np.float32)
    return paper


def rules(rng: np.random.Generator, family: str, h: int, w: int, ink: Ink) -> np.ndarray:
    """Darkness 0..1 (HxW float32) of the printed lines of the form for ``family``."""
    layer = np.zeros((h, w), np.uint8)
    if family == "none":
        return layer.astype(np.float32)
    value = int(rng.uniform(0.45, 0.85) * 255)
    tilt = rng.normal(0, 0.006)
    dh = ink.digit_height
    # The printed baseline sits a little under the writing; writers often touch or cross it.
    y = ink.baseline + rng.uniform(-0.08, 0.2) * dh
    y = min(y, h - 1.5)
    x0 = 0.0 if rng.random() < 0.7 else rng.uniform(0, 0.2) * w
    thick = 1 if rng.random() < 0.8 else 2
    line = np.array([[[x0, y], [w, y + tilt * (w - x0)]]])
    if family in ("solid", "box", "crossing"):
        _draw(layer, line, value, thick)
    elif family == "double":
        _draw(layer, line, value, 1)
        _draw(layer, line + [0, rng.uniform(2.5, 4.5)], value, 1)
    elif family == "dotted":
        period = rng.uniform(3, 7)
        starts = np.arange(x0, w, period)
        ends = starts + period * rng.uniform(0.35, 0.65)
        segs = np.stack(
            [np.stack([starts, y + tilt * starts], -1), np.stack([ends, y + tilt * ends], -1)], 1
        )
        _draw(layer, segs, value, thick)
    if family == "box":
        top = rng.uniform(0, 0.12) * h
        if rng.random() < 0.7:
            _draw(layer, np.array([[[0, top], [w, top + tilt * w]]]), value, 1)
        xe = rng.uniform(0, 0.08) * w if rng.random() < 0.5 else w - 1 - rng.uniform(0, 0.08) * w
        _draw(layer, np.array([[[xe, 0], [xe + tilt * h, h]]]), value, 1)
    if family == "crossing":
        # a form line that runs through the writing: ascenders of tall digits cross it
        yc = ink.baseline - rng.uniform(0.55, 1.05) * dh
        _draw(layer, np.array([[[0, yc], [w, yc + tilt * w]]]), value, 1)
    return layer.astype(np.float32) * np.float32(1 / 255)
