"""How the digit model holds up when the scan or the writer is unlike MNIST: one row per trait.

Each row is the MNIST test set put through one distortion (``distort``), written to crop files
(dark ink on white PNG, as a form scanner would hand them over) and read back through the product's
whole path: decode, normalize, model. Two more rows copy the layout of public bitmap data sets
real systems meet: binary 32x32 bitmaps of the digit's box (form studies), and 16x16 bitmaps of a
digit stretched to fill its box. The last is a digit cut small from a cheque's security paper
(``scanlike.on_security_paper``). The read rate at an error level is the largest share a threshold
can accept with at most that error among the accepted: what a bank gets when it keys the rest.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from digits.model import distort, scanlike
from digits.model.field_eval import read_rate

BITMAP_ROWS = ("bitmap32", "bitmap16_stretched", "array28_filled", "array28_bold")
SECURITY_ROW = "security_paper"
ROWS = ("clean", *distort.DISTORTIONS, *BITMAP_ROWS, SECURITY_ROW)


def _png(ink: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(255 - ink).save(out, format="PNG")
    return out.getvalue()


def _bitmap(image: np.ndarray, side: int, fill: bool) -> np.ndarray:
    """The digit's box as a ``side`` x ``side`` 1-bit bitmap (kept aspect, or stretched to fill)."""
    boxed = distort.recentre(image, fill=fill)
    x, y, w, h = cv2.boundingRect((boxed > distort.INK).astype(np.uint8))
    if fill:
        boxed = boxed[y : y + h, x : x + w]
    small = cv2.resize(boxed, (side, side), interpolation=cv2.INTER_AREA)
    return np.where(small > 100, 255, 0).astype(np.uint8)


def _filled_array(image: np.ndarray, side: int = 28) -> np.ndarray:
    """MNIST's own layout, white on black, but the digit scaled to fill the frame (longer side
    ``side``, no margin), as some data sets of historical or bold digits store them."""
    x, y, w, h = cv2.boundingRect((image > distort.INK).astype(np.uint8))
    scale = side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    glyph = cv2.resize(image[y : y + h, x : x + w], size, interpolation=cv2.INTER_AREA)
    out = np.zeros((side, side), np.uint8)
    top, left = (side - size[1]) // 2, (side - size[0]) // 2
    out[top : top + size[1], left : left + size[0]] = glyph
    return out


def crops(images: np.ndarray, row: str, seed: int = 0) -> list[bytes]:
    """The crop files of ``row`` for ``images`` (MNIST uint8 white on black), deterministic."""
    if row == "bitmap32":
        return [_png(_bitmap(image, 32, fill=False)) for image in images]
    if row == "bitmap16_stretched":
        return [_png(_bitmap(image, 16, fill=True)) for image in images]
    if row == "array28_filled":
        return [_png(255 - _filled_array(image)) for image in images]
    if row == SECURITY_ROW:
        return scanlike.security_set(images, seed)
    if row == "array28_bold":  # the same with a broad pen: ink over most of the array
        thick = distort.distort_set(images, "thick", seed)
        return [_png(255 - _filled_array(image)) for image in thick]
    return [_png(image) for image in distort.distort_set(images, row, seed)]


def evaluate(classifier, images: np.ndarray, labels: np.ndarray, seed: int = 0) -> list[dict]:
    """Accuracy and read rates at 1% and 0.1% error for every row, through ``classifier``."""
    out = []
    for row in ROWS:
        predictions = classifier.classify(crops(images, row, seed), threshold=0.0)
        guess = np.array([p.digit if p.digit is not None else -1 for p in predictions])
        confidence = np.array([p.confidence or 0.0 for p in predictions])
        right = guess == labels
        out.append(
            {
                "row": row,
                "accuracy": round(float(right.mean()), 5),
                "read_at_1pct": read_rate(right, confidence, 0.01),
                "read_at_0.1pct": read_rate(right, confidence, 0.001),
            }
        )
    return out


def table(rows: list[dict], before: list[dict] | None = None) -> str:
    """The rows as aligned text; with ``before``, each figure's change beside it."""
    was = {r["row"]: r for r in before or []}
    lines = [f"{'distortion':20s} {'accuracy':>16s} {'read@1%':>16s} {'read@0.1%':>16s}"]
    for r in rows:
        cells = []
        for name in ("accuracy", "read_at_1pct", "read_at_0.1pct"):
            cell = f"{100 * r[name]:6.2f}%"
            if r["row"] in was:
                cell += f" ({100 * (r[name] - was[r['row']][name]):+5.2f})"
            cells.append(f"{cell:>16s}")
        lines.append(f"{r['row']:20s} " + " ".join(cells))
    return "\n".join(lines)


def picture(rows: list[dict], path: Path, before: list[dict] | None = None) -> Path:
    """Accuracy and read rate at 0.1% error per row, as bars (and the earlier model's, if given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["row"] for r in rows]
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in zip(
        axes, ("accuracy", "read_at_0.1pct"), ("accuracy", "read rate at 0.1% error"), strict=True
    ):
        if before:
            old = {r["row"]: r[key] for r in before}
            ax.bar(x - 0.2, [100 * old.get(n, np.nan) for n in names], 0.4, label="before")
        ax.bar(x + (0.2 if before else 0), [100 * r[key] for r in rows], 0.4, label="now")
        ax.set_xticks(x, names, rotation=60, ha="right")
        ax.set_title(title)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", lw=0.3)
        if before:
            ax.legend(loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_rows(path: Path) -> list[dict] | None:
    """Rows saved by an earlier run (``--json`` output), to compare against."""
    data = json.loads(path.read_text())
    return data["rows"] if isinstance(data, dict) else data
