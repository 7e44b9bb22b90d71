"""Untrusted bytes to a grey image, safely: the first step of every crop and every field.

Crops come from anywhere (a scanner, a zip someone uploaded, a forged queue message), so nothing is
decoded before it is known to be affordable: the byte count first, then the width and height read
from the header (a decompression bomb or a sliver is refused before its pixels cost anything), then
one frame decoded (PNG, JPEG, TIFF, BMP, GIF, WebP; any mode; EXIF orientation applied).

Two decoders, one answer. The crops a scanner sends are nearly all plain 8-bit grey or RGB PNG and
baseline JPEG: those whose headers show nothing else (no EXIF, no compressed metadata, no alpha,
no 16 bits, the file whole to its end marker) are decoded by OpenCV, about five times faster than
Pillow. Everything else, and anything OpenCV fails on, goes through Pillow, which owns every
error message: so a bad file reads the same whichever decoder would have taken it.
Every failure is a :class:`ScanError` subclass with a short machine code in ``reason``: a bad crop
becomes an ``error`` item, never a failed batch.

Normalization (:mod:`digits.model.normalize`) and field reading (:mod:`digits.model.fields`) both
start here.
"""

from __future__ import annotations

import io
import struct
import warnings

import cv2
import numpy as np
from PIL import Image, ImageFile, PngImagePlugin, UnidentifiedImageError

from digits.model.limits import DEFAULT_LIMITS, Limits

FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "GIF", "WEBP")


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


def decode(data: bytes, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """bytes -> 2-D float32 grey image in [0,1] (0 = black), raising ScanError subclasses"""
    data = _check_bytes(data, limits)
    fast = _plain_decode(data, limits)
    if fast is not None:
        return fast
    # Pillow warns of a decompression bomb, and only a warning filter turns that into an exception
    # we can translate. (The filter is process-wide state: decode from one thread per process.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data)
        _check_geometry(image.size, limits)
        _load(image, data)
    return _to_gray(_oriented(image))


def _plain_decode(data: bytes, limits: Limits) -> np.ndarray | None:
    """OpenCV's decode of a plain PNG or JPEG (see the module's docstring), or None for Pillow.

    The geometry limits are checked from the header first, as on Pillow's path.
    """
    size = _plain_png_size(data) if data[:8] == _PNG_MAGIC else None
    if size is None and data[:3] == _JPEG_MAGIC:
        size = _plain_jpeg_size(data)
    if size is None:
        return None
    _check_geometry(size, limits)
    if Image.MAX_IMAGE_PIXELS and size[0] * size[1] > Image.MAX_IMAGE_PIXELS:
        return None  # Pillow's own bomb guard, process-wide: its path names it
    gray = cv2.imdecode(np.frombuffer(data, np.uint8), _PLAIN_FLAGS)
    if gray is None or gray.shape != (size[1], size[0]):
        return None  # OpenCV could not read it: Pillow says why
    out = gray.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    return out


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# Grey straight from the decoder (JPEG luma as Pillow's draft("L") gives it; PNG RGB by ITU-R 601
# weights, as Pillow's "L"); EXIF is never read, because files with EXIF go to Pillow.
_PLAIN_FLAGS = cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
# Chunks a plain PNG may hold besides IHDR, IDAT and IEND: none of them changes the grey pixels.
_PLAIN_PNG_CHUNKS = frozenset((b"pHYs", b"gAMA", b"cHRM", b"sRGB", b"tIME", b"tEXt", b"bKGD"))


def _plain_png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an 8-bit grey or RGB PNG, not interlaced, whose chunks are all intact and
    harmless (no compressed text or profile, no transparency, no palette); else None."""
    if len(data) < 45 or data[12:16] != b"IHDR" or not data.endswith(_PNG_END):
        return None
    width, height, depth, colour, _, _, interlace = struct.unpack_from(">IIBBBBB", data, 16)
    if depth != 8 or colour not in (0, 2) or interlace:
        return None
    position, end = 33, len(data) - len(_PNG_END)
    while position < end:
        if position + 8 > end:
            return None
        (length,) = struct.unpack_from(">I", data, position)
        kind = data[position + 4 : position + 8]
        if kind != b"IDAT" and kind not in _PLAIN_PNG_CHUNKS:
            return None
        position += 12 + length
    return (width, height) if position == end else None


def _plain_jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of an 8-bit grey or YCbCr JPEG without EXIF or Adobe colour transforms,
    whole to its end marker; else None. Reads the marker segments up to the scan."""
    if not data.endswith(b"\xff\xd9"):
        return None
    position, size = 2, None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        (length,) = struct.unpack_from(">H", data, position + 2)
        if marker == 0xDA:  # start of scan: the header is over
            return size
        if marker in (0xE1, 0xEE):  # EXIF (orientation) or Adobe (CMYK, transforms): Pillow's
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in (0xC0, 0xC1, 0xC2) or position + 10 > len(data):
                return None  # lossless, hierarchical or arithmetic: rare enough for Pillow
            precision, height, width, components = struct.unpack_from(">BHHB", data, position + 4)
            if precision != 8 or components not in (1, 3):
                return None
            size = (width, height)
        position += 2 + length
    return None


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
        if (bomb := _text_bomb(exc, data)) is not None:
            raise bomb from exc
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
    if width * height > limits.max_pixels:
        raise TooLarge(
            f"{width}x{height} = {width * height} pixels is over the limit of {limits.max_pixels}"
        )
    check_shape(width, height, limits)


def check_shape(width: int, height: int, limits: Limits) -> None:
    """No pixels, or a sliver: no digit, and a sliver's working copy would have no rows
    (``normalize_gray``'s arrays, already in memory, are held to this alone)."""
    if width <= 0 or height <= 0:
        raise BadGeometry(f"zero-size image ({width}x{height})")
    aspect = max(width, height) / min(width, height)
    if aspect > limits.max_aspect:
        raise BadGeometry(
            f"{width}x{height} has aspect ratio {aspect:.1f}, "
            f"over the limit of {limits.max_aspect:g}"
        )


def _load(image: ImageFile.ImageFile, data: bytes) -> None:
    """Decode the first page/frame; every failure of the decoder on untrusted bytes is our error."""
    if image.format == "JPEG" and image.mode in ("RGB", "YCbCr"):
        image.draft("L", None)  # luma straight from the decoder: no colour conversion to undo
    try:
        image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"image is over Pillow's decompression-bomb limit: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        if (bomb := _text_bomb(exc, data)) is not None:
            raise bomb from exc
        if "too large" in str(exc).lower():
            raise TooLarge(f"image metadata is too large: {exc}") from exc
        raise TruncatedImage(f"image data is truncated or corrupt ({exc})") from exc


def _text_bomb(exc: Exception, data: bytes) -> TooLarge | None:
    """Pillow's refusal of a PNG's compressed metadata, named for what it is.

    Pillow stops inflating a zTXt, iTXt or iCCP chunk at PngImagePlugin.MAX_TEXT_CHUNK bytes, and
    all text at MAX_TEXT_MEMORY, with a ValueError that would otherwise read as "header is
    truncated or corrupt": the file is whole, and it is a decompression bomb in a chunk the digit
    does not need, which the person reading the error should be told.
    """
    message = str(exc)
    if "Decompressed data too large" in message:
        kinds = _compressed_chunks(data)
        if kinds == ["iCCP"]:
            what = "colour-profile chunk"
        elif kinds and "iCCP" not in kinds:
            what = "text chunk"
        else:  # both kinds, or none found: it was one of them
            what = "text or colour-profile chunk"
        named = f" ({', '.join(kinds)})" if kinds else ""
        return TooLarge(
            f"PNG {what}{named} decompresses past the limit of "
            f"{PngImagePlugin.MAX_TEXT_CHUNK} bytes: a decompression bomb, not read"
        )
    if "Too much memory used in text chunks" in message:
        return TooLarge(
            f"PNG text chunks decompress past the limit of {PngImagePlugin.MAX_TEXT_MEMORY} "
            "bytes in all: not read"
        )
    return None


def _compressed_chunks(data: bytes) -> list[str]:
    """The kinds of compressed metadata chunk in a PNG (zTXt, iCCP, iTXt flagged compressed), from
    the chunk headers alone: nothing is inflated to name them."""
    kinds: list[str] = []
    position = 8  # after the signature
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        if kind == b"iTXt":  # keyword, NUL, then the compression flag
            body = data[position + 8 : position + 8 + length]
            flag = body.find(b"\0") + 1
            compressed = flag > 0 and body[flag : flag + 1] == b"\x01"
        else:
            compressed = kind in (b"zTXt", b"iCCP")
        name = kind.decode("latin-1")
        if compressed and name not in kinds:
            kinds.append(name)
        if kind == b"IEND":
            break
        position += 12 + length
    return kinds


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
        palette = image.palette
        has_alpha = "transparency" in image.info or (palette is not None and palette.mode == "RGBA")
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
