"""Writing a chunk's results: one multi-row upsert, the job's counts recomputed, one commit.

A chunk can arrive twice (late acknowledgement redelivers it after a crash), and two chunks of one
job can be written at once by two children or two machines. So items are upserted on (job id, key),
and the job row is locked first by updating it: the second writer waits, then counts what the first
committed, and the job's status and counts always agree with its items.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from digits.model.review import ItemStatus
from digits.worker.store.db import (
    FINAL_JOB_STATUSES,
    MODEL_VERSION_LENGTH,
    Item,
    Job,
    JobStatus,
    Model,
    utcnow,
)

# Columns a redelivered chunk overwrites: all but the row's identity (id, and job_id + key).
RESULT_COLUMNS = tuple(
    c.name for c in Item.__table__.columns if c.name not in ("id", "job_id", "key")
)
# The same for every row of a chunk; ItemResult carries each of the other columns.
PER_CHUNK_COLUMNS = ("job_id", "model_version", "processed")


class UnknownJobError(LookupError):
    """A chunk names a job the database does not have (a wrong database URL, usually)."""


@dataclass(frozen=True)
class ItemResult:
    """What the worker learned about one crop: one field per column of the items table that is
    not the same for the whole chunk (tests/test_db.py checks). ``status``: ok, needs_review,
    blank or error (model.review.ItemStatus)."""

    key: str
    status: str
    digit: int | None = None
    confidence: float | None = None
    top3: list[list[float]] | None = None
    error: str | None = None
    multiple_blobs: bool = False
    text: str | None = None  # a field's string; its digits and reasons go in ``details``
    details: dict | None = None


@dataclass(frozen=True)
class ModelInfo:
    version: str
    arch: str
    test_accuracy: float | None
    checksum: str

    @classmethod
    def from_card(cls, version: str, card: dict) -> ModelInfo:
        accuracy = card.get("test_accuracy")
        return cls(
            version=version,
            arch=str(card.get("arch", "unknown")),
            test_accuracy=float(accuracy) if accuracy is not None else None,
            checksum=str(card.get("model_sha256", "")),
        )


@dataclass(frozen=True)
class JobCounts:
    status: str
    total: int
    processed: int
    ok: int
    blank: int
    error: int
    needs_review: int


def write_chunk(
    session: Session, job_id: str, results: Sequence[ItemResult], model: ModelInfo | None
) -> JobCounts:
    """Store one chunk's results and bring the job up to date, inside the caller's transaction."""
    now = utcnow()
    _lock_job(session, job_id, now)
    if model is not None:
        _register_model(session, model)
    version = model.version if model else None
    rows = [_row(job_id, result, version, now) for result in results]
    keys = [result.key for result in results]
    if not rows or len(set(keys)) != len(keys):
        return refresh_job(session, job_id, now, version)
    # The job's counts move by what this chunk changes: recounting the whole job instead cost 5
    # (SQLite) to 17 ms (PostgreSQL) per chunk of a 50,000-crop job, and grew with the job. The
    # job's row lock, taken above, keeps two writers from racing between reading and writing.
    if session.get_bind().dialect.name == "postgresql":
        before = _upsert_postgresql(session, rows)
    else:
        before = _upsert_sqlite(session, job_id, keys, rows)
    return _move_counts(session, job_id, before, Counter(r.status for r in results), now, version)


def _upsert_sqlite(session: Session, job_id: str, keys: list[str], rows: list[dict]) -> Counter:
    """The rows' statuses before (a unique-index probe per key), then one cached executemany.

    Not grouped by status in SQL: that walks the (job, status) index over the whole job. And not a
    multi-row VALUES of the whole chunk: compiled afresh for every chunk (2,560 bind parameters),
    that took 60 ms per 256 crops, a third of the chunk; this takes 4 ms.
    """
    statement = select(Item.status).where(Item.job_id == job_id, Item.key.in_(keys))
    before = Counter(session.scalars(statement))
    session.connection().execute(_upsert_items(session), rows)
    return before


def _upsert_postgresql(session: Session, rows: list[dict]) -> Counter:
    """One statement over arrays (``unnest``) that upserts and returns each row's old status.

    The old status comes from a subquery in RETURNING, which sees the table as it was before the
    statement, looked up by primary key. A separate lookup by (job, key) is at the planner's mercy:
    with statistics from before the job's rows existed, or a prepared statement's generic plan, it
    filtered every row of the job through the (job, status) index, 400 to 800 ms a chunk. Inserted
    rows (keys the job did not have) return NULL. 10 ms per 256 crops, against 86 ms for the
    multi-row VALUES it replaces.
    """
    columns = {name: [row[name] for row in rows] for name in _ARRAY_COLUMNS}
    for name in _JSON_COLUMNS:
        columns[name] = [None if value is None else json.dumps(value) for value in columns[name]]
    first = rows[0]
    params = {
        "job_id": first["job_id"],
        "model_version": first["model_version"],
        "processed": first["processed"],
        **{f"{name}s": values for name, values in columns.items()},
    }
    old = session.connection().execute(_PG_UPSERT, params).scalars()
    return Counter(status for status in old if status is not None)


def _array_type(column) -> str:
    """The PostgreSQL element type an item column's values travel in (unbounded strings)."""
    for kind, name in (
        (JSON, "json"),
        (Boolean, "boolean"),
        (Integer, "integer"),
        (Float, "float8"),
        (Text, "text"),
        (String, "varchar"),
    ):
        if isinstance(column.type, kind):
            return name
    raise TypeError(f"items.{column.name}: no array type for {column.type!r}")


# Per-row values travel as arrays; the rest (PER_CHUNK_COLUMNS) is the same for every row.
_ARRAY_COLUMNS = {
    column.name: _array_type(column)
    for column in Item.__table__.columns
    if column.name != "id" and column.name not in PER_CHUNK_COLUMNS
}
_JSON_COLUMNS = [name for name, kind in _ARRAY_COLUMNS.items() if kind == "json"]
_PG_UPSERT = text(
    "INSERT INTO items (job_id, model_version, processed, {columns}) "
    "SELECT :job_id, :model_version, :processed, {columns} FROM unnest({arrays}) AS u({columns}) "
    "ON CONFLICT (job_id, key) DO UPDATE SET {updates} "
    "RETURNING (SELECT old.status FROM items AS old WHERE old.id = items.id)".format(
        columns=", ".join(_ARRAY_COLUMNS),
        arrays=", ".join(f"CAST(:{name}s AS {kind}[])" for name, kind in _ARRAY_COLUMNS.items()),
        updates=", ".join(f"{name} = excluded.{name}" for name in RESULT_COLUMNS),
    )
)


def _move_counts(
    session: Session,
    job_id: str,
    before: Counter,
    after: Counter,
    now: datetime,
    model_version: str | None,
) -> JobCounts:
    """The job's stored counts less ``before`` plus ``after``; a full recount when that ends it.

    The recount on the last chunk makes a finished job's figures exact whatever happened on the
    way, and a count that would go negative (items changed behind the job's back) is recounted.
    """
    # Read afresh: the caller's session may hold this job from before the lock was taken.
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise UnknownJobError(f"job {job_id} does not exist in this database")
    by_status = Counter(
        pending=job.total - job.processed,
        ok=job.ok,
        blank=job.blank,
        error=job.error,
        needs_review=job.needs_review,
    )
    by_status.subtract(before)
    by_status.update(after)
    counts = _counts(dict(by_status))
    if min(by_status.values()) < 0 or counts.status in FINAL_JOB_STATUSES:
        return refresh_job(session, job_id, now, model_version)
    _store_counts(session, job, counts, now, model_version)
    return counts


def _upsert_items(session: Session):
    insert = _insert_for(session)
    statement = insert(Item)
    return statement.on_conflict_do_update(
        index_elements=[Item.job_id, Item.key],
        set_={name: statement.excluded[name] for name in RESULT_COLUMNS},
    )


def error_results(keys: Sequence[str], reason: str) -> list[ItemResult]:
    return [ItemResult(key=key, status=ItemStatus.ERROR, error=reason) for key in keys]


def job_kind(session: Session, job_id: str) -> str:
    """What the job's items are, for a chunk message that does not say: the job row decides.

    Digit jobs' messages never say (so workers from before fields can read them), and a worker
    re-sending a chunk crop by crop builds messages of its own.
    """
    kind = session.scalar(select(Job.kind).where(Job.id == job_id))
    if kind is None:
        raise UnknownJobError(f"job {job_id} does not exist in this database")
    return kind


def refresh_job(
    session: Session, job_id: str, now: datetime | None = None, model_version: str | None = None
) -> JobCounts:
    """Recount the job's items and store the counts, the status and the models that wrote it."""
    now = now or utcnow()
    statement = select(Item.status, func.count()).where(Item.job_id == job_id)
    by_status = {
        status: count for status, count in session.execute(statement.group_by(Item.status))
    }
    counts = _counts(by_status)
    job = session.get(Job, job_id)
    if job is None:
        raise UnknownJobError(f"job {job_id} does not exist in this database")
    _store_counts(session, job, counts, now, model_version)
    return counts


def _store_counts(
    session: Session, job: Job, counts: JobCounts, now: datetime, model_version: str | None
) -> None:
    job.status = counts.status
    for name in ("total", "processed", "ok", "blank", "error", "needs_review"):
        setattr(job, name, getattr(counts, name))
    job.updated = now
    if counts.status in FINAL_JOB_STATUSES:
        job.finished = job.finished or now
    if model_version:
        job.model_version = _versions(job.model_version, model_version)
    session.flush()


def _versions(recorded: str | None, new: str) -> str:
    """The job's model versions, comma-joined, within its column: a job that outlives many
    rollouts ends in ``+more`` (each item still names its own version) instead of failing its
    chunks' writes."""
    versions = set(filter(None, (recorded or "").split(","))) - {"+more"}
    joined = ",".join(sorted(versions | {new}))
    if len(joined) <= MODEL_VERSION_LENGTH:
        return joined
    return joined[: MODEL_VERSION_LENGTH - len(",+more")].rsplit(",", 1)[0] + ",+more"


def job_status(total: int, processed: int, errors: int) -> JobStatus:
    """done: all read (some blank or for review); partial: some errors; failed: all errors."""
    if processed == 0:
        return JobStatus.QUEUED
    if processed < total:
        return JobStatus.RUNNING
    if errors == total:
        return JobStatus.FAILED
    return JobStatus.PARTIAL if errors else JobStatus.DONE


def _counts(by_status: dict[str, int]) -> JobCounts:
    total = sum(by_status.values())
    processed = total - by_status.get(ItemStatus.PENDING, 0)
    errors = by_status.get(ItemStatus.ERROR, 0)
    return JobCounts(
        status=job_status(total, processed, errors),
        total=total,
        processed=processed,
        ok=by_status.get(ItemStatus.OK, 0),
        blank=by_status.get(ItemStatus.BLANK, 0),
        error=errors,
        needs_review=by_status.get(ItemStatus.NEEDS_REVIEW, 0),
    )


def _lock_job(session: Session, job_id: str, now: datetime) -> None:
    """Take the job's row lock (PostgreSQL) or the write lock (SQLite) before reading anything."""
    locked = session.execute(update(Job).where(Job.id == job_id).values(updated=now))
    if cast(CursorResult, locked).rowcount != 1:
        raise UnknownJobError(f"job {job_id} does not exist in this database")


def _register_model(session: Session, model: ModelInfo) -> None:
    insert = _insert_for(session)
    statement = insert(Model).values(
        version=model.version,
        arch=model.arch,
        test_accuracy=model.test_accuracy,
        checksum=model.checksum,
        registered=utcnow(),
    )
    session.execute(statement.on_conflict_do_nothing(index_elements=[Model.version]))


def _row(job_id: str, result: ItemResult, version: str | None, now: datetime) -> dict:
    return {
        "job_id": job_id,
        **{name: getattr(result, name) for name in _RESULT_FIELDS},
        # An error written because the database kept failing was not produced by a model.
        "model_version": version,
        "processed": now,
    }


_RESULT_FIELDS = tuple(field.name for field in dataclasses.fields(ItemResult))


def _insert_for(session: Session):
    """The dialect's INSERT, the one with ON CONFLICT; the two databases spell it the same way."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"{name}: only SQLite and PostgreSQL are supported")
