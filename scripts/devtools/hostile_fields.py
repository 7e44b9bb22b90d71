"""Seconds to read field scans no writer made: a photograph, a speckled fax, hatching.

    python -m digits.cli.devtools.hostile_fields [--kind amount] [--only NAME] [--random N]

A field's reader must stay as quick on what a careless or hostile sender hands it as on a
cheque: a worker reads a chunk of fields in one task under a time limit, so one scan that takes
minutes holds up every field of its chunk (docs/reliability.md, "Hostile fields"). Each scan
here is seeded; each is read alone through ``consensus.read_pairs`` on one thread, as a worker's
child reads it, and its seconds, status, digit count and reasons printed as it ends (a scan that
never ends shows which one it was). Takes under a minute. ``--random N`` then reads N more,
drawn at random (seeded) from five families at any size a field is read at: grey noise, black
specks, blotches, stripes and blurred noise; it prints the slowest and the median.
"""

from __future__ import annotations

import argparse
import io
import time

import cv2
import numpy as np
from PIL import Image


def _png(pixels: np.ndarray, mode: str = "L") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode).save(out, "PNG")
    return out.getvalue()


def _specks(shape: tuple[int, int], share: float, seed: int) -> np.ndarray:
    """Grey paper with ``share`` of its pixels black."""
    paper = np.full(shape, 230, np.uint8)
    paper[np.random.default_rng(seed).random(shape) < share] = 0
    return paper


def scans() -> dict[str, bytes]:
    """Name to scan bytes: every scan the benchmark reads."""
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:300, :1300]
    hatch = np.full((300, 1300), 255, np.uint8)
    hatch[((cols + rows) % 7 == 0) | ((cols - rows) % 9 == 0)] = 0
    return {
        "photograph, grey, 200x50": _png(rng.integers(0, 256, (50, 200), dtype=np.uint8)),
        "photograph, RGBA, 200x50": _png(
            rng.integers(0, 256, (50, 200, 4), dtype=np.uint8), "RGBA"
        ),
        "photograph, RGBA, 2000x100": _png(
            rng.integers(0, 256, (100, 2000, 4), dtype=np.uint8), "RGBA"
        ),
        "photograph, grey, 3900x100": _png(rng.integers(0, 256, (100, 3900), dtype=np.uint8)),
        "fax specks 8%, 400x60": _png(_specks((60, 400), 0.08, 1)),
        "fax specks 30%, 800x120": _png(_specks((120, 800), 0.3, 2)),
        "hatching, 1300x300": _png(hatch),
    }


def random_scan(rng: np.random.Generator) -> tuple[str, bytes]:
    """One scan of a random family and size (up to the 400,000 pixels a field is read at)."""
    h = int(rng.integers(20, 400))
    w = int(min(h * rng.uniform(1, 30), 400_000 // h))
    family = ("noise", "specks", "blotches", "stripes", "blurred noise")[int(rng.integers(5))]
    a = np.full((h, w), rng.uniform(150, 255), np.float32)
    if family == "noise":
        a = rng.uniform(0, 255, (h, w))
    elif family == "specks":
        a[rng.random((h, w)) < rng.uniform(0.01, 0.5)] = 0
    elif family == "blotches":
        seeds = (rng.random((h, w)) < rng.uniform(0.005, 0.1)).astype(np.uint8)
        side = int(rng.integers(2, 9))
        a[cv2.dilate(seeds, np.ones((side, side), np.uint8)) > 0] = rng.uniform(0, 120)
    elif family == "stripes":
        rows, cols = np.mgrid[:h, :w]
        a[(cols * int(rng.integers(1, 4)) + rows) % int(rng.integers(2, 12)) == 0] = 0
    else:
        blurred = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)), (0, 0), rng.uniform(0.5, 4))
        a = (blurred - blurred.min()) / max(float(np.ptp(blurred)), 1.0) * 255
    return f"{family}, {w}x{h}", _png(a.clip(0, 255).astype(np.uint8))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", default="amount")
    parser.add_argument("--only", default="", help="only the scans whose name holds this")
    parser.add_argument("--random", type=int, default=0, help="then this many random scans")
    args = parser.parse_args(argv)
    from digits.model.consensus import FieldAnswer, read_pairs
    from digits.model.fields import FieldDigits
    from digits.model.sequence import SequenceReader
    from digits.worker.config import Settings

    cv2.setNumThreads(1)  # as a worker's child runs (queue.warmup.load_in_child)
    settings = Settings.from_env()
    networks = FieldDigits.load(settings.field_digits_path, settings.model_path, threads=1)
    reader = SequenceReader.load(settings.field_model_path)

    def timed(scan: bytes) -> tuple[float, FieldAnswer]:
        start = time.perf_counter()
        answer = read_pairs(networks, reader, [scan], args.kind)[0]
        return time.perf_counter() - start, answer

    named = scans()
    timed(named["photograph, grey, 200x50"])  # the first call traces the networks: not timed
    print("| scan | seconds | status | digits read | reasons |")
    print("| --- | --- | --- | --- | --- |")
    for name, scan in named.items():
        if args.only not in name:
            continue
        seconds, answer = timed(scan)
        digits = len(answer.segmented.digits) if answer.segmented else 0
        why = ", ".join(answer.reasons) or answer.error or ""
        print(f"| {name} | {seconds:.2f} | {answer.status} | {digits} | {why} |", flush=True)
    rng = np.random.default_rng(0)
    slowest = []
    for _ in range(args.random):
        name, scan = random_scan(rng)
        seconds, answer = timed(scan)
        slowest.append((seconds, name, ", ".join(answer.reasons)))
    if slowest:
        slowest.sort(reverse=True)
        median = slowest[len(slowest) // 2][0]
        print(f"\n{len(slowest)} random scans: median {median:.2f} s; the slowest:")
        for seconds, name, why in slowest[:5]:
            print(f"  {seconds:.2f} s  {name}  ({why})")


if __name__ == "__main__":
    main()
