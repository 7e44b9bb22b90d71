"""A neighbouring digit's stroke at a crop's side, which normalization leaves out.

A digit cut from a zip code, a form's row of cells or a register's column by fixed coordinates
often keeps the end of the digit written before or after it: a curve or a bar's tip standing in
the crop's margin, cut off by its edge. Kept, it is ink like any other: the digit's box stretches
to take it in, the digit is drawn smaller and off centre, and the network reads the pair as one
shape. On scan-like MNIST test digits with such a piece 4 or 5 pixels wide of their 28 (the
neighbour's ink reaching 15-18% into the crop), 93.2% and 87.6% were read right and 1.25% and
2.1% accepted wrong, against 99.75% and 0.1% without a piece (``python -m
digits.cli.devtools.neighbours --seed 1``; docs/evaluation.md has what it reads now).

A part of the crop's ink is taken for such a stroke when all of these hold:

- it touches the crop's left or right edge, where the cut went through the neighbour (on the grid
  the parts are found on: within a grid cell, a few pixels, of the edge);
- it lies within SIDE_BAND of that edge;
- it shares no column with any other part of the ink. A digit's own stroke apart from the rest (a
  five's flag, a four's bar written apart, a stroke broken by a faint pen or cut off by a tight
  crop) mostly sits over or under some other part of the digit;
- the largest part has paper between it and both sides: a crop that caught its neighbour was cut
  with a margin round its digit, while a digit cut tight reaches the crop's side, and the parts
  at its sides are its own (a loop the cut split, a stroke a faint pen broke), as is the digit
  itself where a neighbour's piece is the larger part;
- it stands apart from the largest part, by paper at least a grid cell wide (the halves of a loop
  a cut split meet there), and within GAP of it. A crop is cut at the digit's box with a margin
  of a few pixels, so a neighbour's stroke stands close to the digit. A wide empty gap says the
  largest part is not the whole digit: a faint zero whose far half was too pale to trace, where
  the piece at the edge may be all that is left of that half. Two real digits cut from the
  cheque samples were such zeros, read as ones once their piece was left out.

Only crops of their own: a field's pieces keep every stroke, since the field reader judges its
cuts by how much of a digit each one holds (``lattice``).

The opposite mistake of a cut is a crop that holds two whole digits (a box drawn over two cells,
a zip cut into too few pieces). The network then reads one shape, and is often sure of it: of
3,000 such crops (two MNIST test digits a few pixels apart, scan-like), 19.3% were accepted as one
digit. Two digits written apart stand side by side, each about the height of the ink, on columns
of their own (:func:`side_by_side`); a digit's own parts seldom do (a five's flag sits over its
body, a broken stroke's pieces overlap in columns or one is short). Such a crop goes to a person
(``review.TWO_DIGITS``): 42% of the pairs (the others' digits touch on the grid the parts are
found on), accepted now 11.0%, against 0.07% of 3,000 scan-like single digits, 0.43% of broken
ones and 0.10% of thin-penned ones (``python -m digits.cli.devtools.two_digits --seed 1``). It
looks at the parts kept: a whole narrow digit that touches the crop's side is taken for a
neighbour's stroke first, as a cut-off piece of one would be, and left out unflagged.
"""

from __future__ import annotations

import numpy as np

from digits.model.imageops import AREA, X0, X1, Y0, Y1

SIDE_BAND = 0.3  # a neighbour's stroke reaches at most this share of the crop's width into it
GAP = 0.35  # ...and stands at most this share of the crop's width from the largest part
TALL = 0.6  # each of two digits side by side spans at least this share of the ink's height


def at_sides(boxes: np.ndarray, largest: int, width: int) -> np.ndarray:
    """Which parts are a neighbour's stroke: ``boxes`` as ``imageops.Components.boxes`` (x1
    exclusive) in an image ``width`` columns wide, ``largest`` the row of the largest part."""
    x0, x1 = boxes[:, X0], boxes[:, X1]
    start, end = boxes[largest, X0], boxes[largest, X1]
    if start == 0 or end == width:  # cut tight: every part is the digit's
        return np.zeros(len(boxes), bool)
    shared = _shared_columns(boxes)
    np.fill_diagonal(shared, False)
    apart = ~shared.any(axis=1)
    band, gap = SIDE_BAND * width, GAP * width
    left = (x0 == 0) & (x1 <= band) & (x1 < start) & (start - x1 <= gap)
    right = (x1 == width) & (x0 >= width - band) & (x0 > end) & (x0 - end <= gap)
    return apart & (left | right)


def side_by_side(boxes: np.ndarray, share: float) -> bool:
    """Do two of the parts ``boxes`` (rows as :func:`at_sides` takes them; here only the parts
    kept) stand side by side as two digits would? Each at least ``share`` of the largest part's
    ink and TALL of the height of all of them, the two sharing no column."""
    if len(boxes) < 2:
        return False
    areas, tall = boxes[:, AREA], boxes[:, Y1] - boxes[:, Y0]
    height = boxes[:, Y1].max() - boxes[:, Y0].min()
    big = boxes[(areas >= share * areas.max()) & (tall >= TALL * height)]
    return not _shared_columns(big).all()  # each shares its own columns


def _shared_columns(boxes: np.ndarray) -> np.ndarray:
    """(parts, parts): whether two parts have a column in common (x1 exclusive)."""
    x0, x1 = boxes[:, X0], boxes[:, X1]
    return (x0[:, None] < x1[None, :]) & (x0[None, :] < x1[:, None])
