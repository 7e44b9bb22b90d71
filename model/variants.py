"""Test-time variants of normalized 28x28 crops: the same digit with a slightly wider or
narrower pen, or slanted a little either way.

A mistake rarely survives every variant, so reading a crop as all of them both errs less and is
less sure when it errs. The field segmenter reads every cut so (``fields.probabilities``); a
single crop gets a second look only when the network is unsure of it (``inference.SECOND_LOOK``).
Each function takes and returns (n, 28, 28) float32 arrays in [0, 1] (n may be 0), all crops in
one OpenCV call or a few.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

_SQUARE3 = np.ones((3, 3), np.uint8)
_SQUARE2 = np.ones((2, 2), np.uint8)


def _stacked(x: np.ndarray, between: float, op) -> np.ndarray:
    """``op`` on every 28x28 crop in one OpenCV call: the crops stacked in one tall image, each
    followed by a row of ``between``, which stands for the outside of the crop above it."""
    n = len(x)
    if n == 0:
        return np.zeros((0, 28, 28), np.float32)
    tall = np.full((n, 29, 28), between, np.float32)
    tall[:, :28] = x
    return op(tall.reshape(n * 29, 28)).reshape(n, 29, 28)[:, :28]


def thicker(x: np.ndarray) -> np.ndarray:
    """Halfway to a pen one pixel wider all round (a 3x3 grey dilation)."""
    return 0.5 * (x + _stacked(x, 0.0, lambda t: cv2.dilate(t, _SQUARE3)))


def thinner(x: np.ndarray) -> np.ndarray:
    """A pen one pixel narrower: a 2x2 grey erosion, the window reaching right and down."""
    return _stacked(x, 1.0, lambda t: cv2.erode(t, _SQUARE2, anchor=(0, 0)))


def rotated(x: np.ndarray, degrees: float) -> np.ndarray:
    """Bilinear rotation about the centre, four crops at a time as the channels of one image."""
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    # Where each output pixel samples its crop: the rotation about (13.5, 13.5), as an inverse map.
    m = np.array([[c, s, 13.5 - 13.5 * (c + s)], [-s, c, 13.5 - 13.5 * (c - s)]])
    n = len(x)
    if n == 0:
        return np.zeros((0, 28, 28), np.float32)
    padded = np.zeros((-(-n // 4) * 4, 28, 28), np.float32)
    padded[:n] = x
    groups = padded.reshape(-1, 4, 28, 28).transpose(0, 2, 3, 1)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = np.stack(
        [cv2.warpAffine(np.ascontiguousarray(g), m, (28, 28), flags=flags) for g in groups]
    )
    return out.transpose(0, 3, 1, 2).reshape(-1, 28, 28)[:n]
