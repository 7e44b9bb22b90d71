"""model/imageops.py: OpenCV's labelling and dilation give exactly what the hand-written ones did.

The references here are the plainest possible (a flood fill, a loop over shifts), checked on random
masks dense enough to make components touch diagonally, wrap round each other and share rows.
Counting a digit's loops is checked on drawn figures.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from digits.model import imageops


def flood_fill_components(mask: np.ndarray) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """8-connected labels numbered in raster order of first pixel, with (x0, y0, x1, y1, area)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    boxes = []
    for y in range(h):
        for x in range(w):
            if not mask[y, x] or labels[y, x]:
                continue
            label = len(boxes) + 1
            labels[y, x] = label
            stack, pixels = [(y, x)], []
            while stack:
                cy, cx = stack.pop()
                pixels.append((cy, cx))
                for ny in range(max(0, cy - 1), min(h, cy + 2)):
                    for nx in range(max(0, cx - 1), min(w, cx + 2)):
                        if mask[ny, nx] and not labels[ny, nx]:
                            labels[ny, nx] = label
                            stack.append((ny, nx))
            ys, xs = zip(*pixels, strict=True)
            boxes.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1, len(pixels)))
    return labels, boxes


@pytest.mark.parametrize("density", [0.2, 0.45, 0.6])
@pytest.mark.parametrize("shape", [(1, 1), (5, 40), (32, 32), (37, 23)])
def test_components_match_a_flood_fill(shape, density):
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    for _ in range(20):
        mask = rng.random(shape) < density
        found = imageops.components(mask)
        labels, boxes = flood_fill_components(mask)
        assert found.labels.dtype == np.int32
        assert np.array_equal(found.labels, labels)
        assert found.boxes.tolist() == [list(box) for box in boxes]
        assert found.count == len(boxes)


def test_components_of_an_empty_mask():
    found = imageops.components(np.zeros((4, 6), bool))
    assert found.count == 0 and found.boxes.shape == (0, 5)
    assert not found.labels.any()


def test_first_pixel_order_even_where_opencv_numbers_otherwise():
    """A component that starts lower but further left, inside the same 2x2 block row pair, is
    still numbered after one that starts on the row above."""
    mask = np.zeros((4, 8), bool)
    mask[0, 6] = mask[1, 6] = True  # starts at row 0, column 6
    mask[1, 0] = mask[2, 0] = True  # starts at row 1, column 0
    found = imageops.components(mask)
    assert found.labels[0, 6] == 1 and found.labels[1, 0] == 2


def test_keep_paints_the_wanted_components():
    mask = np.zeros((3, 7), bool)
    mask[:, 0] = mask[:, 3] = mask[:, 6] = True
    found = imageops.components(mask)
    kept = imageops.keep(found, np.array([True, False, True]))
    assert np.array_equal(kept, mask & (np.arange(7) != 3))


def shifted_max(image: np.ndarray, radius: int) -> np.ndarray:
    h, w = image.shape
    out = image.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            src = image[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)]
            dst = out[max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)]
            np.maximum(dst, src, out=dst)
    return out


@pytest.mark.parametrize("radius", [0, 1, 2, 3])
def test_dilate_matches_a_maximum_over_shifts(radius):
    rng = np.random.default_rng(radius)
    grey = rng.normal(size=(17, 29)).astype(np.float32)  # negative values too: no zero border
    assert np.array_equal(imageops.dilate(grey, radius), shifted_max(grey, radius))
    mask = rng.random((17, 29)) < 0.1
    grown = imageops.dilate(mask, radius)
    assert grown.dtype == bool and np.array_equal(grown, shifted_max(mask, radius))


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_cell_max_and_enlarge_match_numpys_reshape_and_repeat(factor):
    """The coarse grid of normalization: each cell's maximum, and back to one value a pixel."""
    rng = np.random.default_rng(factor)
    grey = rng.normal(size=(6 * factor, 5 * factor)).astype(np.float32)  # negative values too
    cells = grey.reshape(6, factor, 5, factor).max(axis=(1, 3))
    assert np.array_equal(imageops.cell_max(grey, factor), cells)
    enlarged = cells.repeat(factor, axis=0).repeat(factor, axis=1)
    assert np.array_equal(imageops.enlarge(cells, factor), enlarged)
    kept = cells > 0  # the parts normalization keeps, on its coarse grid
    grown = imageops.enlarge(kept[:, ::2], factor)  # a strided view, too
    assert grown.dtype == bool
    assert np.array_equal(grown, kept[:, ::2].repeat(factor, axis=0).repeat(factor, axis=1))


def test_profiles_count_a_masks_pixels_by_row_and_by_column():
    mask = np.random.default_rng(5).random((37, 23)) < 0.3
    for image in (mask, mask[::2, 1:]):  # a strided view, as a sliced mask is
        rows, cols = imageops.profiles(image)
        assert rows.dtype == cols.dtype == np.float32
        assert np.array_equal(rows, image.sum(axis=1)) and np.array_equal(cols, image.sum(axis=0))


def drawn(shape: str) -> np.ndarray:
    """A 28x28 crop, white ink on black as normalized crops are, of a figure drawn with a 2 px pen."""
    image = np.zeros((28, 28), np.uint8)
    if shape in ("eight", "open eight", "zero"):
        cv2.ellipse(image, (14, 8), (5, 5), 0, 0, 360, 255, 2)
    if shape == "eight":
        cv2.ellipse(image, (14, 19), (6, 6), 0, 0, 360, 255, 2)
    if shape == "open eight":  # a crossed nine: the loop over a stem and a short tick
        cv2.line(image, (14, 13), (14, 26), 255, 2)
        cv2.line(image, (14, 13), (10, 17), 255, 2)
    if shape == "one":
        cv2.line(image, (14, 3), (14, 25), 255, 2)
    return image.astype(np.float32) / 255.0


@pytest.mark.parametrize(
    ("shape", "count"), [("eight", 2), ("open eight", 1), ("zero", 1), ("one", 0)]
)
def test_loops_counts_the_paper_the_ink_closes_in(shape, count):
    assert imageops.loops(drawn(shape), 0.45) == count


def test_a_pinhole_where_strokes_nearly_touch_is_not_a_loop():
    image = np.ones((28, 28), np.float32)
    image[10, 10] = 0.0  # one pixel of paper walled in by ink
    assert imageops.loops(image, 0.45) == 0
    image[10:12, 10:12] = 0.0
    assert imageops.loops(image, 0.45) == 1


def test_enlarge_refuses_a_factor_it_cannot_repeat_exactly():
    with pytest.raises(ValueError, match="only factors up to 16"):
        imageops.enlarge(np.zeros((2, 2), np.float32), 49)
