"""Contact sheets: a grid of documents with what was written under each, for eyes and docs."""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from digits.model.docgen.core import Document

CELL_W, CELL_H, CAPTION = 260, 72, 16


def _caption(doc: Document) -> str:
    """ASCII caption (cv2's fonts have no long dash): the text, then the label."""
    return f"{doc.text.replace('—', '--')}  [{doc.label}]"


def contact_sheet(
    docs: Sequence[Document],
    path: str | os.PathLike,
    columns: int = 4,
    captions: Sequence[str] | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Write a PNG grid of ``docs`` with each one's text (or ``captions``) under it; return it (RGB).

    Images keep their real size (a crop wider than a cell is cut), so stroke widths and sizes can be
    compared with real scans shown at the same scale.
    """
    rows = (len(docs) + columns - 1) // columns
    sheet = np.full((rows * (CELL_H + CAPTION), columns * CELL_W, 3), 255, np.uint8)
    for i, doc in enumerate(docs):
        r, c = divmod(i, columns)
        y, x = r * (CELL_H + CAPTION), c * CELL_W
        img = doc.image[:CELL_H, : CELL_W - 6]
        sheet[y : y + img.shape[0], x : x + img.shape[1]] = img
        text = captions[i] if captions is not None else _caption(doc)
        cv2.putText(
            sheet,
            text,
            (x + 2, y + CELL_H + 12),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.4,
            (0, 0, 160),
            1,
            cv2.LINE_AA,
        )
    if scale != 1.0:
        sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cv2.imwrite(os.fspath(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    return sheet
