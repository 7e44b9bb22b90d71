"""Digits as the segmenter cuts them out of real-looking fields: the field digit network's data.

The segmenter (:mod:`digits.model.fields`) reads every candidate cut of a field with a digit
network. Trained on MNIST alone, that network has never seen what a cut out of a cheque looks
like: a zero carrying the stub of the ligature that tied it to the next one, a one with a long
lead-in flag, a small round zero from a run written like letter o's, a stroke thickened by a bold
pen and thinned again by the cut. On the generator's documents, most of the guided segmenter's
errors are such digits read wrong with the cut right (docs/fields.md).

Here a document of the generator (:mod:`digits.model.docgen`) is planned as the reader plans a
scan (:func:`lattice.plan`, then :func:`lattice.add_cuts` told where the digits meet, as the
sequence reader tells it in the pair; not which digits, so that every blob the reader may cut is
cut here), and each candidate crop whose span matches one written digit's box
(``Document.boxes``) becomes a training example with that digit's label. Crops that match no
digit (half a digit, two digits, a separator) are not digits, and are left out: the network
keeps ten classes, and the lattice keeps judging cuts by how sure the digits are.

A share of the documents are composed fields instead (:mod:`digits.model.fieldgen`: MNIST's own
strokes apart on plain scan-like paper, as on forms and envelopes), where the segmenter reads each
digit as one blob: there the blobs of digit height, left to right, are the written digits when
they are as many, and each is labelled so. Without them the network forgot some of how plain
digits look through the segmenter (composed zips of seed 7, segmenter alone: 97.6% with the cnn,
95.6% fine-tuned on cheque cuts only, 96.6% with composed fields too).

The first look that decides which blobs to cut is the base cnn's here (the network being trained
does not exist yet); in use the field digit network takes it as well (``fields.read_decoded``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from digits.model import distort, fieldgen
from digits.model.docgen.core import Document, _by_digit, generate
from digits.model.fields import FIELD_LIMITS
from digits.model.kinds import digits_of
from digits.model.lattice import Guide, Plan, add_cuts, plan
from digits.model.normalize import decode

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

    import keras

    from digits.model.inference import Classifier

# Document kinds a harvest draws, by weight: amounts are the product's hard case.
KIND_WEIGHTS = {"amount": 0.65, "zip": 0.2, "digits": 0.15}
# Share of documents that are composed fields (fieldgen) rather than docgen's cheques; some of
# them have a printed rule, as forms do.
COMPOSED_SHARE = 0.25
COMPOSED_LINES = 0.3
# A crop is digit k's when it spans this much of k's box, across and down (a cut that kept the
# top of a digit and lost its foot is not that digit)...
COVER = 0.8
# ...reaches past it by no more than this share of the box's width (or of the digit height,
# whichever is more: a one is narrow, and its cut may carry a stub of the ligature)...
SPILL = 0.35
SPILL_HEIGHT = 0.15
# ...and spans less than this share of any other digit's box.
OTHER = 0.4


@dataclass(frozen=True)
class Harvest:
    """Labelled crops (uint8, 28x28, MNIST-like) and how many documents they came from."""

    x: np.ndarray
    y: np.ndarray
    documents: int

    @classmethod
    def join(cls, parts: Iterable[Harvest]) -> Harvest:
        parts = list(parts)
        return cls(
            np.concatenate([p.x for p in parts]),
            np.concatenate([p.y for p in parts]),
            sum(p.documents for p in parts),
        )


def kind_of(seed: int, index: int) -> tuple[str, bool]:
    """The kind of document ``index`` of a harvest, and whether it is a composed field, drawn
    from its own stream."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 7]))
    kinds = list(KIND_WEIGHTS)
    kind = str(rng.choice(kinds, p=list(KIND_WEIGHTS.values())))
    return kind, bool(rng.random() < COMPOSED_SHARE)


def composed(
    images: np.ndarray, labels: np.ndarray, index: int, seed: int, kind: str
) -> tuple[np.ndarray, str]:
    """Composed field ``index`` of the stream ``seed``: its decoded grey and the text written,
    digits apart (each one blob where MNIST drew it in one stroke)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 11]))
    pools = _by_digit(labels)
    glyph = lambda d: images[pools[d][rng.integers(len(pools[d]))]]  # noqa: E731
    ink, text = fieldgen.random_field(kind, glyph, rng, lines=COMPOSED_LINES)
    return decode(fieldgen.scan(ink, rng), FIELD_LIMITS), text


def blob_matches(field: Plan, label: str) -> list[tuple[int, int]]:
    """(crop index, digit) for a composed field's blobs of digit height, left to right, when
    there are as many as the digits written; none otherwise (a digit in two strokes, a stray)."""
    if field.work is None:
        return []
    height = field.work[2].height
    full = [i for i, b in enumerate(field.pieces) if b.h >= 0.5 * height]
    if len(full) != len(label) or any(i not in field.whole for i in full):
        return []
    return [(field.whole[i], int(d)) for i, d in zip(full, label, strict=True)]


def harvest(
    classifier: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    indices: Iterable[int],
    seed: int,
    split: str = "train",
) -> Harvest:
    """The matched crops of documents ``indices`` of the stream ``seed`` (``docgen.generate``).

    ``classifier`` takes the reader's first look at each blob (which blobs to cut depends on how
    sure it is), as in the reader; ``images``/``labels`` are MNIST digits (the train split to
    train, the test split to evaluate).
    """
    from digits.model.fields import probabilities

    xs: list[np.ndarray] = []
    ys: list[int] = []
    count = 0
    for index in indices:
        kind, plain = kind_of(seed, index)
        count += 1
        if plain:
            gray, text = composed(images, labels, index, seed, kind)
            field = plan(gray)
            found = blob_matches(field, digits_of(text))
        else:
            doc = generate(images, labels, index, seed, kind, split, jpeg=True)
            field = plan(doc.gray.astype(np.float32) / 255.0)
            if not field.crops:
                continue
            first = probabilities(classifier, np.stack(field.crops))
            add_cuts(field, first, kind, true_guide(doc))
            # Every crop is a candidate alike, the first look's and the cuts'.
            found = matches(doc, [_scan_box(b, field.scale) for b in field.boxes])
        for c, label in found:
            xs.append(np.round(field.crops[c] * 255.0).astype(np.uint8))
            ys.append(label)
    x = np.stack(xs) if xs else np.zeros((0, 28, 28), np.uint8)
    return Harvest(x, np.asarray(ys, np.int64), count)


def true_guide(doc: Document) -> Guide:
    """What a perfect sequence reader would tell the segmenter: the count and each digit's
    centre, as shares of the scan's width. Not the digits: told them, the reader leaves uncut
    the blobs that already read as them (``lattice.Guide``), and the network must also learn
    the cuts of those blobs, which the reader still makes where its first look differs."""
    width = doc.image.shape[1]
    return Guide(len(doc.boxes), tuple((x0 + x1) / 2 / width for x0, _, x1, _ in doc.boxes))


def _scan_box(box: tuple[int, int, int, int], scale: float) -> tuple[float, ...]:
    """A crop's box in scan pixels (the plan works on a shrunk copy)."""
    return tuple(v * scale for v in box)


def matches(doc: Document, crops: list[tuple[float, ...]]) -> list[tuple[int, int]]:
    """(crop index, digit) for every crop box (x0, y0, x1, y1) that is one written digit's (see
    COVER, SPILL, OTHER); digits are ``doc.label``'s, in the order of ``doc.boxes``."""
    if len(doc.boxes) != len(doc.label):
        raise ValueError(f"{len(doc.boxes)} boxes for the {len(doc.label)} digits of {doc.text!r}")
    boxes = np.asarray(doc.boxes, np.float64)
    if not len(boxes):
        return []
    widths = np.maximum(boxes[:, 2] - boxes[:, 0], 1.0)
    height = float(np.median(boxes[:, 3] - boxes[:, 1]))
    out = []
    heights = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    for c, (x0, y0, x1, y1) in enumerate(crops):
        overlap = np.clip(np.minimum(x1, boxes[:, 2]) - np.maximum(x0, boxes[:, 0]), 0.0, None)
        covered = overlap / widths
        k = int(np.argmax(covered))
        down = max(0.0, min(y1, boxes[k, 3]) - max(y0, boxes[k, 1])) / heights[k]
        spill = (x1 - x0) - overlap[k]
        others = np.delete(covered, k)
        if (
            covered[k] >= COVER
            and down >= COVER
            and spill <= max(SPILL * widths[k], SPILL_HEIGHT * height)
            and (not len(others) or others.max() < OTHER)
        ):
            out.append((c, int(doc.label[k])))
    return out


# --- the field digit network: the shipped cnn fine-tuned on harvested crops ----------------------

DOCUMENTS = 8_000  # training documents harvested (77,674 cuts for the shipped model)
VALIDATION_DOCUMENTS = 800  # written with MNIST's validation digits, for calibration
TRAIN_STREAM, VALIDATION_STREAM = 1_000, 2_000  # docgen seeds: never the evaluation's (0, 100)
REPLAY = 55_000  # MNIST training digits mixed in (all of them less the validation split)
EPOCHS = 3
LEARNING_RATE = 1e-4
# The replayed MNIST digits draw only nines the writers' way, as since session 11: the documents'
# cuts bring the ones and sevens (docgen draws them), and the recipe stays the shipped network's.
REPLAY_SHAPES = {9: distort.WRITER_SHAPES[9]}


def _harvest_part(
    base: str, data_dir: str | None, part: str, indices: range, seed: int, out: Queue
) -> None:
    """One process's share of a harvest (spawned: TensorFlow does not survive a fork)."""
    from digits.model import data, train
    from digits.model.inference import Classifier

    mnist = data.load(data_dir)
    cut = len(mnist.x_train) - train.VALIDATION
    pick = slice(None, cut) if part == "train" else slice(cut, None)
    classifier = Classifier.load(base, threads=1)
    got = harvest(classifier, mnist.x_train[pick], mnist.y_train[pick], indices, seed)
    out.put((indices.start, got.x, got.y, got.documents))


def harvest_parallel(
    base: Path, data_dir: str | None, part: str, count: int, seed: int, processes: int = 2
) -> Harvest:
    """Documents 0..count-1 of stream ``seed`` harvested in ``processes`` processes, in order.

    ``part`` "train" writes them with MNIST's training digits less the validation split,
    "validation" with the validation split only."""
    import multiprocessing
    from queue import Empty

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    bounds = np.linspace(0, count, processes + 1).astype(int)
    jobs = [
        context.Process(
            target=_harvest_part,
            args=(str(base), data_dir, part, range(a, b), seed, queue),
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    for job in jobs:
        job.start()
    got: list = []
    try:
        while len(got) < len(jobs):
            try:
                got.append(queue.get(timeout=5))
            except Empty:
                # A child that died (out of memory, a crash in TensorFlow) never reports: say so
                # now rather than wait for it.
                dead = [j.exitcode for j in jobs if j.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a harvest process died (exit codes {dead})") from None
    finally:
        for job in jobs:
            job.join(timeout=60 if len(got) == len(jobs) else 0)
            if job.is_alive():
                job.terminate()
    got.sort(key=lambda r: r[0])
    return Harvest.join(Harvest(x, y, n) for _, x, y, n in got)


def train_field_digits(
    base: Path,
    out: Path,
    data_dir: str | None = None,
    documents: int = DOCUMENTS,
    epochs: int = EPOCHS,
    seed: int = 1,
    verbose: int | str = "auto",
    replay: int = REPLAY,
    validation_documents: int = VALIDATION_DOCUMENTS,
) -> dict:
    """Fine-tune the digit network ``base`` on crops of generated documents; save it at ``out``.

    The crops are harvested first (both cores), then ``base``'s weights are trained on them
    mixed with MNIST digits (the cnn's own augmentation on both) at a low learning rate, and the
    result is calibrated on crops of documents written with MNIST's validation digits.
    """
    import time

    import keras
    import tensorflow as tf

    from digits.model import data, networks, train
    from digits.model.card import read_card, version

    base_card = read_card(base)
    if str(base_card.get("arch")) != "cnn":
        raise data.DataError(
            f"{base}: a {base_card.get('arch')} model; the field digits start from a cnn"
        )
    mnist = data.load(data_dir)
    started = time.perf_counter()
    crops = harvest_parallel(base, data_dir, "train", documents, TRAIN_STREAM)
    checks = harvest_parallel(base, data_dir, "validation", validation_documents, VALIDATION_STREAM)
    harvested = time.perf_counter() - started

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    pool = len(mnist.x_train) - train.VALIDATION
    picks = np.random.default_rng(seed).choice(pool, size=min(replay, pool), replace=False)
    x_fit = np.concatenate([crops.x, mnist.x_train[picks]])
    y_fit = np.concatenate([crops.y, mnist.y_train[picks]])
    model = networks.build("cnn")
    model.set_weights(keras.saving.load_model(base, compile=False).get_weights())
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    x_check = train.scale(checks.x)
    before = _accuracy(model, x_check, checks.y)
    model.fit(
        train._batches(x_fit, y_fit, seed, True, epochs, REPLAY_SHAPES),
        epochs=epochs,
        steps_per_epoch=int(np.ceil(len(x_fit) / train.BATCH)),
        callbacks=[keras.callbacks.TerminateOnNaN()],
        verbose=verbose,
    )
    return train.ship(
        model,
        "cnn",
        out,
        mnist,
        (x_check, checks.y),
        time.perf_counter() - started,
        command=f"digits train --arch field-digits --epochs {epochs} --seed {seed}",
        name="field-digits",
        epochs=epochs,
        seed=seed,
        fine_tuned_from=version(base_card),
        pieces={
            "documents": crops.documents,
            "crops": int(len(crops.y)),
            "validation_documents": checks.documents,
            "validation_crops": int(len(checks.y)),
            "validation_accuracy_before": before,
            "validation_accuracy": _accuracy(model, x_check, checks.y),
            "harvest_seconds": round(harvested, 1),
        },
        replay_digits=int(len(picks)),
    )


def _accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` the model reads as ``y``: the cuts' accuracy the card reports."""
    guesses = model.predict(x, batch_size=512, verbose=0).argmax(axis=1)
    return round(float(np.mean(guesses == y)), 5)


def picture(
    classifier: Classifier, images: np.ndarray, labels: np.ndarray, path: str, count: int = 6
) -> None:
    """docs/docgen/cuts.png: documents with each written digit's box (red), and under them the
    cuts the harvest takes from them, each with its label: what the field digit network sees."""
    import cv2

    rows = []
    cheques = [i for i in range(4 * count) if not kind_of(21, i)[1]][:count]
    for i in cheques:
        doc = generate(images, labels, i, 21, kind_of(21, i)[0])
        sheet = cv2.cvtColor(doc.image, cv2.COLOR_RGB2BGR)
        for x0, y0, x1, y1 in doc.boxes:
            cv2.rectangle(sheet, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 255), 1)
        got = harvest(classifier, images, labels, [i], 21)
        tiles = [
            cv2.putText(
                cv2.cvtColor(cv2.resize(255 - x, (42, 42)), cv2.COLOR_GRAY2BGR),
                str(y),
                (2, 11),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.35,
                (0, 0, 255),
                1,
            )
            for x, y in zip(got.x[:16], got.y[:16], strict=True)
        ]
        strip = np.hstack(tiles) if tiles else np.full((42, 42, 3), 255, np.uint8)
        scale = 42 / sheet.shape[0] * 1.4
        sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        width = max(sheet.shape[1], strip.shape[1])
        for part in (sheet, strip):
            row = np.full((part.shape[0], 16 * 42 if width < 16 * 42 else width, 3), 255, np.uint8)
            row[:, : part.shape[1]] = part
            rows.append(row)
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
    width = max(r.shape[1] for r in rows)
    padded = [
        np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
    ]
    cv2.imwrite(path, np.vstack(padded))
