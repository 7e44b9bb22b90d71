"""Synthetic cheque and zip documents (model/docgen): determinism, labels, families, sizes."""

from __future__ import annotations

import numpy as np
import pytest

from digits.model import docgen
from digits.model.docgen import FAMILIES, Document, documents, generate


@pytest.fixture(scope="module")
def glyphs(mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    """A small slice of MNIST test digits (all ten present), enough for every test here."""
    from digits.model import data

    m = data.load(mnist_dir)
    return m.x_test[:600], m.y_test[:600]


def test_same_seed_same_bytes(glyphs):
    a = generate(*glyphs, index=5, seed=3)
    b = generate(*glyphs, index=5, seed=3)
    assert a.encoded() == b.encoded()
    assert a.text == b.text and a.traits == b.traits
    assert np.array_equal(a.image, b.image)
    assert generate(*glyphs, index=5, seed=4).encoded() != a.encoded()


def test_sample_independent_of_count(glyphs):
    few = documents(*glyphs, count=3, seed=9, kind="zip")
    many = documents(*glyphs, count=7, seed=9, kind="zip")
    for x, y in zip(few, many[:3], strict=True):
        assert np.array_equal(x.image, y.image) and x.text == y.text
    assert np.array_equal(many[6].image, generate(*glyphs, index=6, seed=9, kind="zip").image)


def test_jpeg_false_is_the_image_before_compression(glyphs):
    raw = generate(*glyphs, index=2, seed=1, jpeg=False)
    jpg = generate(*glyphs, index=2, seed=1, jpeg=True)
    assert raw.text == jpg.text and raw.image.shape == jpg.image.shape
    diff = np.abs(raw.image.astype(int) - jpg.image.astype(int)).mean()
    assert 0 < diff < 12  # the same picture, with JPEG artefacts
    assert raw.gray.shape == raw.image.shape[:2] and raw.gray.dtype == np.uint8


@pytest.mark.parametrize("kind", ["amount", "zip", "digits"])
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_label_is_digits_of_text_and_sizes_in_range(glyphs, kind, split):
    for doc in documents(*glyphs, count=25, seed=2, kind=kind, split=split):
        assert isinstance(doc, Document)
        assert doc.label == "".join(c for c in doc.text if c.isdigit()) and doc.label
        assert doc.kind == kind
        h, w, c = doc.image.shape
        assert doc.image.dtype == np.uint8 and c == 3
        assert 40 <= h <= 60, (h, doc.text)
        assert 20 <= w <= 60 * 12, (w, doc.text)
        assert 50 <= doc.quality <= 95
    zips = [d.text for d in documents(*glyphs, count=30, seed=2, kind="zip", split=split)]
    if kind == "zip":
        assert all(len("".join(c for c in t if c.isdigit())) in (5, 9) for t in zips)


def test_held_out_families_never_in_train_and_always_in_heldout(glyphs):
    for kind in ("amount", "zip", "digits"):
        for doc in documents(*glyphs, count=40, seed=5, kind=kind, split="train"):
            for trait, name in doc.traits.items():
                assert name in FAMILIES[trait]["train"], (trait, name)
        for doc in documents(*glyphs, count=15, seed=5, kind=kind, split="heldout"):
            for trait, name in doc.traits.items():
                assert name in FAMILIES[trait]["heldout"], (trait, name)


def test_every_trait_has_a_held_out_family_and_splits_are_disjoint():
    for trait, split in FAMILIES.items():
        assert split["train"] and split["heldout"], trait
        assert not set(split["train"]) & set(split["heldout"]), trait


def test_every_family_reachable(glyphs):
    seen: dict[str, set[str]] = {t: set() for t in FAMILIES}
    for split in ("train", "heldout"):
        for kind in ("amount", "zip", "digits"):
            for doc in documents(*glyphs, count=60, seed=11, kind=kind, split=split, jpeg=False):
                for trait, name in doc.traits.items():
                    seen[trait].add(name)
    for trait, split in FAMILIES.items():
        assert seen[trait] == set(split["train"]) | set(split["heldout"]), trait


def test_every_family_renders(glyphs):
    for trait, split in FAMILIES.items():
        for name in split["train"] + split["heldout"]:
            kind = (
                "zip"
                if name.startswith("zip")
                else "digits"
                if name.startswith("digits")
                else "amount"
            )
            doc = generate(*glyphs, 0, 1, kind, "train", False, {trait: name})
            assert doc.traits[trait] == name
            assert doc.image.min() < doc.image.max()


def test_ink_is_darker_than_paper(glyphs):
    doc = generate(*glyphs, index=0, seed=0, kind="digits", jpeg=False)
    gray = doc.gray
    assert np.percentile(gray, 2) < np.median(gray) - 40


def test_encoded_formats_decode(glyphs, tmp_path):
    import cv2

    doc = generate(*glyphs, index=1, seed=0)
    for fmt in (".jpg", ".png"):
        data = doc.encoded(fmt)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == doc.image.shape
    sheet = docgen.contact_sheet([doc, doc], tmp_path / "sheet.png", columns=2)
    assert (tmp_path / "sheet.png").exists() and sheet.ndim == 3


def test_bad_arguments(glyphs):
    with pytest.raises(ValueError):
        generate(*glyphs, index=0, kind="cheque")
    with pytest.raises(ValueError):
        generate(*glyphs, index=0, split="test")


def test_a_looped_nine_is_one_stroke_a_stem_with_a_loop_on_top():
    import cv2

    from digits.model.docgen.strokes import looped_nine

    for seed in range(5):
        line = looped_nine(np.random.default_rng(seed))
        h, w = line.shape
        assert h > w  # taller than wide, like a digit
        count, _ = cv2.connectedComponents(cv2.dilate((line > 0).astype(np.uint8), None))
        assert count == 2  # background and one stroke
        # The loop sits in the upper half: more ink there than in the stem's lower half.
        assert (line[: h // 2] > 0).sum() > (line[h // 2 :] > 0).sum()


def test_a_crossed_nine_is_one_stroke_whose_loop_closes_by_crossing_at_the_waist():
    import cv2

    from digits.model.docgen.strokes import crossed_nine

    for seed in range(8):
        line = crossed_nine(np.random.default_rng(seed))
        h, w = line.shape
        assert h > w  # taller than wide, like a digit
        ink = cv2.dilate((line > 0).astype(np.uint8), None)
        count, _ = cv2.connectedComponents(ink)
        assert count == 2  # background and one stroke
        # The loop is closed (it crosses itself): exactly one hole in the ink, in the upper half.
        contours, hierarchy = cv2.findContours(ink, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        holes = [
            c for c, (_, _, _, parent) in zip(contours, hierarchy[0], strict=True) if parent >= 0
        ]
        assert len(holes) == 1
        _, y, _, hole_h = cv2.boundingRect(holes[0])
        assert y + hole_h / 2 < h / 2


def test_a_looped_one_is_a_stem_under_a_narrow_loop_closed_by_its_lead_in():
    import cv2

    from digits.model.docgen.strokes import looped_one

    for seed in range(8):
        line = looped_one(np.random.default_rng(seed))
        h, w = line.shape
        assert h > 1.5 * w  # a one: far taller than wide, lead-in and all
        ink = cv2.dilate((line > 0).astype(np.uint8), None)
        assert cv2.connectedComponents(ink)[0] == 2  # background and one stroke
        # The lead-in crosses the stem: one hole, narrow and in the upper half (a cursive ell).
        contours, hierarchy = cv2.findContours(ink, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        holes = [
            c for c, (_, _, _, parent) in zip(contours, hierarchy[0], strict=True) if parent >= 0
        ]
        assert len(holes) == 1
        _, y, hole_w, hole_h = cv2.boundingRect(holes[0])
        assert y + hole_h / 2 < h / 2 and hole_h > hole_w
