"""How the pair's rules were chosen: the review thresholds, how much surer the segmenter must be
for its text to stand when the readers disagree, how their probabilities are weighed when they
spell as many digits differently (``consensus.joint_text``), and when readers that differ in one
digit still agree (``consensus.near_agreement``).

    python -m digits.cli.devtools.field_rules [--count 1000] [--seed 100]

Both are chosen on a validation set of their own, never on what the figures are reported on:
documents of the generator's *training* families (amounts, zips, digit runs) and composed zips in
each glyph style (as drawn, captured small, stretched to fill: ``fieldgen.GLYPH_STYLES``; plain
only until session 21), written with MNIST *test* digits, from a seed no figure uses (100). The
held-out families and the real samples stay out of the choice. Prints, per threshold, the share of
the fields the pair accepts and the error among them, and per SURER (and per weight and unlisted
share of the mixes, and per weight of the digits the segmenter read from a blob alone) the share of
the fields whose chosen text is right. Each kind gets its own threshold: the lowest at which at
most 0.5% of what the pair accepts is wrong (zips are composed zips and zip documents; amounts and
digit runs, documents). Beside each share is its exact binomial 95% upper bound, which says how
much a few hundred accepted fields can promise: use the default count (1,000 of each set) or more.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from digits.model import consensus, data, review
from digits.model.field_eval import Sample, composed_samples, document_samples
from digits.model.fieldgen import GLYPH_STYLES
from digits.model.fields import FieldDigits, decode_all
from digits.model.kinds import digits_of
from digits.model.kinds import kind as field_kind
from digits.model.sequence import LineReading, SequenceReader
from digits.worker.config import Settings

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99)
SURERS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0)
JOINT_WEIGHTS = (1.0, 1 / 2, 1 / 3, 1 / 5)
WHOLE_WEIGHTS = (1 / 3, 1 / 2, 2 / 3, 1.0, 1.5)
UNLISTEDS = (0.001, 0.01, 0.03)
NEAR_SURES = (0.95, 0.97, 0.99)
NEAR_LISTEDS = (0.01, 0.05, 0.1, 0.2)
MOST_ERROR = 0.005  # wrong among accepted, at most (the bound on synthetic documents)
CONFIDENCE = 0.95  # the upper bound printed beside it: how sure that share is


def error_bound(wrong: int, accepted: int, confidence: float = CONFIDENCE) -> float:
    """The exact one-sided (Clopper-Pearson) upper bound on the error rate after ``wrong`` of
    ``accepted`` (0 of n gives about 3/n, the rule of three):
    the largest rate under which seeing so few wrong still has 1 - ``confidence`` chance."""
    if accepted == 0:
        return 1.0

    def at_most(p: float) -> float:  # P(X <= wrong) for X ~ Binomial(accepted, p)
        if p >= 1.0:
            return 0.0
        return sum(
            math.exp(
                math.lgamma(accepted + 1)
                - math.lgamma(k + 1)
                - math.lgamma(accepted - k + 1)
                + k * math.log(max(p, 1e-300))
                + (accepted - k) * math.log1p(-p)
            )
            for k in range(wrong + 1)
        )

    lo, hi = wrong / accepted, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if at_most(mid) > 1 - confidence else (lo, mid)
    return hi


def outcomes(answers: list, truths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per field: whether the readers agreed on a text of the kind's form (only such a field can
    be accepted; the answers were read at threshold 0), and whether its text is right."""
    formed = np.array([a.status == "ok" and not a.reasons for a in answers])
    right = np.array([digits_of(a.text) == t for a, t in zip(answers, truths, strict=True)])
    return formed, right


def threshold_table(kind: str, answers: list, truths: list[str]) -> float | None:
    """Print one kind's table (accepted, wrong among accepted, its upper bound) and return the
    lowest threshold whose wrong among accepted is at most MOST_ERROR."""
    confidence = np.array([a.confidence or 0.0 for a in answers])
    formed, right = outcomes(answers, truths)
    print(f"\n{kind} ({len(answers)} fields)")
    print(f"threshold  accepted  wrong among accepted  ({CONFIDENCE:.0%} upper bound)")
    chosen = None
    for threshold in THRESHOLDS:
        accepted = formed & (confidence >= threshold)
        wrong, n = int((accepted & ~right).sum()), int(accepted.sum())
        if chosen is None and n and wrong / n <= MOST_ERROR:
            chosen = threshold
        print(
            f"{threshold:>9}  {accepted.mean():>7.1%}  {wrong / max(1, n):.2%} ({wrong} of {n})"
            f"  {error_bound(wrong, n):.2%}"
        )
    return chosen


# Ways to rank the fields both readers agree on (consensus.agreed_confidence: amounts by the
# sequence reader's digits, the other kinds by the geometric mean): a better ranking accepts more
# at the same error. Each takes the sequence reader's reading and the segmenter's confidence.
RANKINGS = {
    "geometric mean": lambda line, seg: consensus.pair_confidence(line.confidence, seg),
    "lower of the two": lambda line, seg: min(line.confidence, seg),
    "higher of the two": lambda line, seg: max(line.confidence, seg),
    "sequence reader's": lambda line, seg: line.confidence,
    "sequence reader's digits": lambda line, seg: line.digits_sure,
    "segmenter's": lambda line, seg: seg,
}


def most_accepted(score: np.ndarray, formed: np.ndarray, right: np.ndarray) -> tuple[float, float]:
    """The largest share of all fields that some threshold on ``score`` accepts (among the
    ``formed`` ones) with at most MOST_ERROR wrong, and that threshold."""
    masked = np.where(formed, score, -np.inf)  # what no threshold can accept sorts last
    order = np.argsort(-masked, kind="stable")
    best, at, wrong = 0, 1.0, 0
    for n, i in enumerate(order[: int(formed.sum())], 1):
        wrong += not right[i]
        # A threshold accepts all the fields of equal score or none of them.
        if wrong / n <= MOST_ERROR and (n == len(order) or masked[order[n]] < masked[i]):
            best, at = n, float(score[i])
    return best / len(score), at


def ranking_table(kind: str, answers: list, truths: list[str], lines: list) -> None:
    """How much each ranking of the agreed fields could accept at MOST_ERROR."""
    formed, right = outcomes(answers, truths)
    unread = LineReading("", 0.0, digits_confidence=0.0)
    seq = [line or unread for line in lines]
    seg = [a.readers["segmenter"].confidence or 0.0 for a in answers]
    print(f"{kind}: share accepted at {MOST_ERROR:.1%} wrong, by ranking")
    for name, rank in RANKINGS.items():
        score = np.array([rank(a, b) for a, b in zip(seq, seg, strict=True)])
        share, at = most_accepted(score, formed, right)
        print(f"  {name:<24} {share:>6.1%}  (from {at:.4f})")


def near_table(kind: str, answers: list, truths: list[str], lines: list) -> None:
    """What near agreement (``consensus.near_agreement``) adds at each pair of its parameters:
    fields whose readers do not spell the same digits that ``consensus.decide`` accepts with
    them, and how many of those are wrong. The rule is the pair that adds the most with none
    wrong."""
    threshold = review.threshold_for(kind, None)
    print(f"{kind}: added by near agreement (sure, listed): accepted, wrong")
    for sure in NEAR_SURES:
        for listed in NEAR_LISTEDS:
            added = wrong = 0
            for answer, truth, line in zip(answers, truths, lines, strict=True):
                seg = answer.segmented
                if answer.status != "ok" or seg is None or line is None:
                    continue
                if consensus.agreed(seg.text, line.text):
                    continue
                near = consensus.decide(kind, seg, line, threshold, near=(sure, listed))
                if not near.needs_review:
                    added += 1
                    wrong += digits_of(near.text) != truth
            print(f"  {sure:>5} {listed:>5}  {added:>5}  {wrong} ({error_bound(wrong, added):.2%})")


def validation(count: int, seed: int, data_dir: str | None) -> list[tuple[str, Sample]]:
    mnist = data.load(data_dir)
    out: list[tuple[str, Sample]] = []
    for kind in ("amount", "zip", "digits"):
        docs = document_samples(mnist.x_test, mnist.y_test, kind, count, seed, "train")
        out += [(kind, s) for s in docs]
    for glyphs in GLYPH_STYLES:  # envelopes and forms: digits apart, captured each way
        out += [
            ("zip", s)
            for s in composed_samples(mnist.x_test, mnist.y_test, count, seed, glyphs=glyphs)
        ]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="fields of each of the six sets")
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--data", default=None)
    args = parser.parse_args(argv)
    # The worker's models: DIGITS_FIELD_DIGITS and DIGITS_FIELD_MODEL, else the shipped ones.
    settings = Settings.from_env()
    networks = FieldDigits.load(settings.field_digits_path, settings.model_path)
    reader = SequenceReader.load(settings.field_model_path)
    samples = validation(args.count, args.seed, args.data)
    answers, truths, lines = [], [], []
    for kind in ("amount", "zip", "digits"):
        chosen = [s for k, s in samples if k == kind]
        for start in range(0, len(chosen), 200):
            batch = [s.data for s in chosen[start : start + 200]]
            answers += consensus.read_pairs(networks, reader, batch, kind, threshold=0.0)
            lines += read_lines(reader, batch, kind)  # again, keeping each line's logits
        truths += [s.truth for s in chosen]
    models = f"{networks.version} + {networks.apart.version} + {reader.version}"
    print(f"models {models}; {len(answers)} validation fields")

    kinds = [a.kind for a in answers]
    for kind in ("amount", "zip", "digits"):
        mine = [i for i, k in enumerate(kinds) if k == kind]
        chosen = threshold_table(kind, [answers[i] for i in mine], [truths[i] for i in mine])
        found = chosen or "none (1.0: every field of the kind to a person)"
        print(
            f"{kind}: lowest threshold with at most {MOST_ERROR:.1%} wrong among accepted: {found}"
        )
        ranking_table(
            kind, [answers[i] for i in mine], [truths[i] for i in mine], [lines[i] for i in mine]
        )
        if field_kind(kind).ranked_by_line:
            near_table(
                kind,
                [answers[i] for i in mine],
                [truths[i] for i in mine],
                [lines[i] for i in mine],
            )

    print("\nSURER  chosen text right (every disagreement by SURER alone)")
    for surer in SURERS:
        hits = chosen_right(answers, truths, lines, surer=surer, weight=None)
        print(f"{surer:>5}  {hits / len(answers):.2%}")
    print(
        "\nweight  unlisted  chosen text right (readers of one count mixed: consensus.joint_text)"
    )
    for weight in JOINT_WEIGHTS:
        for unlisted in UNLISTEDS:
            hits = chosen_right(answers, truths, lines, weight=weight, unlisted=unlisted)
            print(f"{weight:>6.3f}  {unlisted:>8}  {hits / len(answers):.2%}")
    print(
        "\nwhole weight  chosen text right (in a kind of digits apart, zips: a segmenter's digit"
        f" read from a blob alone, weighed so against the line's; others {consensus.SEGMENTER_WEIGHT:.3f})"
    )
    for whole in WHOLE_WEIGHTS:
        hits = chosen_right(answers, truths, lines, whole_weight=whole)
        print(f"{whole:>12.3f}  {hits / len(answers):.2%}")
    print(
        f"\n(today: thresholds {review.FIELD_REVIEW_THRESHOLDS}, SURER {consensus.SURER}, "
        f"SEGMENTER_WEIGHT {consensus.SEGMENTER_WEIGHT:.3f}, "
        f"WHOLE_WEIGHT {consensus.WHOLE_WEIGHT:.3f}, UNLISTED {consensus.UNLISTED}, "
        f"near agreement {consensus.NEAR_SURE}, {consensus.NEAR_LISTED})"
    )


def read_lines(reader: SequenceReader, batch: list[bytes], kind: str) -> list[LineReading | None]:
    """The sequence reader's readings with their logits, as ``read_pairs`` reads them
    (``consensus.read_lines``); None where a scan does not decode."""
    lines = consensus.read_lines(reader, decode_all(batch), kind)
    return [lines.get(i) for i in range(len(batch))]


def chosen_right(answers: list, truths: list[str], lines: list, **rules) -> int:
    """How many fields' chosen text is right under ``rules`` (``consensus.chosen_text``'s
    ``surer``, ``weight``, ``unlisted``, ``whole_weight``); fields without both readings keep
    their text."""
    hits = 0
    for answer, truth, line in zip(answers, truths, lines, strict=True):
        if answer.status != "ok" or answer.segmented is None or line is None:
            hits += digits_of(answer.text) == truth
            continue
        seg_text = answer.readers["segmenter"].text or ""
        spec = field_kind(answer.kind)
        text = consensus.chosen_text(
            answer.segmented,
            line,
            consensus.agreed(seg_text, line.text),
            spec.check(seg_text),
            spec.check(line.text),
            **rules,
        )
        hits += digits_of(text) == truth
    return hits


if __name__ == "__main__":
    main()
