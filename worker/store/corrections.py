"""What people keyed, as a labelled data set: the crops of items settled at the review station and
their final values, for fine-tuning (``digits train --extra DIR``) and for scoring.

One folder per kind of item: ``digit/`` and ``zip/``, ``amount/``, ``digits/`` for fields, each
with its crops (named by item, never by key: keys are outsiders' file names) and ``labels.csv``
(``file,label``, the form ``digits evaluate --fields --labelled`` reads, plus the text as keyed,
the job, the key and the model's reading), and ``manifest.json`` beside them.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from datetime import datetime
from pathlib import Path

from sqlalchemy import exists, select

from digits.model.kinds import digits_of
from digits.model.review import DIGIT
from digits.worker.store import db

LABEL_COLUMNS = ("file", "label", "text", "job_id", "key", "model_reading", "model_version")
FETCH_BATCH = 500
_SUFFIXES = (
    (b"\x89PNG", ".png"),
    (b"\xff\xd8", ".jpg"),
    (b"GIF8", ".gif"),
    (b"BM", ".bmp"),
    (b"II*\x00", ".tif"),
    (b"MM\x00*", ".tif"),
)


class ExportError(ValueError):
    """The export cannot be written where asked; nothing was written."""


def suffix(data: bytes) -> str:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((s for magic, s in _SUFFIXES if data.startswith(magic)), ".bin")


def label_of(kind: str, text: str) -> str:
    """The training label of a keyed value: the digit, or a field's digits only (what the
    readers must agree on, and what ``evaluate --fields --labelled`` compares)."""
    return text if kind == DIGIT else digits_of(text)


def export(
    session, directory: Path, job_id: str | None = None, since: datetime | None = None
) -> dict:
    """Write the data set into ``directory`` (new or empty); returns the manifest."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ExportError(f"{directory} exists and is not an empty folder: export into a new one")
    statement = (
        select(db.Item, db.Job.kind, db.Crop.data)
        .join(db.Job, db.Job.id == db.Item.job_id)
        .outerjoin(db.Crop, db.Crop.sha256 == db.Item.crop_sha256)
        .where(db.Item.source == db.SOURCE_OPERATOR)
        .order_by(db.Item.id)
        .execution_options(yield_per=FETCH_BATCH)
    )
    if job_id is not None:
        statement = statement.where(db.Item.job_id == job_id)
    if since is not None:
        recent = exists().where(db.Keying.item_id == db.Item.id, db.Keying.keyed >= since)
        statement = statement.where(recent)
    directory.mkdir(parents=True, exist_ok=True)
    written: Counter = Counter()
    left_out: Counter = Counter()
    tables: dict[str, tuple] = {}
    try:
        for item, kind, data in session.execute(statement):
            if item.final is None:
                left_out["unreadable"] += 1
                continue
            if data is None:
                left_out["crop_not_kept"] += 1
                continue
            if kind not in tables:
                (directory / kind).mkdir()
                handle = (directory / kind / "labels.csv").open("w", newline="")
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(LABEL_COLUMNS)
                tables[kind] = (handle, writer)
            blob = bytes(data)
            name = f"item{item.id:09d}{suffix(blob)}"
            (directory / kind / name).write_bytes(blob)
            reading = item.text if kind != DIGIT else item.digit
            tables[kind][1].writerow(
                [
                    name,
                    label_of(kind, item.final),
                    item.final,
                    item.job_id,
                    item.key,
                    "" if reading is None else reading,
                    item.model_version or "",
                ]
            )
            written[kind] += 1
    finally:
        for handle, _ in tables.values():
            handle.close()
    manifest = {
        "exported": db.utcnow().isoformat(timespec="seconds"),
        "job_id": job_id,
        "since": since.isoformat() if since else None,
        "written": dict(sorted(written.items())),
        "left_out": dict(sorted(left_out.items())),
        "columns": list(LABEL_COLUMNS),
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
