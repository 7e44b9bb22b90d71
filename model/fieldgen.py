"""Composed test fields: zip codes and amounts written with MNIST test digits on scan-like paper.

A row of MNIST crops is not a field. Real fields break segmenters in other ways: gaps vary and
sometimes vanish (touching pairs), digits wander off the baseline and differ in size and slant,
separators are small marks, and forms add underlines and boxes. Each trait is drawn from a seeded
generator, so a figure can be reproduced exactly, and the digits come from the MNIST *test* set,
which no model trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from digits.model import distort, imageops, kinds, scanlike

INK = 0.35  # MNIST pixel share above which a pixel counts as ink when placing glyphs
SUPERSAMPLE = 4  # marks are drawn this much larger, then shrunk, for anti-aliased edges


def _filled(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return distort.low_resolution(distort.stretch(image, rng), rng)


# How a composed field's digits were captured: as MNIST drew them, sampled at 10 to 18 px and
# blown up again (a low-dpi scan; envelope digits of the USPS kind are 16x16), or also stretched
# to fill that box (bitmap data sets). Each is the single-digit trait of ``distort``, so one owner
# says what it looks like. The shipped readers trained with half their composed zips styled
# (TRAINING_GLYPHS): the pair reads 96.0% of composed zips plain, 90.8% low-resolution and 91.6%
# filled (500 each, seed 0; `digits evaluate --fields --glyphs STYLE`; 95.4%, 88.2% and 82.0%
# when they trained on plain ones only).
GLYPH_STYLES = {"plain": None, "low_res": distort.low_resolution, "filled": _filled}

# How the trainers' composed fields of each kind were captured, by weight. Envelopes and forms
# come off scanners of every resolution, so half the composed zips and digit runs are styled.
# Amounts stay plain: readers trained with half of every kind styled read the styled zips far
# better but real cheques worse (session 12, docs/fields.md), and a cheque is written, not
# composed from a bitmap data set.
TRAINING_GLYPHS: dict[str, dict[str, float]] = {
    "zip": {"plain": 0.5, "low_res": 0.3, "filled": 0.2},
    "digits": {"plain": 0.5, "low_res": 0.3, "filled": 0.2},
    "amount": {"plain": 1.0},
}
assert set(TRAINING_GLYPHS) == set(kinds.NAMES), "every kind says how its digits were captured"
assert all(set(w) <= set(GLYPH_STYLES) for w in TRAINING_GLYPHS.values())


def training_style(kind: str, rng: np.random.Generator) -> str:
    """The glyph style of one composed training field of ``kind`` (TRAINING_GLYPHS); a kind with
    one style draws nothing from ``rng``, so its fields are drawn as before styles existed."""
    weights = TRAINING_GLYPHS[kind]
    if len(weights) == 1:
        return next(iter(weights))
    return str(rng.choice(list(weights), p=list(weights.values())))


def styled(glyph_for, style: str, rng: np.random.Generator):
    """``glyph_for`` (digit -> 28x28 uint8 MNIST-like image) with every glyph captured in
    ``style`` (GLYPH_STYLES); plain draws nothing from ``rng``."""
    change = GLYPH_STYLES[style]
    if change is None:
        return glyph_for

    def captured(digit: int) -> np.ndarray:
        # A scanner's gain keeps the ink dark: sampled small, a thin stroke would otherwise fade.
        image = change(glyph_for(digit), rng).astype(np.float32)
        return (image * (255.0 / max(float(image.max()), 1.0))).astype(np.uint8)

    return captured


@dataclass(frozen=True)
class ComposedField:
    """One field: the scan's bytes, the text written on it and what makes it hard."""

    data: bytes
    text: str
    kind: str
    touching: bool  # two of its digits touch
    lines: bool  # it has an underline or a box


def field_set(
    images: np.ndarray,
    labels: np.ndarray,
    count: int,
    kind: str = "zip",
    touching: float = 0.0,
    lines: float = 0.0,
    plus4: float = 0.0,
    seed: int = 0,
    glyphs: str = "plain",
) -> list[ComposedField]:
    """``count`` fields of ``kind``; ``touching``, ``lines`` and ``plus4`` (zip codes written as
    ZIP+4) are shares, ``glyphs`` how every digit was captured (GLYPH_STYLES). Each field has its
    own random stream from the seed and its index, so the first hundred fields are the same
    whatever the count.
    """
    kinds.kind(kind)  # refuses an unknown kind, naming the choices
    if glyphs not in GLYPH_STYLES:
        raise ValueError(f"unknown glyph style {glyphs!r}: one of {', '.join(GLYPH_STYLES)}")
    pools = [np.flatnonzero(labels == d) for d in range(10)]
    out = []
    for index in range(count):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        text = random_text(kind, rng, plus4)
        touch = bool(rng.random() < touching) and any(
            a.isdigit() and b.isdigit() for a, b in zip(text, text[1:], strict=False)
        )
        line = bool(rng.random() < lines)
        glyph_for = styled(lambda d: images[rng.choice(pools[d])], glyphs, rng)  # noqa: B023
        ink = compose(text, glyph_for, rng, touch)
        if line:
            ink = add_lines(ink, rng)
        out.append(ComposedField(scan(ink, rng), text, kind, touch, line))
    return out


def random_field(
    kind: str,
    glyph_for,
    rng: np.random.Generator,
    touching: float = 0.0,
    lines: float = 0.0,
    plus4: float = 0.3,
) -> tuple[np.ndarray, str]:
    """A random field of ``kind`` as ink, and its text: two digits pushed together with share
    ``touching``, a printed rule with share ``lines``. A share of 0 draws nothing from ``rng``,
    so a caller without that trait keeps its stream. The trainers' composed fields: their
    glyphs are captured as ``training_style`` draws for the kind."""
    text = random_text(kind, rng, plus4)
    glyph_for = styled(glyph_for, training_style(kind, rng), rng)
    touch = touching > 0 and bool(rng.random() < touching)
    ink = compose(text, glyph_for, rng, touch)
    if lines > 0 and rng.random() < lines:
        ink = add_lines(ink, rng)
    return ink, text


def random_text(kind: str, rng: np.random.Generator, plus4: float = 0.3) -> str:
    """What a writer puts in a field of ``kind``: a ZIP or ZIP+4, an amount, a run of digits."""
    digits = lambda n: "".join(str(d) for d in rng.integers(0, 10, size=(n,)))  # noqa: E731
    if kind == "zip":
        return digits(5) + ("-" + digits(4) if rng.random() < plus4 else "")
    if kind == "digits":
        return digits(int(rng.integers(1, 11)))
    whole = str(int(10 ** rng.uniform(0, 6)))
    if len(whole) > 3 and rng.random() < 0.6:
        whole = f"{int(whole):,}"
    return whole + (f".{digits(2)}" if rng.random() < 0.6 else "")


def compose(text: str, glyph_for, rng: np.random.Generator, touching: bool = False) -> np.ndarray:
    """White-on-black ink in [0, 1] for ``text``; ``glyph_for(digit)`` gives a 28x28 uint8 image.

    With ``touching``, one adjacent pair of digits is pushed together until their strokes overlap.
    """
    height = rng.uniform(24, 56)  # digit height in pixels: scans come at many resolutions
    pen = 0.0  # stroke width, measured on the first digit: the marks are written with that pen
    pairs = [i for i in range(1, len(text)) if text[i].isdigit() and text[i - 1].isdigit()]
    touch_at = int(rng.choice(pairs)) if touching and pairs else -1
    baseline = int(height * 0.6) + 2
    # Room for every glyph as wide as it is tall with the widest gap (a digit stretched to its
    # box is): the canvas is cut to the ink after.
    canvas = np.zeros((int(height * 2.2) + 4, int(len(text) * height * 1.8) + 8), np.float32)
    right, prev_w = 2, 0  # right edge of the ink placed so far, width of the last glyph
    for i, char in enumerate(text):
        if char.isdigit():
            glyph = _scaled_glyph(glyph_for(int(char)), height * rng.uniform(0.88, 1.12))
            pen = pen or _pen(glyph)
            top = baseline + int(height * rng.uniform(-0.06, 0.06)) - glyph.shape[0] + int(height)
        else:
            glyph, top = _mark(char, height, pen or 0.12 * height, rng, baseline + int(height))
        h, w = glyph.shape
        contact = _contact(canvas, glyph, top)
        if i == touch_at:
            # Touching, not nested: at most a third of the narrower glyph may overlap the other.
            overlap = max(1, int(round(pen * rng.uniform(0.2, 0.7))))
            x = max(contact - overlap, right - int(min(w, prev_w) / 3))
        elif i == 0:
            x = right
        else:
            x = max(contact + 2, right + int(height * rng.uniform(-0.08, 0.45)))
        x = max(x, 0)
        before = canvas > INK
        region = canvas[top : top + h, x : x + w]
        np.maximum(region, glyph[: region.shape[0], : region.shape[1]], out=region)
        if i == touch_at:
            _ligature(canvas, before, (canvas > INK) & ~before, pen)
        right, prev_w = max(right, x + w), w
    canvas = canvas[:, : right + 2]
    return _slant(canvas, rng.uniform(-0.25, 0.25), rng.uniform(-2.0, 2.0))


def _ligature(canvas: np.ndarray, old: np.ndarray, new: np.ndarray, stroke: float) -> None:
    """Where a pair set to touch does not (its shapes keep apart), the pen joins them in passing."""
    if not old.any() or not new.any() or (_grow(old) & new).any():
        return  # nothing new to join (a glyph drawn over ink already there), or joined already
    a, b = np.argwhere(old), np.argwhere(new)
    a = a[a[:, 1] >= a[:, 1].max() - 3 * stroke]  # the left glyph's right side
    b = b[b[:, 1] <= b[:, 1].min() + 3 * stroke]
    d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    (ya, xa), (yb, xb) = a[np.unravel_index(d.argmin(), d.shape)[0]], b[d.min(0).argmin()]
    image = Image.new("L", (canvas.shape[1], canvas.shape[0]))
    ImageDraw.Draw(image).line([(xa, ya), (xb, yb)], fill=255, width=max(1, round(stroke)))
    np.maximum(canvas, np.asarray(image, np.float32) / 255.0, out=canvas)


def _grow(mask: np.ndarray) -> np.ndarray:
    """Ink and what touches it (8-connected): where a glyph placed there would join it."""
    return imageops.dilate(np.ascontiguousarray(mask, bool), 1)


def _pen(glyph: np.ndarray) -> float:
    """Stroke width of a glyph: twice its ink area over its outline."""
    ink = glyph > 0.5
    p = np.pad(ink, 1)
    inner = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return max(1.5, 2.0 * ink.sum() / max(int((ink & ~inner).sum()), 1))


def _scaled_glyph(image: np.ndarray, height: float) -> np.ndarray:
    """The digit's ink box, resized so its height is ``height`` (MNIST fits digits in 20x20)."""
    rows, cols = np.nonzero(image > 0)
    box = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    scale = height / 20.0
    size = (max(1, round(box.shape[1] * scale)), max(1, round(box.shape[0] * scale)))
    resized = Image.fromarray(box).resize(size, Image.Resampling.BICUBIC)
    return np.clip(np.asarray(resized, np.float32) / 255.0, 0, 1)


def _mark(
    char: str, height: float, stroke: float, rng: np.random.Generator, base: int
) -> tuple[np.ndarray, int]:
    """A hyphen, dot or comma as ink, and the canvas row of its top edge."""
    s = SUPERSAMPLE
    if char == "-":
        length, tilt = height * rng.uniform(0.3, 0.6), height * rng.uniform(-0.06, 0.06)
        w, h = length + 2 * stroke, abs(tilt) + 2 * stroke
        y0 = stroke + max(0.0, -tilt)
        ink = _draw(
            w,
            h,
            lambda d: d.line(
                [(stroke * s, y0 * s), ((stroke + length) * s, (y0 + tilt) * s)],
                fill=255,
                width=round(stroke * s),
            ),
        )
        return ink, base - int(height * rng.uniform(0.4, 0.6)) - int(h / 2)
    dot = stroke * rng.uniform(1.0, 1.6)
    tail = height * rng.uniform(0.15, 0.28) if char == "," else 0.0
    w, h = dot + stroke, dot + tail + stroke / 2

    def draw(d: ImageDraw.ImageDraw) -> None:
        d.ellipse([(stroke / 2 * s, 0), ((stroke / 2 + dot) * s, dot * s)], fill=255)
        if tail:
            d.line(
                [((stroke / 2 + dot * 0.8) * s, dot / 2 * s), (stroke / 2 * s, (dot + tail) * s)],
                fill=255,
                width=round(stroke * 0.8 * s),
            )

    return _draw(w, h, draw), base - int(dot) + int(height * rng.uniform(-0.04, 0.04))


def _draw(width: float, height: float, paint) -> np.ndarray:
    size = (max(1, round(width)) * SUPERSAMPLE, max(1, round(height)) * SUPERSAMPLE)
    image = Image.new("L", size)
    paint(ImageDraw.Draw(image))
    small = image.resize((size[0] // SUPERSAMPLE, size[1] // SUPERSAMPLE), Image.Resampling.BOX)
    return np.asarray(small, np.float32) / 255.0


def _contact(canvas: np.ndarray, glyph: np.ndarray, top: int) -> int:
    """The leftmost column where ``glyph`` can sit without its ink touching the canvas's."""
    rows = np.arange(top - 1, top + glyph.shape[0] + 1)
    inside = (rows >= 0) & (rows < canvas.shape[0])
    ink = canvas[rows[inside]] > INK
    reach = np.full(len(rows), -(10**6))  # rightmost ink column per canvas row
    reach[inside] = np.where(ink.any(1), ink.shape[1] - 1 - np.argmax(ink[:, ::-1], 1), -(10**6))
    # A glyph row touches the canvas row above, beside and below it (8-connected contact).
    reach = np.maximum.reduce([reach[:-2], reach[1:-1], reach[2:]])
    mine = glyph > INK
    lefts = np.where(mine.any(1), np.argmax(mine, 1), 10**6)
    need = reach + 2 - lefts
    return int(need.max()) if need.max() > -(10**5) else 0


def _slant(ink: np.ndarray, shear: float, degrees: float) -> np.ndarray:
    """Writers slant their digits and hold the paper askew: a shear, then a small rotation."""
    h, w = ink.shape
    pad = int(abs(shear) * h) + 2
    image = Image.fromarray((ink * 255).astype(np.uint8))
    image = image.transform(
        (w + pad, h),
        Image.Transform.AFFINE,
        (1, shear, -pad if shear > 0 else 0, 0, 1, 0),
        resample=Image.Resampling.BILINEAR,
    )
    image = image.rotate(degrees, resample=Image.Resampling.BILINEAR, expand=True)
    return _trim(np.asarray(image, np.float32) / 255.0)


def _trim(ink: np.ndarray, margin: int = 3) -> np.ndarray:
    rows, cols = np.nonzero(ink > 0.05)
    if len(rows) == 0:
        return ink
    return np.pad(ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1], margin)


def add_lines(ink: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Forms print an underline or a box round the field; descenders cross it."""
    h, w = ink.shape
    margin = int(h * rng.uniform(0.05, 0.35))
    out = np.pad(ink, margin)
    image = Image.fromarray((out * 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    width = max(1, round(h * rng.uniform(0.02, 0.06)))
    bottom = out.shape[0] - margin - int(h * rng.uniform(0.0, 0.12)) - 1
    if rng.random() < 0.5:
        draw.line([(0, bottom), (out.shape[1] - 1, bottom)], fill=255, width=width)
    else:
        top = margin - int(h * rng.uniform(0.0, 0.2))
        draw.rectangle([(1, max(top, 0)), (out.shape[1] - 2, bottom)], outline=255, width=width)
    return np.asarray(image, np.float32) / 255.0


def scan(ink: np.ndarray, rng: np.random.Generator) -> bytes:
    """Ink on paper as a scanner hands it over, by the single-crop scan model (scanlike)."""
    pixels = scanlike._photograph(ink, rng.random() < scanlike.RGB_SHARE, rng)
    if rng.random() < scanlike.PNG_SHARE:
        return scanlike._encode(pixels, "PNG")
    quality = int(rng.integers(scanlike.JPEG_QUALITY[0], scanlike.JPEG_QUALITY[1] + 1))
    return scanlike._encode(pixels, "JPEG", quality=quality)
