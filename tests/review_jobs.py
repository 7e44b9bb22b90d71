"""Jobs with flagged items and kept crops written straight into a database, the way the worker's
write would, for the review tests that are not about the worker."""

from __future__ import annotations

import io

from digits.worker.config import Settings
from digits.worker.store import crops, db, writes
from digits.worker.submission.jobs import Crop, create_job, plan_job

MODEL = writes.ModelInfo(version="cnn-0123456789ab", arch="cnn", test_accuracy=0.99, checksum="f")


def digit_png(digit: int, size: int = 48) -> bytes:
    """A small dark-on-white PNG with a stroke in it: a crop that decodes."""
    from PIL import Image, ImageDraw

    picture = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(picture)
    draw.text((size // 3, size // 4), str(digit), fill=0)
    draw.line((size // 2, 6 + digit, size // 2, size - 6), fill=0, width=4)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def flagged_job(
    url: str,
    keys: list[str],
    *,
    statuses: dict[str, str] | None = None,
    data: dict[str, bytes] | None = None,
    double_key: bool = False,
    kind: str = db.DIGIT,
    source: str | None = "test",
    policy: str = "review",
) -> str:
    """A job whose items are written as the worker would: needs_review (a 3 read at 0.6) unless
    ``statuses`` says otherwise, crops kept by ``policy``. Returns the job id."""
    import base64

    statuses = statuses or {}
    data = data or {}
    blobs = {key: data.get(key, digit_png(n % 10)) for n, key in enumerate(keys)}
    settings = Settings(database_url=url)
    plan = plan_job(
        [Crop(key, blobs[key]) for key in keys],
        settings,
        source=source,
        kind=kind,
        double_key=double_key,
    )
    results = [_result(key, statuses.get(key, "needs_review"), kind) for key in keys]
    encoded = [[key, base64.b64encode(blobs[key]).decode()] for key in keys]
    results, kept = crops.chosen(results, encoded, policy, settings.max_item_bytes)
    with db.session_scope(url) as session:
        create_job(session, plan)
    with db.session_scope(url) as session:
        writes.write_chunk(session, plan.job_id, results, MODEL, kept)
    return plan.job_id


def _result(key: str, status: str, kind: str) -> writes.ItemResult:
    if status == "error":
        return writes.ItemResult(key, status, error="not an image")
    if status == "blank":
        return writes.ItemResult(key, status)
    confidence = 0.6 if status == "needs_review" else 0.999
    if kind == db.DIGIT:
        return writes.ItemResult(key, status, 3, confidence, [[3, confidence], [8, 0.3]])
    details = {"reasons": ["low_confidence"], "readers": {"segmenter": ["12345", 0.6]}}
    return writes.ItemResult(key, status, confidence=confidence, text="12345", details=details)


def item_ids(url: str, job_id: str) -> dict[str, int]:
    from sqlalchemy import select

    with db.session_scope(url) as session:
        rows = session.execute(select(db.Item.key, db.Item.id).where(db.Item.job_id == job_id))
        return dict(rows.all())


def operator_id(url: str, name: str) -> int:
    from sqlalchemy import select

    with db.session_scope(url) as session:
        return session.scalar(select(db.Operator.id).where(db.Operator.name == name))
