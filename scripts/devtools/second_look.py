"""How the second look at unsure single crops was chosen (``inference.SECOND_LOOK``).

    python -m digits.cli.devtools.second_look [--model PATH] [--data DIR]

MNIST's validation split (the last 5,000 training digits: never trained on, never the test set)
is put through every row of ``digits evaluate --robustness`` and read through the product's crop
path (decode, normalize, the network). Each crop is read once and as every test-time variant;
then, per rule, the unsure crops' readings are combined and every row scored: accuracy, the read
rates at 1% and 0.1% error, the expected calibration error and the share read again. The rules:
one reading; gates of 0.95, 0.99 and 0.999 on the first reading's confidence; the readings'
normalized geometric mean (the product's rule) or their mean; the narrower pen as a fourth variant
or not. Takes about five minutes on two cores.
"""

from __future__ import annotations

import argparse

import numpy as np

from digits.model import data, robustness, train, variants
from digits.model.field_eval import read_rate
from digits.model.inference import Classifier, _agreed, _seen, agreed_each, default_model_path
from digits.model.normalize import Crop, normalize_many

GATES = (0.95, 0.99, 0.999)


def readings(classifier: Classifier, images: np.ndarray, row: str) -> np.ndarray:
    """(5, n, 10): each crop read as it is, thicker, thinner, slanted +8 and -8 degrees."""
    crops = normalize_many(robustness.crops(images, row, 0))
    blank = np.zeros((1, 28, 28), np.float32)  # a crop with no ink: scored as wrong
    seen = [_seen(c) if isinstance(c, Crop) and not c.blank else blank for c in crops]
    flat = np.concatenate(seen).astype(np.float32)
    made = [flat, variants.thicker(flat), variants.thinner(flat)]
    made += [variants.rotated(flat, 8.0), variants.rotated(flat, -8.0)]
    return np.stack([np.stack(agreed_each(classifier.probabilities(m), seen)) for m in made])


def combined(read: np.ndarray, gate: float, looks: list[int], geometric: bool) -> np.ndarray:
    """The first reading, and for the crops under ``gate`` the combination of ``looks``."""
    out = read[0].copy()
    unsure = out.max(1) < gate
    chosen = read[looks][:, unsure]
    if not unsure.any():
        return out
    if geometric:
        out[unsure] = np.stack([_agreed(chosen[:, i]) for i in range(chosen.shape[1])])
    else:
        out[unsure] = chosen.mean(0)
    return out


def scores(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float, float, float]:
    right = probs.argmax(1) == labels
    confidence = probs.max(1)
    return (
        float(right.mean()),
        read_rate(right, confidence, 0.01),
        read_rate(right, confidence, 0.001),
        train.ece(probs, labels),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    classifier = Classifier.load(args.model or default_model_path())
    mnist = data.load(args.data)
    images = mnist.x_train[-train.VALIDATION :]
    labels = mnist.y_train[-train.VALIDATION :]
    three, four = [0, 1, 3, 4], [0, 1, 2, 3, 4]  # the first reading and its variants
    rules = {"one reading": (0.0, three, True)}  # no confidence is under 0: nothing re-read
    rules.update({f"gate {g}, geometric mean of 4": (g, three, True) for g in GATES})
    rules["gate 0.99, mean of 4"] = (0.99, three, False)
    rules["gate 0.99, geometric mean of 5 (thinner too)"] = (0.99, four, True)
    table: dict[str, list[tuple[float, ...]]] = {name: [] for name in rules}
    print(f"model {classifier.version}, {len(images)} validation digits per row")
    print(f"{'row':20} {'rule':40} accuracy  read@1%  read@0.1%  ECE     re-read")
    for row in robustness.ROWS:
        read = readings(classifier, images, row)
        for name, (gate, looks, geometric) in rules.items():
            probs = combined(read, gate, looks, geometric)
            again = float((read[0].max(1) < gate).mean())
            table[name].append((*scores(probs, labels), again))
            a, r1, r01, e, g = table[name][-1]
            print(f"{row:20} {name:40} {a:8.2%} {r1:8.2%} {r01:9.2%}  {e:.4f}  {g:6.1%}")
    print("\nmean over the rows")
    for name, rows in table.items():
        a, r1, r01, e, g = np.mean(rows, axis=0)
        print(f"{name:40} {a:8.2%} {r1:8.2%} {r01:9.2%}  {e:.4f}  {g:6.1%}")


if __name__ == "__main__":
    main()
