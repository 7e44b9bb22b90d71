"""The distortions real scans and writers show, and ``digits evaluate --robustness`` over them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from digits.cli.manage import cli
from digits.model import distort, inference, robustness


@pytest.mark.parametrize("name", list(distort.DISTORTIONS))
def test_each_distortion_is_seeded_changes_the_digit_and_keeps_mnist_format(mnist, name):
    images = mnist.x_test[:20]
    once = distort.distort_set(images, name, seed=3)
    again = distort.distort_set(images, name, seed=3)
    assert np.array_equal(once, again)
    assert once.shape == images.shape and once.dtype == np.uint8
    changed = [not np.array_equal(a, b) for a, b in zip(once, images, strict=True)]
    assert sum(changed) >= 15, f"{name} left most digits as they were"
    assert all(d.max() > distort.INK for d in once), f"{name} erased a digit"


def test_stretch_fills_the_box_in_both_directions(mnist):
    one = mnist.x_test[2]  # a one: tall and thin in MNIST
    assert mnist.y_test[2] == 1
    ys, xs = np.nonzero(distort.stretch(one, np.random.default_rng(0)) > distort.INK)
    assert xs.max() - xs.min() >= 18 and ys.max() - ys.min() >= 18


def test_augmenting_a_batch_distorts_about_the_share_asked(mnist):
    images = mnist.x_train[:400]
    out = distort.augment_batch(images, np.random.default_rng(0), share=0.5)
    changed = np.mean([not np.array_equal(a, b) for a, b in zip(out, images, strict=True)])
    assert 0.35 < changed < 0.6
    assert np.array_equal(images, mnist.x_train[:400])  # the caller's batch is not touched


def test_with_labels_shares_of_ones_sevens_and_nines_and_nothing_else_are_drawn_the_writers_way(
    mnist,
):
    images, labels = mnist.x_train[:3000], mnist.y_train[:3000]
    out = distort.augment_batch(images, np.random.default_rng(0), share=0.0, labels=labels)
    changed = np.array([not np.array_equal(a, b) for a, b in zip(out, images, strict=True)])
    assert set(labels[changed]) == {1, 7, 9}
    for digit, share in distort.WRITER_SHAPES.items():
        assert abs(changed[labels == digit].mean() - share) < 0.08, digit
    nine = distort.writer_nine(np.random.default_rng(5))
    assert np.array_equal(nine, distort.writer_nine(np.random.default_rng(5)))  # seeded
    # On MNIST's terms: 28x28 uint8, white ink, fitted to the 20 px box, a loop over a stem.
    assert nine.shape == (28, 28) and nine.dtype == np.uint8 and nine.max() > 200
    ys, xs = np.nonzero(nine > distort.INK)
    assert 19 <= ys.max() - ys.min() + 1 <= 21 and xs.max() - xs.min() < ys.max() - ys.min()
    assert (nine[:14] > distort.INK).sum() > (nine[14:] > distort.INK).sum()


@pytest.mark.parametrize("digit", [1, 7])
def test_writer_ones_and_sevens_are_mnists_own_digits_redrawn_on_its_terms(mnist, digit: int):
    """A one gets a lead-in stroke (or is written as a cursive ell), a seven a bar at its
    waist: drawn from the MNIST digit's own centre line, seeded, fitted like any MNIST digit."""
    source = mnist.x_train[mnist.y_train == digit][:20]
    drawn = [
        distort.writer_digit(image, digit, np.random.default_rng(i))
        for i, image in enumerate(source)
    ]
    again = distort.writer_digit(source[0], digit, np.random.default_rng(0))
    assert np.array_equal(drawn[0], again)
    for image, original in zip(drawn, source, strict=True):
        assert image.shape == (28, 28) and image.dtype == np.uint8 and image.max() > 200
        ys, xs = np.nonzero(image > distort.INK)
        assert 19 <= max(ys.max() - ys.min(), xs.max() - xs.min()) + 1 <= 21
        assert abs(ys.mean() - 14) < 1.5 and abs(xs.mean() - 14) < 1.5  # centred by mass
        assert not np.array_equal(image, distort.recentre(original))
    with pytest.raises(ValueError, match="no writer shape for 4"):
        distort.writer_digit(source[0], 4, np.random.default_rng(0))


def test_bitmap_rows_are_the_data_sets_layouts(mnist):
    for row, side in (("bitmap32", 32), ("bitmap16_stretched", 16)):
        blob = robustness.crops(mnist.x_test[:1], row)[0]
        with Image.open(io.BytesIO(blob)) as picture:
            pixels = np.asarray(picture)
        assert pixels.shape == (side, side)
        assert set(np.unique(pixels)) <= {0, 255}


def test_the_filled_array_row_is_mnist_white_on_black_with_the_digit_filling_the_frame(mnist):
    blob = robustness.crops(mnist.x_test[:1], "array28_filled")[0]  # a seven
    with Image.open(io.BytesIO(blob)) as picture:
        pixels = np.asarray(picture)
    assert pixels.shape == (28, 28) and pixels[0, 0] == 0 and pixels.max() > 200
    rows, cols = np.nonzero(pixels > distort.INK)
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 >= 27


def test_evaluate_robustness_reports_every_row_with_the_earlier_run_beside_it(mnist_dir, tmp_path):
    runner = CliRunner()
    args = ["evaluate", "--robustness", "--data", str(mnist_dir), "--count", "200"]
    first = runner.invoke(cli, [*args, "--json", "--out", str(tmp_path)])
    assert first.exit_code == 0, first.output
    report = json.loads(first.output)
    assert [r["row"] for r in report["rows"]] == list(robustness.ROWS)
    clean = report["rows"][0]
    assert clean["accuracy"] >= 0.97 and 0 <= clean["read_at_0.1pct"] <= clean["read_at_1pct"] <= 1
    saved = tmp_path / "before.json"
    saved.write_text(first.output)
    second = runner.invoke(cli, [*args, "--before", str(saved), "--out", str(tmp_path)])
    assert second.exit_code == 0, second.output
    assert "bitmap16_stretched" in second.output and "(+0.00)" in second.output
    with Image.open(tmp_path / "robustness.png") as picture:
        assert picture.width > 600


def test_a_stretched_bitmap_is_read_as_the_product_of_its_aspect_views():
    """A class that one aspect rules out cannot win on the others' certainty."""
    views = np.array([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [1e-9, 0.5, 0.5]])
    agreed = inference._agreed(np.pad(views, ((0, 0), (0, 7)), constant_values=1e-9))
    assert agreed.argmax() == 1 and agreed.sum() == pytest.approx(1.0)


def test_digits_stretched_to_16x16_bitmaps_are_read_nearly_as_well_as_clean_ones(mnist):
    """The 16x16 robustness row, on the first 1,000 test digits: 84% read before bitmaps kept
    their edges, their own two levels and the aspect views."""
    labels = mnist.y_test[:1000]
    predictions = inference.Classifier.load().classify(
        robustness.crops(mnist.x_test[:1000], "bitmap16_stretched"), threshold=0.0
    )
    right = np.mean([p.digit == y for p, y in zip(predictions, labels, strict=True)])
    assert right >= 0.96


def test_digits_filling_a_white_on_black_array_are_read_as_white_ink(mnist):
    """The array28_filled row on the first 1,000 test digits: 97.7% read before a border far
    darker than the ink-covered blocks turned the verdict to white ink, 99.1% after."""
    predictions = inference.Classifier.load().classify(
        robustness.crops(mnist.x_test[:1000], "array28_filled"), threshold=0.0
    )
    right = np.mean([p.digit == y for p, y in zip(predictions, mnist.y_test[:1000], strict=True)])
    assert right >= 0.985


def test_a_broad_pen_filling_the_array_still_leaves_paper_under_the_ink(mnist):
    """array28_bold on the first 1,000 test digits: where ink covers nearly every block the paper
    plane sank into the strokes and 11 came out blank (98.1% read); a flat paper keeps them."""
    predictions = inference.Classifier.load().classify(
        robustness.crops(mnist.x_test[:1000], "array28_bold"), threshold=0.0
    )
    assert sum(p.status == "blank" for p in predictions) <= 5
    right = np.mean([p.digit == y for p, y in zip(predictions, mnist.y_test[:1000], strict=True)])
    assert right >= 0.985
