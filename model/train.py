"""Training: ``fit`` with a held-out validation split, then a ``.keras`` file and its JSON card.

The card travels beside the model so that anyone holding the file can tell what it is, what it scored
and how to make it again (``digits train`` with the card's arch, epochs and seed reproduces it).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from digits.model import data, distort, networks
from digits.model.augment import augmenter
from digits.model.card import SHIPPED_MODEL, install, new_card, partial_path
from digits.model.evaluate import expected_calibration_error

VALIDATION = 5_000
BATCH = 128
DEFAULT_EPOCHS = {"cnn": 20, "mlp": 5}
# Share of each cnn training batch put through one scanner or writer distortion (model.distort).
DISTORTED_SHARE = 0.35


def train(
    arch: str = "cnn",
    epochs: int | None = None,
    data_dir: str | None = None,
    out: str | Path = SHIPPED_MODEL,
    seed: int = 1,
    limit: int | None = None,
    verbose: int | str = "auto",
) -> dict:
    """Train ``arch`` and save it with its card; return the card."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    epochs = epochs or DEFAULT_EPOCHS[arch]
    mnist = data.load(data_dir)
    x, y = mnist.x_train, mnist.y_train
    if limit:
        x, y = x[:limit], y[:limit]
    n_val = min(VALIDATION, len(x) // 10)
    (x_fit, y_fit), (x_val, y_val) = (x[:-n_val], y[:-n_val]), (scale(x[-n_val:]), y[-n_val:])
    augment = arch == "cnn"

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
        _batches(x_fit, y_fit, seed, augment, epochs),
        epochs=epochs,
        steps_per_epoch=int(np.ceil(len(x_fit) / BATCH)),
        validation_data=(x_val, y_val),
        callbacks=[keras.callbacks.TerminateOnNaN()],
        verbose=verbose,
    )
    seconds = time.perf_counter() - started

    out = Path(out)
    return ship(
        model,
        arch,
        out,
        mnist,
        (x_val, y_val),
        seconds,
        command=f"digits train --arch {arch} --epochs {epochs} --seed {seed}"
        + ("" if out.resolve() == SHIPPED_MODEL.resolve() else f" --out {out}")
        + (f" --limit {limit}" if limit else ""),
        epochs=epochs,
        seed=seed,
        train_limit=limit,
        augmented=augment,
        distorted_share=DISTORTED_SHARE if augment else 0.0,
        writer_shapes={str(d): share for d, share in distort.WRITER_SHAPES.items()}
        if augment
        else {},
    )


def ship(
    model: keras.Model,
    arch: str,
    out: Path,
    mnist: data.Mnist,
    validation: tuple[np.ndarray, np.ndarray],
    seconds: float,
    command: str,
    name: str | None = None,
    **fields: object,
) -> dict:
    """How every training run ends (``digits train``, and ``--extra``'s fine-tune): scored on the
    MNIST test set, calibrated on the validation split, and its inference copy installed with its
    card, ``fields`` first (the partial file, then the card, then the rename: card.install).

    ``name`` is the card's arch when it is not the network's (the field digit network is a cnn
    by its layers, "field-digits" by what it is for), so its version says which it is."""
    _, test_accuracy = model.evaluate(scale(mnist.x_test), mnist.y_test, batch_size=512, verbose=0)
    x_val, y_val = validation
    calibration = calibrate(model.predict(x_val, batch_size=512, verbose=0), y_val)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(out)
    _inference_copy(model, arch).save(partial)
    card = new_card(
        partial,
        mnist.checksum,
        seconds,
        arch=name or arch,
        **fields,
        test_accuracy=round(float(test_accuracy), 5),
        **calibration,
        command=command,
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


def _batches(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    augment: bool,
    epochs: int,
    writer_shapes: Mapping[int, float] = distort.WRITER_SHAPES,
):
    """Every epoch's shuffled batches of uint8 digits, scaled, and for the cnn distorted.

    A share of each batch goes through one of ``distort``'s scanner and writer traits (numpy and
    OpenCV, seeded by the batch's index over the whole run, so a run is reproduced by its seed),
    and shares of some digits (``writer_shapes``: digit to share, by default the cnn's ones,
    sevens and nines) are drawn the way writers MNIST lacks draw them (``distort.writer_digit``);
    then every digit gets the graph's affine jitter and stroke width (``augment.Augment``).
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed).batch(BATCH)
    ds = ds.repeat(epochs)
    if augment:

        def distorted(index, images, labels):
            rng = np.random.default_rng([seed, int(index)])
            return distort.augment_batch(images, rng, DISTORTED_SHARE, labels, writer_shapes)

        def draw(index, batch):
            images = tf.numpy_function(
                distorted, [index, batch[0], batch[1]], tf.uint8, stateful=False
            )
            return tf.reshape(images, [-1, 28, 28]), batch[1]

        ds = ds.enumerate().map(draw, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32)[..., None] / 255.0, b))
    if augment:
        layers = augmenter(seed)
        ds = ds.map(lambda a, b: (layers(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


TEMPERATURES = np.round(np.arange(0.5, 3.01, 0.05), 2)


def calibrate(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """Temperature scaling on the validation split (never trained on, never the test set).

    The softmax of a network trained to near-zero loss is overconfident: its 0.99 is right less
    often than 99 times in 100, so a review threshold read off it flags too little. Dividing the
    log-probabilities by the temperature that minimises the validation log loss makes them mean
    what they say; the card records it and ``Classifier`` applies it.
    """
    logits = np.log(np.clip(probabilities, 1e-12, 1.0))
    best = None
    for t in TEMPERATURES:
        p = _softmax(logits / t)
        nll = float(-np.mean(np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, 1.0))))
        if best is None or nll < best[1]:
            best = (float(t), nll)
    assert best is not None
    temperature, nll = best
    before, after = _softmax(logits), _softmax(logits / temperature)
    return {
        "temperature": temperature,
        "calibration": {
            "digits": len(labels),
            "log_loss": round(nll, 5),
            "ece_before": round(ece(before, labels), 5),
            "ece": round(ece(after, labels), 5),
        },
    }


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top guess (its probability against its being right)."""
    right = probabilities.argmax(axis=1) == labels
    return expected_calibration_error(probabilities.max(axis=1), right, bins)
