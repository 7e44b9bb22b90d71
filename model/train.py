"""Training: ``fit`` with a held-out validation split, then a ``.keras`` file and its JSON card.

The card travels beside the model so that anyone holding the file can tell what it is, what it scored
and how to make it again (``digits train`` with the card's arch, epochs and seed reproduces it).
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from digits.model import data, networks
from digits.model.augment import augmenter
from digits.model.card import install, new_card, partial_path

VALIDATION = 5_000
BATCH = 128
DEFAULT_EPOCHS = {"cnn": 15, "mlp": 5}


def train(
    arch: str = "cnn",
    epochs: int | None = None,
    data_dir: str | None = None,
    out: str | Path = "model/shipped/cnn.keras",
    seed: int = 1,
    limit: int | None = None,
    verbose: int | str = "auto",
) -> dict:
    """Train ``arch`` and save it with its card; return the card."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    epochs = epochs or DEFAULT_EPOCHS[arch]
    mnist = data.load(data_dir)
    x, y = scale(mnist.x_train), mnist.y_train
    if limit:
        x, y = x[:limit], y[:limit]
    n_val = min(VALIDATION, len(x) // 10)
    (x_fit, y_fit), (x_val, y_val) = (x[:-n_val], y[:-n_val]), (x[-n_val:], y[-n_val:])

    model = networks.build(arch)
    steps = epochs * int(np.ceil(len(x_fit) / BATCH))
    lr = 1e-3 if arch == "mlp" else keras.optimizers.schedules.CosineDecay(2e-3, steps, alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    started = time.perf_counter()
    model.fit(
        _batches(x_fit, y_fit, seed, augment=arch == "cnn"),
        epochs=epochs,
        validation_data=(x_val, y_val),
        callbacks=[keras.callbacks.TerminateOnNaN()],
        verbose=verbose,
    )
    seconds = time.perf_counter() - started

    _, test_accuracy = model.evaluate(scale(mnist.x_test), mnist.y_test, batch_size=512, verbose=0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out)
    _inference_copy(model, arch).save(partial)
    card = new_card(
        partial,
        mnist.checksum,
        seconds,
        arch=arch,
        epochs=epochs,
        seed=seed,
        train_limit=limit,
        augmented=arch == "cnn",
        test_accuracy=round(float(test_accuracy), 5),
        command=f"digits train --arch {arch} --epochs {epochs} --seed {seed} --out {out}"
        + (f" --limit {limit}" if limit else ""),
    )
    install(partial, out, card)
    return card


def _inference_copy(model: keras.Model, arch: str) -> keras.Model:
    """The trained weights without optimizer state: a third of the file, and nothing the worker uses."""
    copy = networks.build(arch)
    copy.set_weights(model.get_weights())
    return copy


def scale(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) to float32 (n, 28, 28, 1) in [0, 1]: the seed's pixels / 255."""
    return (images.astype("float32") / 255.0)[..., None]


def _batches(x: np.ndarray, y: np.ndarray, seed: int, augment: bool) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).batch(BATCH)
    if augment:
        layers = augmenter(seed)
        ds = ds.map(lambda a, b: (layers(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
