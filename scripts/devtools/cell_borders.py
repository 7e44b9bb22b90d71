"""Digits cut from a form's cells: how the crop path reads them with part of the cell's frame.

A form's boxes are cut by the template's coordinates, and the cut often keeps a printed line of
the box along one edge or more, or the rule the digit was written on (``model/borders.py``).
This draws such lines into scan-like MNIST test digits (``model/scanlike.py``) and reads them
through the crop path (``Classifier.classify``, as ``digits classify`` and the worker do): one
row per frame, with the share read right, the share sent to review and the share accepted wrong.

    python -m digits.cli.devtools.cell_borders [--count 2000] [--seed 0] [--picture PNG]

Each line of a frame lies 0 to 2 pixels inside its edge (a rule the digit was written on runs
across the crop at 75% to 92% of its height), 1 to 3 pixels thick at 64 px a crop (a thin printed
rule at 200-300 dpi), takes 45% to 85% of the paper's light, and is blurred as the scanner blurs
ink (Gaussian, sigma 0.3 to 1 pixel).
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from digits.model import borders, data
from digits.model.decode import decode
from digits.model.inference import Classifier
from digits.model.normalize import normalize
from digits.model.scanlike import scan_pixels

FRAMES = {
    "none": (),
    "bottom": ("bottom",),
    "top": ("top",),
    "left": ("left",),
    "right": ("right",),
    "bottom and left": ("bottom", "left"),
    "whole frame": ("top", "bottom", "left", "right"),
    "written on a rule": ("rule",),
}


def framed(image: np.ndarray, edges: tuple[str, ...], rng: np.random.Generator) -> bytes:
    """One MNIST digit as a scan-like crop with printed lines along ``edges``, as PNG bytes."""
    pixels = scan_pixels(image, rng).astype(np.float32)
    h, w = pixels.shape[:2]
    thick = int(rng.integers(1, 4)) * max(1, round(max(h, w) / 64))
    lines = np.zeros((h, w), np.float32)
    for edge in edges:
        if edge == "rule":  # the line the digit was written on, through its foot
            at = int(h * rng.uniform(0.75, 0.92))
            lines[at : at + thick] = 1.0
            continue
        inset = int(rng.integers(0, 3))
        rows = {
            "top": np.s_[inset : inset + thick],
            "bottom": np.s_[h - inset - thick : h - inset],
            "left": np.s_[:, inset : inset + thick],
            "right": np.s_[:, w - inset - thick : w - inset],
        }[edge]
        lines[rows] = 1.0
    if edges:  # the scanner blurs the print as it blurs the ink
        lines = cv2.GaussianBlur(lines, (0, 0), rng.uniform(0.3, 1.0))
    darkness = rng.uniform(0.45, 0.85) * lines
    pixels *= 1.0 - (darkness[..., None] if pixels.ndim == 3 else darkness)
    out = io.BytesIO()
    Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)).save(out, "PNG")
    return out.getvalue()


def measure(classifier: Classifier, images, labels, count: int, seed: int) -> list[dict]:
    """One row per frame: the same ``count`` test digits, each drawn from its own stream."""
    picked = np.random.default_rng(seed).choice(len(images), count, replace=False)
    rows = []
    for name, edges in FRAMES.items():
        crops = [framed(images[i], edges, np.random.default_rng([seed, int(i)])) for i in picked]
        rows.append({"frame": name, **scores(classifier.classify(crops), labels[picked])})
    return rows


def scores(predictions, truth) -> dict[str, float]:
    """The shares of crops read right, sent to review, and accepted wrong."""
    right = np.array([p.digit == t for p, t in zip(predictions, truth, strict=True)])
    review = np.array([p.needs_review for p in predictions])
    return {
        "right": float(right.mean()),
        "review": float(review.mean()),
        "accepted_wrong": float((~right & ~review).mean()),
    }


def picture(images, seed: int, path: Path, per_row: int = 4) -> Path:
    """One row of examples per frame: each crop as drawn, as ``borders.clear`` leaves it, and
    as the network sees it (28x28, ink white), for people who would rather look."""
    rows = {}
    for name, edges in FRAMES.items():
        rows[name] = []
        for k in range(per_row):
            data = framed(images[k], edges, np.random.default_rng([seed, k]))
            gray = decode(data)
            rows[name].append((gray, borders.clear(gray), seen(data)))
    return sheet(rows, path, label=130)


def seen(crop: bytes) -> np.ndarray:
    """What the network reads of a crop, ink dark on white as a sheet shows it (white if blank)."""
    pixels = normalize(crop).pixels
    return np.ones((28, 28)) if pixels is None else 1.0 - pixels


def sheet(rows: dict[str, list[tuple[np.ndarray, ...]]], path: Path, label: int) -> Path:
    """A contact sheet: one row per name, each example's grey tiles (1 = paper) side by side."""
    cell, gap = 84, 6
    tiles = max(len(example) for examples in rows.values() for example in examples)
    per_row = max(len(examples) for examples in rows.values())
    width = label + per_row * (tiles * cell + (tiles + 1) * gap)
    out = Image.new("L", (width, len(rows) * (cell + gap) + gap), 255)
    draw = ImageDraw.Draw(out)
    for r, (name, examples) in enumerate(rows.items()):
        y = gap + r * (cell + gap)
        draw.text((gap, y + cell // 2 - 6), name, fill=0)
        for k, example in enumerate(examples):
            x = label + k * (tiles * cell + (tiles + 1) * gap)
            for j, tile in enumerate(example):
                shown = Image.fromarray(np.uint8(np.clip(tile, 0, 1) * 255)).resize((cell, cell))
                out.paste(shown, (x + j * (cell + gap), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


@contextlib.contextmanager
def replaced(module, name: str, stand_in) -> Iterator[None]:
    """``module.name`` is ``stand_in`` while the block runs: a rule switched off, so that a
    measurement (``neighbours``, ``two_digits``) reads the same crops with it and without."""
    kept = getattr(module, name)
    setattr(module, name, stand_in)
    try:
        yield
    finally:
        setattr(module, name, kept)


def setup(
    doc: str, argv: list[str] | None, picture
) -> tuple[argparse.Namespace, object, Classifier]:
    """What a measurement of crops drawn from the test set (this one, and ``neighbours``) starts
    with: its options (how many a row, the seed, MNIST's folder, a picture to write), the data,
    its ``picture`` written where asked, and the shipped cnn, named on the first line."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="test digits in each row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=None)
    parser.add_argument("--picture", type=Path, help="also write examples of each row here (a PNG)")
    args = parser.parse_args(argv)
    mnist = data.load(args.data)
    if args.picture:
        print(f"examples: {picture(mnist.x_test, args.seed, args.picture)}")
    classifier = Classifier.load()
    print(f"model {classifier.version}; {args.count} scan-like test digits a row")
    return args, mnist, classifier


def main(argv: list[str] | None = None) -> None:
    args, mnist, classifier = setup(__doc__, argv, picture)
    print(f"{'frame':<18} {'right':>7} {'review':>7} {'accepted wrong':>15}")
    for row in measure(classifier, mnist.x_test, mnist.y_test, args.count, args.seed):
        print(
            f"{row['frame']:<18} {row['right']:>7.2%} {row['review']:>7.2%}"
            f" {row['accepted_wrong']:>15.2%}"
        )


if __name__ == "__main__":
    main()
