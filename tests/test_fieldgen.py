"""Composed test fields: what the field reader is measured on, so it must be what it claims to be."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digits.model import fieldgen, kinds
from digits.model.kinds import check
from digits.model.segment import components


def ring(_digit: int) -> np.ndarray:
    """A stand-in glyph in one piece, so that counting ink blobs counts glyphs."""
    image = Image.new("L", (28, 28))
    ImageDraw.Draw(image).ellipse([(7, 4), (21, 24)], outline=255, width=3)
    return np.asarray(image)


def blobs(ink: np.ndarray) -> int:
    return len(components(ink > fieldgen.INK)[1])


def test_separated_digits_stay_apart_and_a_touching_pair_joins():
    rng = np.random.default_rng(3)
    assert blobs(fieldgen.compose("12345", ring, rng)) == 5
    assert blobs(fieldgen.compose("12345", ring, rng, touching=True)) == 4


def test_separators_are_small_marks_of_their_own():
    ink = fieldgen.compose("12345-6789", ring, np.random.default_rng(4))
    assert blobs(ink) == 10
    ink = fieldgen.compose("1,234.56", ring, np.random.default_rng(5))
    assert blobs(ink) == 8


@pytest.mark.parametrize("kind", kinds.NAMES)
def test_texts_have_the_form_of_their_kind(kind):
    rng = np.random.default_rng(6)
    texts = [fieldgen.random_text(kind, rng, plus4=0.5) for _ in range(200)]
    assert all(check(text, kind) for text in texts)
    if kind == "zip":
        assert {len(t) for t in texts} == {5, 10}
    if kind == "amount":
        assert any("," in t for t in texts) and any("." in t for t in texts)


def test_a_field_set_is_reproducible_and_a_prefix_of_a_larger_one(mnist):
    small = fieldgen.field_set(mnist.x_test, mnist.y_test, 3, "zip", touching=0.5, seed=9)
    large = fieldgen.field_set(mnist.x_test, mnist.y_test, 6, "zip", touching=0.5, seed=9)
    assert [f.data for f in small] == [f.data for f in large[:3]]
    other = fieldgen.field_set(mnist.x_test, mnist.y_test, 3, "zip", touching=0.5, seed=10)
    assert [f.data for f in other] != [f.data for f in small]


def test_fields_are_scans_dark_ink_on_light_paper_and_wide(mnist):
    for f in fieldgen.field_set(mnist.x_test, mnist.y_test, 5, "zip", plus4=1.0, seed=1):
        with Image.open(io.BytesIO(f.data)) as image:
            assert image.format in ("PNG", "JPEG")
            grey = np.asarray(image.convert("L"), dtype=float) / 255
        assert grey.shape[1] > 5 * grey.shape[0]  # ZIP+4: ten characters in a row
        assert np.median(grey) - np.percentile(grey, 1) > 0.2  # ink well below the paper


def test_shares_of_touching_and_lined_fields_follow_the_request(mnist):
    fields = fieldgen.field_set(mnist.x_test, mnist.y_test, 60, "zip", 0.5, 0.5, seed=2)
    assert 0.3 < np.mean([f.touching for f in fields]) < 0.7
    assert 0.3 < np.mean([f.lines for f in fields]) < 0.7
    none = fieldgen.field_set(mnist.x_test, mnist.y_test, 10, "zip", seed=2)
    assert not any(f.touching or f.lines for f in none)


def test_unknown_kind_is_refused(mnist):
    with pytest.raises(ValueError, match="unknown field kind"):
        fieldgen.field_set(mnist.x_test, mnist.y_test, 1, "iban")


def bar(_digit: int) -> np.ndarray:
    """A stand-in one: a thin upright stroke, 3 px wide and 20 tall, sharp-edged."""
    image = np.zeros((28, 28), np.uint8)
    image[4:24, 13:16] = 255
    return image


def test_glyph_styles_capture_digits_as_scanners_and_data_sets_do():
    rng = np.random.default_rng(0)
    assert fieldgen.styled(bar, "plain", rng) is bar  # plain is the glyph as drawn...
    assert rng.random() == np.random.default_rng(0).random()  # ...and drew nothing
    # Low resolution: sampled at 10-18 px and blown up, the sharp stroke comes back soft or
    # blocky; it still stands where it stood.
    low = fieldgen.styled(bar, "low_res", np.random.default_rng(1))(1)
    assert not np.array_equal(low, bar(1)) and low[14, 14] > 128 and low[14, 4] == 0
    # Filled: stretched to its box, the one is as wide as it is tall.
    filled = fieldgen.styled(bar, "filled", np.random.default_rng(1))(1)
    cols = np.flatnonzero((filled > 40).any(axis=0))
    rows = np.flatnonzero((filled > 40).any(axis=1))
    assert cols[-1] - cols[0] >= 0.8 * (rows[-1] - rows[0])


def test_the_commands_glyph_choices_are_the_generators_styles():
    from digits.cli.field_commands import GLYPH_CHOICES

    assert list(fieldgen.GLYPH_STYLES) == GLYPH_CHOICES


def test_a_styled_field_set_is_reproducible_and_plain_is_as_before(mnist):
    images, labels = mnist.x_test[:500], mnist.y_test[:500]
    plain = fieldgen.field_set(images, labels, 3, seed=4)
    assert [f.data for f in plain] == [
        f.data for f in fieldgen.field_set(images, labels, 3, seed=4, glyphs="plain")
    ]
    low = fieldgen.field_set(images, labels, 3, seed=4, glyphs="low_res")
    assert [f.data for f in low] == [
        f.data for f in fieldgen.field_set(images, labels, 3, seed=4, glyphs="low_res")
    ]
    assert [f.text for f in low] == [f.text for f in plain]  # the same texts, captured otherwise
    assert [f.data for f in low] != [f.data for f in plain]
    with pytest.raises(ValueError, match="plain, low_res, filled"):
        fieldgen.field_set(images, labels, 1, glyphs="photocopied")


def test_trainers_compose_zips_in_every_style_and_amounts_plain():
    rng = np.random.default_rng(5)
    drawn = [fieldgen.training_style("zip", rng) for _ in range(2000)]
    shares = {s: drawn.count(s) / len(drawn) for s in fieldgen.GLYPH_STYLES}
    assert shares == pytest.approx(fieldgen.TRAINING_GLYPHS["zip"], abs=0.04)
    # An amount is always plain and draws nothing: composed amounts are drawn as before.
    rng = np.random.default_rng(0)
    assert {fieldgen.training_style("amount", rng) for _ in range(50)} == {"plain"}
    assert rng.random() == np.random.default_rng(0).random()
    ink, text = fieldgen.random_field("amount", ring, np.random.default_rng(2))
    again, same = fieldgen.random_field("amount", ring, np.random.default_rng(2))
    assert text == same and np.array_equal(ink, again)
