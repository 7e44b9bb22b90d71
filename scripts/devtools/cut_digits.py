"""Single digits cut from a labelled folder of real fields, for ``digits evaluate --labelled``.

    python -m digits.cli.devtools.cut_digits FIELDS OUT [--kind amount]

The hidden sets the product is judged on hold real single digits, and the only real handwriting
here is whole fields (``../shared/datasets/real-samples/cheques``). Both field readers read each
field, as ``digits classify --field`` does; where the segmenter's digits are the field's label,
each digit is cut from the scan at the segmenter's box for it, with a few pixels of margin, and
written as ``OUT/<field>_<k>.png``, with ``OUT/labels.csv``.
``OUT/whole/`` holds those the segmenter read as a piece of ink of their own: no cut, so no
neighbour's ink, the nearest to a digit in a box of its own. Then

    digits evaluate --labelled OUT [--model ...]     # every cut digit
    digits evaluate --labelled OUT/whole             # the digits written apart

score the single-digit network on real writers' digits (docs/evaluation.md, "Writers' ones and
sevens"). The cuts are the segmenter's, so a digit it read right from a field is an easier digit
than the field's average; each network is compared on the same cuts. Which digits are kept
depends on the networks the segmenter read with (the field digit network, and the cnn for the
pieces read alone: ``DIGITS_MODEL``), so a set cut with one cnn flatters that cnn a little.
OUT holds real scans: never commit it, never train on it (the real samples' README).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

MARGIN = 3  # pixels of the scan kept round each box: the normalizer needs some paper


def cut(fields: Path, out: Path, kind: str) -> dict[str, int]:
    """Write the cut digits and their labels; return how many fields and digits were used."""
    from digits.model.consensus import read_pairs
    from digits.model.field_eval import labelled_dir
    from digits.worker.config import Settings
    from digits.worker.queue import model_cache

    settings = Settings.from_env()
    networks = model_cache.field_digits(settings.field_digits_path, settings.model_path)
    reader = model_cache.field_reader(settings.field_model_path)
    paths, labels = labelled_dir(fields)
    scans = [path.read_bytes() for path in paths]
    answers = read_pairs(networks, reader, scans, kind)
    (out / "whole").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[tuple[str, str]]] = {"all": [], "whole": []}
    used = 0
    for path, label, scan, answer in zip(paths, labels, scans, answers, strict=True):
        guesses = answer.segmented.digits if answer.segmented else []
        if "".join(str(g.digit) for g in guesses) != label:
            continue
        image = cv2.imdecode(np.frombuffer(scan, np.uint8), cv2.IMREAD_COLOR)
        if image is None:  # read by the field readers (Pillow) but not by OpenCV: a GIF, say
            continue
        used += 1
        h, w = image.shape[:2]
        for k, (guess, digit) in enumerate(zip(guesses, label, strict=True)):
            x0, y0, x1, y1 = guess.box
            piece = image[
                max(0, y0 - MARGIN) : min(h, y1 + MARGIN), max(0, x0 - MARGIN) : min(w, x1 + MARGIN)
            ]
            name = f"{path.stem}_{k}.png"
            cv2.imwrite(str(out / name), piece)
            rows["all"].append((name, digit))
            if guess.whole:
                cv2.imwrite(str(out / "whole" / name), piece)
                rows["whole"].append((name, digit))
    for folder, found in ((out, rows["all"]), (out / "whole", rows["whole"])):
        with (folder / "labels.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "label"])
            writer.writerows(found)
    return {
        "fields": len(paths),
        "used": used,
        "digits": len(rows["all"]),
        "whole": len(rows["whole"]),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m digits.cli.devtools.cut_digits", description=__doc__.split("\n")[0]
    )
    parser.add_argument("fields", type=Path, help="a folder of field scans with labels.csv")
    parser.add_argument("out", type=Path, help="where the digits go (never in the repository)")
    parser.add_argument("--kind", default="amount", help="the fields' kind [amount]")
    args = parser.parse_args(argv)
    counts = cut(args.fields, args.out, args.kind)
    print(
        f"{counts['digits']} digits ({counts['whole']} written apart) from {counts['used']} of "
        f"{counts['fields']} fields, in {args.out}"
    )


if __name__ == "__main__":
    main()
