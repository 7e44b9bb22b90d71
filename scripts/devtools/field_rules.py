"""How the pair's two rules were chosen: the review threshold and how much surer the segmenter
must be for its text to stand when the readers disagree.

    python -m digits.cli.devtools.field_rules [--count 300] [--seed 100]

Both are chosen on a validation set of their own, never on what the figures are reported on:
documents of the generator's *training* families (amounts, zips, digit runs) and composed zips,
written with MNIST *test* digits, from a seed no figure uses (100). The held-out families and the
real samples stay out of the choice. Prints, per threshold, the share of the fields the pair
accepts and the error among them, and per SURER the share of the fields whose chosen text is
right; the rule is the lowest threshold whose error among accepted stays at or under 0.5%.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from digits.model import consensus, data, review
from digits.model.consensus import digits_of
from digits.model.field_eval import Sample, composed_samples, document_samples
from digits.model.inference import Classifier
from digits.model.kinds import kind as field_kind
from digits.model.sequence import LineReading, SequenceReader

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
SURERS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)
MOST_ERROR = 0.005


def validation(count: int, seed: int, data_dir: str | None) -> list[tuple[str, Sample]]:
    mnist = data.load(data_dir)
    out: list[tuple[str, Sample]] = []
    for kind in ("amount", "zip", "digits"):
        docs = document_samples(mnist.x_test, mnist.y_test, kind, count, seed, "train")
        out += [(kind, s) for s in docs]
    out += [("zip", s) for s in composed_samples(mnist.x_test, mnist.y_test, count, seed)]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=300, help="fields of each of the four sets")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    classifier, reader = Classifier.load(), SequenceReader.load()
    samples = validation(args.count, args.seed, args.data)
    answers, truths = [], []
    for kind in ("amount", "zip", "digits"):
        chosen = [s for k, s in samples if k == kind]
        for start in range(0, len(chosen), 200):
            batch = [s.data for s in chosen[start : start + 200]]
            answers += consensus.read_pairs(classifier, reader, batch, kind, threshold=0.0)
        truths += [s.truth for s in chosen]
    print(f"models {classifier.version} + {reader.version}; {len(answers)} validation fields")

    confidence = np.array([a.confidence or 0.0 for a in answers])
    formed = np.array([a.status == "ok" and not a.reasons for a in answers])  # agreed, in form
    right = np.array([digits_of(a.text) == t for a, t in zip(answers, truths, strict=True)])
    print("\nthreshold  accepted  wrong among accepted")
    chosen_threshold = None
    for threshold in THRESHOLDS:
        accepted = formed & (confidence >= threshold)
        wrong = int((accepted & ~right).sum())
        error = wrong / max(1, int(accepted.sum()))
        if chosen_threshold is None and error <= MOST_ERROR:
            chosen_threshold = threshold
        print(f"{threshold:>9}  {accepted.mean():>7.1%}  {error:.2%} ({wrong} of {accepted.sum()})")
    print(f"lowest threshold at or under {MOST_ERROR:.1%} error: {chosen_threshold}")

    print("\nSURER  chosen text right")
    for surer in SURERS:
        hits = 0
        for answer, truth in zip(answers, truths, strict=True):
            segmenter, sequence = answer.readers["segmenter"], answer.readers["sequence"]
            if answer.status != "ok" or answer.segmented is None or sequence.text is None:
                hits += digits_of(answer.text) == truth
                continue
            seg_text = segmenter.text or ""
            agree = bool(digits_of(seg_text)) and digits_of(seg_text) == digits_of(sequence.text)
            spec = field_kind(answer.kind)
            line = LineReading(sequence.text, sequence.confidence or 0.0)
            text = consensus.chosen_text(
                replace(answer.segmented, text=seg_text),
                line,
                agree,
                spec.check(seg_text),
                spec.check(sequence.text),
                surer,
            )
            hits += digits_of(text) == truth
        print(f"{surer:>5}  {hits / len(answers):.2%}")
    print(f"\n(today: threshold {review.FIELD_REVIEW_THRESHOLD}, SURER {consensus.SURER})")


if __name__ == "__main__":
    main()
