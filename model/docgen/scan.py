"""Ink on paper, then the scanner: colour, blur, uneven light, sensor noise, JPEG.

Ink is multiplied onto the paper (it is a dye, so the pattern shows through light strokes) and the
printed rules likewise. The scanner then maps white to a mid-light grey, as the real cheque crops
show (paper at 165 to 205, ink at 30 to 100), most often in greyscale, adds blur, uneven light and
sensor noise, and JPEG does the rest. Noise comes from a fixed bank sliced at random offsets
instead of being drawn per pixel, which would cost more than the rest of the pipeline.
"""

from __future__ import annotations

import cv2
import numpy as np

# RGB reflectance of the ink at full coverage, per family (jittered per sample)
INKS = {
    "black": np.array([0.07, 0.07, 0.09], np.float32),
    "blue": np.array([0.08, 0.12, 0.42], np.float32),
    "bluegrey": np.array([0.18, 0.22, 0.3], np.float32),
}
_BANK = np.random.default_rng(20240601).standard_normal((384, 1024), dtype=np.float32)
GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Unit Gaussian noise h x w, a random window of a fixed bank (tiled if the crop is larger)."""
    bank = _BANK if h <= 384 and w <= 1024 else np.tile(_BANK, (h // 384 + 1, w // 1024 + 1))
    y = int(rng.integers(0, bank.shape[0] - h + 1))
    x = int(rng.integers(0, bank.shape[1] - w + 1))
    return bank[y : y + h, x : x + w]


def ink_colour(rng: np.random.Generator, family: str) -> np.ndarray:
    """The ink's reflectance for ``family``, varied a little (pens, pressure, scanner)."""
    return np.clip(INKS[family] * rng.uniform(0.7, 1.6) + rng.normal(0, 0.02, 3), 0.02, 0.7).astype(
        np.float32
    )


def scans_gray(rng: np.random.Generator, family: str) -> bool:
    """Whether degradation ``family`` scans this sample in greyscale (as all the real crops are)."""
    return family in ("gray_scan", "uneven") or (
        family in ("blurry", "noisy") and rng.random() < 0.6
    )


def compose(paper: np.ndarray, rule: np.ndarray, alpha: np.ndarray, ink: np.ndarray) -> np.ndarray:
    """Paper x printed rules x ink: float32 reflectance, HxWx3, or HxW for a grey ``paper``.

    In grey the ink's grey level stands for its colour (the product of greys is close enough to
    the grey of the product for these dark inks).
    """
    if paper.ndim == 2:
        k = np.float32(1 - float(ink @ GRAY))
        return paper * (1 - rule * np.float32(0.8)) * (1 - alpha * k)
    out = paper * (1 - rule * np.float32(0.8))[:, :, None]
    out *= 1 - alpha[:, :, None] * (1 - ink)
    return out


def degrade(rng: np.random.Generator, family: str, img: np.ndarray) -> np.ndarray:
    """The scanner's view of ``img`` (float reflectance, HxW if grey) as HxWx3 uint8 RGB."""
    h, w = img.shape[:2]
    gray = img.ndim == 2
    if gray:
        img = img[:, :, None]
    blur = {"blurry": (0.9, 1.5), "color_scan": (0.3, 0.6)}.get(family, (0.4, 0.8))
    sigma = rng.uniform(*blur)
    img = cv2.GaussianBlur(img, (0, 0), sigma)
    if img.ndim == 2:
        img = img[:, :, None]
    # light: a tilted plane, strong for "uneven" (a shadow across the crop)
    strength = rng.uniform(0.25, 0.45) if family == "uneven" else rng.uniform(0.0, 0.08)
    gx, gy = rng.normal(0, 1, 2)
    norm = np.hypot(gx, gy) + 1e-6
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32) * np.float32(gx / norm)
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32) * np.float32(gy / norm)
    light = 1 - np.float32(strength) * (0.5 + xs[None, :] + ys[:, None])
    # scanner levels: paper comes out light grey, ink never quite black
    white = rng.uniform(0.66, 0.84) if gray else rng.uniform(0.75, 0.95)
    black = rng.uniform(0.02, 0.09)
    if family == "uneven":
        black += rng.uniform(0.05, 0.12)
    out = (img * (light * np.float32(white - black))[:, :, None] + np.float32(black)) * 255
    sd = rng.uniform(5, 10) if family == "noisy" else rng.uniform(1, 3.5)
    out += (_noise(rng, h, w) * np.float32(sd))[:, :, None]
    if family == "noisy":
        specks = int(rng.integers(0, 6))
        ys_, xs_ = rng.integers(0, h, specks), rng.integers(0, w, specks)
        out[ys_, xs_] *= np.float32(0.4)
    out = np.clip(out, 0, 255).astype(np.uint8)
    if out.shape[2] == 1:
        return cv2.cvtColor(out, cv2.COLOR_GRAY2RGB)
    return out


def encode(image: np.ndarray, fmt: str = ".jpg", quality: int = 85) -> bytes:
    """Bytes of an RGB uint8 image as ``fmt`` (".jpg" or ".png"), as a scanner would write it."""
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(fmt, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"could not encode as {fmt}")
    return buf.tobytes()


def jpeg_round_trip(image: np.ndarray, quality: int) -> np.ndarray:
    """``image`` as it comes back from a JPEG at ``quality`` (the artefacts a reader must bear)."""
    buf = np.frombuffer(encode(image, ".jpg", quality), np.uint8)
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
