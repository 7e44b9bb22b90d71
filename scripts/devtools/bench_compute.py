"""The benchmark's crops and its compute ceilings (:mod:`.bench`): the seed's one-predict-per-image
loop, raw inference in as many single-threaded processes as the worker has children, and
normalization on one core, each timed in a child process of its own.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------------ crops


def crop_pool(count: int, seed: int, data_dir: Path | None, cache_dir: Path) -> list[bytes]:
    """``count`` distinct scan-like crops, rendered once and cached by count, seed and renderer."""
    from digits.model import scanlike

    renderer = hashlib.sha256(Path(scanlike.__file__).read_bytes()).hexdigest()[:12]

    def render() -> list[bytes]:
        from digits.model import data

        return scanlike.scanlike_set(data.load(data_dir).x_test[:count], seed=seed)

    return cached_blobs(cache_dir / f"scanlike-{count}-{seed}-{renderer}.npz", render)


def cached_blobs(path: Path, make: Callable[[], list[bytes]]) -> list[bytes]:
    """The byte strings stored at ``path``, or ``make()``'s, stored there first (by rename, so a
    run that dies half-way never leaves a half-written cache)."""
    if path.is_file():
        with np.load(path) as stored:
            blob, offsets = stored["blob"].tobytes(), stored["offsets"]
        return [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    blobs = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, blob=np.frombuffer(b"".join(blobs), np.uint8), offsets=offsets)
    temporary.replace(path)
    return blobs


def normalized_pixels(crops: Sequence[bytes]) -> np.ndarray:
    """The network's input for every crop with ink: (n, 28, 28) float32."""
    from digits.model.normalize import Crop, normalize_many

    found = [c.pixels for c in normalize_many(crops) if isinstance(c, Crop) and not c.blank]
    return np.stack(found)


def job_crops(pool: Sequence[bytes], count: int, prefix: str) -> list:
    from digits.worker.submission.jobs import Crop

    return [Crop(f"{prefix}/{i:06d}", pool[i % len(pool)]) for i in range(count)]


# ------------------------------------------------------------------------- compute, in children
# Each runs in a fresh spawned process so its TensorFlow and BLAS thread settings are its own.


@contextlib.contextmanager
def _single_threaded_env() -> Iterator[None]:
    """BLAS and OpenCV pools of one thread for processes started inside, as a worker child runs
    (``warmup.load_in_child`` sets OpenCV's; until session 20 these phases ran OpenCV on two
    threads, and the fields' one-core figures were 10-15% low for it). The environment is
    restored after, so the worker started later runs with whatever its operator's says."""
    names = (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENCV_FOR_THREADS_NUM",
        "TF_CPP_MIN_LOG_LEVEL",
    )
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names[:4]})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def seed_child(model_path: str, pixels: np.ndarray, out) -> None:
    """The seed's loop: ``predict`` per image, with TensorFlow's default threads (all cores)."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    model.predict(pixels[:1, ..., None], verbose=0)  # builds the predict function once
    started = time.perf_counter()
    for image in pixels:
        model.predict(image[None, ..., None], verbose=0)
    out.put(len(pixels) / (time.perf_counter() - started))


def raw_child(model_path: str, pixels: np.ndarray, batch: int, seconds: float, barrier, out):
    """The worker child's forward pass on ready input; all children start together."""
    from digits.model.inference import Classifier

    classifier = Classifier.load(model_path, threads=1)
    classifier.probabilities(pixels[:batch])  # traces the compiled function
    barrier.wait()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = (done // batch * batch) % max(1, len(pixels) - batch)
        classifier.probabilities(pixels[start : start + batch])
        done += batch
    out.put(done / (time.perf_counter() - started))


def normalize_child(crops: list[bytes], batch: int, seconds: float, out) -> None:
    """What a worker child does before the network sees anything: decode and normalize."""
    from digits.model.normalize import normalize_many

    normalize_many(crops[:batch])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = done % max(1, len(crops) - batch)
        normalize_many(crops[start : start + batch])
        done += batch
    out.put(done / (time.perf_counter() - started))


def in_children(target: Callable, args: Sequence[tuple], barrier: bool = False) -> list[float]:
    """Run ``target(*a, [barrier,] queue)`` for each ``a`` in its own spawned process at once."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    together = context.Barrier(len(args)) if barrier else None
    processes = [
        context.Process(target=target, args=(*a, *([together] if barrier else []), out))
        for a in args
    ]
    with _single_threaded_env():
        for process in processes:
            process.start()
    try:
        return [out.get(timeout=600) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)


def seed_rate(model_path: Path, pixels: np.ndarray) -> float:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=seed_child, args=(str(model_path), pixels, out))
    process.start()
    try:
        return out.get(timeout=600)
    finally:
        process.join(timeout=30)


# --------------------------------------------------------------------------------- end to end
