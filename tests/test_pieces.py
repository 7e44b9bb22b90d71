"""The field digit network's data (model/pieces): where each written digit is, which of the
segmenter's cuts are that digit, and a small fine-tune end to end."""

from __future__ import annotations

import numpy as np
import pytest

from digits.model import pieces
from digits.model.docgen import Document, documents, generate


@pytest.fixture(scope="module")
def glyphs(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    from digits.model import data

    m = data.load(mnist_dir)
    return m.x_test[:600], m.y_test[:600]


def test_each_written_digit_has_its_box_over_its_ink(glyphs):
    """One box per digit of the label, left to right, inside the image, and darker inside than
    the document is on average (the ink is there, not beside it). A box is the pen's centre
    line's: the ink reaches half a pen width further."""
    for doc in documents(*glyphs, count=20, seed=4, kind="amount"):
        assert len(doc.boxes) == len(doc.label), doc.text
        h, w = doc.gray.shape
        lefts = [x0 for x0, _, _, _ in doc.boxes]
        assert lefts == sorted(lefts), doc.boxes
        for x0, y0, x1, y1 in doc.boxes:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            assert doc.gray[y0:y1, x0:x1].min() < doc.gray.mean() - 40, (doc.text, (x0, y0, x1, y1))


def test_the_same_sample_has_the_same_boxes(glyphs):
    """Boxes are part of the sample: the same seed and index give the same ones, and the same
    image. (That recording them changed no document was checked byte for byte against the
    generator before them: 48 documents of every kind and split, one SHA-256.)"""
    doc = generate(*glyphs, index=3, seed=8, kind="zip")
    again = generate(*glyphs, index=3, seed=8, kind="zip")
    assert doc.boxes == again.boxes and np.array_equal(doc.image, again.image)


def _doc(label: str, boxes) -> Document:
    return Document(np.zeros((50, 200, 3), np.uint8), label, label, "digits", boxes=tuple(boxes))


def test_a_cut_matches_the_digit_it_spans_and_nothing_else():
    doc = _doc("105", [(10, 10, 20, 40), (24, 10, 50, 40), (48, 12, 74, 40)])
    crops = [
        (10, 10, 20, 40),  # the one, exactly
        (8, 9, 22, 40),  # the one with a rim of paper
        (24, 10, 52, 40),  # the zero, carrying a stub of the five's ligature
        (10, 10, 50, 40),  # the one and the zero together
        (24, 10, 37, 40),  # half of the zero
        (24, 25, 50, 40),  # the zero's lower half: a cut that lost its top
        (48, 12, 74, 40),  # the five, though the zero reaches under its left edge
        (100, 10, 120, 40),  # nothing written there
    ]
    assert pieces.matches(doc, crops) == [(0, 1), (1, 1), (2, 0), (6, 5)]


def test_boxes_and_label_must_agree():
    with pytest.raises(ValueError, match="2 boxes for the 3 digits"):
        pieces.matches(_doc("105", [(0, 0, 5, 5), (6, 0, 9, 5)]), [])


def test_harvest_labels_cuts_with_the_written_digits(glyphs):
    """Every harvested crop is a 28x28 MNIST-like digit of one of its documents' labels, and the
    same documents give the same crops."""
    from digits.model.inference import Classifier

    classifier = Classifier.load()
    got = pieces.harvest(classifier, *glyphs, range(12), seed=5)
    assert got.documents == 12 and got.x.shape[1:] == (28, 28) and got.x.dtype == np.uint8
    assert len(got.y) >= 12 * 2  # at least two cuts a document on average
    written = set()
    plain = 0
    for i in range(12):
        kind, composed = pieces.kind_of(5, i)
        plain += composed
        text = (
            pieces.composed(*glyphs, i, 5, kind)[1]
            if composed
            else generate(*glyphs, i, 5, kind).text
        )
        written |= {c for c in text if c.isdigit()}
    assert 0 < plain < 12  # both sources in a dozen documents
    assert {str(d) for d in got.y} <= written
    # Each label is the digit at that place: the cnn, which reads such cuts 88% right, agrees
    # with most of them (labels shifted by one digit would agree with about one in ten).
    from digits.model.fields import probabilities

    read = probabilities(classifier, got.x.astype(np.float32) / 255.0).argmax(1)
    assert np.mean(read == got.y) >= 0.75
    assert got.x.max() == 255 and got.x.mean() < 80  # white ink on black, like MNIST
    again = pieces.harvest(classifier, *glyphs, range(12), seed=5)
    assert np.array_equal(got.x, again.x) and np.array_equal(got.y, again.y)


def test_a_harvest_process_that_dies_fails_the_harvest_at_once(mnist_dir, tmp_path):
    """A child that cannot work (here: no model to take the first look with) never reports; the
    harvest says so in seconds instead of waiting for it."""
    import time

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="a harvest process died"):
        pieces.harvest_parallel(tmp_path / "absent.keras", str(mnist_dir), "train", 4, 1)
    assert time.monotonic() - started < 60


def test_a_small_fine_tune_ships_a_field_digit_network(mnist_dir, tmp_path):
    """A slice of the real command's path: harvest in two processes, fine-tune, calibrate on
    validation cuts, and a card that says what it is and where it came from."""
    from digits.model.card import SHIPPED_MODEL, read_card, version
    from digits.model.inference import Classifier

    out = tmp_path / "field-digits.keras"
    card = pieces.train_field_digits(
        SHIPPED_MODEL,
        out,
        str(mnist_dir),
        documents=8,
        epochs=1,
        verbose=0,
        replay=256,
        validation_documents=4,
    )
    assert card["arch"] == "field-digits" and version(card).startswith("field-digits-")
    assert card["fine_tuned_from"] == version(read_card(SHIPPED_MODEL))
    seen = card["pieces"]
    assert seen["documents"] == 8 and seen["crops"] > 8 and seen["validation_crops"] > 4
    assert 0.0 <= seen["validation_accuracy"] <= 1.0 and card["temperature"] > 0
    assert read_card(out)["model_sha256"] == card["model_sha256"]
    probs = Classifier.load(out).probabilities(np.zeros((2, 28, 28), np.float32))
    assert probs.shape == (2, 10) and np.allclose(probs.sum(1), 1.0, atol=1e-4)


def test_a_composed_field_is_labelled_blob_by_blob(glyphs):
    """Digits apart on plain paper: each blob of digit height is the next written digit (the
    cnn, which reads plain MNIST digits well, agrees with nearly every label), and a field whose
    blobs do not count up to its digits (a thin stroke captured at a low resolution may break
    in two) gives nothing rather than a wrong label."""
    from digits.model.fields import probabilities
    from digits.model.inference import Classifier
    from digits.model.lattice import plan

    crops, digits, labelled = [], [], 0
    for i in range(12):
        gray, text = pieces.composed(*glyphs, i, 3, "zip")
        label = "".join(c for c in text if c.isdigit())
        field = plan(gray)
        found = pieces.blob_matches(field, label)
        assert [d for _, d in found] in ([], [int(d) for d in label])
        if found:  # as many blobs as digits: one digit more cannot match too
            assert pieces.blob_matches(field, label + "7") == []
        labelled += bool(found)
        crops += [field.crops[c] for c, _ in found]
        digits += [d for _, d in found]
    assert labelled >= 8
    read = probabilities(Classifier.load(), np.stack(crops)).argmax(1)
    assert np.mean(read == np.array(digits)) >= 0.9
