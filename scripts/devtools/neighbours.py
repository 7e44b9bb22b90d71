"""Digits cut with a piece of their neighbour: how the crop path reads them, with and without
``model/neighbours.py`` leaving the piece out.

A digit cut from a zip code or a row of cells by fixed coordinates often keeps the end of the
digit written before or after it, cut off by the crop's edge. This draws the right end of another
MNIST test digit into the left margin of a test digit (or the left end into the right margin,
every other crop), 2 to 5 pixels of its 28-pixel frame, shifted up or down by up to 2, and renders
the frame scan-like with its edges as the crop's (``model/scanlike.py``: size, rotation, paper,
ink, blur, noise, JPEG or PNG). Each row reads the same digits through the crop path
(``Classifier.classify``, as ``digits classify`` and the worker do), once as shipped and once with
the rule off: the share read right, sent to review, and accepted wrong.

    python -m digits.cli.devtools.neighbours [--count 2000] [--seed 0] [--picture PNG]
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from digits.cli.devtools.cell_borders import replaced, scores, seen, setup, sheet
from digits.model import neighbours, scanlike
from digits.model.decode import decode
from digits.model.inference import Classifier

WIDTHS = (0, 2, 3, 4, 5)  # columns of the neighbour's ink in the 28-column frame


def with_piece(images, i: int, width: int, rng: np.random.Generator) -> bytes:
    """Test digit ``i`` as a scan-like crop with ``width`` columns of a neighbour at a side."""
    digit = images[i].copy()
    if width:
        other = images[int(rng.integers(len(images)))]
        cols = np.flatnonzero(other.max(axis=0) > 30)
        piece = np.roll(
            other[:, cols[-1] - width + 1 : cols[-1] + 1]
            if i % 2
            else other[:, cols[0] : cols[0] + width],
            int(rng.integers(-2, 3)),
            axis=0,
        )
        side = np.s_[:, :width] if i % 2 else np.s_[:, 28 - width :]
        digit[side] = np.maximum(digit[side], piece)
    return scanlike.render(digit, rng, margins=False)  # the cut went through the neighbour


def rule_off() -> contextlib.AbstractContextManager[None]:
    """Normalization keeping every part of the crop's ink, as before ``neighbours`` existed."""
    return replaced(
        neighbours, "at_sides", lambda boxes, largest, width: np.zeros(len(boxes), bool)
    )


def measure(classifier: Classifier, images, labels, count: int, seed: int) -> list[dict]:
    """One row per piece width: the same ``count`` test digits, each from its own stream."""
    picked = np.random.default_rng(seed).choice(len(images), count, replace=False)
    truth = labels[picked]
    rows = []
    for width in WIDTHS:
        crops = [
            with_piece(images, int(i), width, np.random.default_rng([seed, int(i)])) for i in picked
        ]
        now = scores(classifier.classify(crops), truth)
        with rule_off():
            before = scores(classifier.classify(crops), truth)
        rows.append({"piece": width, **now, "before": before})
    return rows


def picture(images, seed: int, path: Path, per_row: int = 4) -> Path:
    """One row of examples per piece width: each crop as drawn, as the network sees it, and as
    it saw it with the rule off (28x28, ink white), for people who would rather look."""
    rows = {}
    for piece in WIDTHS:
        rows[f"{piece} px of 28"] = []
        for k in range(per_row):
            crop_bytes = with_piece(images, k, piece, np.random.default_rng([seed, k]))
            with rule_off():
                before = seen(crop_bytes)
            rows[f"{piece} px of 28"].append((decode(crop_bytes), seen(crop_bytes), before))
    return sheet(rows, path, label=90)


def main(argv: list[str] | None = None) -> None:
    args, mnist, classifier = setup(__doc__, argv, picture)
    print(f"{'piece':<12} {'right':>16} {'review':>16} {'accepted wrong':>16}  (rule off)")
    for row in measure(classifier, mnist.x_test, mnist.y_test, args.count, args.seed):
        cells = (
            f"{row[k]:.2%} ({row['before'][k]:.2%})" for k in ("right", "review", "accepted_wrong")
        )
        print(f"{row['piece']} px of 28  " + " ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
