"""Fine-tuning the digit network on what operators keyed (``digits train --extra DIR``).

The exported corrections (``digits export-corrections DIR``: ``DIR/digit/labels.csv`` and the
crops) are the digits the model was unsure of, labelled by people: the hardest and most recent
examples of the scans it really reads. They are few, so the model is not trained afresh: the
current model's weights are trained on for a few epochs at a low learning rate, on the corrections
(oversampled) mixed with MNIST training digits that keep it from forgetting the rest, then
recalibrated on MNIST's validation split and saved with a card that names the model it started
from and the corrections it saw.
"""

from __future__ import annotations

import csv
import hashlib
import time
from pathlib import Path

import numpy as np

from digits.model import data
from digits.model.normalize import normalize

LEARNING_RATE = 2e-4
DEFAULT_EPOCHS = 3
# Each correction is seen this many times per epoch, next to REPLAY_PER_CORRECTION MNIST digits.
OVERSAMPLE = 4
REPLAY_PER_CORRECTION = 20
MIN_REPLAY = 2_000


def corrections_dir(directory: Path) -> Path:
    """The folder holding the digit set: ``DIR/digit`` of an export, or ``DIR`` itself."""
    for candidate in (directory / "digit", directory):
        if (candidate / "labels.csv").is_file():
            return candidate
    raise data.DataError(
        f"{directory}: no digit/labels.csv (make one with digits export-corrections {directory})"
    )


def load_corrections(directory: Path) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The keyed digits as MNIST-like uint8 images and labels, through the worker's own
    normalization; and the count of rows left out, by reason (blank, unreadable file...)."""
    folder = corrections_dir(directory)
    images, labels = [], []
    left_out: dict[str, int] = {}
    with (folder / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            label = (row.get("label") or "").strip()
            path = folder / Path(row.get("file") or "").name  # a file of this folder, nothing else
            reason = None
            if len(label) != 1 or not label.isdigit():
                reason = "not_a_digit_label"
            elif not path.is_file():
                reason = "missing_file"
            else:
                try:
                    crop = normalize(path.read_bytes())
                except ValueError as exc:
                    reason = getattr(exc, "reason", "unreadable")
                else:
                    if crop.pixels is None:
                        reason = "blank"
                    else:
                        images.append(np.round(crop.pixels * 255.0).astype(np.uint8))
                        labels.append(int(label))
            if reason:
                left_out[reason] = left_out.get(reason, 0) + 1
    x = np.stack(images) if images else np.zeros((0, 28, 28), np.uint8)
    return x, np.asarray(labels, dtype=np.int64), left_out


def fine_tune(
    base: Path,
    extra: Path,
    out: Path,
    data_dir: str | None = None,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 1,
    replay: int | None = None,
    verbose: int | str = "auto",
) -> dict:
    """Train ``base`` on the corrections in ``extra`` and save it at ``out`` with its card.

    The corrections and the base model are checked before TensorFlow is touched: a wrong folder
    is one line, not a framework starting up."""
    from digits.model.card import read_card, version

    x_extra, y_extra, left_out = load_corrections(extra)
    if len(x_extra) == 0:
        raise data.DataError(f"{extra}: no usable corrections ({left_out or 'the set is empty'})")
    if not base.is_file():
        raise FileNotFoundError(f"{base}: no model to fine-tune")
    base_card = read_card(base)
    arch = str(base_card.get("arch", "cnn"))
    if arch not in ("cnn", "mlp"):
        raise data.DataError(f"{base}: a {arch} model; --extra fine-tunes the digit network")

    import keras
    import tensorflow as tf

    from digits.model import networks, train

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    mnist = data.load(data_dir)
    x_val, y_val = (
        train.scale(mnist.x_train[-train.VALIDATION :]),
        mnist.y_train[-train.VALIDATION :],
    )
    pool = len(mnist.x_train) - train.VALIDATION
    count = replay or max(MIN_REPLAY, REPLAY_PER_CORRECTION * len(x_extra))
    picks = np.random.default_rng(seed).choice(pool, size=min(count, pool), replace=False)
    x_fit = np.concatenate([np.repeat(x_extra, OVERSAMPLE, axis=0), mnist.x_train[picks]])
    y_fit = np.concatenate([np.repeat(y_extra, OVERSAMPLE), mnist.y_train[picks]])

    model = networks.build(arch)
    model.set_weights(keras.saving.load_model(base, compile=False).get_weights())
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    before = _accuracy(model, x_extra, y_extra)
    steps = int(np.ceil(len(x_fit) / train.BATCH))
    started = time.perf_counter()
    model.fit(
        # No writers' shapes drawn: the corrections are people's own digits, and a drawn one in
        # place of one of them would throw away what the reviewer taught.
        train._batches(x_fit, y_fit, seed, arch == "cnn", epochs, writer_shapes={}),
        epochs=epochs,
        steps_per_epoch=steps,
        callbacks=[keras.callbacks.TerminateOnNaN()],
        verbose=verbose,
    )
    seconds = time.perf_counter() - started
    labels = (corrections_dir(extra) / "labels.csv").read_bytes()
    return train.ship(
        model,
        arch,
        out,
        mnist,
        (x_val, y_val),
        seconds,
        command=f"digits train --extra {extra} --model {base} --epochs {epochs} --seed {seed} "
        f"--out {out}",
        epochs=epochs,
        seed=seed,
        fine_tuned_from=version(base_card),
        corrections={
            "directory": str(extra),
            "digits": int(len(x_extra)),
            "left_out": left_out,
            "labels_sha256": hashlib.sha256(labels).hexdigest(),
            "accuracy_before": before,
            "accuracy_after": _accuracy(model, x_extra, y_extra),
        },
        replay_digits=int(len(picks)),
    )


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    from digits.model import train

    guesses = model.predict(train.scale(x), batch_size=512, verbose=0).argmax(axis=1)
    return round(float(np.mean(guesses == y)), 5)
