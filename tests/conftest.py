"""Shared test set-up: where MNIST lives, and the opt-in switch for slow scenarios."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MNIST_DIR = Path(
    os.environ.get("DIGITS_MNIST_DIR") or ROOT.parent / "shared" / "datasets" / "mnist"
)

pytest_plugins = ["tests.services"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="also run scenarios marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow") or os.environ.get("DIGITS_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow scenario: run with --runslow or DIGITS_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The shared MNIST IDX files; CI must have them, so there a missing directory is a failure."""
    if not (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").is_file():
        message = f"MNIST data set not found at {MNIST_DIR} (set DIGITS_MNIST_DIR to its directory)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return MNIST_DIR


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from digits.model import data

    return data.load(mnist_dir)
