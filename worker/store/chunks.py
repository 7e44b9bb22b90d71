"""Copies of sent chunks, kept until written: what the sweeper sends again when Redis lost one.

A chunk message in Redis is the only copy of its crops the queue has: a FLUSHALL, a failover to
a replica that had not received it, or a restart from an older AOF loses it, and its items stay
``pending`` for ever. So every chunk sent (by a submitter, or re-sent by a worker) is recorded in
``sent_chunks`` with its crops, in the transaction that creates it, and deleted in the
transaction that writes it. ``touched`` is when it was last sent, or last seen waiting in Redis
by a sweeper (:mod:`digits.worker.queue.sweeper`): a chunk untouched for ``QUIET_S``, that no live
lease covers and that is in no Redis queue, has been lost, and is sent again under a fresh label.

The claim is atomic (a compare-and-delete on the row as it was read), so of several sweepers
only one re-sends a chunk. The chunk's delivery count (:mod:`digits.worker.queue.deliveries`) is
carried to the new label: a crop that kills its worker every time still ends as its item's
``error`` after ``DIGITS_MAX_DELIVERIES`` deaths, however often the sweeper brings it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from digits.model.review import ItemStatus
from digits.worker.store import db, statements

# A chunk untouched this long with no live lease is looked for in Redis; one seen there is
# touched again, so a chunk waiting behind a long backlog is never sent twice.
CHECK_AFTER_S = 20.0
# Untouched this long, unleased and in no queue: lost (or its holder dead), sent again.
QUIET_S = 40.0
# A lease that ran out less than this ago may belong to a live but slow renewer: left alone.
LEASE_GRACE_S = 10.0


@dataclass(frozen=True)
class Quiet:
    """A chunk nothing has touched for a while and no live lease covers."""

    job_id: str
    chunk: str
    queue: str
    touched: datetime

    @property
    def task_id(self) -> str:
        return f"{self.job_id}:{self.chunk}"  # messages.ChunkMessage.task_id


@dataclass(frozen=True)
class Claimed:
    """A chunk taken by one sweeper to send again: its new label, its pending crops, its job's
    terms (the job row's kind and threshold, as a message carries them)."""

    job_id: str
    old_chunk: str
    chunk: str
    queue: str
    crops: list[list[str]]
    kind: str
    threshold: float
    carried: int  # deliveries of the old label that died mid-way


def record(
    session: Session,
    job_id: str,
    sent: Iterable[tuple[str, Sequence[Sequence[str]]]],
    queue: str,
    now: datetime | None = None,
) -> None:
    """Keep a copy of each ``(label, crops)`` chunk of the job, touched now (an upsert: a chunk
    split again after its worker died mid-split keeps one row per label)."""
    now = now or db.utcnow()
    rows = [
        {
            "job_id": job_id,
            "chunk": str(label),
            "queue": queue,
            "crops": list(crops),
            "touched": now,
        }
        for label, crops in sent
    ]
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    upsert = db.upsert(dialect, db.SentChunk, ("job_id", "chunk"), ("queue", "crops", "touched"))
    session.execute(upsert, rows)


def forget(session: Session, job_id: str, chunk: str) -> None:
    """Drop the chunk's copy inside the transaction that wrote (or split) it."""
    statements.delete_chunk_row(session, db.SentChunk, job_id, chunk)


def quiet(
    session: Session,
    untouched_s: float = CHECK_AFTER_S,
    now: datetime | None = None,
    job_id: str | None = None,
    limit: int = 1000,
) -> list[Quiet]:
    """Chunks untouched for ``untouched_s`` whose lease, if any, ran out ``LEASE_GRACE_S`` ago."""
    now = now or db.utcnow()
    chunk, lease = db.SentChunk, db.ChunkLease
    statement = (
        select(chunk.job_id, chunk.chunk, chunk.queue, chunk.touched)
        .outerjoin(lease, and_(lease.job_id == chunk.job_id, lease.chunk == chunk.chunk))
        .where(
            chunk.touched < now - timedelta(seconds=untouched_s),
            or_(lease.job_id.is_(None), lease.until < now - timedelta(seconds=LEASE_GRACE_S)),
        )
        .order_by(chunk.touched)
        .limit(limit)
    )
    if job_id is not None:
        statement = statement.where(chunk.job_id == job_id)
    return [Quiet(*row) for row in session.execute(statement)]


def touch(session: Session, seen: Sequence[Quiet], now: datetime | None = None) -> None:
    """These chunks were seen waiting in Redis: not lost, whatever their age."""
    now = now or db.utcnow()
    for found in seen:
        session.execute(
            update(db.SentChunk)
            .where(db.SentChunk.job_id == found.job_id, db.SentChunk.chunk == found.chunk)
            .values(touched=now)
        )


def claim(
    session: Session, found: Quiet, new_chunk: str, now: datetime | None = None
) -> Claimed | None:
    """Take ``found`` to send again as ``new_chunk``: None when another sweeper (or its write)
    got there first, or when none of its items is pending any more (its copy is dropped then).

    Write first (SQLite: a transaction that reads first fails when another writer got in), and
    only the row as it was read: two sweepers' claims of one chunk cannot both succeed.
    """
    now = now or db.utcnow()
    lease = db.ChunkLease
    # A delivery may have taken the chunk's lease since ``found`` was read (a restored or
    # redelivered message): such a chunk is running, not lost, whatever its copy says.
    live = (
        select(lease.job_id)
        .where(
            lease.job_id == found.job_id,
            lease.chunk == found.chunk,
            lease.until >= now - timedelta(seconds=LEASE_GRACE_S),
        )
        .exists()
    )
    row = session.execute(
        delete(db.SentChunk)
        .where(
            db.SentChunk.job_id == found.job_id,
            db.SentChunk.chunk == found.chunk,
            db.SentChunk.touched == found.touched,
            ~live,
        )
        .returning(db.SentChunk.crops)
    ).first()
    if row is None:
        return None
    crops: list[list[str]] = row.crops
    pending = _pending(session, found.job_id, [key for key, _ in crops])
    crops = [pair for pair in crops if pair[0] in pending]
    statements.delete_chunk_row(session, db.ChunkLease, found.job_id, found.chunk)
    carried = _carry_deliveries(
        session, found.job_id, found.chunk, new_chunk if crops else None, now
    )
    if not crops:
        return None
    record(session, found.job_id, [(new_chunk, crops)], found.queue, now)
    job = session.execute(
        select(db.Job.kind, db.Job.review_threshold).where(db.Job.id == found.job_id)
    ).one()
    return Claimed(
        found.job_id,
        found.chunk,
        new_chunk,
        found.queue,
        crops,
        job.kind,
        job.review_threshold,
        carried,
    )


def _pending(session: Session, job_id: str, keys: list[str]) -> set[str]:
    statement = select(db.Item.key).where(
        db.Item.job_id == job_id,
        db.Item.key.in_(keys),
        db.Item.status == ItemStatus.PENDING.value,
    )
    return set(session.scalars(statement))


def _carry_deliveries(
    session: Session, job_id: str, old: str, new: str | None, now: datetime
) -> int:
    """Move the old label's count of deliveries that died to the new label (none: nothing is
    sent again, the count goes); how many died."""
    table = db.ChunkDelivery
    died = session.scalar(
        select(func.max(table.deliveries)).where(table.job_id == job_id, table.chunk == old)
    )
    statements.delete_chunk_row(session, table, job_id, old)
    if died and new is not None:
        session.add(table(job_id=job_id, chunk=new, retries=0, deliveries=int(died), updated=now))
        session.flush()
    return int(died or 0)


@dataclass(frozen=True)
class Activity:
    """What moves a job now: for ``digits status``'s ``stalled``."""

    live_leases: int
    chunks: int  # copies kept (chunks sent and not yet written)
    last_touched: datetime | None


def activity(session: Session, job_id: str, now: datetime | None = None) -> Activity:
    now = now or db.utcnow()
    leased = session.scalar(
        select(func.count())
        .select_from(db.ChunkLease)
        .where(db.ChunkLease.job_id == job_id, db.ChunkLease.until > now)
    )
    count, last = session.execute(
        select(func.count(), func.max(db.SentChunk.touched)).where(db.SentChunk.job_id == job_id)
    ).one()
    return Activity(int(leased or 0), int(count or 0), db.as_utc(last))
