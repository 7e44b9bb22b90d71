"""Crops cut from a form's cells: the cell's printed frame, and the rule a digit was written on,
are painted over before the digit is read; strokes and digits that fill their box are not.

Drawn crops show each rule; read ones are scan-like MNIST test digits with lines drawn by the
function the measurement uses (``digits.cli.devtools.cell_borders``).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from digits.cli.devtools.cell_borders import FRAMES, framed, picture
from digits.model import borders
from digits.model.decode import decode
from digits.model.inference import Classifier
from digits.model.normalize import normalize, normalize_gray, normalize_ink


def _paper_and_digit(side: int = 64) -> np.ndarray:
    """A zero: a ring of dark ink on light paper, with margins round it."""
    yy, xx = np.mgrid[:side, :side]
    r = np.hypot(yy - side / 2, (xx - side / 2) * 1.4)
    gray = np.full((side, side), 0.85, np.float32)
    gray[(r > side * 0.22) & (r < side * 0.3)] = 0.15
    return gray


@pytest.fixture(scope="module")
def sample_digits(mnist):
    picked = np.random.default_rng(3).choice(len(mnist.x_test), 40, replace=False)
    return mnist.x_test[picked], mnist.y_test[picked]


def test_a_crop_without_a_frame_is_left_as_it_is():
    gray = _paper_and_digit()
    assert borders.clear(gray) is gray


def test_each_line_of_a_frame_is_painted_over_and_the_digit_is_kept():
    gray = _paper_and_digit()
    framed_gray = gray.copy()
    framed_gray[1:3] = 0.1  # top
    framed_gray[-2:] = 0.1  # bottom
    framed_gray[:, :2] = 0.1  # left
    framed_gray[:, -3:-1] = 0.1  # right, a pixel in
    cleared = borders.clear(framed_gray)
    assert cleared is not framed_gray and framed_gray[1, 30] == np.float32(0.1)  # a copy
    # The frame is paper again; the ring, well inside, is untouched.
    for edge in (cleared[:3], cleared[-2:], cleared[:, :2], cleared[:, -3:]):
        assert edge.min() > 0.8
    assert np.array_equal(cleared[8:-8, 8:-8], gray[8:-8, 8:-8])


def test_a_rule_across_the_crop_is_painted_over_and_the_strokes_it_crosses_stay_whole():
    gray = _paper_and_digit()
    ruled = gray.copy()
    ruled[40:42] = 0.1  # the line the zero was written on, through its lower part
    cleared = borders.clear(ruled)
    assert cleared is not ruled
    # Paper again between the ring's sides; where the ring crosses, ink as above and below.
    assert cleared[40:42, :8].min() > 0.8 and cleared[40:42, 28:36].min() > 0.8
    crossing = np.flatnonzero(gray[41] < 0.5)
    assert len(crossing) and cleared[40:42, crossing].max() < 0.5


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(np.s_[30:32, 4:60], id="across most of the middle: a stroke, not a rule"),
        pytest.param(np.s_[:14], id="as thick as a bar"),
        pytest.param(np.s_[1:3, :30], id="along under half the edge"),
    ],
)
def test_what_a_frame_cannot_be_is_left(line):
    gray = _paper_and_digit()
    gray[line] = 0.1
    assert borders.clear(gray) is gray


def test_a_double_line_along_an_edge_is_painted_over_whole():
    gray = _paper_and_digit()
    doubled = gray.copy()
    doubled[0:2] = doubled[3:5] = 0.1  # an outer and an inner line, paper between
    cleared = borders.clear(doubled)
    assert cleared[:6].min() > 0.8  # the outer line is painted from the paper, not the inner line


def test_strokes_down_the_whole_crop_are_no_rule():
    one = np.full((60, 40), 0.85, np.float32)
    one[1:59, 19:22] = 0.15  # a one's stem from top to bottom, a third of the way in
    assert borders.clear(one) is one
    wide = np.full((40, 120), 0.85, np.float32)
    wide[3:37, 12:17] = 0.15  # a one near the left of a wide crop: no frame line that far in
    assert borders.clear(wide) is wide
    assert not normalize_gray(wide).blank


def test_a_bar_across_a_crop_cut_tight_from_side_to_side_is_no_rule():
    seven = np.full((64, 40), 0.85, np.float32)
    seven[20:23, :] = 0.15  # a straight bar from side to side, away from the edges
    for row in range(23, 60):  # and a stem down from its right end to the left side
        col = int(39 - (row - 23))
        seven[row, max(0, col - 2) : col + 1] = 0.15
    assert borders.clear(seven) is seven


def test_light_ink_on_dark_paper_is_left_to_the_paper_step():
    # A light seven on dark paper: the dark rows above its bar are margin, not a frame's line.
    white = np.full((60, 60), 0.1, np.float32)
    white[6:12, 5:55] = 1.0  # the bar, under six rows of paper
    white[12:57, 26:34] = 1.0  # the stem
    assert borders.clear(white) is white


def test_arrays_of_digits_stretched_edge_to_edge_are_left_as_they_are():
    # A seven filling its array: its bar runs along the whole top edge, as a frame would.
    seven = np.full((64, 64), 0.9, np.float32)
    seven[:4] = 0.1  # the bar
    for row in range(4, 64):  # the stem, from the bar's right end to the bottom left corner
        col = 63 - row
        seven[row, max(0, col - 3) : col + 3] = 0.1
    assert borders.clear(seven) is seven  # the rest of the ink spans the array both ways
    small = np.ascontiguousarray(seven[::4, ::4])  # 16x16, as bitmap data sets store digits
    small[0] = 0.1
    assert borders.clear(small) is small  # under MIN_SIDE: never looked at


def test_framed_digits_read_as_the_digits_they_are(sample_digits):
    images, labels = sample_digits
    classifier = Classifier.load()
    for name in ("bottom", "left", "whole frame", "written on a rule"):
        crops = [
            framed(image, FRAMES[name], np.random.default_rng([5, i]))
            for i, image in enumerate(images)
        ]
        read = [p.digit for p in classifier.classify(crops)]
        right = np.mean(np.array(read) == labels)
        assert right >= 0.9, f"{name}: {right:.0%} read right"


def test_a_framed_crop_reads_as_it_would_unframed_when_the_frame_misses_the_digit():
    gray = _paper_and_digit()
    framed_gray = gray.copy()
    framed_gray[:2] = framed_gray[-2:] = 0.1
    framed_gray[:, :2] = framed_gray[:, -2:] = 0.1
    before = framed_gray.copy()
    crop, plain = normalize_gray(framed_gray), normalize_gray(gray)
    assert np.array_equal(framed_gray, before)  # the caller's array is never written
    assert crop.blobs == plain.blobs == 1
    assert np.abs(crop.pixels - plain.pixels).max() < 0.05


def test_a_framed_bitmap_is_read_without_aspect_views_that_would_bring_the_frame_back():
    """A 1-bit zero filling its cell: unframed it is read at narrower widths too
    (``normalize.ASPECT_VIEWS``); framed, the views would be narrowed from the scan, frame and
    all, so it is read as cleared, once."""
    yy, xx = np.mgrid[:64, :64]
    plain = np.ones((64, 64), np.uint8) * 255
    plain[(np.hypot(yy - 32, xx - 32) > 22) & (np.hypot(yy - 32, xx - 32) < 28)] = 0
    framed_bitmap = plain.copy()
    framed_bitmap[:2] = framed_bitmap[-2:] = framed_bitmap[:, :2] = framed_bitmap[:, -2:] = 0

    def png(pixels):
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "PNG")
        return out.getvalue()

    unframed, framed_crop = normalize(png(plain)), normalize(png(framed_bitmap))
    assert unframed.fills_box and len(unframed.views) == 4
    assert framed_crop.fills_box and framed_crop.views == ()
    assert np.abs(framed_crop.pixels - unframed.pixels).max() < 0.05


def test_a_fields_pieces_never_go_through_it(monkeypatch):
    """Field pieces come with their own margin of paper (``lattice.add_crop``), and the field
    reader removes printed rules from the whole field first."""

    def refuse(work):
        raise AssertionError("a field's piece was searched for a frame")

    monkeypatch.setattr(borders, "clear", refuse)
    ink = np.zeros((60, 60), np.float32)
    ink[:2] = 1.0
    ink[20:40, 28:32] = 1.0
    assert not normalize_ink(ink).blank
    assert not normalize_gray(1.0 - ink, keep_edges=False).blank


def test_the_measurement_draws_the_frame_it_names(mnist):
    data = framed(mnist.x_test[0], FRAMES["whole frame"], np.random.default_rng(0))
    gray = np.asarray(Image.open(io.BytesIO(data)).convert("L"), np.float32) / 255.0
    inner = gray[gray.shape[0] // 3 : -gray.shape[0] // 3, gray.shape[1] // 3 : -gray.shape[1] // 3]
    for edge in (gray[:5].mean(1), gray[-5:].mean(1), gray[:, :5].mean(0), gray[:, -5:].mean(0)):
        assert edge.min() < np.median(inner) - 0.2  # each edge carries a line
    gray = decode(data)
    assert borders.clear(gray) is not gray


def test_the_measurement_draws_examples_of_every_row(mnist, tmp_path):
    path = picture(mnist.x_test, 1, tmp_path / "cells.png", per_row=2)
    sheet = np.asarray(Image.open(path))
    rows = np.flatnonzero((sheet < 250).any(axis=1))  # rows of the sheet with anything drawn
    assert len(FRAMES) * 84 <= len(rows) < sheet.shape[0]  # a strip of examples per frame
