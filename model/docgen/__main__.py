"""``python -m digits.model.docgen``: a speed benchmark, or the pictures in docs/docgen/.

python -m digits.model.docgen --bench [--count 2000]
python -m digits.model.docgen --pictures [--out docs/docgen]
"""

from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from digits.model import data
from digits.model.docgen import strokes
from digits.model.docgen.core import documents, generate
from digits.model.docgen.families import FAMILIES
from digits.model.docgen.sheet import contact_sheet


def bench(images: np.ndarray, labels: np.ndarray, count: int) -> None:
    """Fields per second on this core: raw (pre-JPEG), with JPEG round trip, and grey fast path."""
    for i in range(count):  # warm the centre-line cache, as a long training run would be
        generate(images, labels, i, seed=99, jpeg=False)
    for name, jpeg in (("raw (jpeg=False)", False), ("jpeg round trip", True)):
        wall = cpu = 0.0
        for _ in range(3):
            t, c = time.perf_counter(), time.process_time()
            for i in range(count):
                generate(images, labels, i, seed=7, jpeg=jpeg)
            wall = max(wall, count / (time.perf_counter() - t))
            cpu = max(cpu, count / (time.process_time() - c))
        print(
            f"{name:>18}: {wall:,.0f} fields/s wall, {cpu:,.0f} per CPU-second (best of 3, {count} fields)"
        )
    t = time.perf_counter()
    for i in range(count):
        generate(images, labels, i, seed=11, jpeg=False)
    print(
        f"{'cold cache (raw)':>18}: {count / (time.perf_counter() - t):,.0f} fields/s (new glyphs thinned)"
    )


def nines(path: str, count: int = 8) -> None:
    """The two Chilean nines the generator draws beside MNIST's, looped, then crossed at the
    waist, and the one written as a cursive ell (centre lines through a 3 px pen, a row each)."""
    rows = []
    for shape in (strokes.looped_nine, strokes.crossed_nine, strokes.looped_one):
        tiles = []
        for seed in range(count):
            line = shape(np.random.default_rng(seed))
            tile = np.zeros((64, 64), np.uint8)
            tile[4 : 4 + line.shape[0], 4 : 4 + line.shape[1]] = line
            tiles.append(255 - cv2.dilate(tile, np.ones((3, 3), np.uint8)))
        rows.append(np.hstack(tiles))
    cv2.imwrite(path, np.vstack(rows))


def writer_digits(images: np.ndarray, labels: np.ndarray, path: str, count: int = 12) -> None:
    """What the single-digit cnn learns beside MNIST (``distort.writer_digit``): MNIST's ones and
    the same ones with a lead-in stroke or as a cursive ell, its sevens and the same crossed at
    the waist, then writer nines; a row each, black on white, 28 px tiles shown at 3x."""
    from digits.model import distort

    rows = []
    for digit in (1, 7):
        source = images[labels == digit][:count]
        drawn = [
            distort.writer_digit(im, digit, np.random.default_rng(i)) for i, im in enumerate(source)
        ]
        rows += [np.hstack([distort.recentre(im) for im in source]), np.hstack(drawn)]
    rows.append(np.hstack([distort.writer_nine(np.random.default_rng(i)) for i in range(count)]))
    sheet = 255 - np.vstack(rows)
    cv2.imwrite(path, cv2.resize(sheet, None, fx=3, fy=3, interpolation=cv2.INTER_NEAREST))


def glyph_styles(images: np.ndarray, labels: np.ndarray, path: str, count: int = 4) -> None:
    """Composed zips (``fieldgen``) in each glyph style, one column each: the same texts, the
    digits as MNIST drew them, at a low resolution, and stretched to fill a 16 px box."""
    from digits.model import fieldgen

    columns = []
    for style in fieldgen.GLYPH_STYLES:
        fields = fieldgen.field_set(images, labels, count, seed=5, glyphs=style)
        tiles = []
        for f in fields:
            tile = cv2.imdecode(np.frombuffer(f.data, np.uint8), cv2.IMREAD_COLOR)
            tile = cv2.resize(tile, (360, 72), interpolation=cv2.INTER_AREA)
            cv2.putText(tile, style, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 255), 1)
            tiles.append(np.pad(tile, ((3, 3), (3, 3), (0, 0)), constant_values=255))
        columns.append(np.vstack(tiles))
    cv2.imwrite(path, np.hstack(columns))


def pictures(images: np.ndarray, labels: np.ndarray, out: str) -> None:
    """The contact sheets of docs/docgen.md (MNIST test digits: nothing a model trained on)."""
    contact_sheet(
        documents(images, labels, 24, seed=1, kind="amount"), os.path.join(out, "amount_train.png")
    )
    contact_sheet(
        documents(images, labels, 24, seed=1, kind="amount", split="heldout"),
        os.path.join(out, "amount_heldout.png"),
    )
    contact_sheet(
        documents(images, labels, 16, seed=1, kind="zip"), os.path.join(out, "zip_train.png")
    )
    contact_sheet(
        documents(images, labels, 8, seed=2, kind="amount"),
        os.path.join(out, "comparison_2x.png"),
        columns=2,
        scale=2.0,
    )
    nines(os.path.join(out, "nines.png"))
    writer_digits(images, labels, os.path.join(out, "writer_digits.png"))
    glyph_styles(images, labels, os.path.join(out, "glyph_styles.png"))
    docs, captions = [], []
    for trait, split_families in FAMILIES.items():
        names = [(n, s) for s in ("train", "heldout") for n in split_families[s]]
        kinds = {"zip5": "zip", "zip9": "zip", "zip9_space": "zip", "digits": "digits"}
        for j, (name, split) in enumerate(names):
            kind = kinds.get(name, "digits") if name.startswith(("zip", "digits")) else "amount"
            docs.append(generate(images, labels, j, 3, kind, split, True, {trait: name}))
            captions.append(f"{trait}: {name}" + (" (held out)" if split == "heldout" else ""))
        while len(docs) % 4:
            docs.append(docs[-1])
            captions.append(captions[-1])
    contact_sheet(docs, os.path.join(out, "traits.png"), captions=captions)
    from digits.model import pieces
    from digits.model.inference import Classifier

    pieces.picture(Classifier.load(), images, labels, os.path.join(out, "cuts.png"))
    print(f"wrote pictures in {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m digits.model.docgen", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--bench", action="store_true", help="print fields/s")
    parser.add_argument("--pictures", action="store_true", help="write the docs/docgen pictures")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--data", default=None, help="MNIST directory (default: the usual lookup)")
    parser.add_argument("--out", default="docs/docgen")
    args = parser.parse_args(argv)
    mnist = data.load(args.data)
    if args.bench:
        cv2.setNumThreads(1)  # one core, as in a data-loader worker; OpenCV's threads only contend
        bench(mnist.x_train, mnist.y_train, args.count)
    if args.pictures:
        pictures(mnist.x_test, mnist.y_test, args.out)
    if not (args.bench or args.pictures):
        parser.print_help()


if __name__ == "__main__":
    main()
