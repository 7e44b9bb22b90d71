"""How many crops per second normalization sustains on ONE core, decode included.

The worker runs one process per core, so the figure that sizes a deployment is single-core: this
pins itself to one CPU and keeps numpy's thread pools at one thread before numpy is imported. The
crops are scan-like MNIST test digits (dark ink on uneven paper, noise, blur, some colour) resized
to 64x64 and saved as PNG, then decoded and normalized one by one (the CLI's way) and in chunks
through normalize_many (the worker's way, which decodes a group before normalizing it).

    python scripts/devtools/bench_normalize.py [--count 1000] [--runs 10] [--data DIR]

The best of several runs is the figure (timing noise on a shared machine only ever adds time);
the median is printed beside it, and the rate per second of CPU time the process actually got.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy loads its thread pools

import argparse  # noqa: E402
import io  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

if __package__ in (None, ""):  # `python scripts/devtools/bench_normalize.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from digits.model import data  # noqa: E402
from digits.model.normalize import decode, normalize, normalize_many  # noqa: E402
from digits.model.scanlike import scan_pixels  # noqa: E402

SIDE = 64
CHUNK = 256  # the worker's default chunk of crops


def crops(images: np.ndarray, seed: int) -> list[bytes]:
    """Scan-like digits as SIDE x SIDE PNG files, the size of a typical crop off a 200 dpi form."""
    out = []
    for index, image in enumerate(images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        scan = Image.fromarray(scan_pixels(image, rng)).resize((SIDE, SIDE), Image.Resampling.BOX)
        buffer = io.BytesIO()
        scan.save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


def rate(process, items: list[bytes], runs: int) -> tuple[float, float, float]:
    """Best and median items per wall-clock second over ``runs`` passes of ``process(items)``, and
    the best per second of CPU time this process got (on a shared machine, time spent waiting
    for the core is not the code's)."""
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        process(items)
        wall.append(len(items) / (time.perf_counter() - start))
        cpu.append(len(items) / max(time.process_time() - start_cpu, 1e-9))
    return max(wall), statistics.median(wall), max(cpu)


def one_by_one(function):
    return lambda items: [function(item) for item in items]


def in_chunks(items: list[bytes]) -> None:
    """The worker's way: normalize_many over chunks of CHUNK crops."""
    for start in range(0, len(items), CHUNK):
        normalize_many(items[start : start + CHUNK])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="crops per run")
    parser.add_argument("--runs", type=int, default=10, help="timed passes; the best is reported")
    parser.add_argument("--data", help="MNIST directory (default: $DIGITS_MNIST_DIR)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    cv2.setNumThreads(1)  # as in a worker child (warmup.load_in_child)
    mnist = data.load(args.data)
    items = crops(mnist.x_test[: args.count], args.seed)
    blank = sum(normalize(item).blank for item in items)  # also warms caches and imports
    print(f"{len(items)} scan-like {SIDE}x{SIDE} PNG crops, one core, best of {args.runs} runs")
    for label, process in (
        ("decode only", one_by_one(decode)),
        ("normalize, one by one", one_by_one(normalize)),
        (f"normalize_many, chunks of {CHUNK}", in_chunks),
    ):
        best, median, cpu = rate(process, items, args.runs)
        print(
            f"{label + ':':34} {best:6.0f} crops/s (median {median:.0f}; {cpu:.0f} per CPU-second)"
        )
    print(f"blank: {blank} of {len(items)}")


if __name__ == "__main__":
    main()
