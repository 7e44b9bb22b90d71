"""Scoring field readers the way a bank reads them: what is accepted, and how often it is wrong.

Exact match alone hides the figure that matters. A reader that accepts 90% of cheques with 1% of
those wrong is worth more than one that reads 95% right but must have everything checked. So each
reader (the segmenter alone and as the pair runs it, guided by the sequence reader; the sequence
reader; and the pair that must agree) is scored on exact match, the share it accepts, the error
among what it accepts, and the read rate it could reach at 1% and 0.1% error by moving its
threshold: overall, per kind and per held-out trait family.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digits.model.consensus import WHATEVER_CONFIDENCE, FieldAnswer, Reader
from digits.model.fields import FieldDigits, FieldReading
from digits.model.kinds import digits_of
from digits.model.kinds import kind as field_kind

# "segmenter" reads alone; "guided" is the segmenter as the pair reads it, told the sequence
# reader's digit count and boundaries (``consensus.read_pairs``), so not a reader of its own.
READERS = ("segmenter", "guided", "sequence", "pair")
# A reading the sequence reader alone would accept (its string probability), for the solo figures.
SEQUENCE_THRESHOLD = 0.9


@dataclass(frozen=True)
class Scored:
    """One reader on one field: right or not, accepted or not, and its confidence."""

    right: bool
    accepted: bool
    confidence: float


def score(
    answers: Sequence[FieldAnswer],
    truths: Sequence[str],
    kind: str,
    seg_threshold: float,
    seq_threshold: float,
    alone: Sequence[FieldReading] | None = None,
) -> dict[str, list[Scored]]:
    """Each reader's verdicts, judged on digits only (separators are not in the truth).

    A reader alone accepts what it reads in the kind's form at or over its own threshold, and its
    curve ranks only such readings; the pair accepts what :func:`consensus.decide` accepted, and
    ranks by the pair's confidence only the fields whose readers agree in the kind's form.
    ``alone`` holds the segmenter's unguided readings (``fields.read_fields``); without it the
    segmenter is scored on its guided readings.
    """
    spec = field_kind(kind)
    out: dict[str, list[Scored]] = {name: [] for name in READERS}
    for i, (answer, truth) in enumerate(zip(answers, truths, strict=True)):
        guided = answer.readers.get("segmenter")
        solo = Reader(alone[i].text, alone[i].confidence) if alone is not None else guided
        for name, reader, threshold in (
            ("segmenter", solo, seg_threshold),
            ("guided", guided, seg_threshold),
            ("sequence", answer.readers.get("sequence"), seq_threshold),
        ):
            text = reader.text if reader else None
            formed = bool(text) and spec.check(text or "")
            conf = (reader.confidence or 0.0) if reader and formed else 0.0
            out[name].append(Scored(digits_of(text) == truth, formed and conf >= threshold, conf))
        ok = answer.status == "ok"
        agreed = ok and bool(answer.valid) and not WHATEVER_CONFIDENCE & set(answer.reasons)
        out["pair"].append(
            Scored(
                ok and digits_of(answer.text) == truth,
                ok and not answer.needs_review,
                (answer.confidence or 0.0) if agreed else 0.0,
            )
        )
    return out


def figures(scored: Sequence[Scored]) -> dict[str, float | int | None]:
    """Exact match, accepted share, error among accepted, read rate at 1% and 0.1% error."""
    n = len(scored)
    if not n:
        return {"n": 0}
    right = np.array([s.right for s in scored])
    accepted = np.array([s.accepted for s in scored])
    conf = np.array([s.confidence for s in scored])
    return {
        "n": n,
        "exact": round(float(right.mean()), 4),
        "accepted": round(float(accepted.mean()), 4),
        # None, not 0, when nothing was accepted: no error measured is not a perfect score.
        "error_accepted": round(float(1 - right[accepted].mean()), 4) if accepted.any() else None,
        "read_rate_1pct": read_rate(right, conf, 0.01),
        "read_rate_01pct": read_rate(right, conf, 0.001),
    }


def read_rate(right: np.ndarray, confidence: np.ndarray, error: float) -> float:
    """The largest share of fields a threshold can accept with at most ``error`` wrong among them.

    Fields are taken most confident first; ties go in together, since no threshold parts them.
    """
    order = np.argsort(-confidence, kind="stable")
    wrong = np.cumsum(~right[order])
    taken = np.arange(1, len(order) + 1)
    ends = np.r_[confidence[order][1:] != confidence[order][:-1], True]
    ok = (wrong <= error * taken) & ends
    return round(float(taken[ok].max() / len(order)), 4) if ok.any() else 0.0


def curve(scored: Sequence[Scored]) -> tuple[np.ndarray, np.ndarray]:
    """Accepted share against error among accepted, over every threshold: for the curve PNG."""
    right = np.array([s.right for s in scored])
    conf = np.array([s.confidence for s in scored])
    order = np.argsort(-conf, kind="stable")
    taken = np.arange(1, len(order) + 1)
    return taken / len(order), np.cumsum(~right[order]) / taken


def curve_png(curves: Mapping[str, Sequence[Scored]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, scored in curves.items():
        accepted, error = curve(scored)
        ax.plot(accepted, np.maximum(error, 1e-4), label=name)
    for level in (0.01, 0.001):
        ax.axhline(level, color="grey", lw=0.5, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("share of fields accepted")
    ax.set_ylabel("error among accepted")
    ax.set_title(title)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def labelled_dir(directory: Path) -> tuple[list[Path], list[str]]:
    """A folder of scans with ``labels.csv`` (``file,label``; the label is the digits only)."""
    table = directory / "labels.csv"
    if not table.is_file():
        raise FileNotFoundError(f"{table} is missing: a labelled folder needs file,label rows")
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not {"file", "label"} <= set(reader.fieldnames or ()):
            raise ValueError(f"{table}: its header must name the columns file,label")
        rows = [(r["file"], r["label"]) for r in reader]
    return [directory / f for f, _ in rows], [label for _, label in rows]


@dataclass(frozen=True)
class Sample:
    """A field to read: the scan's bytes, its digits (the truth) and the family of each trait."""

    data: bytes
    truth: str
    traits: dict[str, str]


def document_samples(images, labels, kind: str, count: int, seed: int, split: str) -> list[Sample]:
    """Synthetic documents (``docgen``) of ``kind`` in ``split``'s trait families."""
    from digits.model import docgen

    docs = docgen.documents(images, labels, count, seed=seed, kind=kind, split=split)
    # PNG: the documents went through JPEG at their own drawn quality already; a second JPEG
    # would measure a worse scan than the generator made (and than training saw).
    return [Sample(d.encoded(".png"), d.label, dict(d.traits)) for d in docs]


def composed_samples(
    images,
    labels,
    count: int,
    seed: int,
    touching: float = 0.2,
    lines: float = 0.2,
    plus4: float = 0.2,
    glyphs: str = "plain",
) -> list[Sample]:
    """MNIST digits side by side on plain scan-like paper (``fieldgen``): envelopes and forms;
    ``glyphs`` says how the digits were captured (``fieldgen.GLYPH_STYLES``)."""
    from digits.model.fieldgen import field_set

    fields = field_set(images, labels, count, "zip", touching, lines, plus4, seed, glyphs)
    return [
        Sample(
            f.data,
            digits_of(f.text),
            {
                "touching": "touching" if f.touching else "separated",
                "lines": "lines" if f.lines else "plain",
                "length": "zip+4" if len(f.text) > 5 else "5 digits",
                "glyphs": glyphs,
            },
        )
        for f in fields
    ]


def evaluate_samples(
    networks: FieldDigits,
    reader,
    samples: Sequence[Sample],
    kind: str,
    title: str,
    out_dir: Path | None = None,
) -> dict:
    """Both readers and the pair over ``samples``: figures overall and per family of each trait."""
    from digits.model.consensus import read_pairs
    from digits.model.fields import SEGMENTER_THRESHOLD, read_fields

    answers: list[FieldAnswer] = []
    alone: list[FieldReading] = []
    for start in range(0, len(samples), 250):
        batch = [s.data for s in samples[start : start + 250]]
        answers += read_pairs(networks, reader, batch, kind)  # the kind's threshold
        alone += read_fields(networks, batch, kind)
    truths = [s.truth for s in samples]
    scored = score(answers, truths, kind, SEGMENTER_THRESHOLD, SEQUENCE_THRESHOLD, alone)
    families: dict[str, dict] = {}
    for trait in sorted({t for s in samples for t in s.traits}):
        for family in sorted({s.traits.get(trait, "") for s in samples}):
            mask = [s.traits.get(trait) == family for s in samples]
            families[f"{trait}={family}"] = {
                name: figures([v for v, m in zip(scored[name], mask, strict=True) if m])
                for name in READERS
            }
    report = {
        "title": title,
        "kind": kind,
        "readers": {name: figures(scored[name]) for name in READERS},
        "families": families,
        "accepted_mistakes": [
            {
                "truth": s.truth,
                "text": a.text,
                "confidence": a.confidence,
                "readers": {k: r.text for k, r in a.readers.items()},
            }
            for s, a, v in zip(samples, answers, scored["pair"], strict=True)
            if v.accepted and not v.right
        ][:20],
    }
    if out_dir is not None:
        name = title.replace(" ", "_").replace("/", "_")
        report["curve"] = str(curve_png(scored, out_dir / f"fields_{name}.png", title))
    return report


def labelled_samples(directory: Path) -> list[Sample]:
    """A labelled folder of real scans: every file with its digits, in one family."""
    paths, truths = labelled_dir(directory)
    return [
        Sample(p.read_bytes(), t, {"set": directory.name})
        for p, t in zip(paths, truths, strict=True)
    ]
