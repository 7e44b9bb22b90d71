"""The JSON card that sits beside every saved model, the version string derived from it, and
where the shipped models are."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# Named here, where nothing heavy is imported, so that the worker's settings and the submitting
# side can default to them without loading numpy or TensorFlow.
SHIPPED = Path(__file__).parent / "shipped"
SHIPPED_MODEL = SHIPPED / "cnn.keras"  # single digits
# The sequence reader of whole fields (model.sequence).
SHIPPED_FIELD_MODEL = SHIPPED / "field.keras"
# The segmenter's digit network: the cnn fine-tuned on digits cut out of generated documents
# (model.pieces). Fields only: it reads MNIST itself half a point worse than the cnn.
SHIPPED_FIELD_DIGITS = SHIPPED / "field-digits.keras"


def card_path(model_path: str | Path) -> Path:
    return Path(model_path).with_suffix(".json")


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_card(model_path: str | Path) -> dict:
    """The card, or a minimal one derived from the file when a model travels without its card.

    A card whose checksum is not the file's describes other weights (a model replaced under an
    old card, or a training run that died between the two writes): then only the file is trusted,
    so no result is ever credited to a model version that did not produce it.
    """
    actual = file_sha256(model_path)
    path = card_path(model_path)
    if path.is_file():
        card = json.loads(path.read_text())
        if card.get("model_sha256") == actual:
            return card
    return {"arch": "unknown", "model_sha256": actual}


def version(card: dict) -> str:
    """``arch-<12 hex>``: names the exact weights, so every result can say which model produced it."""
    return f"{card.get('arch', 'unknown')}-{card['model_sha256'][:12]}"


def partial_path(out: Path) -> Path:
    """Where a model is written before it is renamed to ``out``."""
    return out.with_name(f".{out.stem}.partial{out.suffix}")


def new_card(partial: Path, data_checksum: str, seconds: float, **fields: object) -> dict:
    """A card for the model just saved at ``partial``: ``fields`` (what it is and scored), then
    how to trust and reproduce it (checksums, library versions, when and how long)."""
    import platform
    from datetime import UTC, datetime

    import keras
    import tensorflow as tf

    return {
        **fields,
        "data_checksum": data_checksum,
        "model_sha256": file_sha256(partial),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "training_seconds": round(seconds, 1),
    }


def install(partial: Path, out: Path, card: dict) -> None:
    """Rename the model and then its card into place: a run that dies half-way never leaves a
    half-written file where a worker would load it, nor a card that describes other weights."""
    partial.replace(out)
    card_partial = card_path(partial)
    card_partial.write_text(json.dumps(card, indent=2) + "\n")
    card_partial.replace(card_path(out))
