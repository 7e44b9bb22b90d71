"""Scan-like versions of MNIST digits: what a crop from an envelope or a cheque looks like.

Accuracy on clean MNIST says what the network does; accuracy on these says what the product does,
since every one goes through decoding and normalization first. Each trait is one real difference
between a scan and MNIST: dark ink on paper of varying brightness with a gradient and faint texture,
any size (28 to 128 px for the digit's frame), loose or tight margins, small rotations and slant,
optical blur, sensor noise, JPEG at quality 50 to 90, some colour (cream paper, blue ballpoint) and
a few PNGs.

Everything is drawn from a seeded generator; each digit gets its own stream derived from the seed
and its index, so a subset renders exactly as it does inside the full set.

:func:`on_security_paper` draws another kind of scan: a ballpoint digit cut small and tight from a
cheque's security paper (guilloche lines, meshes, tints: ``docgen.paper``), as digits cut from the
real cheque samples come (``devtools.cut_digits``).
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

SIZES = (28, 128)  # side of the digit's 28x28 frame once upscaled, in pixels
MAX_ROTATION = 8.0  # degrees either way
JPEG_QUALITY = (50, 90)
RGB_SHARE = 0.25
PNG_SHARE = 0.06
INK_THRESHOLD = 0.05  # an MNIST value above this is ink when deciding how tight a margin may go

PAPER = (0.55, 0.95)  # brightness of the paper
GRADIENT = 0.25  # largest brightness change across the crop
TEXTURE = 0.03  # largest amplitude of the paper's low-frequency mottle
DARKNESS = (0.6, 0.95)  # share of the paper's light the ink absorbs at a stroke's core
BLUR = (0.0, 1.2)  # optical blur, Gaussian sigma in output pixels
NOISE = (0.0, 0.05)  # sensor noise, Gaussian sigma in [0, 1] grey
# Per-channel absorption of the ink (R, G, B): black ballpoint, then blue ballpoint.
INKS = ((1.0, 1.0, 1.0), (0.95, 0.85, 0.45))
CREAM = (1.0, 0.97, 0.88)

# A digit on security paper: its height in pixels, the margin round it, how dark the pen is
# against the paper (the cut real cheque digits' stroke cores stand 0.31 to 0.57 clear, 5th to
# 95th percentile; these 0.28 to 0.60), and the scan's noise and JPEG quality.
SECURITY_HEIGHT = (22, 45)
SECURITY_MARGIN = (1, 4)
SECURITY_DARKNESS = (0.4, 0.8)
SECURITY_NOISE = 0.015
SECURITY_QUALITY = (60, 91)


def render(image: np.ndarray, rng: np.random.Generator, margins: bool = True) -> bytes:
    """One MNIST uint8 28x28 digit (white on black) -> the encoded bytes of a scan-like crop.

    ``margins=False`` keeps the 28x28 frame's own edges as the crop's, for a frame that holds more
    than the digit at its sides (``devtools.neighbours``: the end of a neighbouring digit, which
    the crop's edge cut through)."""
    pixels = scan_pixels(image, rng, margins)
    if rng.random() < PNG_SHARE:
        return _encode(pixels, "PNG")
    return _encode(pixels, "JPEG", quality=int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))


def scan_pixels(image: np.ndarray, rng: np.random.Generator, margins: bool = True) -> np.ndarray:
    """The scan before encoding: uint8 grey (h, w) or RGB (h, w, 3), for callers that encode it
    their own way (the benchmark's fixed-size PNGs)."""
    coverage = _transform(image, rng)
    if margins:
        coverage = _place(coverage, rng)
    colour = rng.random() < RGB_SHARE
    return _photograph(coverage, colour, rng)


def scanlike_set(images: np.ndarray, seed: int = 0) -> list[bytes]:
    """Render every digit; deterministic by seed: same seed, identical bytes."""
    return [render(image, _stream(seed, i)) for i, image in enumerate(images)]


def on_security_paper(image: np.ndarray, rng: np.random.Generator) -> bytes:
    """One MNIST digit as a ballpoint digit cut from a cheque: SECURITY_HEIGHT px tall with
    SECURITY_MARGIN px of paper round its box, on one of the security backgrounds the document
    generator prints (every family, training and held-out: ``docgen.families``), grey or colour,
    JPEG."""
    from digits.model.docgen.families import FAMILIES
    from digits.model.docgen.paper import background

    ys, xs = np.nonzero(image > INK_THRESHOLD * 255)
    glyph = image[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32) / 255
    height = int(rng.integers(SECURITY_HEIGHT[0], SECURITY_HEIGHT[1] + 1))
    inner = height - 2 * int(rng.integers(SECURITY_MARGIN[0], SECURITY_MARGIN[1] + 1))
    width = max(2, round(glyph.shape[1] * inner / glyph.shape[0]))
    glyph = cv2.resize(glyph, (width, inner), interpolation=cv2.INTER_AREA)
    full = width + 2 * int(rng.integers(SECURITY_MARGIN[0], SECURITY_MARGIN[1] + 1))
    coverage = np.zeros((height, full), np.float32)
    top, left = (height - inner) // 2, (full - width) // 2
    coverage[top : top + inner, left : left + width] = glyph
    families = [*FAMILIES["background"]["train"], *FAMILIES["background"]["heldout"]]
    colour = rng.random() < RGB_SHARE
    paper = background(rng, families[int(rng.integers(len(families)))], height, full, not colour)
    darkness = rng.uniform(*SECURITY_DARKNESS)
    if colour:
        absorb = np.asarray(INKS[int(rng.integers(len(INKS)))], np.float32)
        scan = paper * (1.0 - darkness * absorb * coverage[..., None])
    else:
        scan = paper * (1.0 - darkness * coverage)
    scan = scan + rng.normal(0.0, SECURITY_NOISE, scan.shape)
    pixels = np.clip(np.round(scan * 255.0), 0, 255).astype(np.uint8)
    quality = int(rng.integers(SECURITY_QUALITY[0], SECURITY_QUALITY[1] + 1))
    return _encode(pixels, "JPEG", quality=quality)


def security_set(images: np.ndarray, seed: int = 0) -> list[bytes]:
    """:func:`on_security_paper` for every digit; deterministic by seed."""
    return [on_security_paper(image, _stream(seed, i)) for i, image in enumerate(images)]


def _stream(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, index]))


def _transform(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Upscale the 28x28 frame to a random size (slightly anisotropic, like slant), then rotate."""
    if image.shape != (28, 28):
        raise ValueError(f"expected one 28x28 MNIST digit, got shape {image.shape}")
    side = int(rng.integers(SIZES[0], SIZES[1] + 1))
    stretch = rng.uniform(0.9, 1.1)
    width, height = max(8, round(side * stretch)), side
    frame = Image.fromarray(np.asarray(image, dtype=np.float32) / 255.0)
    frame = frame.resize((width, height), Image.Resampling.BICUBIC)
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION)
    frame = frame.rotate(angle, Image.Resampling.BICUBIC, fillcolor=0.0)
    return np.clip(np.asarray(frame, dtype=np.float32), 0.0, 1.0)


def _place(coverage: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random margins on each side, from cropping into the empty frame to wide paper around it."""
    h, w = coverage.shape
    rows = np.flatnonzero((coverage > INK_THRESHOLD).any(axis=1))
    cols = np.flatnonzero((coverage > INK_THRESHOLD).any(axis=0))
    if rows.size == 0:
        rows, cols = np.array([0, h - 1]), np.array([0, w - 1])
    room = (rows[0], h - 1 - rows[-1], cols[0], w - 1 - cols[-1])  # top, bottom, left, right
    side = max(h, w)
    margins = [max(round(rng.uniform(-0.12, 0.4) * side), -int(r) + 1) for r in room]
    top, bottom, left, right = margins
    canvas = np.zeros((h + top + bottom, w + left + right), np.float32)
    src_y0, src_x0 = max(-top, 0), max(-left, 0)
    src_y1, src_x1 = h - max(-bottom, 0), w - max(-right, 0)
    dst_y0, dst_x0 = max(top, 0), max(left, 0)
    canvas[dst_y0 : dst_y0 + src_y1 - src_y0, dst_x0 : dst_x0 + src_x1 - src_x0] = coverage[
        src_y0:src_y1, src_x0:src_x1
    ]
    return canvas


def _photograph(coverage: np.ndarray, colour: bool, rng: np.random.Generator) -> np.ndarray:
    """Ink on paper, then what the scanner adds: blur, noise and 8-bit quantization."""
    paper = _paper(coverage.shape, rng)
    darkness = rng.uniform(*DARKNESS)
    if colour:
        tint = np.asarray(CREAM, np.float32) * rng.uniform(0.97, 1.0, 3).astype(np.float32)
        absorb = np.asarray(INKS[int(rng.integers(len(INKS)))], np.float32)
        channels = paper[..., None] * tint * (1.0 - darkness * absorb * coverage[..., None])
    else:
        channels = (paper * (1.0 - darkness * coverage))[..., None]
    sigma = rng.uniform(*BLUR)
    channels = np.stack([_blur(c, sigma) for c in np.moveaxis(channels, -1, 0)], axis=-1)
    channels = channels + rng.normal(0.0, rng.uniform(*NOISE), channels.shape)
    pixels = np.clip(np.round(channels * 255.0), 0, 255).astype(np.uint8)
    return pixels if colour else pixels[..., 0]


def _paper(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Brightness, a linear gradient in a random direction, and a faint low-frequency mottle."""
    h, w = shape
    y = np.linspace(-0.5, 0.5, h, dtype=np.float32)[:, None]
    x = np.linspace(-0.5, 0.5, w, dtype=np.float32)[None, :]
    theta = rng.uniform(0.0, 2.0 * np.pi)
    gradient = rng.uniform(0.0, GRADIENT) * (np.cos(theta) * x + np.sin(theta) * y)
    coarse = Image.fromarray(rng.normal(0.0, 1.0, (4, 4)).astype(np.float32))
    mottle = np.asarray(coarse.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
    paper = rng.uniform(*PAPER) + gradient + rng.uniform(0.0, TEXTURE) * mottle
    return np.clip(paper, 0.0, 1.0).astype(np.float32)


def _blur(channel: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (Pillow cannot blur float images)."""
    if sigma < 0.2:
        return channel
    radius = max(1, int(np.ceil(3.0 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    for axis in (0, 1):
        padded = np.pad(
            channel, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)], "edge"
        )
        length = channel.shape[axis]
        channel = sum(
            t * np.take(padded, np.arange(k, k + length), axis=axis) for k, t in enumerate(taps)
        )
    return channel


def _encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt, **options)
    return out.getvalue()
