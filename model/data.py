"""MNIST from a local directory (original IDX files or a Keras ``mnist.npz``), else the Keras download.

Machines without internet must never reach for the network, so a local directory always wins when one
is given (``--data`` or ``DIGITS_MNIST_DIR``). Every file is validated before numpy sees it, because a
truncated download otherwise surfaces as an unreadable reshape error far from its cause.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENV_VAR = "DIGITS_MNIST_DIR"

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
EXPECTED_COUNT = {"x_train": 60_000, "y_train": 60_000, "x_test": 10_000, "y_test": 10_000}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801


class DataError(ValueError):
    """A data file is missing, truncated or not what MNIST promises."""


@dataclass(frozen=True)
class Mnist:
    x_train: np.ndarray  # (60000, 28, 28) uint8, white ink on black
    y_train: np.ndarray  # (60000,) uint8
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    checksum: (
        str  # sha256 over the decoded arrays: the same digits give the same sum in any packaging
    )


def resolve_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The explicit directory, else the environment's, else None (meaning: download)."""
    chosen = data_dir or os.environ.get(ENV_VAR)
    return Path(chosen) if chosen else None


def load(data_dir: str | os.PathLike | None = None) -> Mnist:
    """Load MNIST from ``data_dir`` (or ``$DIGITS_MNIST_DIR``), or download it the standard Keras way."""
    directory = resolve_dir(data_dir)
    if directory is None:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
        arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
        source = "keras.datasets.mnist"
    else:
        if not directory.is_dir():
            raise DataError(f"{directory}: MNIST directory does not exist")
        arrays = _load_dir(directory)
        source = str(directory)
    for name, array in arrays.items():
        _check_array(name, array, source)
    return Mnist(**arrays, source=source, checksum=_checksum(arrays))


def _load_dir(directory: Path) -> dict[str, np.ndarray]:
    found = {name: _find_idx(directory, stem) for name, stem in IDX_FILES.items()}
    if all(found.values()):
        return {name: read_idx(path) for name, path in found.items() if path is not None}
    npz = directory / "mnist.npz"
    if npz.is_file():
        return _read_npz(npz)
    missing = [stem for stem in IDX_FILES.values() if not _find_idx(directory, stem)]
    raise DataError(f"{directory}: no mnist.npz and missing IDX files: {', '.join(missing)}")


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not), checking its header against its length."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot decompress ({exc})") from exc
    if len(raw) < 8:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header")
    magic, count = struct.unpack(">II", raw[:8])
    if magic == IMAGES_MAGIC:
        if len(raw) < 16:
            raise DataError(f"{path}: image header truncated")
        rows, cols = struct.unpack(">II", raw[8:16])
        shape: tuple[int, ...] = (count, rows, cols)
        offset = 16
    elif magic == LABELS_MAGIC:
        shape, offset = (count,), 8
    else:
        raise DataError(
            f"{path}: bad magic number 0x{magic:08x} "
            f"(expected 0x{IMAGES_MAGIC:08x} for images or 0x{LABELS_MAGIC:08x} for labels)"
        )
    expected = int(np.prod(shape))
    body = len(raw) - offset
    if body != expected:
        state = "truncated" if body < expected else "has trailing bytes"
        raise DataError(f"{path}: {state}: header promises {expected} bytes of data, found {body}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: np.asarray(npz[name]) for name in IDX_FILES}
    except KeyError as exc:
        raise DataError(f"{path}: missing array {exc}") from exc
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable npz archive ({exc})") from exc


def _check_array(name: str, array: np.ndarray, source: str) -> None:
    expected = EXPECTED_COUNT[name]
    if array.dtype != np.uint8:
        raise DataError(f"{source}: {name} has dtype {array.dtype}, expected uint8")
    if name.startswith("x") and array.shape != (expected, 28, 28):
        raise DataError(f"{source}: {name} has shape {array.shape}, expected ({expected}, 28, 28)")
    if name.startswith("y"):
        if array.shape != (expected,):
            raise DataError(f"{source}: {name} has shape {array.shape}, expected ({expected},)")
        if array.max() > 9:
            raise DataError(f"{source}: {name} holds label {int(array.max())}, outside 0-9")


def _checksum(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in IDX_FILES:
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


# The first 1,000 test digits, shipped with the package (see shipped/MNIST-SAMPLE.md): what the
# demo draws its crops from when no MNIST directory is at hand, so that it needs no download.
SAMPLE = Path(__file__).resolve().parent / "shipped" / "mnist-sample.npz"
SAMPLE_COUNT = 1000


def sample() -> tuple[np.ndarray, np.ndarray]:
    """The shipped test digits and their labels: (n, 28, 28) uint8 and (n,) uint8."""
    try:
        with np.load(SAMPLE, allow_pickle=False) as npz:
            images, labels = np.asarray(npz["x_test"]), np.asarray(npz["y_test"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{SAMPLE}: the shipped MNIST sample is unreadable ({exc})") from exc
    if images.dtype != np.uint8 or images.shape[1:] != (28, 28) or len(labels) != len(images):
        raise DataError(f"{SAMPLE}: not {len(labels)} MNIST digits and labels")
    return images, labels


def write_sample(data_dir: str | os.PathLike, path: Path = SAMPLE) -> Path:
    """Write the sample from a local MNIST directory: ``python -m digits.model.data --sample DIR``."""
    mnist = load(data_dir)
    np.savez_compressed(
        path, x_test=mnist.x_test[:SAMPLE_COUNT], y_test=mnist.y_test[:SAMPLE_COUNT]
    )
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write model/shipped/mnist-sample.npz.")
    parser.add_argument("--sample", metavar="DIR", required=True, help="A local MNIST directory.")
    print(write_sample(parser.parse_args().sample))
