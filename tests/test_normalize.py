"""Crop bytes to MNIST-like input: every format and mode, both polarities, blanks, blobs, bad input.

Images are drawn in memory with Pillow: a seven (asymmetric, so a wrong rotation or flip shows) in
dark ink on light paper, then saved in the format and mode under test. The normalized result of the
plain greyscale PNG is the reference the other encodings must reproduce.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digits.model.decode import (
    DEFAULT_LIMITS,
    BadGeometry,
    EmptyInput,
    Limits,
    NotAnImage,
    ScanError,
    TooLarge,
    TruncatedImage,
    decode,
)
from digits.model.normalize import (
    ASPECT_VIEWS,
    Crop,
    normalize,
    normalize_gray,
    normalize_ink,
    normalize_many,
)
from digits.model.paper import ink_contrast, ink_contrasts
from digits.model.scanlike import scanlike_set

PAPER, INK = 225, 30


def seven(width: int = 60, height: int = 80, paper: int = PAPER, ink: int = INK) -> Image.Image:
    """A hand-ish seven off-centre on a margin of paper: bar, diagonal stem and a crossbar."""
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    stroke = max(3, width // 12)
    left, top = int(width * 0.22), int(height * 0.18)
    right, bottom = int(width * 0.8), int(height * 0.88)
    draw.line([(left, top), (right, top), (left + (right - left) // 3, bottom)], ink, stroke)
    mid_y = (top + bottom) // 2
    draw.line([(left + (right - left) // 4, mid_y), (right - stroke, mid_y)], ink, stroke)
    return image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    crop = normalize(png(seven()))
    assert not crop.blank
    return crop.pixels


def close_to(pixels: np.ndarray | None, reference: np.ndarray, tolerance: float = 0.04) -> bool:
    """Mean absolute difference per pixel: lossy codecs move edges a little, never the digit."""
    assert pixels is not None, "expected a digit, got a blank"
    return float(np.abs(pixels - reference).mean()) < tolerance


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    total = pixels.sum()
    grid = np.arange(28)
    return float(pixels.sum(axis=1) @ grid / total), float(pixels.sum(axis=0) @ grid / total)


# ------------------------------------------------------------------------------ the MNIST recipe


def test_a_digit_comes_out_as_mnist_does(reference):
    assert reference.shape == (28, 28) and reference.dtype == np.float32
    assert reference.min() >= 0.0 and reference.max() <= 1.0
    cy, cx = centre_of_mass(reference)
    assert abs(cy - 14.0) <= 0.5 and abs(cx - 14.0) <= 0.5
    rows = np.flatnonzero((reference > 0.5).any(axis=1))
    cols = np.flatnonzero((reference > 0.5).any(axis=0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (19, 20, 21)  # 20x20 box, kept aspect
    assert (cols[-1] - cols[0]) < (rows[-1] - rows[0])  # the seven is taller than wide
    assert reference.max() > 0.99  # stroke cores saturate like MNIST
    edges = ((reference > 0.05) & (reference < 0.95)).sum()
    assert edges > 10  # anti-aliased rims, not a binary stencil
    assert reference[:, :3].sum() == 0 and reference[:, -3:].sum() == 0  # margins beside the box


def test_position_and_size_in_the_crop_do_not_matter(reference):
    small = seven(40, 54)
    big = seven(300, 400)
    shifted = Image.new("L", (160, 120), PAPER)
    shifted.paste(seven(60, 80), (90, 5))
    for image in (small, big, shifted):
        assert close_to(normalize(png(image)).pixels, reference, 0.06)


def test_an_mnist_digit_survives_its_own_normalization(mnist):
    """MNIST digits are already what normalization produces, so it must change them very little."""
    digits = mnist.x_test[:50].astype(np.float32) / 255.0
    out = np.stack([normalize_gray(d).pixels for d in digits])
    assert float(np.abs(out - digits).mean()) < 0.05
    assert all(normalize_gray(d).blobs >= 1 for d in digits[:10])


# ------------------------------------------------------------------------------ formats and modes


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("JPEG", {"quality": 75}),
        ("TIFF", {}),
        ("TIFF", {"compression": "tiff_lzw"}),
        ("BMP", {}),
        ("GIF", {}),
        ("WEBP", {"quality": 80}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_every_format_gives_the_same_digit(fmt, options, reference):
    data = encode(seven(), fmt, **options)
    assert close_to(normalize(data).pixels, reference)


def test_tiff_reads_the_first_page_and_gif_the_first_frame(reference):
    blank_page = Image.new("L", (60, 80), PAPER)
    tiff = io.BytesIO()
    seven().save(tiff, "TIFF", save_all=True, append_images=[blank_page])
    gif = io.BytesIO()
    seven().save(gif, "GIF", save_all=True, append_images=[blank_page], duration=100)
    for data in (tiff.getvalue(), gif.getvalue()):
        assert Image.open(io.BytesIO(data)).n_frames == 2
        assert close_to(normalize(data).pixels, reference)


def _transparent(mode: str) -> Image.Image:
    """Black ink on a fully transparent background whose colour is black too: only compositing on
    white paper makes it readable."""
    alpha = Image.eval(seven(), lambda v: 255 - v)  # opaque where the ink is
    black = Image.new("L", alpha.size, 0)
    if mode == "LA":
        return Image.merge("LA", (black, alpha))
    return Image.merge("RGBA", (black, black, black, alpha))


def _palette_with_transparency() -> bytes:
    image = seven().convert("P")
    transparent = image.getpixel((0, 0))
    data = np.asarray(image).copy()
    palette = image.getpalette()
    palette[transparent * 3 : transparent * 3 + 3] = [0, 0, 0]  # the see-through colour is black
    image.putpalette(palette)
    image = Image.fromarray(data, "P")
    image.putpalette(palette)
    return encode(image, "PNG", transparency=transparent)


def _sixteen_bit(fmt: str) -> bytes:
    wide = (np.asarray(seven(), dtype=np.uint16) * 257).astype(np.uint16)
    image = Image.fromarray(wide)
    assert image.mode.startswith("I;16")
    return encode(image, fmt)


MODES = {
    "1": lambda: png(seven().convert("1", dither=Image.Dither.NONE)),
    "L": lambda: png(seven()),
    "I;16 png": lambda: _sixteen_bit("PNG"),
    "I;16 tiff": lambda: _sixteen_bit("TIFF"),
    "RGB": lambda: png(Image.merge("RGB", (seven(), seven(), seven()))),
    "RGB blue ink": lambda: png(Image.merge("RGB", (seven(ink=20), seven(ink=40), seven(ink=150)))),
    "RGBA": lambda: png(_transparent("RGBA")),
    "LA": lambda: png(_transparent("LA")),
    "P": lambda: png(seven().convert("P")),
    "P transparency": _palette_with_transparency,
    "CMYK jpeg": lambda: encode(seven().convert("RGB").convert("CMYK"), "JPEG", quality=90),
    "CMYK tiff": lambda: encode(seven().convert("RGB").convert("CMYK"), "TIFF"),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_gives_the_same_digit(mode, reference):
    data = MODES[mode]()
    gray = decode(data)
    assert gray.ndim == 2 and gray.dtype == np.float32
    assert gray.min() >= 0.0 and gray.max() <= 1.0
    assert np.median(gray) > 0.5, "paper must come out light (transparency composited on white)"
    assert close_to(normalize(data).pixels, reference, 0.06)


def test_sixteen_bit_keeps_its_scale():
    gray = decode(_sixteen_bit("PNG"))
    assert abs(float(np.median(gray)) - PAPER / 255) < 0.01


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation, reference):
    """The stored pixels are turned; the EXIF tag says how to turn them back for display."""
    upright = seven()
    stored = {
        3: upright.transpose(Image.Transpose.ROTATE_180),
        6: upright.transpose(Image.Transpose.ROTATE_90),
        8: upright.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=90, exif=exif)
    assert decode(data).shape == (80, 60)
    assert close_to(normalize(data).pixels, reference)


# ------------------------------------------------------------------------------ paper and ink


def test_light_ink_on_dark_paper_reads_like_dark_on_light(reference):
    inverted = seven(paper=30, ink=220)
    assert close_to(normalize(png(inverted)).pixels, reference)


def test_an_mnist_style_white_on_black_array_is_understood(reference):
    gray = 1.0 - np.asarray(seven(), dtype=np.float32) / 255.0
    assert close_to(normalize_gray(gray).pixels, reference)


def _on_gradient(image: Image.Image, low: float, high: float, horizontal: bool) -> Image.Image:
    """Multiply the page by a lighting ramp: one side of the crop much darker than the other."""
    pixels = np.asarray(image, dtype=np.float32)
    ramp = np.linspace(low, high, pixels.shape[1 if horizontal else 0], dtype=np.float32)
    lit = pixels * (ramp[None, :] if horizontal else ramp[:, None])
    return Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("horizontal", [True, False])
def test_uneven_lighting_is_removed(horizontal, reference):
    shaded = _on_gradient(seven(), 0.45, 1.0, horizontal)
    assert close_to(normalize(png(shaded)).pixels, reference, 0.05)


def test_noise_and_jpeg_do_not_change_the_digit(reference):
    rng = np.random.default_rng(3)
    noisy = np.asarray(seven(120, 160), dtype=np.float32) + rng.normal(0, 15, (160, 120))
    data = encode(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "JPEG", quality=50)
    crop = normalize(data)
    assert close_to(crop.pixels, reference, 0.06)
    assert crop.blobs == 1


def test_faint_pencil_is_still_ink(reference):
    faint = seven(paper=230, ink=185)
    assert close_to(normalize(png(faint)).pixels, reference, 0.05)


def test_a_shadow_across_the_page_is_removed(reference):
    """Not a plane: a soft dark patch over one corner, as a curled page or a thumb casts."""
    page = np.asarray(seven(120, 160), dtype=np.float32)
    y, x = np.mgrid[:160, :120]
    shade = 1.0 - 0.2 * np.exp(-(((x - 100) / 45.0) ** 2 + ((y - 20) / 55.0) ** 2))
    shaded = Image.fromarray(np.clip(page * shade, 0, 255).astype(np.uint8))
    assert close_to(normalize(png(shaded)).pixels, reference, 0.06)


def test_a_vignette_darkening_every_corner_is_removed(reference):
    """Light falling off towards all four corners: no plane fits it, so what the plane leaves
    must stay below the ink's own threshold."""
    page = np.asarray(seven(120, 160), dtype=np.float32)
    y, x = np.mgrid[:160, :120]
    falloff = 1.0 - 0.3 * (((x - 60) / 60.0) ** 2 + ((y - 80) / 80.0) ** 2) / 2
    shaded = Image.fromarray(np.clip(page * falloff, 0, 255).astype(np.uint8))
    assert close_to(normalize(png(shaded)).pixels, reference, 0.05)


def test_uneven_pressure_is_one_stroke_not_a_trail_of_blobs(reference):
    """A ballpoint that skips: the stem alternates dark and faint. Parts are traced through the
    faint ink, so the digit stays one blob with the faint stretches in it."""
    page = seven()
    draw = ImageDraw.Draw(page)
    for k in range(6):  # lighten every other stretch of the stem
        y0 = 20 + k * 12
        if k % 2:
            draw.rectangle((0, y0, 59, y0 + 5), fill=None)
            region = page.crop((0, y0, 60, y0 + 6)).point(lambda v: 175 if v < 128 else v)
            page.paste(region, (0, y0))
    crop = normalize(png(page))
    assert crop.blobs == 1
    assert close_to(crop.pixels, reference, 0.06)


def test_a_thin_pen_is_drawn_as_thick_as_mnist_strokes():
    """A fine pen on a large crop would become a faint hairline at 28x28; MNIST strokes are about
    two pixels wide with cores at full ink."""
    page = Image.new("L", (240, 240), PAPER)
    draw = ImageDraw.Draw(page)
    draw.line([(60, 50), (180, 50), (100, 200)], fill=60, width=2)
    draw.line([(90, 125), (160, 125)], fill=60, width=2)
    pixels = normalize(encode(page, "JPEG", quality=80)).pixels
    perimeter = np.abs(np.diff(pixels, axis=0)).sum() + np.abs(np.diff(pixels, axis=1)).sum()
    assert 2 * pixels.sum() / perimeter > 1.3  # stroke width, as twice the area over the perimeter
    assert (pixels > 0.9).sum() >= 15  # cores at full ink, not a grey hairline


def test_a_faint_thin_stroke_stays_one_digit():
    page = Image.new("L", (200, 200), 228)
    draw = ImageDraw.Draw(page)
    draw.line([(50, 40), (150, 40), (80, 170)], fill=185, width=3)
    crop = normalize(png(page))
    assert not crop.blank and crop.blobs == 1


def test_a_thick_digit_filling_most_of_a_tight_crop(reference):
    bold = Image.new("L", (40, 48), PAPER)
    ImageDraw.Draw(bold).ellipse((2, 2, 37, 45), outline=INK, width=11)
    crop = normalize(png(bold))
    assert not crop.blank and crop.blobs == 1
    middle = crop.pixels[14]
    assert middle[13:15].max() < 0.1  # a ring: a hole in the middle, not a filled blob
    assert middle[:12].max() > 0.9 and middle[16:].max() > 0.9


def test_ink_covering_most_of_the_crop_is_still_the_ink():
    """Over half the pixels are ink: the median is ink, and only the border says which is paper."""
    bold = Image.new("L", (40, 48), PAPER)
    ImageDraw.Draw(bold).ellipse((2, 2, 37, 45), outline=INK, width=15)
    assert (np.asarray(bold) < 128).mean() > 0.6
    pixels = normalize(png(bold)).pixels
    assert pixels[14, 14] < 0.5 and pixels[14, 4:10].max() > 0.9


# ------------------------------------------------------------------------ bitmaps filling their box


def stretched_bitmap(image: Image.Image, side: int = 16) -> np.ndarray:
    """The digit's box stretched to a ``side`` square and cut to 1 bit, as bitmap data sets of
    handwritten digits store them: the ink reaches every side, the aspect ratio is gone."""
    gray = np.asarray(image)
    ys, xs = np.nonzero(gray < 128)
    box = gray[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    small = np.asarray(Image.fromarray(box).resize((side, side), Image.Resampling.BOX))
    return np.where(small < 160, 0, 255).astype(np.uint8)


def test_a_bitmap_stretched_to_its_box_keeps_its_edge_strokes():
    """The seven's bar is the bitmap's top row: it must survive, as must the stem's foot."""
    bitmap = stretched_bitmap(seven())
    assert (bitmap[0] == 0).any() and (bitmap[-1] == 0).any()
    crop = normalize(png(Image.fromarray(bitmap)))
    assert crop.fills_box and not crop.blank
    rows = np.flatnonzero(crop.pixels.max(axis=1) > 0.5)
    top = crop.pixels[rows[0] : rows[0] + 3]
    assert (top > 0.5).sum(axis=1).max() >= 12  # the bar spans most of the 20-pixel box


def test_pieces_of_fields_may_drop_the_edge_ring_their_paper_margin_fills():
    """``keep_edges=False`` is the smoothing field pieces were trained with: the outermost ring
    goes, which costs a stretched bitmap its bar and costs a piece with a margin nothing."""
    gray = stretched_bitmap(seven()).astype(np.float32) / 255.0
    kept, dropped = normalize_gray(gray), normalize_gray(gray, keep_edges=False)
    assert kept.pixels[:8].sum() > dropped.pixels[:8].sum() + 5  # the bar, at the top
    margined = np.pad(gray, 8, constant_values=1.0)
    same = normalize_gray(margined).pixels, normalize_gray(margined, keep_edges=False).pixels
    assert close_to(*same, tolerance=0.02)


def test_a_field_piece_given_as_ink_reads_as_the_same_piece_on_paper():
    """``normalize_ink`` is the field pieces' path (``lattice.add_crop``): their ink is already
    contrast against the paper, so it skips finding the paper and must come out as the piece
    drawn dark on white paper does, bold or fine, anti-aliased edges and all."""
    for width in (3, 12):
        drawn = seven().resize((30, 40), Image.LANCZOS)
        ink = 1.0 - np.asarray(drawn, np.float32) / 255.0
        ink = np.pad(np.clip((ink - 0.1) / 0.8, 0, 1), width).astype(np.float32)
        via_paper = normalize_gray(1.0 - ink, keep_edges=False)
        via_ink = normalize_ink(ink)
        assert not via_ink.blank and via_ink.blobs == via_paper.blobs
        assert np.abs(via_ink.pixels - via_paper.pixels).max() < 1e-3
    assert normalize_ink(np.zeros((30, 30), np.float32)).blank


def test_a_bold_bitmap_with_more_ink_than_paper_is_read_either_polarity():
    """Half the pixels ink: no plane fitted to blocks could find the paper; two levels say it."""
    ring = Image.new("L", (16, 16), 255)
    ImageDraw.Draw(ring).ellipse((0, 0, 15, 15), outline=0, width=5)
    bitmap = np.asarray(ring)
    assert (bitmap == 0).mean() > 0.5
    dark = normalize(png(Image.fromarray(bitmap)))
    light = normalize(png(Image.fromarray(255 - bitmap)))
    for crop in (dark, light):
        assert not crop.blank and crop.pixels[14, 14] < 0.2 and crop.pixels[14, 4:10].max() > 0.9
    assert np.allclose(dark.pixels, light.pixels, atol=1e-5)


def test_a_bitmap_that_fills_its_box_is_also_seen_narrower():
    """Each aspect view is the same digit at a narrower width, ink box still 20 rows high."""
    crop = normalize(png(Image.fromarray(stretched_bitmap(seven()))))
    assert len(crop.views) == len(ASPECT_VIEWS)
    widths = []
    for view in crop.views:
        cols = np.flatnonzero(view.max(axis=0) > 0.5)
        rows = np.flatnonzero(view.max(axis=1) > 0.5)
        assert 18 <= rows[-1] - rows[0] + 1 <= 21
        widths.append(cols[-1] - cols[0] + 1)
    assert widths == sorted(widths, reverse=True) and widths[-1] <= 0.5 * widths[0] + 2


@pytest.mark.parametrize(
    "case", ["grey crop filling its box", "bitmap with margins", "bitmap wider than tall"]
)
def test_only_a_square_bitmap_the_ink_fills_gets_views(case):
    """A tight grey crop kept its aspect, and a bitmap with margins or a non-square box is not a
    stretched digit: reading them narrower would only cost accuracy."""
    bitmap = stretched_bitmap(seven(), side=24)
    if case == "grey crop filling its box":
        image = Image.fromarray(bitmap).resize((40, 40), Image.Resampling.BILINEAR)
    elif case == "bitmap with margins":
        image = Image.fromarray(np.pad(bitmap, 6, constant_values=255))
    else:
        image = Image.fromarray(bitmap).resize((36, 24), Image.Resampling.NEAREST)
    crop = normalize(png(image))
    assert not crop.blank and crop.views == ()


# ------------------------------------------------------------------------------ blank and blobs


def _paper(kind: str) -> bytes:
    rng = np.random.default_rng(11)
    if kind == "white":
        return png(Image.new("L", (64, 64), 250))
    if kind == "black":
        return png(Image.new("L", (64, 64), 0))
    if kind == "noisy jpeg":
        noisy = 200 + rng.normal(0, 12, (90, 70))
        return encode(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "JPEG", quality=50)
    if kind == "gradient":
        return png(_on_gradient(Image.new("L", (80, 80), 250), 0.5, 1.0, horizontal=True))
    if kind == "dust":
        page = Image.new("L", (120, 120), 220)
        draw = ImageDraw.Draw(page)
        for x, y in rng.integers(5, 115, (6, 2)):
            draw.ellipse((int(x), int(y), int(x) + 2, int(y) + 2), fill=60)
        return png(page)
    if kind == "stain":
        y, x = np.mgrid[:90, :90]
        stain = 215 - 18 * np.exp(-(((x - 30) / 20.0) ** 2 + ((y - 50) / 25.0) ** 2))
        return encode(Image.fromarray(stain.astype(np.uint8)), "JPEG", quality=80)
    if kind == "texture":
        mottle = Image.fromarray((rng.normal(0, 1, (6, 6)) * 6 + 210).astype(np.uint8))
        return encode(mottle.resize((100, 100), Image.Resampling.BICUBIC), "JPEG", quality=70)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind", ["white", "black", "noisy jpeg", "gradient", "dust", "texture", "stain"]
)
def test_paper_without_ink_is_blank(kind):
    crop = normalize(_paper(kind))
    assert crop.blank and crop.pixels is None
    assert crop.blobs == 0 and not crop.multiple_blobs


def test_tiny_and_flat_arrays_are_blank_not_errors():
    for gray in (np.ones((1, 1)), np.zeros((2, 9)), np.full((5, 5), 0.5)):
        assert normalize_gray(gray).blank


def test_two_digits_in_one_crop_are_flagged_and_still_read():
    pair = Image.new("L", (130, 80), PAPER)
    pair.paste(seven(), (0, 0))
    pair.paste(seven(), (65, 0))
    crop = normalize(png(pair))
    assert not crop.blank
    assert crop.blobs == 2 and crop.multiple_blobs and crop.two_digits  # to a person (neighbours)


def test_one_digit_is_one_blob(reference):
    crop = normalize(png(seven()))
    assert crop.blobs == 1 and not crop.multiple_blobs


def test_a_speck_far_from_the_digit_neither_counts_nor_stretches_the_box(reference):
    page = Image.new("L", (160, 160), PAPER)
    page.paste(seven(), (20, 40))
    ImageDraw.Draw(page).ellipse((140, 140, 143, 143), fill=INK)
    crop = normalize(png(page))
    assert crop.blobs == 1
    assert close_to(crop.pixels, reference)


# ------------------------------------------------------------------------------ bad input


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


@pytest.mark.parametrize(
    ("data", "error", "reason", "words"),
    [
        (b"", EmptyInput, "empty", "zero bytes"),
        (b"hello, this is not an image at all", NotAnImage, "not_an_image", "supported format"),
        (np.zeros(10).tobytes(), NotAnImage, "not_an_image", "supported format"),
        (encode(seven(), "PPM"), NotAnImage, "not_an_image", "PNG, JPEG"),
        (png(seven())[:60], TruncatedImage, "truncated", "truncated"),
        (encode(seven(), "JPEG")[:300], TruncatedImage, "truncated", "truncated"),
        (png(seven())[:16], TruncatedImage, "truncated", "truncated"),
        (_png_header(0, 10), BadGeometry, "bad_geometry", "zero-size"),
        (png(Image.new("L", (1, 5000), 200)), BadGeometry, "bad_geometry", "aspect ratio"),
        (png(Image.new("L", (400, 20), 200)), BadGeometry, "bad_geometry", "aspect ratio"),
        (_png_header(100_000, 100_000), TooLarge, "too_large", "pixels"),
    ],
    ids=[
        "zero-bytes",
        "text",
        "zeros",
        "unsupported-ppm",
        "truncated-png",
        "truncated-jpeg",
        "truncated-header",
        "zero-width",
        "sliver",
        "wide-strip",
        "header-bomb",
    ],
)
def test_bad_input_raises_a_typed_error_with_a_clear_message(data, error, reason, words):
    with pytest.raises(error) as caught:
        normalize(data)
    assert isinstance(caught.value, ScanError) and isinstance(caught.value, ValueError)
    assert caught.value.reason == reason
    assert words in str(caught.value)


def _with_chunk(data: bytes, kind: bytes, body: bytes, before: bytes) -> bytes:
    """``data`` (a PNG) with one more chunk inserted before the first ``before`` chunk."""
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    at = data.index(before) - 4
    return data[:at] + chunk + data[at:]


@pytest.mark.parametrize("before", [b"IDAT", b"IEND"], ids=["in-header", "after-pixels"])
@pytest.mark.parametrize(
    ("kind", "lead", "words"),
    [
        (b"iTXt", b"Comment\x00\x01\x00\x00\x00", "text chunk (iTXt)"),
        (b"zTXt", b"Comment\x00\x00", "text chunk (zTXt)"),
        (b"iCCP", b"icc\x00\x00", "colour-profile chunk (iCCP)"),
    ],
    ids=["iTXt", "zTXt", "iCCP"],
)
def test_a_compressed_text_chunk_bomb_is_named_not_called_truncated(kind, lead, words, before):
    """50 MB of text deflated into 50 kB: Pillow stops inflating it at 1 MB; the reason must say
    so, not "header is truncated or corrupt" (the file is whole)."""
    bomb = _with_chunk(png(seven()), kind, lead + zlib.compress(b"A" * 50_000_000, 9), before)
    with pytest.raises(TooLarge) as caught:
        decode(bomb)
    assert caught.value.reason == "too_large"
    assert words in str(caught.value) and "decompresses past the limit" in str(caught.value)
    assert "truncated" not in str(caught.value)


def test_corrupt_pixel_data_is_an_error_not_a_crash():
    data = bytearray(png(seven()))
    start = data.index(b"IDAT") + 8
    data[start : start + 40] = bytes(range(40))
    with pytest.raises(TruncatedImage):
        normalize(bytes(data))


def test_byte_limit_is_checked_first():
    data = png(seven())
    with pytest.raises(TooLarge, match="bytes"):
        normalize(data, Limits(max_bytes=len(data) - 1))
    assert not normalize(data, Limits(max_bytes=len(data))).blank


def test_pixel_limit_comes_from_the_header_before_decoding():
    # 30000 x 30000 claimed by a 100-byte file: refusing it must not try to allocate 900 MB.
    with pytest.raises(TooLarge, match="30000x30000"):
        decode(_png_header(30_000, 30_000))
    with pytest.raises(TooLarge, match="4800 pixels"):
        decode(png(seven()), Limits(max_pixels=4_000))


def test_pillow_decompression_bomb_checks_become_our_error(monkeypatch):
    """Pillow warns above MAX_IMAGE_PIXELS and refuses above twice that: both must be TooLarge,
    never a stray warning, even when our own limit is set higher."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2_000)
    generous = Limits(max_pixels=10**9)
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        with pytest.raises(TooLarge, match="decompression"):
            decode(png(seven(50, 60)), generous)  # 3000 pixels: Pillow's warning
        with pytest.raises(TooLarge, match="decompression"):
            decode(png(seven()), generous)  # 4800 pixels: Pillow's error
    assert not escaped, [str(w.message) for w in escaped]


def test_aspect_limit_is_configurable():
    strip = png(Image.new("L", (300, 20), 200))
    with pytest.raises(BadGeometry, match="15.0"):
        decode(strip)
    assert decode(strip, Limits(max_aspect=15.0)).shape == (20, 300)


def test_not_bytes_is_a_scan_error():
    with pytest.raises(NotAnImage, match="str"):
        normalize("seven.png")


def test_normalize_gray_rejects_what_is_not_a_grey_image():
    with pytest.raises(BadGeometry):
        normalize_gray(np.zeros((0, 5)))
    with pytest.raises(BadGeometry):
        normalize_gray(np.zeros((4, 4, 3)))
    # A sliver decode() would refuse: its working copy had no rows left, and numpy said so.
    for shape in ((135, 3), (3, 1000)):
        for keep_edges in (True, False):
            with pytest.raises(BadGeometry, match="aspect ratio"):
                normalize_gray(np.zeros(shape), keep_edges=keep_edges)
    assert normalize_gray(np.ones((36, 3)), keep_edges=False).blank  # at the limit: read


# ------------------------------------------------------------------------------ the batch form


def test_one_broken_item_does_not_fail_the_batch(reference):
    items = [png(seven()), b"", b"garbage", png(Image.new("L", (30, 30), 240)), png(seven())[:50]]
    results = normalize_many(items)
    assert len(results) == len(items)
    assert isinstance(results[0], Crop) and close_to(results[0].pixels, reference, 1e-6)
    assert isinstance(results[1], EmptyInput)
    assert isinstance(results[2], NotAnImage)
    assert isinstance(results[3], Crop) and results[3].blank
    assert isinstance(results[4], TruncatedImage)


def test_a_long_batch_keeps_its_order_across_decode_groups(monkeypatch):
    """normalize_many decodes in bounded groups before normalizing; the answers must be exactly
    those of normalize, in order, however the groups fall."""
    import digits.model.normalize as module

    monkeypatch.setattr(module, "BATCH_DECODE", 4)  # groups of four...
    monkeypatch.setattr(module, "DECODED_BUDGET", 3 * 60 * 80)  # ...or of three sevens' pixels
    items = [png(seven()) if k % 4 else b"broken" for k in range(10)]
    items += [png(Image.new("L", (30, 30), 240))] * 3 + [png(seven(120, 160))] * 4
    results = normalize_many(items)
    assert len(results) == len(items)
    for item, result in zip(items, results, strict=True):
        try:
            single = normalize(item)
        except ScanError as exc:
            assert type(result) is type(exc) and str(result) == str(exc)
            continue
        assert isinstance(result, Crop) and result.blobs == single.blobs
        assert (result.pixels is None) == (single.pixels is None)
        if single.pixels is not None:
            assert np.array_equal(result.pixels, single.pixels)


def test_a_crop_reads_the_same_in_any_group_of_others(mnist):
    """A group's papers are fitted together (``paper.ink_contrasts``), as arrays over its crops:
    each crop must still get exactly the paper it gets alone, whatever its neighbours' polarity,
    lighting, size or kind (a bitmap takes no plane at all; a 3-pixel crop has fewer blocks)."""
    bold = Image.new("L", (40, 48), PAPER)
    ImageDraw.Draw(bold).ellipse((2, 2, 37, 45), outline=INK, width=15)
    rng = np.random.default_rng(5)
    noisy = np.asarray(seven(120, 160), dtype=np.float32) + rng.normal(0, 15, (160, 120))
    items = [
        png(seven()),
        png(seven(paper=30, ink=220)),  # light ink on dark paper
        png(_on_gradient(seven(90, 70), 0.45, 1.0, horizontal=True)),
        png(bold),  # more ink than paper
        png(Image.fromarray(stretched_bitmap(seven()))),  # a 1-bit bitmap: no plane, with views
        encode(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "JPEG", quality=50),
        png(Image.fromarray(np.array([[250, 20, 250], [250, 20, 250], [250, 20, 250]], np.uint8))),
        b"broken",
        _paper("gradient"),
        _paper("texture"),
        png(seven(paper=200, ink=120)),
        *scanlike_set(mnist.x_test[:200], seed=3),  # papers of every lighting, JPEG and PNG
    ]
    alone = []
    for item in items:
        try:
            alone.append(normalize(item))
        except ScanError as exc:
            alone.append(exc)
    for group in (items, items[::-1]):
        together = normalize_many(group)
        for single, result in zip(alone if group is items else alone[::-1], together, strict=True):
            if isinstance(single, ScanError):
                assert type(result) is type(single)
                continue
            assert isinstance(result, Crop)
            assert (result.blobs, result.fills_box) == (single.blobs, single.fills_box)
            assert (result.pixels is None) == (single.pixels is None)
            if single.pixels is not None:
                assert np.array_equal(result.pixels, single.pixels)
            assert len(result.views) == len(single.views)
            assert all(
                np.array_equal(a, b) for a, b in zip(result.views, single.views, strict=True)
            )
    # The contrasts themselves, before any threshold could hide a plane a little off.
    works = [decode(item).astype(np.float32) for item in items if item != b"broken"]
    for single, together in zip(map(ink_contrast, works), ink_contrasts(works), strict=True):
        assert np.array_equal(single, together)
    kinds = [c.blank for c in alone if isinstance(c, Crop)]
    assert kinds.count(True) >= 2 and kinds.count(False) >= 6  # both kinds took part
    assert any(isinstance(c, Crop) and c.views for c in alone)  # and a bitmap with its views


def mottled(k: int) -> np.ndarray:
    """A crop of a ring and a bar on tilted, mottled paper (light ink on dark paper when k % 4 is
    3), in plain float32 arithmetic: the same pixels on every machine."""
    h, w = 20 + 7 * k, 18 + 5 * (k % 5)
    y, x = np.mgrid[:h, :w].astype(np.float32)
    paper = 0.82 + 0.0021 * x * (k % 3 - 1) - 0.0017 * y * ((k // 3) % 3 - 1)
    texture = ((x * x * 31 + x * y * 17 + y * 5 + k * 7) % 97 / 97.0 - 0.5) * (
        0.05 + 0.02 * (k % 4)
    )
    cy, cx, r = (
        h * (0.3 + 0.05 * k % 0.4),
        w * (0.35 + 0.07 * k % 0.3),
        min(h, w) * (0.2 + 0.03 * k),
    )
    band = max(1.5, r * 0.25)
    distance = (y - cy) ** 2 + (x - cx) ** 2
    ink = np.where((distance > (r - band) ** 2) & (distance < (r + band) ** 2), 0.55, 0.0)
    ink[int(h * 0.2) : int(h * 0.85), int(w * 0.6) : int(w * 0.6) + 3 + k % 4] = 0.6
    work = (paper + texture - ink).astype(np.float32)
    return (1.0 - work).astype(np.float32) if k % 4 == 3 else work


# The contrast at the four corners (top left, top right, bottom left, bottom right) of mottled(k),
# as the paper's fits made it crop by crop in Python floats before they ran on a group's arrays
# (commit a0bc91e). The corners are the plane itself less the paper there: a fit that takes
# another median, or another subset of blocks, moves them (the lower median moves 11, 34 and 35).
CORNERS_BEFORE_GROUPING = {
    3: (0.0708574652671814, 0.03641676902770996, 0.0650981068611145, -0.00563126802444458),
    11: (0.012236565351486206, 0.03256608545780182, 0.01883876323699951, 0.023291990160942078),
    34: (0.048734843730926514, 0.005505979061126709, 0.016033142805099487, 0.015484660863876343),
    35: (0.14620620012283325, -0.14310643076896667, 0.12050455808639526, -0.12004512548446655),
}


def test_papers_fitted_as_a_group_are_the_planes_fitted_one_by_one():
    works = [mottled(k) for k in CORNERS_BEFORE_GROUPING]
    for contrasts in (ink_contrasts(works), [ink_contrast(work) for work in works]):
        corners = [
            tuple(float(c[i, j]) for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1)))
            for c in contrasts
        ]
        assert corners == list(CORNERS_BEFORE_GROUPING.values())


def test_a_batch_says_when_each_group_is_decoded_and_normalized(monkeypatch):
    """A worker books decoding and normalizing apart (its StageClock's laps), a group at a time."""
    import digits.model.normalize as module

    monkeypatch.setattr(module, "BATCH_DECODE", 4)
    stages: list[str] = []
    results = normalize_many([png(seven())] * 9 + [b"broken"], lap=stages.append)
    assert len(results) == 10 and isinstance(results[-1], ScanError)
    assert stages == ["decode", "normalize"] * 3  # groups of 4, 4 and 2


def test_batch_uses_the_given_limits():
    data = png(seven())
    (result,) = normalize_many([data], Limits(max_bytes=10))
    assert isinstance(result, TooLarge)
    assert Limits() == DEFAULT_LIMITS
