"""The sequence reader: a CRNN read with CTC, whose confidence is the probability of the string."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

from digits.model.sequence import (
    ALPHABET,
    HEIGHT,
    VIEWS,
    LineReading,
    SequenceReader,
    agree_views,
    batch_lines,
    crnn,
    ctc_loss,
    decode_label,
    digits_probability,
    encode_text,
    greedy,
    greedy_steps,
    line_pixels,
    string_probability,
    views,
)
from digits.model.train_sequence import FieldBatches


def logits_for(path: list[int], sure: float = 8.0) -> np.ndarray:
    """Logits whose best class at step t is path[t]."""
    out = np.zeros((len(path), len(ALPHABET) + 1), np.float32)
    out[np.arange(len(path)), path] = sure
    return out


def test_text_is_encoded_with_separators_and_without_marks_the_reader_does_not_know():
    assert decode_label(encode_text("1.480-")) == "1.480-"
    assert decode_label(encode_text("$7,000/\u2014")) == "7,000-"  # $ and / are not read
    assert all(i > 0 for i in encode_text("0123456789.,-"))  # 0 is CTC's blank


def test_greedy_merges_repeats_and_keeps_a_double_digit_split_by_a_blank():
    one, zero = ALPHABET.index("1") + 1, ALPHABET.index("0") + 1
    path = [0, one, one, 0, zero, zero, 0, zero, 0]
    assert decode_label(greedy(logits_for(path)[None])[0]) == "100"


def test_string_probability_is_a_probability_and_prefers_the_best_path():
    one, seven = ALPHABET.index("1") + 1, ALPHABET.index("7") + 1
    logits = logits_for([0, one, 0, seven, 0], sure=3.0)[None]
    best = string_probability(logits, [[one, seven]])[0]
    other = string_probability(logits, [[seven, one]])[0]
    assert 0.0 < other < best <= 1.0
    # Sharper logits make the same string more probable: the confidence follows the evidence.
    assert string_probability(logits * 3, [[one, seven]])[0] > best


def test_lines_are_scaled_to_the_height_and_padded_to_a_few_widths():
    gray = np.ones((50, 180), np.float32)
    gray[10:40, 20:30] = 0.1  # a dark stroke on white paper
    line = line_pixels(gray)
    assert line.shape[0] == HEIGHT and line.max() == pytest.approx(1.0) and line.min() == 0.0
    batch = batch_lines([line, line[:, :40]])
    assert batch.shape == (2, HEIGHT, 128, 1) and batch[1, :, 40:].max() == 0.0


def test_every_view_keeps_the_lines_size_and_does_what_its_name_says():
    line = np.zeros((HEIGHT, 60), np.float32)
    line[4:28, 30] = 1.0  # an upright stroke
    seen = dict(zip(VIEWS, views(line), strict=True))
    assert len({v.shape for v in seen.values()}) == 1  # one width: one batch, one step count
    top, bottom = slice(4, 8), slice(24, 28)

    def column(view, rows):
        return np.argmax(view[rows].sum(0))

    assert column(seen["plain"], top) == column(seen["plain"], bottom)
    assert column(seen["slant_right"], top) > column(seen["slant_right"], bottom)
    assert column(seen["slant_left"], top) < column(seen["slant_left"], bottom)
    rows = np.flatnonzero(seen["smaller"].max(1) > 0.5)
    assert rows[-1] - rows[0] < 0.9 * 24
    assert (seen["bolder"] > 0.5).sum() > (seen["plain"] > 0.5).sum()


def test_views_agree_on_the_reading_with_the_highest_average_probability():
    one, seven = ALPHABET.index("1") + 1, ALPHABET.index("7") + 1
    sure_17 = logits_for([0, one, 0, seven, 0], sure=6.0)
    sure_11 = logits_for([0, one, 0, one, 0], sure=6.0)
    # Four views read "17", one reads "11" a little surer: "17" holds on average.
    logits = np.stack([sure_17] * 4 + [sure_11 * 1.5])[None]
    reading = agree_views(logits)[0]
    assert reading.text == "17"
    alone = string_probability(sure_17[None], [[one, seven]])[0]
    assert reading.confidence < alone  # the dissenting view costs it probability
    assert reading.confidence == pytest.approx(
        np.mean(string_probability(logits[0], [[one, seven]] * 5)), rel=1e-5
    )
    # Its digits are as sure, averaged over the views alike: no view wrote a mark here.
    assert reading.digits_confidence == pytest.approx(
        np.mean(digits_probability(logits[0], ["17"] * 5)), rel=1e-5
    )
    assert reading.digits_confidence >= reading.confidence


def test_a_reading_says_where_its_digits_are_and_where_they_meet():
    """The plain view's best path places each character at the centre of its steps; the
    segmenter is told where the digits are (separators skipped)."""
    two, dot, five = (ALPHABET.index(c) + 1 for c in "2.5")
    path = [0, two, two, 0, dot, 0, 0, five, five, five, 0, 0]
    steps = greedy_steps(logits_for(path)[None])[0]
    assert steps == ([two, dot, five], [1.5, 4.0, 8.0])
    logits = np.stack([logits_for(path)] * len(VIEWS))[None]
    reading = agree_views(logits)[0]
    assert (reading.text, reading.centres) == ("2.5", (1.5, 4.0, 8.0))
    assert LineReading("2.5", 0.9, (0.1, 0.3, 0.6)).digit_centres() == (0.1, 0.6)
    assert LineReading("2.5", 0.9).digit_centres() == ()  # placed by no view
    # When the plain view reads something else than the agreed reading, nothing is placed.
    other = logits_for([0, two, 0, 0, 0, 0, 0, five, 0, 0, 0, 0])
    mixed = np.stack([other] + [logits_for(path)] * (len(VIEWS) - 1))[None]
    assert agree_views(mixed)[0].centres == ()


def test_the_network_trains_a_few_steps_on_generated_documents_and_reads(mnist):
    keras.utils.set_random_seed(0)
    batches = FieldBatches(mnist.x_train, mnist.y_train, seed=0, steps=2)
    x, y = batches[0]
    assert x.shape[0] == y.shape[0] and (y > 0).any(axis=1).all()  # every field has a label
    model = crnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ctc_loss)
    first = float(model.train_on_batch(x, y))
    for _ in range(3):
        last = float(model.train_on_batch(x, y))
    assert np.isfinite(last) and last < first
    reader = SequenceReader(model, {"arch": "field", "model_sha256": "0" * 64})
    readings = reader.read([np.ones((48, 150), np.float32), np.zeros((40, 40), np.float32)])
    assert len(readings) == 2
    for r in readings:
        assert set(r.text) <= set(ALPHABET) and 0.0 <= r.confidence <= 1.0


def test_batches_are_reproducible_from_the_seed(mnist):
    a = FieldBatches(mnist.x_train, mnist.y_train, seed=3, steps=1)[0]
    b = FieldBatches(mnist.x_train, mnist.y_train, seed=3, steps=1)[0]
    c = FieldBatches(mnist.x_train, mnist.y_train, seed=4, steps=1)[0]
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_calibration_error_is_small_when_confidence_matches_accuracy_and_large_when_not():
    from digits.model.evaluate import expected_calibration_error

    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, 20_000)
    honest = rng.uniform(0, 1, p.size) < p  # right as often as it says
    assert expected_calibration_error(p, honest) < 0.02
    assert expected_calibration_error(np.full(1000, 0.99), np.arange(1000) % 2 == 0) > 0.4


def test_a_lines_reading_does_not_depend_on_the_other_lines_of_its_chunk():
    keras.utils.set_random_seed(1)
    reader = SequenceReader(crnn(), {"arch": "field", "model_sha256": "0" * 64})
    rng = np.random.default_rng(0)
    short, wide = rng.uniform(0.6, 1, (40, 100)), rng.uniform(0.6, 1, (40, 400))
    short[10:30, 20:24] = 0.0
    alone = reader.read([short])[0]
    beside = reader.read([wide, short, wide])[1]
    assert alone.text == beside.text
    assert alone.confidence == pytest.approx(beside.confidence, rel=1e-5)


def test_the_training_pipeline_takes_batches_of_any_width_in_epoch_order(mnist):
    batches = FieldBatches(mnist.x_train, mnist.y_train, seed=3, steps=3)
    drawn = list(batches.dataset(epochs=2).as_numpy_iterator())
    assert len(drawn) == 6
    for i, (x, y) in enumerate(drawn):
        want_x, want_y = batches.batch(i % 3, epoch=i // 3)
        assert np.array_equal(x, want_x) and np.array_equal(y, want_y)
    # widths differ between batches: none is forced to the first batches' width
    assert len({x.shape[2] for x, _ in drawn}) > 1


def test_training_is_reproducible_from_its_seed_and_writes_a_card(mnist_dir, tmp_path):
    from digits.model.card import read_card
    from digits.model.train_sequence import train_field

    runs = []
    for name in ("a", "b"):
        out = tmp_path / name / "field.keras"
        card = train_field(1, 2, str(mnist_dir), out, seed=5, eval_count=8, verbose=0)
        runs.append((card, keras.models.load_model(out, compile=False).get_weights()))
        assert read_card(out) == card  # the card on disk describes these very weights
        assert card["arch"] == "field" and card["command"].startswith("digits train --arch field")
        assert set(card["heldout_exact"]) == {"amount", "zip", "digits", "composed_zip"}
        assert card["temperature"] > 0 and 0 <= card["calibration"]["ece"] <= 1
    (card_a, weights_a), (card_b, weights_b) = runs
    assert card_a["heldout_exact"] == card_b["heldout_exact"]  # (the .keras zip holds a timestamp)
    assert all(np.array_equal(x, y) for x, y in zip(weights_a, weights_b, strict=True))


def test_string_probability_is_the_ctc_forward_sum_tensorflow_computes():
    """The numpy forward sum against ``tf.nn.ctc_loss`` on random logits: repeated characters
    (which need a blank between them), empty labels, labels too long for the steps."""
    import tensorflow as tf

    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, (6, 12, len(ALPHABET) + 1)).astype(np.float32)
    labels = [[3, 3, 5], [], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [7], [2, 2, 2, 2], [4, 9]]
    dense = np.zeros((6, 13), np.int32)
    for i, label in enumerate(labels):
        dense[i, : len(label)] = label
    loss = tf.nn.ctc_loss(
        labels=tf.constant(dense),
        logits=tf.constant(logits),
        label_length=tf.constant([len(label) for label in labels]),
        logit_length=tf.fill([6], 12),
        blank_index=0,
        logits_time_major=False,
    )
    expected = np.exp(-np.asarray(loss, np.float64))
    assert np.allclose(string_probability(logits, labels), expected, rtol=1e-4, atol=1e-30)
    assert string_probability(logits, labels)[2] == 0.0  # 13 characters cannot fit in 12 steps


def test_the_digits_probability_sums_every_text_with_those_digits_whatever_its_marks():
    """Brute force over every path of four steps: the probability of the digits "12" is the mass
    of all paths whose text, marks dropped, is "12" ("12", "1.2", "12-", ",1,2." ...)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 2.0, (1, 4, len(ALPHABET) + 1))
    probs = np.exp(logits[0]) / np.exp(logits[0]).sum(-1, keepdims=True)
    mass, marked = 0.0, set()
    for path in itertools.product(range(len(ALPHABET) + 1), repeat=4):
        text = decode_label(greedy(np.eye(len(ALPHABET) + 1)[list(path)][None])[0])
        if "".join(c for c in text if c.isdigit()) == "12":
            mass += float(np.prod(probs[np.arange(4), path]))
            marked.add(text)
    assert {"12", "1.2", "12-", ",1,2"} <= marked
    assert digits_probability(logits, ["12"])[0] == pytest.approx(mass, rel=1e-9)
    # More than the string "12" alone, and never more than one.
    assert string_probability(logits, [encode_text("12")])[0] < mass < 1.0
