"""Loading MNIST: the shared IDX files, an npz archive, and files that are broken in every usual way."""

from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest

from digits.model import data
from digits.model.data import DataError


def test_shared_idx_files_load_with_the_documented_shapes_and_means(mnist):
    assert mnist.x_train.shape == (60_000, 28, 28) and mnist.y_train.shape == (60_000,)
    assert mnist.x_test.shape == (10_000, 28, 28) and mnist.y_test.shape == (10_000,)
    assert round(float(mnist.x_train.mean()), 3) == 33.318
    assert round(float(mnist.x_test.mean()), 3) == 33.791
    assert set(np.unique(mnist.y_test)) == set(range(10))


def test_environment_variable_names_the_directory(mnist_dir, monkeypatch, mnist):
    monkeypatch.setenv(data.ENV_VAR, str(mnist_dir))
    assert data.load().checksum == mnist.checksum


def test_npz_and_uncompressed_idx_give_the_same_digits(tmp_path, mnist_dir, mnist):
    npz_dir = tmp_path / "npz"
    npz_dir.mkdir()
    np.savez(
        npz_dir / "mnist.npz",
        x_train=mnist.x_train,
        y_train=mnist.y_train,
        x_test=mnist.x_test,
        y_test=mnist.y_test,
    )
    assert data.load(npz_dir).checksum == mnist.checksum

    raw_dir = tmp_path / "raw"
    raw_dir.mkdir()
    for stem in data.IDX_FILES.values():
        (raw_dir / stem).write_bytes(gzip.decompress((mnist_dir / f"{stem}.gz").read_bytes()))
    assert data.load(raw_dir).checksum == mnist.checksum


@pytest.fixture
def copy_of(tmp_path, mnist_dir):
    for path in mnist_dir.glob("*.gz"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_truncated_file_is_named_with_what_is_missing(copy_of):
    path = copy_of / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(
        DataError, match=r"t10k-images-idx3-ubyte.gz: truncated.*7840000 bytes.*7839900"
    ):
        data.load(copy_of)


def test_truncated_gzip_stream_is_reported_as_such(copy_of):
    path = copy_of / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: cannot decompress"):
        data.load(copy_of)


def test_bad_magic_number_is_reported_in_hex(copy_of):
    path = copy_of / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[:4] = struct.pack(">I", 0xDEADBEEF)
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="bad magic number 0xdeadbeef"):
        data.load(copy_of)


def test_label_out_of_range_is_refused(copy_of):
    path = copy_of / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[8] = 11
    path.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataError, match="y_test holds label 11"):
        data.load(copy_of)


def test_wrong_count_is_refused(copy_of):
    path = copy_of / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(struct.pack(">II", 0x801, 9_999) + raw[8:-1]))
    with pytest.raises(DataError, match=r"y_test has shape \(9999,\), expected \(10000,\)"):
        data.load(copy_of)


def test_missing_files_are_listed(tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"")
    with pytest.raises(DataError, match="missing IDX files: train-labels-idx1-ubyte, t10k"):
        data.load(tmp_path)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere: MNIST directory does not exist"):
        data.load(tmp_path / "nowhere")


def test_corrupt_npz_is_named(tmp_path):
    (tmp_path / "mnist.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="mnist.npz: not a readable npz archive"):
        data.load(tmp_path)
