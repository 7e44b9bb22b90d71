"""Training the sequence reader on synthetic documents made on the fly, and scoring it held out.

Every batch is drawn fresh from the document generator (``docgen``) with MNIST *train* digits and
the *train* trait families, from a stream fixed by the seed, the epoch and the batch index: the
network never sees the same field twice, and a run is reproduced exactly by its seed. It is scored
on fields written with MNIST *test* digits in the *held-out* families (patterns, inks, layouts it
never trained on), so the card's figure is what the reader does on documents unlike its training.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import cv2
import keras
import numpy as np
import tensorflow as tf

from digits.model import data, docgen, fieldgen, kinds
from digits.model.card import SHIPPED_FIELD_MODEL, file_sha256, install, new_card, partial_path
from digits.model.evaluate import expected_calibration_error
from digits.model.fields import FIELD_LIMITS
from digits.model.normalize import decode
from digits.model.sequence import (
    ALPHABET,
    HEIGHT,
    SequenceReader,
    agree_views,
    batch_lines,
    crnn,
    ctc_loss,
    encode_text,
    line_pixels,
)

BATCH = 32
STEPS = 400  # batches per epoch
DEFAULT_EPOCHS = 22
# What the product reads: cheque amounts most, then zip codes, then plain digit strings.
KIND_SHARES = {"amount": 0.6, "zip": 0.25, "digits": 0.15}
assert set(KIND_SHARES) == set(kinds.NAMES), "every field kind is trained on"
MAX_LABEL = 24
# Share of fields composed the older way (``fieldgen``: MNIST's own felt-tip strokes on plain
# scan-like paper): forms and envelopes look like that, and docgen's pens are ballpoints.
COMPOSED_SHARE = 0.2


def gray(doc: docgen.Document) -> np.ndarray:
    """A document's grey in [0, 1]: the luma (ITU-R 601) that ``decode`` gives a scanned file."""
    return doc.gray.astype(np.float32) / 255.0


class FieldBatches(keras.utils.PyDataset):
    """Batches of (lines, padded labels) drawn from the generator, reproducible by index."""

    def __init__(self, images, labels, seed: int, steps: int, split: str = "train", **kwargs):
        super().__init__(**kwargs)
        self.images, self.labels = images, labels
        self.seed, self.steps, self.split = seed, steps, split
        self.epoch = 0
        self.kinds = list(KIND_SHARES)
        self.shares = np.array(list(KIND_SHARES.values()))

    def __len__(self) -> int:
        return self.steps

    def on_epoch_end(self) -> None:
        self.epoch += 1

    def fields(self, index: int, epoch: int | None = None) -> list[tuple[np.ndarray, str]]:
        """(grey scan, text as written) for each field of batch ``index`` of ``epoch`` (default:
        the current one)."""
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng([self.seed, epoch, index])
        kinds = rng.choice(len(self.kinds), BATCH, p=self.shares)
        composed = rng.random(BATCH) < COMPOSED_SHARE
        first = (epoch * self.steps + index) * BATCH
        out = []
        for j, k in enumerate(kinds):
            if composed[j]:
                out.append(self.composed(first + j, self.kinds[k]))
                continue
            doc = docgen.generate(
                self.images,
                self.labels,
                first + j,
                seed=self.seed,
                kind=self.kinds[k],
                split=self.split,
            )
            out.append((gray(doc), doc.text))
        return out

    def composed(self, index: int, kind: str) -> tuple[np.ndarray, str]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 7, index]))
        pools = self.pools
        glyph = lambda d: self.images[rng.choice(pools[d])]  # noqa: E731
        ink, text = fieldgen.random_field(kind, glyph, rng, touching=0.3, lines=0.3)
        return decode(fieldgen.scan(ink, rng), FIELD_LIMITS), text

    @functools.cached_property
    def pools(self) -> list[np.ndarray]:
        return [np.flatnonzero(self.labels == d) for d in range(10)]

    def __getitem__(self, index: int):
        return self.batch(index, self.epoch)

    def batch(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``index`` of ``epoch``: (lines padded to one width, padded label indices)."""
        fields = self.fields(index, epoch)
        x = batch_lines([line_pixels(g) for g, _ in fields])
        y = np.zeros((len(fields), MAX_LABEL), np.int32)
        for i, (_, text) in enumerate(fields):
            label = encode_text(text)[:MAX_LABEL]
            y[i, : len(label)] = label
        return x, y

    def dataset(self, epochs: int) -> tf.data.Dataset:
        """Every batch of ``epochs`` epochs as a tf.data pipeline with a declared signature.

        Widths vary from batch to batch. Handed the PyDataset itself, Keras fixes the input shape
        from the first two batches, and a run whose first two batches happen to share a width
        fails at the first wider one; here the width is declared variable. Two batches are drawn
        side by side (OpenCV releases the GIL), in order, so a run is still reproduced by its seed.
        """

        def load(i):
            epoch, index = divmod(int(i), self.steps)
            return self.batch(index, epoch)

        def draw(i):
            x, y = tf.numpy_function(load, [i], (tf.float32, tf.int32), stateful=False)
            x.set_shape([None, HEIGHT, None, 1])
            y.set_shape([None, MAX_LABEL])
            return x, y

        ranged = tf.data.Dataset.range(epochs * self.steps)
        return ranged.map(draw, num_parallel_calls=2, deterministic=True).prefetch(8)


def train_field(
    epochs: int | None = None,
    steps: int | None = None,
    data_dir: str | None = None,
    out: str | Path = SHIPPED_FIELD_MODEL,
    seed: int = 1,
    eval_count: int = 2000,
    verbose: int | str = "auto",
) -> dict:
    """Train the sequence reader and save it with its card (held-out exact match on it)."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    cv2.setNumThreads(
        1
    )  # the loader's threads draw documents side by side; OpenCV's own pool fights them
    epochs, steps = epochs or DEFAULT_EPOCHS, steps or STEPS
    mnist = data.load(data_dir)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = crnn()
    schedule = keras.optimizers.schedules.CosineDecay(
        1e-3, epochs * steps, alpha=0.05, warmup_target=2e-3, warmup_steps=steps
    )
    model.compile(optimizer=keras.optimizers.Adam(schedule, clipnorm=5.0), loss=ctc_loss)
    started = time.perf_counter()
    history = model.fit(
        FieldBatches(mnist.x_train, mnist.y_train, seed, steps).dataset(epochs),
        epochs=epochs,
        steps_per_epoch=steps,
        callbacks=[
            keras.callbacks.TerminateOnNaN(),
            # The latest epoch's weights beside the target, to look at while a long run goes on.
            keras.callbacks.ModelCheckpoint(out.with_name(f".{out.stem}.last{out.suffix}")),
        ],
        verbose=verbose,
    )
    seconds = time.perf_counter() - started

    partial = partial_path(out)
    copy = crnn()
    copy.set_weights(model.get_weights())
    copy.save(partial)
    reader = SequenceReader(copy, {"arch": "field", "model_sha256": file_sha256(partial)})
    calibration = calibrate(reader, mnist.x_train, mnist.y_train, eval_count, seed=seed + 2000)
    held_out = heldout_exact(reader, mnist.x_test, mnist.y_test, eval_count, seed=seed + 1000)
    card = new_card(
        partial,
        mnist.checksum,
        seconds,
        arch="field",
        alphabet=ALPHABET,
        epochs=epochs,
        steps_per_epoch=steps,
        batch=BATCH,
        seed=seed,
        final_loss=round(float(history.history["loss"][-1]), 4),
        heldout_exact=held_out,
        **calibration,
        command=f"digits train --arch field --epochs {epochs} --steps {steps} --seed {seed}"
        + ("" if out.resolve() == SHIPPED_FIELD_MODEL.resolve() else f" --out {out}"),
    )
    install(partial, out, card)
    return card


TEMPERATURES = np.round(np.arange(0.6, 3.01, 0.1), 2)


def calibrate(reader: SequenceReader, images, labels, count: int, seed: int) -> dict:
    """Temperature scaling of the logits, fitted on fresh documents of the training families.

    A CTC network trained to convergence is overconfident: its string probabilities sit near 1
    on readings that are wrong a few times in a hundred. Dividing the logits by a temperature
    chosen to minimise the log loss of "this reading is right" makes the probability mean what
    it says, which is what a review threshold needs. The fields are new (the seed is not the
    training one) but of the training families, so the held-out families stay untouched.
    """
    batches = FieldBatches(images, labels, seed, steps=-(-count // BATCH))
    fields = [f for i in range(len(batches)) for f in batches.fields(i)][:count]
    truth = [encode_text(text) for _, text in fields]
    groups = reader.view_logits([g for g, _ in fields])  # once: the temperature only rescales
    best = None
    for t in TEMPERATURES:
        right, conf = [], []
        for chosen, logits in groups:
            for i, reading in zip(chosen, agree_views(logits, float(t)), strict=True):
                conf.append(reading.confidence)
                right.append(encode_text(reading.text) == truth[i])
        p = np.clip(np.array(conf), 1e-6, 1 - 1e-6)
        y = np.array(right, float)
        nll = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
        if best is None or nll < best[1]:
            best = (float(t), nll, expected_calibration_error(p, y), float(y.mean()))
    assert best is not None  # TEMPERATURES is not empty
    temperature, nll, ece, accuracy = best
    reader.temperature = temperature
    return {
        "temperature": temperature,
        "calibration": {
            "fields": len(fields),
            "log_loss": round(nll, 4),
            "ece": round(ece, 4),
            "exact": round(accuracy, 4),
        },
    }


def heldout_exact(reader: SequenceReader, images, labels, count: int, seed: int) -> dict:
    """Exact digit-string match per kind on held-out families written with MNIST test digits,
    and on composed zip fields (``fieldgen``, 20% touching, 20% ruled, 20% ZIP+4)."""
    out = {}
    for kind in KIND_SHARES:
        docs = docgen.documents(images, labels, count, seed=seed, kind=kind, split="heldout")
        readings = reader.read([gray(d) for d in docs])
        right = [r.digits == d.label for r, d in zip(readings, docs, strict=True)]
        out[kind] = round(float(np.mean(right)), 4)
    fields = fieldgen.field_set(images, labels, count, "zip", 0.2, 0.2, 0.2, seed)
    readings = reader.read([decode(f.data, FIELD_LIMITS) for f in fields])
    right = [r.digits == f.text.replace("-", "") for r, f in zip(readings, fields, strict=True)]
    out["composed_zip"] = round(float(np.mean(right)), 4)
    return out
