"""A neighbouring digit's stroke at a crop's side is left out of the digit (``model/neighbours.py``);
a digit's own strokes, and a field's pieces, keep every part."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from digits.model import neighbours
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
    if "flag" in strokes:  # a stroke of the digit's own, apart, over it and reaching the edge
        cv2.line(ink, (26, 2), (SIDE - 1, 2), 255, 3)
    return (0.9 - 0.75 * ink / 255.0).astype(np.float32)


def rule_off(monkeypatch) -> None:
    monkeypatch.setattr(
        neighbours, "at_sides", lambda boxes, largest, width: np.zeros(len(boxes), bool)
    )


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(normalize_gray(a).pixels - normalize_gray(b).pixels).max())


def test_a_part_touching_a_side_within_its_band_and_beside_the_largest_is_a_neighbours():
    # x0, y0, x1 (exclusive), y1, area; the largest part first, in a crop 40 columns wide
    boxes = np.array(
        [
            [10, 5, 30, 35, 300],  # the digit
            [0, 8, 4, 20, 40],  # at the left edge, beside it: a neighbour's
            [37, 3, 40, 30, 50],  # at the right edge, beside it: a neighbour's
            [0, 0, 12, 4, 30],  # at the left edge but over the digit's columns: its own
            [0, 10, 13, 16, 30],  # at the left edge, reaching past the band (12 columns)
            [2, 10, 5, 14, 10],  # beside the digit, but not at the edge
        ]
    )
    assert at_sides(boxes, 0, 40).tolist() == [False, True, True, False, False, False]
    # Far from the largest part (over 14 columns of 40 between): the rest of a faint digit.
    far = np.array([[20, 5, 30, 35, 300], [0, 8, 4, 20, 40]])
    assert at_sides(far, 0, 40).tolist() == [False, False]


@pytest.mark.parametrize("side", ["left neighbour", "right neighbour"])
def test_a_neighbours_stroke_at_either_side_leaves_the_digit_as_it_is_alone(side, monkeypatch):
    assert difference(crop(side), crop()) < 0.02
    rule_off(monkeypatch)  # kept, it stretches the box and moves the digit: what the rule undoes
    assert difference(crop(side), crop()) > 0.5


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
