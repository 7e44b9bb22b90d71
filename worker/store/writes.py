"""Writing a chunk's results: one multi-row upsert, the job's counts recomputed, one commit.

A chunk can arrive twice (late acknowledgement redelivers it after a crash), and two chunks of one
job can be written at once by two children or two machines. So items are upserted on (job id, key),
and the job row is locked first by updating it: the second writer waits, then counts what the first
committed, and the job's status and counts always agree with its items.

Only pending items take results. An item that is final (ok, needs_review, blank, error) keeps the
result it has, and a finished job keeps all of them: a redelivered chunk then changes nothing, and
a message pushed into Redis (or replayed) cannot rewrite a bank's results after the fact. What was
refused comes back in :attr:`JobCounts.refused`, for the caller to log. A key the job has no item
for is refused outright (:class:`ForeignKeysError`, the transaction rolls back): results never add
items to a job.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import JSON, Boolean, Float, Integer, String, Text, func, select, text
from sqlalchemy.orm import Session

from digits.model.review import ItemStatus
from digits.worker.store import crops, statements
from digits.worker.store.db import (
    FINAL_JOB_STATUSES,
    MODEL_VERSION_LENGTH,
    SOURCE_MODEL,
    Item,
    Job,
    JobStatus,
    insert_of,
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


class ForeignKeysError(LookupError):
    """A message names crops its job never had: a forged or misrouted message, never ours."""


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
    text: str | None = None  # a field's string; its digits and reasons go in ``details``,
    # and the reasons of a digit with a problem (review.FAINT_INK, TWO_DIGITS, FRAMED)
    details: dict | None = None
    # The kept crop's sha256 (store.crops), when this item's bytes are kept for a person.
    crop_sha256: str | None = None
    # The answer and who gave it (db.Item.final, .source): filled in from the reading when the
    # model settles the item itself (ok, blank); a needs_review item waits for a person.
    final: str | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.source is None and self.status in (ItemStatus.OK, ItemStatus.BLANK):
            object.__setattr__(self, "source", SOURCE_MODEL)
            if self.status == ItemStatus.OK:
                reading = self.text if self.text is not None else self.digit
                object.__setattr__(self, "final", None if reading is None else str(reading))


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


# The counts a job row keeps and JobCounts carries, read and stored by name.
_COUNTS = ("total", "processed", "ok", "blank", "error", "needs_review")


@dataclass(frozen=True)
class JobCounts:
    status: str
    total: int
    processed: int
    ok: int
    blank: int
    error: int
    needs_review: int
    # The write's results that were not stored, by key, with why: the item was final already, or
    # its job had finished. Empty when everything was written.
    refused: dict[str, str] = field(default_factory=dict)


def write_chunk(
    session: Session,
    job_id: str,
    results: Sequence[ItemResult],
    model: ModelInfo | None,
    kept: Mapping[str, bytes] | None = None,
) -> JobCounts:
    """Store one chunk's results for the job's pending items and bring the job up to date,
    inside the caller's transaction; the results for final items are refused (module docstring).

    ``kept``: the bytes of the crops kept for a person, by sha256 (store.crops.chosen), stored in
    this same transaction, before the items that name them.
    """
    now = utcnow()
    lock_job(session, job_id)
    version = model.version if model else None
    rows = [_row(job_id, result, version, now) for result in results]
    keys = [result.key for result in results]
    if not rows or len(set(keys)) != len(keys):
        return refresh_job(session, job_id, now, version)
    # Read after the lock: the caller's session may hold this job from before it was taken.
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        raise UnknownJobError(f"job {job_id} does not exist in this database")
    if job.status in FINAL_JOB_STATUSES:
        return dataclasses.replace(
            _stored(job), refused=dict.fromkeys(keys, f"its job is finished ({job.status})")
        )
    if model is not None:
        _register_model(session, model)
    if kept:
        crops.store(session, kept, now)
    # The job's counts move by what this chunk changes: recounting the whole job instead cost 5
    # (SQLite) to 17 ms (PostgreSQL) per chunk of a 50,000-crop job, and grew with the job. The
    # job's row lock, taken above, keeps two writers from racing between reading and writing.
    if session.get_bind().dialect.name == "postgresql":
        written, before = _upsert_postgresql(session, job_id, rows)
    else:
        written, before = _upsert_sqlite(session, job_id, keys, rows)
    refused = _why_refused(session, job_id, [key for key in keys if key not in written])
    if not written:
        return dataclasses.replace(_stored(job), refused=refused)
    after = Counter(result.status for result in results if result.key in written)
    counts = _move_counts(session, job, before, after, now, version)
    return dataclasses.replace(counts, refused=refused)


def _upsert_sqlite(
    session: Session, job_id: str, keys: list[str], rows: list[dict]
) -> tuple[set[str], Counter]:
    """The keys written and the statuses they had: the rows' statuses before (a unique-index probe
    per key), then one cached executemany of the pending ones.

    Not grouped by status in SQL: that walks the (job, status) index over the whole job. And not a
    multi-row VALUES of the whole chunk: compiled afresh for every chunk (2,560 bind parameters),
    that took 60 ms per 256 crops, a third of the chunk; this takes 4 ms.
    """
    statement = select(Item.key, Item.status).where(Item.job_id == job_id, Item.key.in_(keys))
    statuses = {key: status for key, status in session.execute(statement)}
    _refuse_foreign(job_id, len(keys), [key for key in keys if key not in statuses])
    pending = [row for row in rows if statuses[row["key"]] == ItemStatus.PENDING]
    if pending:
        session.connection().execute(_upsert_items(session), pending)
    return {row["key"] for row in pending}, Counter(pending=len(pending))


def _upsert_postgresql(session: Session, job_id: str, rows: list[dict]) -> tuple[set[str], Counter]:
    """The keys written and the statuses they had: one statement over arrays (``unnest``) that
    updates the pending items and returns each written row's key and old status.

    The old status comes from a subquery in RETURNING, which sees the table as it was before the
    statement, looked up by primary key. A separate lookup by (job, key) is at the planner's mercy:
    with statistics from before the job's rows existed, or a prepared statement's generic plan, it
    filtered every row of the job through the (job, status) index, 400 to 800 ms a chunk. A final
    item's conflict is skipped (the DO UPDATE's WHERE) and returns nothing; an inserted row (a key
    the job did not have) returns NULL and undoes the whole write. 10 ms per 256 crops, against
    86 ms for the multi-row VALUES it replaces.
    """
    columns = {name: [row[name] for row in rows] for name in _ARRAY_COLUMNS}
    for name in _JSON_COLUMNS:
        columns[name] = [None if value is None else json.dumps(value) for value in columns[name]]
    first = rows[0]
    params = {
        "job_id": first["job_id"],
        "model_version": first["model_version"],
        "processed": first["processed"],
        "pending": ItemStatus.PENDING.value,
        **{f"{name}s": values for name, values in columns.items()},
    }
    returned = session.connection().execute(_PG_UPSERT, params).all()
    _refuse_foreign(job_id, len(rows), [key for key, old in returned if old is None])
    return {key for key, _ in returned}, Counter(old for _, old in returned)


def _refuse_foreign(job_id: str, count: int, foreign: Sequence[str]) -> None:
    if foreign:
        raise ForeignKeysError(
            f"{len(foreign)} of the chunk's {count} keys are not items of job {job_id} "
            f"(first {foreign[0][:60]!r}): nothing written"
        )


def _why_refused(session: Session, job_id: str, keys: Collection[str]) -> dict[str, str]:
    """Why each of ``keys`` was not written: its item was final already (read only when some were
    refused, which a submitter's chunks never are but for a redelivery)."""
    if not keys:
        return {}
    statement = select(Item.key, Item.status).where(Item.job_id == job_id, Item.key.in_(keys))
    return {
        key: f"the item is final already ({status})" for key, status in session.execute(statement)
    }


def _stored(job: Job) -> JobCounts:
    """The job's counts as stored (a write that stored nothing leaves them as they are)."""
    return JobCounts(status=job.status, **{name: getattr(job, name) for name in _COUNTS})


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
    "ON CONFLICT (job_id, key) DO UPDATE SET {updates} WHERE items.status = :pending "
    "RETURNING items.key, (SELECT old.status FROM items AS old WHERE old.id = items.id)".format(
        columns=", ".join(_ARRAY_COLUMNS),
        arrays=", ".join(f"CAST(:{name}s AS {kind}[])" for name, kind in _ARRAY_COLUMNS.items()),
        updates=", ".join(f"{name} = excluded.{name}" for name in RESULT_COLUMNS),
    )
)


def _move_counts(
    session: Session,
    job: Job,
    before: Counter,
    after: Counter,
    now: datetime,
    model_version: str | None,
) -> JobCounts:
    """The job's stored counts less ``before`` plus ``after``; a full recount when that ends it.

    The recount on the last chunk makes a finished job's figures exact whatever happened on the
    way, and a count that would go negative (items changed behind the job's back) is recounted.
    ``job`` was read after its lock was taken.
    """
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
        return refresh_job(session, job.id, now, model_version)
    _store_counts(session, job, counts, now, model_version)
    return counts


def _upsert_items(session: Session):
    return _items_upsert(session.get_bind().dialect.name)


@functools.lru_cache(maxsize=2)
def _items_upsert(dialect: str):
    """Built once per dialect: its ``excluded`` alias of the items' columns took a tenth of a
    single-crop chunk's write to build (and the statement cache's key is built from it anyway)."""
    statement = insert_of(dialect)(Item)
    return statement.on_conflict_do_update(
        index_elements=[Item.job_id, Item.key],
        set_={name: statement.excluded[name] for name in RESULT_COLUMNS},
        where=Item.status == ItemStatus.PENDING.value,  # the rows are pending: kept true anyway
    )


def error_results(keys: Sequence[str], reason: str) -> list[ItemResult]:
    return [ItemResult(key=key, status=ItemStatus.ERROR, error=reason) for key in keys]


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


def new_job_counts(job: Job, total: int, rejected: int, now: datetime) -> None:
    """A new job's counts and status, set on its row before it is inserted: its items start
    pending, or error where their crop was rejected (a job of rejected crops only is final at
    once). What :func:`refresh_job` would count once the items exist, without the two statements
    it takes: a single-crop job's latency is a handful of round trips."""
    counts = _counts({ItemStatus.PENDING: total - rejected, ItemStatus.ERROR: rejected})
    _set_counts(job, counts, now, None)


def _store_counts(
    session: Session, job: Job, counts: JobCounts, now: datetime, model_version: str | None
) -> None:
    _set_counts(job, counts, now, model_version)
    session.flush()


def _set_counts(job: Job, counts: JobCounts, now: datetime, model_version: str | None) -> None:
    # A cancelled job stays cancelled whatever its counts say (store.cancels).
    job.status = JobStatus.CANCELLED if job.cancelled else counts.status
    for name in _COUNTS:
        setattr(job, name, getattr(counts, name))
    job.updated = now
    if counts.status in FINAL_JOB_STATUSES:
        job.finished = job.finished or now
    if model_version:
        job.model_version = _versions(job.model_version, model_version)


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


def lock_job(session: Session, job_id: str) -> None:
    """Take the job's row lock (PostgreSQL) or the write lock (SQLite) before reading anything.

    By an update that changes nothing: a write whose results are all refused leaves the job row
    as it was (its ``updated`` time too); a write that stores something sets it.
    """
    if statements.lock_job(session, job_id) != 1:
        raise UnknownJobError(f"job {job_id} does not exist in this database")


def _register_model(session: Session, model: ModelInfo) -> None:
    row = {
        "version": model.version,
        "arch": model.arch,
        "test_accuracy": model.test_accuracy,
        "checksum": model.checksum,
        "registered": utcnow(),
    }
    statements.register_model(session, row)


def _row(job_id: str, result: ItemResult, version: str | None, now: datetime) -> dict:
    return {
        "job_id": job_id,
        **{name: getattr(result, name) for name in _RESULT_FIELDS},
        # An error written because the database kept failing was not produced by a model.
        "model_version": version,
        "processed": now,
    }


_RESULT_FIELDS = tuple(field.name for field in dataclasses.fields(ItemResult))
