"""A neighbouring digit's stroke at a crop's side is left out of the digit (``model/neighbours.py``);
a digit's own strokes, and a field's pieces, keep every part."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from digits.cli.devtools.neighbours import rule_off
from digits.model.neighbours import at_sides
from digits.model.normalize import normalize_gray, normalize_ink

SIDE = 60


def crop(*strokes: str) -> np.ndarray:
    """A grey crop (paper 0.9, ink 0.15) with a zero in the middle and the named strokes."""
    ink = np.zeros((SIDE, SIDE), np.uint8)
    cv2.ellipse(ink, (31, 30), (10, 17), 0, 0, 360, 255, 4)
    if "left neighbour" in strokes:  # the end of the digit before, cut by the crop's left edge
        cv2.ellipse(ink, (-6, 28), (10, 15), 0, -60, 60, 255, 4)
    if "right neighbour" in strokes:
        cv2.line(ink, (SIDE - 6, 16), (SIDE + 4, 44), 255, 4)
    if "right stem" in strokes:  # the whole height of the next digit's stem, at the edge
        cv2.line(ink, (SIDE - 3, 8), (SIDE - 3, 52), 255, 4)
    if "flag" in strokes:  # a stroke of the digit's own, apart, over it and reaching the edge
        cv2.line(ink, (26, 2), (SIDE - 1, 2), 255, 3)
    return (0.9 - 0.75 * ink / 255.0).astype(np.float32)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(normalize_gray(a).pixels - normalize_gray(b).pixels).max())


DIGIT = [14, 5, 26, 35, 300]  # x0, y0, x1 (exclusive), y1, area: the largest part, 40 columns wide


def dropped(*parts: list[int], digit: list[int] = DIGIT) -> list[bool]:
    """Which of ``parts`` ``at_sides`` takes for a neighbour's, beside ``digit`` (the largest)."""
    return at_sides(np.array([digit, *parts]), 0, 40).tolist()[1:]


def test_a_sliver_at_a_side_close_beside_the_digit_is_a_neighbours():
    assert dropped([0, 8, 4, 20, 40]) == [True]  # left: 10 columns from the digit
    assert dropped([36, 8, 40, 20, 40]) == [True]  # right


@pytest.mark.parametrize(
    ("left", "right", "why"),
    [
        ([1, 8, 5, 20, 40], [35, 8, 39, 20, 40], "not at the edge"),
        ([0, 8, 13, 20, 40], [27, 8, 40, 20, 40], "past the band (12 columns)"),
    ],
)
def test_a_part_is_the_digits_own_when(left, right, why):
    assert dropped(left) == [False] and dropped(right) == [False], why


def test_in_a_crop_cut_tight_to_its_digit_every_part_is_the_digits_own():
    # the largest part reaches the right side: a loop cut in two, or the digit itself beside a
    # larger piece of its neighbour
    assert dropped([0, 8, 4, 20, 40], digit=[10, 5, 40, 35, 300]) == [False]
    assert dropped([36, 8, 40, 20, 40], digit=[0, 5, 30, 35, 300]) == [False]


def test_a_part_sharing_a_column_with_any_other_part_is_the_digits_own():
    wide = [10, 5, 30, 35, 300]
    assert dropped([0, 8, 11, 20, 40], digit=wide) == [False]  # with the largest part
    assert dropped([29, 8, 40, 20, 40], digit=wide) == [False]
    # with a smaller part of the digit: a four's bar broken off, over the bit still joined to it
    assert dropped([0, 8, 4, 20, 40], [3, 0, 6, 4, 10]) == [False, False]
    assert dropped([36, 8, 40, 20, 40], [34, 0, 37, 4, 10]) == [False, False]


def test_a_part_right_beside_the_largest_with_no_paper_between_is_the_digits_own():
    # a loop a tight cut split: its halves meet at one grid column, one either side of it
    assert dropped([0, 8, 12, 20, 40], digit=[12, 5, 26, 35, 300]) == [False]
    assert dropped([0, 8, 11, 20, 40], digit=[12, 5, 26, 35, 300]) == [True]
    assert dropped([28, 8, 40, 20, 40], digit=[14, 5, 28, 35, 300]) == [False]
    assert dropped([29, 8, 40, 20, 40], digit=[14, 5, 28, 35, 300]) == [True]


def test_a_part_far_from_the_largest_is_what_is_left_of_a_faint_digit():
    assert dropped([0, 8, 4, 20, 40], digit=[20, 5, 30, 35, 300]) == [False]  # 16 columns
    assert dropped([36, 8, 40, 20, 40], digit=[10, 5, 20, 35, 300]) == [False]


@pytest.mark.parametrize("size", [30, 41, 97])  # grids of 1, 2 and 4 pixels a cell
@pytest.mark.parametrize("side", ["left neighbour", "right neighbour"])
def test_a_neighbours_stroke_at_either_side_leaves_the_digit_as_it_is_alone(side, size):
    def scanned(*strokes: str) -> np.ndarray:
        return cv2.resize(crop(*strokes), (size, size), interpolation=cv2.INTER_AREA)

    assert difference(scanned(side), scanned()) < 0.05
    with rule_off():  # kept, it stretches the box and moves the digit: what the rule undoes
        assert difference(scanned(side), scanned()) > 0.5


def test_a_neighbours_stroke_left_out_counts_neither_as_a_blob_nor_as_a_second_digit():
    stem = normalize_gray(crop("right stem"))
    assert difference(crop("right stem"), crop()) < 0.05
    assert stem.blobs == 1 and not stem.multiple_blobs and not stem.two_digits
    with rule_off():  # kept, it is a second blob as tall as the digit: two digits, to a person
        kept = normalize_gray(crop("right stem"))
        assert kept.multiple_blobs and kept.two_digits


def test_a_digits_own_stroke_apart_over_it_stays_even_where_it_reaches_the_edge():
    assert difference(crop("flag"), crop()) > 0.5


def test_a_fields_piece_keeps_every_stroke_the_lattice_judges_its_cut_by():
    ink = 1.0 - crop("left neighbour") / 0.9
    alone = 1.0 - crop() / 0.9
    with_piece, without = (
        normalize_ink(np.pad(ink, 2)).pixels,
        normalize_ink(np.pad(alone, 2)).pixels,
    )
    assert float(np.abs(with_piece - without).max()) > 0.5
