"""Scanned crop bytes to MNIST-like 28x28 input: the one normalization every path goes through.

An MNIST model only works on input that looks like MNIST: white ink on black, the digit fitted into
a 20x20 box (aspect ratio kept, anti-aliased) and placed by its centre of mass in a 28x28 field.
Real crops are dark ink on uneven paper, any size, off-centre, noisy and JPEG-compressed, so each
step here undoes one of those differences and nothing else: decode safely, find which side of the
paper the ink is on, remove the paper (a fitted plane, so gradients go too), suppress noise, keep
the significant ink components, and rebuild the digit the way MNIST was built.

Only numpy and Pillow are used, so that a worker stays light and fast. Every threshold is relative
to the noise and ink contrast measured on the crop itself, never tuned to the synthetic scans.
"""

from __future__ import annotations

import functools
import io
import math
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress
from operator import mul
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

FIELD = 28  # MNIST's canvas
BOX = 20  # MNIST fitted each digit's longer side to this many pixels
# MNIST digits have their centre of mass at (14.0, 14.0) in pixel-index coordinates (measured on the
# test set: mean 13.99 and 14.01, spread of an integer shift), not at the geometric 13.5.
CENTER = 14.0
WORK_SIDE = 128  # larger crops are box-averaged down first: 20 output pixels need far fewer
COARSE_SIDE = 32  # components are labelled on a grid at most this size: it bridges tiny gaps
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")
BATCH_DECODE = 64  # normalize_many decodes this many crops before normalizing them...
DECODED_BUDGET = 4_000_000  # ...or fewer, once their decoded pixels reach this many

# Thresholds are shares of the crop's own ink level or multiples of its own noise, except the two
# absolute floors (MIN_CONTRAST, and TAIL_MARGIN for polarity) that say what cannot be ink at all.
MIN_CONTRAST = 0.1  # ink fainter than this against the paper (25 grey levels) is a stain, not ink
NOISE_SIGMAS = 5.0  # a smoothed pixel must stand this many noise deviations above the paper...
MIN_SNR = 6.0  # ...and stroke cores this many: then the stroke boundary is clear of noise too
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
TAIL_SHARE = 0.0  # polarity looks at each block's darkest and lightest pixel...
TAIL_MARGIN = 0.03  # ...where they stray further than this from the paper plane
PAPER_SHARE = 0.1  # paper-side percentile of a block: ink moves it only when covering 90% of it
PLANE_TOLERANCE = 0.02  # blocks this close to the paper plane are never rejected as ink


class ScanError(ValueError):
    """A crop that cannot be read: ``reason`` is a short machine code, ``str()`` the message."""

    reason: str = "scan_error"


class EmptyInput(ScanError):
    reason = "empty"


class NotAnImage(ScanError):
    reason = "not_an_image"


class TruncatedImage(ScanError):
    reason = "truncated"


class TooLarge(ScanError):
    reason = "too_large"


class BadGeometry(ScanError):
    reason = "bad_geometry"


@dataclass(frozen=True)
class Limits:
    """What one crop may cost before any pixel is decoded; a worker sizes its memory from these."""

    max_bytes: int = 10_000_000
    max_pixels: int = 25_000_000  # width*height from the header, checked before decoding
    max_aspect: float = 12.0  # longer side / shorter side of the decoded image


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Crop:
    """A normalized crop: MNIST-like pixels, or ``None`` when there is no ink to read."""

    pixels: np.ndarray | None  # (28, 28) float32 in [0, 1], white ink on black; None when blank
    blobs: int  # number of large separate ink components found (0 when blank)

    @property
    def blank(self) -> bool:
        return self.pixels is None

    @property
    def multiple_blobs(self) -> bool:
        return self.blobs > 1


# ---------------------------------------------------------------------------------------- decoding


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """bytes -> 2-D float32 grey image in [0,1] (0 = black), raising ScanError subclasses"""
    data = _check_bytes(data, limits)
    # Pillow warns of a decompression bomb, and only a warning filter turns that into an exception
    # we can translate. (The filter is process-wide state: decode from one thread per process.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data)
        _check_geometry(image.size, limits)
        _load(image)
    return _to_gray(_oriented(image))


def _check_bytes(data: object, limits: Limits) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):  # noqa: UP038 - a tuple is faster
        raise NotAnImage(f"expected image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise EmptyInput("empty input: zero bytes")
    if len(data) > limits.max_bytes:
        raise TooLarge(f"{len(data)} bytes is over the limit of {limits.max_bytes} bytes")
    return bytes(data)


def _open(data: bytes) -> ImageFile.ImageFile:
    """Parse the header only; Pillow's decompression-bomb checks must become our error."""
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        kind = _sniff_format(data)
        size = _sniff_size(data, kind) if kind else None
        where = f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else "the image"
        raise TooLarge(f"{where} is over Pillow's decompression-bomb limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(data) from exc
    except Exception as exc:  # noqa: BLE001 - any parser failure on untrusted bytes is a bad header
        if _sniff_format(data):
            raise TruncatedImage(f"image header is truncated or corrupt ({exc})") from exc
        raise NotAnImage(f"not a supported image ({exc})") from exc


def _unidentified(data: bytes) -> ScanError:
    """Pillow calls zero-size images unidentified: name the reason where the header shows it."""
    kind = _sniff_format(data)
    if kind is None:
        return NotAnImage(f"not an image in a supported format ({', '.join(FORMATS)})")
    size = _sniff_size(data, kind)
    if size is not None and min(size) == 0:
        return BadGeometry(f"zero-size {kind} image ({size[0]}x{size[1]})")
    return TruncatedImage(f"{kind} image header is truncated or corrupt")


_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)


def _sniff_format(data: bytes) -> str | None:
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _sniff_size(data: bytes, kind: str) -> tuple[int, int] | None:
    """Width and height straight from the header, for the formats where that is a fixed offset."""
    try:
        if kind == "PNG" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if kind == "GIF":
            return struct.unpack("<HH", data[6:10])
        if kind == "BMP":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
    except struct.error:
        return None
    return None


def _check_geometry(size: tuple[int, int], limits: Limits) -> None:
    """All from the header: a bomb or a sliver is refused before its pixels cost anything."""
    width, height = size
    if width <= 0 or height <= 0:
        raise BadGeometry(f"zero-size image ({width}x{height})")
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"{width}x{height} = {width * height} pixels is over the limit of {limits.max_pixels}"
        )
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        raise BadGeometry(
            f"{width}x{height} has aspect ratio {aspect:.1f}, "
            f"over the limit of {limits.max_aspect:g}"
        )


def _load(image: ImageFile.ImageFile) -> None:
    """Decode the first page/frame; every failure of the decoder on untrusted bytes is our error."""
    if image.format == "JPEG" and image.mode in ("RGB", "YCbCr"):
        image.draft("L", None)  # luma straight from the decoder: no colour conversion to undo
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image is over Pillow's decompression-bomb limit: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        if "too large" in str(exc).lower():
            raise TooLarge(f"image metadata is too large: {exc}") from exc
        raise TruncatedImage(f"image data is truncated or corrupt ({exc})") from exc


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _oriented(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation (phones and some scanners store the page rotated)."""
    if "exif" not in image.info and image.format != "TIFF":
        return image  # no EXIF block at all: skip parsing, the common case for crops
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not lose a readable image
        return image
    method = _TRANSPOSE.get(orientation)
    return image.transpose(method) if method is not None else image


def _to_gray(image: Image.Image) -> np.ndarray:
    """Any supported mode to grey in [0, 1]; transparency is composited on white paper."""
    mode = image.mode
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        image = image.convert("RGBA" if has_alpha else "L")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return _on_white(image)
    if mode.startswith("I;16") or mode == "I":
        return _wide_gray(np.asarray(image))
    if mode == "F":
        return _float_gray(np.asarray(image, dtype=np.float32))
    if mode != "L":
        try:  # CMYK, YCbCr, LAB, HSV: through RGB, whose luma Pillow computes as ITU-R 601
            image = (
                image.convert("L") if mode in ("1", "RGB") else image.convert("RGB").convert("L")
            )
        except (ValueError, OSError) as exc:
            raise NotAnImage(f"unsupported image mode {mode}") from exc
    gray = np.asarray(image, dtype=np.float32)
    gray *= 1.0 / 255.0
    return gray


def _on_white(image: Image.Image) -> np.ndarray:
    la = np.asarray(image.convert("LA"), dtype=np.float32) * (1.0 / 255.0)
    gray, alpha = la[..., 0], la[..., 1]
    return (gray * alpha + (1.0 - alpha)).astype(np.float32)


def _wide_gray(values: np.ndarray) -> np.ndarray:
    """16-bit (or 32-bit integer) grey: scaled by the 16-bit range, not by its own maximum, so a
    faint scan stays faint (only values beyond 16 bits fall back to their maximum)."""
    values = values.astype(np.float32)
    top = 65535.0 if values.max(initial=0) <= 65535 else float(values.max())
    return np.clip(values / top, 0.0, 1.0).astype(np.float32)


def _float_gray(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    top = float(values.max(initial=0.0))
    scale = 1.0 if top <= 1.0 else 255.0 if top <= 255.0 else top
    return np.clip(values / scale, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------- normalization


def normalize(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Crop:
    """decode + normalize_gray"""
    return _normalize_gray(decode(data, limits), decoded=True)


def normalize_many(
    items: Sequence[bytes], limits: Limits = DEFAULT_LIMITS
) -> list[Crop | ScanError]:
    """the batch form: one broken item becomes its ScanError in the list, never an exception for
    the batch"""
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
            results.extend(_normalize_decoded(pending))
            pending, held = [], 0
    results.extend(_normalize_decoded(pending))
    return results


def _normalize_decoded(pending: list[np.ndarray | ScanError]) -> list[Crop | ScanError]:
    """The second half of a group. Decoding a group first and normalizing it after is about a fifth
    faster than alternating crop by crop: Pillow's decoder and the numpy code otherwise evict each
    other from the CPU caches. A group is bounded in count and in decoded pixels held."""
    return [g if isinstance(g, ScanError) else _normalize_gray(g, decoded=True) for g in pending]


def normalize_gray(gray: np.ndarray) -> Crop:
    """an already decoded 2-D grey image in [0,1], any polarity -> Crop (used later to normalize
    pieces of multi-digit fields)"""
    return _normalize_gray(gray, decoded=False)


def _normalize_gray(gray: np.ndarray, decoded: bool) -> Crop:
    """normalize_gray; ``decoded`` arrays come from decode() and need no checking."""
    ink = _ink_contrast(_working_copy(gray, decoded))
    smooth = _smooth(ink)
    ink = ink[1:-1, 1:-1]  # the smoothing is over whole 3x3 windows only: the same pixels
    found = _paper_and_ink(smooth)
    if found is None:
        return Crop(pixels=None, blobs=0)
    paper, level, floor = found
    smooth -= np.float32(paper)
    link = max(LINK_SHARE * level, floor)
    grid = _Coarse.of(smooth)
    # Parts are traced through fainter ink than the stroke boundary (as hysteresis thresholds do),
    # so a thin or faint stroke whose core wavers stays one part instead of a trail of specks.
    parts = _components(grid, smooth, link)
    if parts is None:
        return Crop(pixels=None, blobs=0)
    keep, blobs = parts
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
    return Crop(pixels=_fit_to_field(ink, mask), blobs=blobs)


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
            padded = np.zeros((ph, pw), np.float32)
            padded[:h, :w] = smooth
            smooth = padded
        pooled = smooth[::factor, ::factor].copy()
        for dy in range(factor):
            for dx in range(factor):
                if dy or dx:
                    np.maximum(pooled, smooth[dy::factor, dx::factor], out=pooled)
        return cls(pooled=pooled, factor=factor)

    def neighbourhood_max(self, shape: tuple[int, int]) -> np.ndarray:
        """Each pixel's local peak: the maximum over its grid cell and the eight around it."""
        near = _dilate(self.pooled, 1 if self.factor > 1 else 2)
        if self.factor > 1:
            near = near.repeat(self.factor, axis=0).repeat(self.factor, axis=1)
        return near[: shape[0], : shape[1]]  # a fresh array either way: safe to change in place


def _working_copy(gray: np.ndarray, decoded: bool) -> np.ndarray:
    """Float32, at most WORK_SIDE on the longer side: 20 output pixels need no more, and
    box-averaging keeps thin strokes as grey rather than dropping them."""
    work = gray
    if not decoded:  # a caller's array: check what decode() guarantees
        gray = np.asarray(gray)
        if gray.ndim != 2:
            raise BadGeometry(f"expected a 2-D grey image, got shape {gray.shape}")
        if gray.size == 0:
            raise BadGeometry(f"zero-size image ({gray.shape[-1]}x{gray.shape[0]})")
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


def _ink_contrast(work: np.ndarray) -> np.ndarray:
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
    blocks = work[: grid.bh * grid.ny, : grid.bw * grid.nx].reshape(
        grid.ny, grid.bh, grid.nx, grid.bw
    )
    blocks = blocks.swapaxes(1, 2).reshape(grid.ny * grid.nx, grid.bh * grid.bw)  # a copy
    # Sorting rows is vectorised: an order of magnitude faster than partitions at five ranks.
    blocks.sort(axis=1)
    low, dark_side, middle, light_side, high = blocks[:, grid.ranks].T.tolist()
    start = grid.fit(middle, grid.median_start(middle))
    if _light_ink(work, grid.at_blocks(*start), low, high, middle):
        values = [-v for v in dark_side]  # flipped, so that ink can only pull values down
        ink = grid.paper(values, grid.shifted(values, (-start[0], -start[1], -start[2])))
        ink += work
        return ink
    ink = grid.paper(light_side, grid.shifted(light_side, start))
    ink -= work
    return ink


def _light_ink(
    work: np.ndarray, plane: list[float], low: list[float], high: list[float], middle: list[float]
) -> bool:
    """Light ink on dark paper? Which way the blocks' extremes stray from the median plane.

    When ink covers over half a tight crop the medians are ink, and the paper is what strays: then
    the crop's border, which is paper nearly everywhere, settles it. Only a "light" verdict is
    checked that way, so a dark frame around a boxed digit cannot turn dark ink light.
    """
    dark = light = 0.0
    for level, darkest, lightest in zip(plane, low, high, strict=True):
        if level - darkest > TAIL_MARGIN:
            dark += level - darkest - TAIL_MARGIN
        if lightest - level > TAIL_MARGIN:
            light += lightest - level - TAIL_MARGIN
    if light <= dark:
        return False
    ring = np.concatenate((work[0], work[-1], work[1:-1, 0], work[1:-1, -1]))
    border = float(np.sort(ring)[ring.size // 2])
    return border <= sorted(middle)[len(middle) // 2] + 2 * TAIL_MARGIN


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


def _smooth(image: np.ndarray) -> np.ndarray:
    """3x3 binomial blur over whole windows (one pixel smaller all round): noise drops by more than
    half while strokes barely widen. [1, 2, 1] is [1, 1] twice, so four additions do it."""
    rows = image[:-1] + image[1:]
    rows = rows[:-1] + rows[1:]
    out = rows[:, :-1] + rows[:, 1:]
    out = out[:, :-1] + out[:, 1:]
    out *= np.float32(1.0 / 16.0)
    return out


def _paper_and_ink(smooth: np.ndarray) -> tuple[float, float, float] | None:
    """Paper level, stroke-core contrast and noise floor (both above the paper); None when
    nothing stands out of the noise.

    Paper and its noise come from the 5th and 15th percentiles, which stay on the paper even when a
    bold digit covers most of a tight crop (the median would not). The core contrast is a high
    percentile of the pixels clear of the noise, so one dark speck cannot set it.
    """
    # Every other pixel of a smoothed image tells the same story at a quarter of the sorting cost;
    # one vectorised sort beats partitions at several ranks.
    ordered = (smooth[::2, ::2] if min(smooth.shape) >= 16 else smooth).flatten()
    ordered.sort()
    n = ordered.size
    upper, lower = float(ordered[(15 * n) // 100]), float(ordered[n // 20])
    sigma = (upper - lower) / 0.6089  # the same two ranks of a normal distribution, in sigmas
    paper = upper + 1.0364 * sigma
    floor = max(NOISE_SIGMAS * sigma, 0.5 * MIN_CONTRAST)
    first_clear = int(np.searchsorted(ordered, paper + floor, side="right"))
    clear = n - first_clear
    if clear <= 0:
        return None
    level = float(ordered[first_clear + int(0.9 * (clear - 1))]) - paper
    return (paper, level, floor) if level >= max(MIN_CONTRAST, MIN_SNR * sigma) else None


def _components(
    grid: _Coarse, smooth: np.ndarray, link: float
) -> tuple[np.ndarray | None, int] | None:
    """Which ink to keep (None: all) and the blob count; None when no component can be a digit.

    Specks (under KEEP_SHARE of the largest component) are dropped so that they cannot stretch the
    digit's box.
    """
    h, w = smooth.shape
    coarse = grid.pooled > np.float32(link)
    runs = _Runs.of(coarse)
    if not runs.rows:
        return None
    parts = runs.components()
    largest = max(parts, key=lambda part: part.area)
    if not _big_enough(_fine_extent(smooth, link, largest, grid.factor), h, w):
        return None
    blobs = sum(part.area >= BLOB_SHARE * largest.area for part in parts)
    if all(part.area >= KEEP_SHARE * largest.area for part in parts):
        return None, blobs
    keep = runs.paint(coarse.shape, [p.area >= KEEP_SHARE * largest.area for p in parts])
    if grid.factor > 1:
        keep = keep.repeat(grid.factor, axis=0).repeat(grid.factor, axis=1)[:h, :w]
    return keep, blobs


def _fine_extent(smooth: np.ndarray, link: float, part: _Part, factor: int) -> int:
    """The part's extent in working pixels: a speck straddling two grid cells is still a speck."""
    if factor == 1 or (part.extent - 2) * factor >= MIN_EXTENT * max(smooth.shape):
        return part.extent * factor  # clearly big enough: only borderline parts need a fine look
    window = smooth[
        part.top * factor : (part.bottom + 1) * factor, part.left * factor : part.right * factor
    ] > np.float32(link)
    rows = np.flatnonzero(window.any(axis=1))
    cols = np.flatnonzero(window.any(axis=0))
    return int(max(rows[-1] - rows[0], cols[-1] - cols[0])) + 1


def _big_enough(extent: int, h: int, w: int) -> bool:
    """A digit spans a fair part of its crop; a dot or a speck on empty paper does not."""
    return extent >= max(2.0, MIN_EXTENT * max(h, w))


class _Part:
    """One connected component: its size in grid cells and its bounding box."""

    __slots__ = ("area", "top", "bottom", "left", "right")

    def __init__(self, area: int, top: int, bottom: int, left: int, right: int):
        self.area, self.top, self.bottom, self.left, self.right = area, top, bottom, left, right

    @property
    def extent(self) -> int:
        return max(self.bottom - self.top + 1, self.right - self.left)


class _Runs(NamedTuple):
    """Horizontal runs of ink, row-major, as plain lists: the unit of component labelling."""

    rows: list[int]
    starts: list[int]
    ends: list[int]  # exclusive
    labels: list[int]  # filled in by components()

    @classmethod
    def of(cls, mask: np.ndarray) -> _Runs:
        """One difference over the rows laid end to end, each behind a zero: changes alternate
        between run starts and run ends."""
        h, w = mask.shape
        stride = w + 1
        flat = np.zeros(h * stride + 1, np.int8)
        flat[: h * stride].reshape(h, stride)[:, 1:] = mask
        changes = np.flatnonzero(flat[1:] != flat[:-1])
        rows, starts = np.divmod(changes[0::2], stride)
        ends = changes[1::2] - rows * stride
        return cls(rows.tolist(), starts.tolist(), ends.tolist(), [])

    def components(self) -> list[_Part]:
        """8-connected components: a union-find over runs that touch in consecutive rows.

        A crop has a few dozen runs, so a plain Python loop over them is the cheap part.
        """
        rows, starts, ends = self.rows, self.starts, self.ends
        parent = list(range(len(rows)))
        above_lo = above_hi = row_lo = 0
        current = -2
        for i, row in enumerate(rows):
            if row != current:
                above_lo, above_hi = (row_lo, i) if row == current + 1 else (i, i)
                row_lo, current = i, row
            start, end = starts[i], ends[i]
            j = above_lo
            while j < above_hi and ends[j] < start:
                j += 1
            above_lo = j  # runs above that end before this run cannot touch the next one either
            while j < above_hi and starts[j] <= end:
                a, b = i, j
                while parent[a] != a:
                    a = parent[a]
                while parent[b] != b:
                    parent[b] = parent[parent[b]]
                    b = parent[b]
                if a != b:
                    if a < b:
                        parent[b] = a
                    else:
                        parent[a] = b
                j += 1
        parts: list[_Part] = []
        label_of: dict[int, int] = {}
        for i, row in enumerate(rows):
            root = i
            while parent[root] != root:
                root = parent[root]
            label = label_of.get(root)
            if label is None:
                label = label_of[root] = len(parts)
                parts.append(_Part(0, row, row, starts[i], ends[i]))
            part = parts[label]
            part.area += ends[i] - starts[i]
            part.bottom = row
            if starts[i] < part.left:
                part.left = starts[i]
            if ends[i] > part.right:
                part.right = ends[i]
            self.labels.append(label)
        return parts

    def paint(self, shape: tuple[int, int], keep: list[bool]) -> np.ndarray:
        """A boolean image, true over the runs of the components to keep."""
        out = np.zeros(shape, bool)
        for row, start, end, label in zip(
            self.rows, self.starts, self.ends, self.labels, strict=True
        ):
            if keep[label]:
                out[row, start:end] = True
        return out


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
    row_mass = mask.sum(axis=1, dtype=np.float32)  # the binary digit's profiles give its box and,
    col_mass = mask.sum(axis=0, dtype=np.float32)  # to well under a pixel, the cut's mass centre
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
        cut = _dilate(_cut(ink), round(grow))
        down, across = _area_weights(top, left, scale, max(h, w))
        field = down[:, :h] @ cut @ across[:, :w].T
    else:
        fine_scale = scale * SUPERSAMPLE
        fine = _linear_weights(top, fine_scale, h) @ ink @ _linear_weights(left, fine_scale, w).T
        pairs = _pair_means()
        field = pairs @ _dilate(_cut(fine), round(grow * fine_scale)) @ pairs.T
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


def _dilate(image: np.ndarray, radius: int) -> np.ndarray:
    """Grey dilation by a square of the given radius (separable maxima of shifted copies; each
    shift reads the undilated rows, so numpy needs no temporary copies for overlap)."""
    if radius <= 0:
        return image
    rows = image.copy()
    for shift in range(1, radius + 1):
        np.maximum(rows[shift:], image[:-shift], out=rows[shift:])
        np.maximum(rows[:-shift], image[shift:], out=rows[:-shift])
    out = rows.copy()
    for shift in range(1, radius + 1):
        np.maximum(out[:, shift:], rows[:, :-shift], out=out[:, shift:])
        np.maximum(out[:, :-shift], rows[:, shift:], out=out[:, :-shift])
    return out


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
