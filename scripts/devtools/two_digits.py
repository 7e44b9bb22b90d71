"""Two digits in one crop: how often the crop path flags them (``neighbours.side_by_side``), and
how often it flags a single digit.

A crop cut over two cells, or a zip cut into too few pieces, holds two digits. This draws two
MNIST test digits side by side, 1 to 5 pixels apart, fits them into a 28-pixel frame as MNIST fits
one, and renders the frame scan-like (``model/scanlike.py``). Beside them: single test digits
scan-like, broken (``distort.broken``) and thin-penned (``distort.thin``), each digit from its
own stream. Each row reads through the crop path (``Classifier.classify``, as ``digits classify``
and the worker do), once as shipped and once with the rule off: the share flagged as two digits,
accepted, and accepted wrong (a pair's one reading is always wrong).

    python -m digits.cli.devtools.two_digits [--count 3000] [--seed 0] [--picture PNG]
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from digits.cli.devtools.cell_borders import replaced, scores, seen, setup, sheet
from digits.model import distort, neighbours, scanlike
from digits.model.decode import decode
from digits.model.inference import Classifier

ROWS = ("single", "broken", "thin", "two digits")


def _ink(image: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(image.max(axis=1) > 40), np.flatnonzero(image.max(axis=0) > 40)
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def pair(first: np.ndarray, second: np.ndarray, gap: int) -> np.ndarray:
    """Two MNIST digits ``gap`` pixels apart, fitted into a 28x28 frame as MNIST fits one
    (``distort.recentre``)."""
    a, b = _ink(first), _ink(second)
    h = max(len(a), len(b))
    a, b = (np.pad(d, ((0, h - len(d)), (0, 0))) for d in (a, b))
    return distort.recentre(np.concatenate([a, np.zeros((h, gap), np.uint8), b], axis=1))


def crop(images, row: str, i: int, seed: int) -> bytes:
    """Test digit ``i`` as a crop of ``row``, from its own stream."""
    rng = np.random.default_rng([seed, ROWS.index(row), i])
    image = images[i]
    if row == "broken":
        image = distort.broken(image, rng)
    elif row == "thin":
        image = distort.thin(image, rng)
    elif row == "two digits":
        image = pair(image, images[int(rng.integers(len(images)))], int(rng.integers(1, 6)))
    return scanlike.render(image, rng)


def rule_off() -> contextlib.AbstractContextManager[None]:
    """Normalization that never takes a crop for two digits, as before the rule existed."""
    return replaced(neighbours, "side_by_side", lambda boxes, share: False)


def measure(classifier: Classifier, images, labels, count: int, seed: int) -> list[dict]:
    picked = np.random.default_rng(seed).choice(len(images), count, replace=False)
    out = []
    for row in ROWS:
        crops = [crop(images, row, int(i), seed) for i in picked]
        truth = labels[picked] if row != "two digits" else np.full(count, -1)
        now = classifier.classify(crops)
        with rule_off():
            before = scores(classifier.classify(crops), truth)
        flagged = float(np.mean([p.two_digits for p in now]))
        out.append({"row": row, "flagged": flagged, **scores(now, truth), "before": before})
    return out


def picture(images, seed: int, path: Path, per_row: int = 6) -> Path:
    """A row of examples each: the crop as drawn and as the network sees it (28x28, ink white)."""
    rows = {
        row: [(decode(c), seen(c)) for c in (crop(images, row, k, seed) for k in range(per_row))]
        for row in ("single", "two digits")
    }
    return sheet(rows, path, label=80)


def main(argv: list[str] | None = None) -> None:
    args, mnist, classifier = setup(__doc__, argv, picture)
    print(f"{'crops':<12} {'two digits':>10} {'accepted':>18} {'accepted wrong':>18}  (rule off)")
    for row in measure(classifier, mnist.x_test, mnist.y_test, args.count, args.seed):
        accepted, was = 1 - row["review"], 1 - row["before"]["review"]
        wrong, was_wrong = row["accepted_wrong"], row["before"]["accepted_wrong"]
        print(
            f"{row['row']:<12} {row['flagged']:>10.2%} {f'{accepted:.2%} ({was:.2%})':>18}"
            f" {f'{wrong:.2%} ({was_wrong:.2%})':>18}"
        )


if __name__ == "__main__":
    main()
