"""What gets written: amounts, zip codes and digit strings in the conventions of several countries.

Real Chilean cheque amounts are mostly whole pesos of 2 to 6 digits, often round (1.500, 20.000),
with dot thousands separators and a trailing mark that stops anyone adding digits ("1.480-",
"300.", a long dash). Other conventions (US commas, European decimal commas, a dollar sign, cents
written after a comma and closed with a dot) are here so a reader does not tie a separator's shape
to one position. The label is always the digits alone, left to right.
"""

from __future__ import annotations

import numpy as np

LONG_DASH = "—"


def _number(rng: np.random.Generator, lo: int = 2, hi: int = 6) -> str:
    """Digits of a whole amount: ``lo`` to ``hi`` digits, no leading zero, often round."""
    n = int(rng.choice(np.arange(lo, hi + 1)))
    digits = [str(rng.integers(1, 10))] + [str(d) for d in rng.integers(0, 10, n - 1)]
    if n > 1 and rng.random() < 0.55:  # round amounts: 1500, 20000
        zeros = int(rng.integers(1, n))
        digits[n - zeros :] = ["0"] * zeros
    return "".join(digits)


def _group(number: str, sep: str) -> str:
    """``number`` with ``sep`` every three digits from the right."""
    head = len(number) % 3 or 3
    parts = [number[:head]] + [number[i : i + 3] for i in range(head, len(number), 3)]
    return sep.join(parts)


def _cents(rng: np.random.Generator) -> str:
    """Two digits of cents, mostly "00" as on real cheques."""
    return "00" if rng.random() < 0.6 else f"{int(rng.integers(0, 100)):02d}"


def _trail(rng: np.random.Generator, marks: list[str], weights: list[float]) -> str:
    """One trailing mark drawn by weight."""
    p = np.asarray(weights, float)
    return marks[int(rng.choice(len(marks), p=p / p.sum()))]


def make_text(rng: np.random.Generator, convention: str) -> str:
    """The field as written (separators and marks included) for ``convention``."""
    if convention == "cl_dot":
        body = _number(rng)
        if len(body) >= 4 and rng.random() < 0.85:
            body = _group(body, ".")
        return body + _trail(rng, ["", "-", ".", ".-", LONG_DASH, "/-"], [4, 3, 2, 1, 1.5, 0.5])
    if convention == "plain":
        return _number(rng) + _trail(rng, ["", "-", ".", ".-", LONG_DASH], [4, 3, 2, 1, 1])
    if convention == "us":
        body = _group(_number(rng, 1, 6), ",")
        if rng.random() < 0.45:
            body += "." + _cents(rng)
        return body + _trail(rng, ["", "-", LONG_DASH], [6, 1, 1])
    if convention == "dollar":
        sep = "." if rng.random() < 0.6 else ","
        number = _number(rng)
        body = _group(number, sep) if len(number) >= 4 else number
        return "$" + body + _trail(rng, ["", "-", ".-", "/-"], [4, 2, 2, 1])
    if convention == "eu":
        body = _group(_number(rng, 1, 6), ".")
        return body + ("," + _cents(rng) if rng.random() < 0.75 else ",-")
    if convention == "cl_comma":
        number = _number(rng, 1, 5)
        if rng.random() < 0.5:
            return _group(number, ".") + "," + _cents(rng) + _trail(rng, [".", "-", ""], [3, 1, 1])
        return _group(number, ",") + _trail(rng, [".", ",", ""], [3, 1, 1])
    if convention == "zip5":
        return "".join(str(d) for d in rng.integers(0, 10, 5))
    if convention == "zip9":
        return (
            "".join(str(d) for d in rng.integers(0, 10, 5))
            + "-"
            + "".join(str(d) for d in rng.integers(0, 10, 4))
        )
    if convention == "zip9_space":
        return (
            "".join(str(d) for d in rng.integers(0, 10, 5))
            + " "
            + "".join(str(d) for d in rng.integers(0, 10, 4))
        )
    if convention == "digits":
        return "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(3, 9))))
    if convention == "digits_grouped":
        groups = int(rng.integers(2, 4))
        sep = " " if rng.random() < 0.6 else "-"
        return sep.join(
            "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(2, 5))))
            for _ in range(groups)
        )
    raise ValueError(f"unknown convention {convention!r}")
