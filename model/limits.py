"""What one crop may cost before any pixel is decoded.

Apart from :mod:`digits.model.decode`, which enforces them, so that the settings and the
submitting side (``digits enqueue``) know the limits without importing OpenCV, numpy and Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """What one crop may cost before any pixel is decoded; a worker sizes its memory from these."""

    max_bytes: int = 10_000_000
    max_pixels: int = 25_000_000  # width*height from the header, checked before decoding
    max_aspect: float = 12.0  # longer side / shorter side of the decoded image


DEFAULT_LIMITS = Limits()
