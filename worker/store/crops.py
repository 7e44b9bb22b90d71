"""Kept crops: which ones the worker keeps, storing them once per content, reading one back as an
image, and letting them go after their retention (``digits purge``).

A crop travels in its chunk's message and, once read, exists nowhere else: the items a person must
look at (needs review) or find out about (error) would leave that person nothing to look at. So
the worker keeps their bytes in the database, in the transaction that writes the items
(:func:`digits.worker.store.writes.write_chunk`), deduplicated by sha256: the same scan sent in two
jobs is stored once. ``DIGITS_KEEP_CROPS`` chooses: ``review`` (needs review and error, the
default), ``all``, or ``none``. A crop is never larger than ``DIGITS_MAX_ITEM_BYTES``: the same
bound as every other copy of it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from digits.model.review import ItemStatus
from digits.worker.store import db

# The statuses whose crops each DIGITS_KEEP_CROPS choice keeps.
KEPT_STATUSES: dict[str, tuple[str, ...]] = {
    "review": (ItemStatus.NEEDS_REVIEW, ItemStatus.ERROR),
    "all": (ItemStatus.OK, ItemStatus.NEEDS_REVIEW, ItemStatus.BLANK, ItemStatus.ERROR),
    "none": (),
}
# What the station shows: a crop re-encoded as PNG, never the stored bytes as they came. At its
# own size: a field's per-digit boxes are in its pixels.
SERVED_TYPE = "image/png"


def chosen(
    results: Sequence, crops: Sequence[Sequence[str]], policy: str, max_bytes: int
) -> tuple[list, dict[str, bytes]]:
    """The results with ``crop_sha256`` set where ``policy`` keeps the crop, and those crops'
    bytes by sha256, for :func:`writes.write_chunk`.

    ``crops`` are the chunk's ``[key, base64]`` pairs. A crop that is not base64, or is over
    ``max_bytes``, is not kept (there is nothing safe to keep).
    """
    statuses = KEPT_STATUSES[policy]
    if not statuses:
        return list(results), {}
    encoded = {key: data for key, data in crops}
    kept: dict[str, bytes] = {}
    out = []
    for result in results:
        blob = _bytes(encoded.get(result.key)) if result.status in statuses else None
        if blob is None or len(blob) > max_bytes:
            out.append(result)
            continue
        digest = hashlib.sha256(blob).hexdigest()
        kept[digest] = blob
        out.append(dataclasses.replace(result, crop_sha256=digest))
    return out, kept


def _bytes(encoded: str | None) -> bytes | None:
    if not encoded:
        return None
    try:
        return base64.b64decode(encoded, validate=True) or None
    except (binascii.Error, ValueError):
        return None


def store(session: Session, kept: Mapping[str, bytes], now: datetime | None = None) -> None:
    """Insert the crops not stored yet (one statement; a crop already there is left as it is)."""
    if not kept:
        return
    insert = db.insert_for(session)
    now = now or db.utcnow()
    rows = [
        {"sha256": digest, "size": len(blob), "stored": now, "data": blob}
        for digest, blob in kept.items()
    ]
    statement = insert(db.Crop).on_conflict_do_nothing(index_elements=[db.Crop.sha256])
    session.connection().execute(statement, rows)


_decoding = threading.Lock()


def _limits():
    """The worker's limits for whole fields (model.fields.FIELD_LIMITS: wide crops), without
    importing the readers."""
    from digits.model.limits import DEFAULT_LIMITS

    return dataclasses.replace(DEFAULT_LIMITS, max_aspect=40.0)


class NoCrop(LookupError):
    """No item by that id, or no crop kept for it."""


def item_image(session: Session, item_id: int) -> bytes:
    """The kept crop of item ``item_id``, decoded within the worker's limits and re-encoded as a
    PNG: whatever bytes came in (a polyglot, a script with a PNG header), what goes out is an
    image and nothing else. :class:`NoCrop` when the item or its crop does not exist."""
    from PIL import Image

    from digits.model.decode import ScanError, decode

    statement = (
        select(db.Crop.data)
        .join(db.Item, db.Item.crop_sha256 == db.Crop.sha256)
        .where(db.Item.id == item_id)
    )
    data = session.scalar(statement)
    if data is None:
        raise NoCrop(f"no kept crop for item {item_id}")
    try:
        with _decoding:  # decode's warning filter is process-wide: one thread at a time
            gray = decode(bytes(data), _limits())
    except ScanError as exc:  # an error item's crop: show that it is not an image
        raise NoCrop(f"item {item_id}: the kept crop is not a readable image ({exc})") from exc
    out = io.BytesIO()
    pixels = (gray * 255.0).round().clip(0, 255).astype("uint8")
    Image.fromarray(pixels).save(out, format="PNG", compress_level=3)
    return out.getvalue()


def item_bytes(session: Session, item_id: int) -> bytes | None:
    """The kept crop of an item exactly as it came (for exports), or None."""
    statement = (
        select(db.Crop.data)
        .join(db.Item, db.Item.crop_sha256 == db.Crop.sha256)
        .where(db.Item.id == item_id)
    )
    data = session.scalar(statement)
    return None if data is None else bytes(data)


@dataclass(frozen=True)
class Purged:
    items_released: int  # items whose crop reference was dropped
    crops_deleted: int
    bytes_deleted: int
    awaiting_kept: int  # crops older than the retention kept because a person still needs them


def purge(session: Session, days: int, now: datetime | None = None) -> Purged:
    """Let go of the crops of items settled (or in error) over ``days`` ago, then delete every
    crop no item refers to any more.

    Items still awaiting a person keep theirs, however old: keying needs it. The count of those
    is reported, so an operator sees a queue that is older than the retention.
    """
    now = now or db.utcnow()
    before = now - timedelta(days=days)
    awaiting = and_(db.Item.status == ItemStatus.NEEDS_REVIEW, db.Item.source.is_(None))
    old = and_(db.Item.crop_sha256.is_not(None), db.Item.processed < before)
    released = cast(
        CursorResult,
        session.execute(update(db.Item).where(old, ~awaiting).values(crop_sha256=None)),
    ).rowcount
    kept_awaiting = session.scalar(select(func.count()).where(old, awaiting)) or 0
    unreferenced = ~exists(select(db.Item.id).where(db.Item.crop_sha256 == db.Crop.sha256))
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(db.Crop.size), 0)).where(unreferenced)
    ).one()
    session.execute(delete(db.Crop).where(unreferenced))
    return Purged(int(released or 0), int(count), int(size), int(kept_awaiting))


def footprint(session: Session) -> dict:
    """How many crops are kept and their bytes: ``digits purge --dry-run`` and the measurements."""
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(db.Crop.size), 0))
    ).one()
    referencing = session.scalar(select(func.count()).where(db.Item.crop_sha256.is_not(None)))
    return {"crops": int(count), "bytes": int(size), "items_with_crop": int(referencing or 0)}
