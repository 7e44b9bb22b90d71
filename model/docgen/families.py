"""Named families for every trait of a synthetic document, split into train and held-out sets.

A reader trained on a generator learns the generator as well as the handwriting. Holding out at
least one family of every trait (a background pattern, a rule style, an ink, a pen, a way digits
touch, a writing convention, a scan degradation) lets an evaluation on ``split="heldout"`` tell the
two apart: a model that only fits the training families drops there, one that reads digits does not.
"""

from __future__ import annotations

import numpy as np

FAMILIES: dict[str, dict[str, list[str]]] = {
    # security paper behind the amount
    "background": {
        "train": ["guilloche", "mesh", "tint", "speckle"],
        "heldout": ["rosette", "band"],
    },
    # printed lines of the form: under the amount, around it, through it
    "rule": {
        "train": ["none", "solid", "dotted", "box"],
        "heldout": ["double", "crossing"],
    },
    # ink colour of the pen
    "ink": {
        "train": ["black", "blue"],
        "heldout": ["bluegrey"],
    },
    # pen tip: stroke width in pixels of the final image
    "pen": {
        "train": ["fine", "medium"],
        "heldout": ["bold"],
    },
    # how neighbouring digits meet
    "touching": {
        "train": ["spaced", "kerned", "overlap", "tied"],
        "heldout": ["cursive"],
    },
    # how the amount, zip or digit string is written (separators, trailing marks)
    "convention": {
        "train": ["cl_dot", "plain", "us", "dollar", "zip5", "zip9", "digits"],
        "heldout": ["eu", "cl_comma", "zip9_space", "digits_grouped"],
    },
    # how the scanner and the light spoiled it
    "degradation": {
        "train": ["gray_scan", "color_scan", "blurry", "noisy"],
        "heldout": ["uneven"],
    },
}

# Conventions each kind of field may be written in; generation picks among those in the split.
KIND_CONVENTIONS: dict[str, list[str]] = {
    "amount": ["cl_dot", "plain", "us", "dollar", "eu", "cl_comma"],
    "zip": ["zip5", "zip9", "zip9_space"],
    "digits": ["digits", "digits_grouped"],
}

# How often each family comes up when it is allowed (unlisted families weigh 1). Chilean
# dot-separated amounts and guilloche paper dominate the real documents, so they dominate here.
WEIGHTS: dict[str, float] = {
    "guilloche": 3.0,
    "mesh": 1.5,
    "cl_dot": 4.0,
    "plain": 2.0,
    "none": 1.5,
    "solid": 2.0,
    "gray_scan": 3.0,
    "black": 1.5,
    "kerned": 2.0,
    "tied": 1.5,
}

SPLITS = ("train", "heldout")


def allowed(trait: str, split: str) -> list[str]:
    """The families of ``trait`` a sample of ``split`` may use.

    ``heldout`` means the held-out families only, so every held-out sample shows at least the
    held-out family of each trait that has one and the evaluation is not diluted by train families.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return list(FAMILIES[trait][split])


_TABLES: dict[tuple[str, str, tuple[str, ...] | None], tuple[list[str], list[float]]] = {}


def pick(rng: np.random.Generator, trait: str, split: str, among: list[str] | None = None) -> str:
    """Draw one family of ``trait`` for ``split`` (optionally restricted to ``among``), by weight.

    The cumulative weights are kept per (trait, split, among): ``rng.choice`` with probabilities
    costs more than the rest of a sample's bookkeeping.
    """
    key = (trait, split, tuple(among) if among is not None else None)
    table = _TABLES.get(key)
    if table is None:
        names = allowed(trait, split)
        if among is not None:
            names = [n for n in names if n in among]
        if not names:
            raise ValueError(f"no {trait} family of split {split!r} among {among}")
        weights = np.cumsum([WEIGHTS.get(n, 1.0) for n in names])
        table = _TABLES[key] = (names, [float(c) for c in weights / weights[-1]])
    names, edges = table
    u = rng.random()
    for name, edge in zip(names, edges, strict=True):
        if u < edge:
            return name
    return names[-1]
