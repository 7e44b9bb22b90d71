"""Cancelling a job: a person stops it, and none of its pending items is read.

A job sent by mistake (the wrong folder at the nightly run, a test batch on the production
queue) would otherwise hold every worker until its last chunk, and fill the review station with
what no one wants keyed. Cancelling is one transaction under the job's lock, the one every
chunk's write takes (:func:`writes.lock_job`):

- every pending item becomes an ``error`` whose reason says when it was cancelled and why: a
  final item, which no result may change (:mod:`digits.worker.store.writes`);
- the job becomes ``cancelled``, a final status that stays whatever its counts say, with the
  moment in ``jobs.cancelled``;
- the copies kept of its chunks go (:mod:`digits.worker.store.chunks`): the sweeper sends none
  of them again.

What is queued or running then stops by itself, and nothing it did is lost:

- a chunk still waiting in Redis reaches a worker child, whose delivery check finds every item
  final and drops the chunk before a crop is decoded (``queue.deliveries.record_in``): a backlog
  of thousands of chunks drains in seconds;
- a chunk a child is reading when the job is cancelled finishes, and its results are refused
  (the job is final);
- an enqueue still reading and sending the job's files stops at its next group of chunks
  (``submission.jobs.send_chunks``).

What was read before stays: its results, and the items awaiting a person, which the review
station still lists (what was read may be wanted; ``digits review JOB`` shows them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, update
from sqlalchemy.orm import Session

from digits.model.review import ItemStatus
from digits.worker.store import writes
from digits.worker.store.db import FINAL_JOB_STATUSES, Item, Job, SentChunk, utcnow

# The start of every cancelled item's error: what `digits results` and the station show.
CANCELLED = "cancelled"


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did: the job's status now, and its items by what became of them. A job
    that was final already (done, failed, cancelled before) is left as it was."""

    job_id: str
    status: str
    stopped: int  # pending items that will not be read
    read: int  # items final before: read by the workers, or refused when the job was sent
    total: int
    already_final: bool = False


def reason_for(when: datetime, why: str | None = None) -> str:
    """A cancelled item's error: when, and why when a person said."""
    stamp = f"{CANCELLED} {when:%Y-%m-%d %H:%M:%S} UTC"
    return f"{stamp}: {why}" if why else stamp


def cancel(
    session: Session, job_id: str, why: str | None = None, now: datetime | None = None
) -> Cancelled:
    """Cancel ``job_id`` in the caller's transaction (see the module's docstring); a job that
    is final already is left as it is. Raises :class:`writes.UnknownJobError` for no such job."""
    now = now or utcnow()
    writes.lock_job(session, job_id)
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:  # lock_job found it: only a concurrent delete does this
        raise writes.UnknownJobError(f"job {job_id} does not exist in this database")
    if job.status in FINAL_JOB_STATUSES:
        return Cancelled(job_id, job.status, 0, job.processed, job.total, already_final=True)
    stopped = (
        session.connection()
        .execute(
            update(Item)
            .where(Item.job_id == job_id, Item.status == ItemStatus.PENDING)
            .values(status=ItemStatus.ERROR, error=reason_for(now, why), processed=now)
        )
        .rowcount
    )
    session.execute(delete(SentChunk).where(SentChunk.job_id == job_id))
    job.cancelled = now
    counts = writes.refresh_job(session, job_id, now)
    return Cancelled(job_id, job.status, stopped, counts.processed - stopped, counts.total)
