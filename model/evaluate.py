"""Evaluation on the MNIST test set: the figures, and the pictures a person checks them with.

``evaluate`` scores clean MNIST; with ``scanned=True`` every test digit is first rendered as a scan-like
file and goes through the same normalization and inference path the worker uses, so the figure says
what the product does, not what the network does on pre-cleaned input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digits.model.data import Mnist
from digits.model.inference import Classifier, Prediction
from digits.model.review import REVIEW_THRESHOLD


@dataclass
class Report:
    accuracy: float
    n: int
    per_class: list[dict]
    confusion: np.ndarray  # rows: truth, columns: guess
    confidence: np.ndarray  # of the guess, per digit
    correct: np.ndarray  # bool per digit
    guesses: np.ndarray  # -1 where there is no guess (blank or error)
    rejected: int  # blank or error: no guess at all
    truth: np.ndarray  # the digit each crop is of
    # bool: to a person whatever the threshold (Prediction.problems: faint ink, two digits, a pad)
    to_a_person: np.ndarray

    def as_dict(self) -> dict:
        return {
            "accuracy": round(self.accuracy, 5),
            "n": self.n,
            "no_guess": self.rejected,
            "per_class": self.per_class,
            "confusion": self.confusion.tolist(),
            "review_curve": [
                {"threshold": t, "flagged": round(f, 5), "accuracy_unflagged": round(a, 5)}
                for t, f, a in review_curve(self)
            ],
        }


def evaluate_clean(classifier: Classifier, mnist: Mnist) -> Report:
    """The test set's arrays as they are, read as the product reads a crop (its second look too)."""
    pixels = mnist.x_test.astype(np.float32) / 255.0
    probs = np.stack(classifier.read(list(pixels[:, None])))
    return _report(mnist.y_test, probs.argmax(1), probs.max(1))


def evaluate_scanned(classifier: Classifier, mnist: Mnist, seed: int = 0) -> Report:
    """Render the test set scan-like (deterministic by ``seed``) and read it back through the product."""
    from digits.model.scanlike import scanlike_set

    predictions = classifier.classify(scanlike_set(mnist.x_test, seed=seed))
    return report_from_predictions(mnist.y_test, predictions)


def evaluate_labelled(classifier: Classifier, directory: Path) -> tuple[Report, np.ndarray]:
    """A folder of single-digit scans with ``labels.csv`` (``file,label``), each read as ``digits
    classify`` and the worker read a crop: real digits no one trained on (a set people keyed,
    ``digits export-corrections``' ``digit/``, or digits cut from real fields). Returns the report
    and, for its pictures, the 28x28 pixels the network saw (zeros where a crop had none).

    The single-digit counterpart of ``digits evaluate --fields --labelled``: the same folder
    layout, one digit a label."""
    from digits.model.field_eval import labelled_dir
    from digits.model.normalize import Crop, normalize_many

    paths, labels = labelled_dir(directory)
    if not paths:
        raise ValueError(f"{directory / 'labels.csv'} lists no scans")
    for path, label in zip(paths, labels, strict=True):
        if len(label) != 1 or not label.isdigit():
            raise ValueError(f"{path.name}: label {label!r} is not one digit")
    crops = normalize_many([path.read_bytes() for path in paths])
    seen = np.zeros((len(crops), 28, 28), np.float32)
    for i, crop in enumerate(crops):
        if isinstance(crop, Crop) and crop.pixels is not None:
            seen[i] = crop.pixels
    truth = np.array([int(label) for label in labels])
    return report_from_predictions(truth, classifier.classify_crops(crops)), seen


def expected_calibration_error(p: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
    """Mean |confidence - accuracy| over equal-width confidence bins, weighted by their size:
    what calibrating the digit model and the field reader is measured by."""
    edges = np.minimum((p * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(p[edges == b].mean() - right[edges == b].mean()) * (edges == b).mean()
            for b in range(bins)
            if (edges == b).any()
        )
    )


def report_from_predictions(truth: np.ndarray, predictions: list[Prediction]) -> Report:
    """A crop without a guess (blank or error) counts as a mistake: the scan was of a digit."""
    guesses = np.array([p.digit if p.digit is not None else -1 for p in predictions])
    confidence = np.array([p.confidence or 0.0 for p in predictions])
    to_a_person = np.array([bool(p.problems) for p in predictions], bool)
    return _report(truth, guesses, confidence, to_a_person)


def _report(
    truth: np.ndarray,
    guesses: np.ndarray,
    confidence: np.ndarray,
    to_a_person: np.ndarray | None = None,
) -> Report:
    truth = np.asarray(truth, dtype=int)
    confusion = np.zeros((10, 10), dtype=int)
    answered = guesses >= 0
    np.add.at(confusion, (truth[answered], guesses[answered]), 1)
    per_class = []
    for digit in range(10):
        hits = confusion[digit, digit]
        per_class.append(
            {
                "digit": digit,
                "precision": round(float(hits / max(confusion[:, digit].sum(), 1)), 5),
                "recall": round(float(hits / max((truth == digit).sum(), 1)), 5),
                "support": int((truth == digit).sum()),
            }
        )
    correct = guesses == truth
    return Report(
        accuracy=float(correct.mean()),
        n=len(truth),
        per_class=per_class,
        confusion=confusion,
        confidence=confidence,
        correct=correct,
        guesses=guesses,
        rejected=int((~answered).sum()),
        truth=truth,
        to_a_person=np.zeros(len(truth), bool) if to_a_person is None else to_a_person,
    )


THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


def review_curve(report: Report, thresholds=THRESHOLDS) -> list[tuple[float, float, float]]:
    """(threshold, share flagged for review, accuracy of what is not flagged) for each threshold;
    a crop with a problem (faint ink, two digits, a pad) is flagged at every one."""
    rows = []
    for t in thresholds:
        kept = (report.confidence >= t) & ~report.to_a_person
        accuracy = float(report.correct[kept].mean()) if kept.any() else 1.0
        rows.append((t, float(1 - kept.mean()), accuracy))
    return rows


def write_pictures(
    report: Report, images: np.ndarray, truth: np.ndarray, out_dir: Path
) -> list[Path]:
    """Confusion matrix, the worst mistakes and the review curve, as PNG files in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        _confusion_png(report.confusion, out_dir / "confusion.png"),
        _mistakes_png(report, images, truth, out_dir / "mistakes.png"),
        _curve_png(report, out_dir / "review_curve.png"),
    ]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _confusion_png(confusion: np.ndarray, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    shown = np.log1p(confusion)
    image = ax.imshow(shown, cmap="Blues")
    for (row, col), value in np.ndenumerate(confusion):
        if value:
            bright = shown[row, col] > shown.max() / 2
            ax.text(
                col,
                row,
                value,
                ha="center",
                va="center",
                fontsize=7,
                color="white" if bright else "black",
            )
    ax.set(
        xlabel="guess",
        ylabel="truth",
        xticks=range(10),
        yticks=range(10),
        title="Confusion matrix (log colour scale)",
    )
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mistakes_png(report: Report, images: np.ndarray, truth: np.ndarray, path: Path) -> Path:
    """The most confident mistakes first: those are the ones a review threshold cannot catch."""
    plt = _pyplot()
    wrong = np.flatnonzero(~report.correct)
    worst = wrong[np.argsort(-report.confidence[wrong])][:36]
    cols = 9
    rows = max(1, int(np.ceil(len(worst) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, worst, strict=False):
        ax.imshow(images[i], cmap="gray_r")
        guess = report.guesses[i] if report.guesses[i] >= 0 else "-"
        ax.set_title(f"{guess} ({report.confidence[i]:.2f})\ntruth {truth[i]}", fontsize=7)
    fig.suptitle(f"Worst mistakes: {len(wrong)} of {report.n} wrong", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curve_png(report: Report, path: Path) -> Path:
    plt = _pyplot()
    thresholds = np.linspace(0, 0.999, 200)
    curve = review_curve(report, thresholds)
    flagged = [f * 100 for _, f, _ in curve]
    accuracy = [a * 100 for _, _, a in curve]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(flagged, accuracy)
    marked = sorted({0.5, 0.9, REVIEW_THRESHOLD, 0.99})
    for t, f, a in review_curve(report, marked):
        default = " (default)" if t == REVIEW_THRESHOLD else ""
        ax.annotate(f"t={t}{default}", (f * 100, a * 100), fontsize=7)
        ax.plot(f * 100, a * 100, "o", ms=3)
    ax.set(
        xlabel="flagged for review (%)",
        ylabel="accuracy of the rest (%)",
        title="Accuracy versus rejection",
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sample_png(
    images: np.ndarray, truth: np.ndarray, predictions: list[Prediction], path: Path
) -> Path:
    """The random-sample check as a picture: each digit titled with the guess and the truth."""
    plt = _pyplot()
    cols = min(len(images), 5)
    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2, rows * 2.3), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label, p in zip(axes.flat, images, truth, predictions, strict=False):
        ax.imshow(image, cmap="gray")
        ok = p.digit == label
        ax.set_title(
            f"guess {p.digit} ({(p.confidence or 0):.0%})\ntruth {label}",
            color="green" if ok else "red",
            fontsize=9,
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
