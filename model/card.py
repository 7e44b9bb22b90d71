"""The JSON card that sits beside every saved model, and the version string derived from it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def card_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_card(model_path: str | Path) -> dict:
    """The card, or a minimal one derived from the file when a model travels without its card."""
    path = card_path(model_path)
    if path.is_file():
        return json.loads(path.read_text())
    return {"arch": "unknown", "model_sha256": file_sha256(model_path)}


def version(card: dict) -> str:
    """``arch-<12 hex>``: names the exact weights, so every result can say which model produced it."""
    return f"{card.get('arch', 'unknown')}-{card['model_sha256'][:12]}"
