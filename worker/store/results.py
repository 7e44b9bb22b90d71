"""Reading jobs back: status and counts, per-item results, the review list, waiting for the end.

The CLI prints these; tests compare them with the database. Items come back in submission order
(their row ids), which is the order a caller gave the crops in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from digits.worker.store import chunks, db, reviews


def _printed(kind: str) -> tuple[str, ...]:
    """The item columns ``digits results`` prints for a job of ``kind``: the table says (db.Item)."""
    return tuple(c.name for c in db.Item.__table__.columns if kind in c.info.get("results", ()))


RESULT_FIELDS = _printed(db.DIGIT)
# A field job's rows: ``digit`` is always empty there, and ``details`` holds each digit's guess.
FIELD_RESULT_FIELDS = _printed("field")
# Fields go last, so digit-only consumers that read columns by position keep working; one review
# list can hold both kinds of item.
REVIEW_FIELDS = (
    "job_id",
    "key",
    "digit",
    "confidence",
    "top3",
    "multiple_blobs",
    "text",
    "reasons",
)
# Rows fetched per round trip when streaming a large job's results.
FETCH_BATCH = 2000


class JobNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    status: str
    total: int
    processed: int
    ok: int
    blank: int
    error: int
    needs_review: int
    source: str | None
    model_version: str | None
    review_threshold: float
    queue: str | None
    chunks: int
    created: datetime
    finished: datetime | None
    kind: str = db.DIGIT
    # Items flagged for review that no person has settled yet (store.reviews).
    awaiting_review: int = 0
    double_key: bool = False

    @property
    def finished_processing(self) -> bool:
        """The workers are done with it (its items may still await a person: ``reviewing``)."""
        return self.status in db.FINAL_JOB_STATUSES or self.status == REVIEWING

    def as_json(self) -> dict:
        data = asdict(self)
        data["created"] = self.created.isoformat()
        data["finished"] = self.finished.isoformat() if self.finished else None
        return data


STALLED = "stalled"
# Read by the workers, but some of its flagged items still await a person: not done for the
# business until the review station (or whoever settles them) is through. Shown, never stored.
REVIEWING = "reviewing"


def job_status(session: Session, job_id: str) -> JobStatus:
    """The job as stored; an unfinished one that nothing moves is reported ``stalled``.

    Reviewing: every item read, some still awaiting a person (see :data:`REVIEWING`).

    Stalled: items pending, no live lease on any of its chunks, and for ``chunks.QUIET_S``
    nothing written, sent, or seen waiting in Redis by a worker's sweeper. A running worker's
    sweeper sends such a job's chunks again within seconds; with no worker running, a job waiting
    in Redis turns stalled too (nothing has seen it waiting): ``digits requeue`` tells the two
    apart.
    """
    job = session.get(db.Job, job_id)
    if job is None:
        raise JobNotFoundError(f"no job {job_id!r} in this database")
    awaiting = reviews.awaiting_count(session, job.id) if job.needs_review else 0
    status = job.status
    if _stalled(session, job):
        status = STALLED
    elif awaiting and job.status in (db.JobStatus.DONE, db.JobStatus.PARTIAL):
        status = REVIEWING
    return JobStatus(
        job_id=job.id,
        status=status,
        total=job.total,
        processed=job.processed,
        ok=job.ok,
        blank=job.blank,
        error=job.error,
        needs_review=job.needs_review,
        source=job.source,
        model_version=job.model_version,
        review_threshold=job.review_threshold,
        queue=job.queue,
        chunks=job.chunks,
        created=db.as_utc(job.created),
        finished=db.as_utc(job.finished),
        kind=job.kind,
        awaiting_review=awaiting,
        double_key=bool(job.double_key),
    )


def _stalled(session: Session, job: db.Job) -> bool:
    if job.status in db.FINAL_JOB_STATUSES or job.processed >= job.total:
        return False
    now = db.utcnow()
    quiet_since = now - timedelta(seconds=chunks.QUIET_S)
    updated = db.as_utc(job.updated)
    if updated is not None and updated > quiet_since:
        return False
    moving = chunks.activity(session, job.id, now)
    if moving.live_leases:
        return False
    return moving.last_touched is None or moving.last_touched < quiet_since


# The statuses a job is shown with: its stored ones, and two worked out as it is read.
SHOWN_STATUSES = (*(status.value for status in db.JobStatus), STALLED, REVIEWING)
# Which stored statuses a shown one can come from (stalled: unfinished; reviewing: read).
_STORED_AS = {
    STALLED: (db.JobStatus.QUEUED, db.JobStatus.RUNNING),
    REVIEWING: (db.JobStatus.DONE, db.JobStatus.PARTIAL),
}


def recent_jobs(
    session: Session,
    since: datetime | None = None,
    status: str | None = None,
    limit: int = 20,
) -> list[JobStatus]:
    """Jobs created since ``since``, newest first, each as :func:`job_status` shows it; with
    ``status``, only those shown with it (``stalled`` and ``reviewing`` included): what an
    operator looks through to find a job's id, or the job to cancel."""
    statement = select(db.Job.id).order_by(db.Job.created.desc(), db.Job.id)
    if since is not None:
        statement = statement.where(db.Job.created >= since)
    if status is not None:
        statement = statement.where(db.Job.status.in_(_STORED_AS.get(status, (status,))))
    found: list[JobStatus] = []
    for job_id in session.scalars(statement.execution_options(yield_per=100)):
        shown = job_status(session, job_id)
        if status is None or shown.status == status:
            found.append(shown)
            if len(found) >= limit:
                break
    return found


def job_items(session: Session, job_id: str) -> Iterator[db.Item]:
    """Every item of the job, streamed in submission order (a job may hold 100,000)."""
    job_status(session, job_id)
    statement = (
        select(db.Item)
        .where(db.Item.job_id == job_id)
        .order_by(db.Item.id)
        .execution_options(yield_per=FETCH_BATCH)
    )
    yield from session.scalars(statement)


def review_items(session: Session, job_id: str | None = None) -> list[db.Item]:
    """Items a person must look at and nobody has settled yet: read, but less confident than
    their job's threshold.

    And, however confident, fields whose text is not of their kind's form (a zip code of four
    digits, an amount with one decimal) and digits whose ink is faint (``review.FAINT_INK``).
    """
    statement = select(db.Item).where(reviews.awaiting())
    if job_id is not None:
        job_status(session, job_id)
        statement = statement.where(db.Item.job_id == job_id)
    return list(session.scalars(statement.order_by(db.Item.job_id, db.Item.id)))


def result_fields(kind: str) -> tuple[str, ...]:
    return RESULT_FIELDS if kind == db.DIGIT else FIELD_RESULT_FIELDS


def result_row(item: db.Item, fields: tuple[str, ...] = RESULT_FIELDS) -> dict:
    return {name: getattr(item, name) for name in fields}


def review_row(item: db.Item) -> dict:
    row = {name: getattr(item, name) for name in REVIEW_FIELDS if name != "reasons"}
    row["reasons"] = " ".join((item.details or {}).get("reasons") or []) or None
    return row


def wait_for_job(
    database_url: str,
    job_id: str,
    on_progress: Callable[[JobStatus], None] | None = None,
    poll_s: float = 0.2,
    timeout_s: float | None = None,
    first_poll_s: float = 0.005,
) -> JobStatus:
    """Poll until the job reaches done, partial, failed or cancelled (or ``reviewing``);
    ``TimeoutError`` after ``timeout_s``.

    The first polls come quickly and the interval grows by half each time up to ``poll_s``: a
    single crop is written 10 to 20 ms after it is sent, and a fixed half-second poll made
    ``digits enqueue --wait`` take 25 times that. A batch of minutes is polled five times a
    second, one indexed read each time, until the rate it is read at says it ends within two
    intervals: from then on each wait is half the time it has left, down to ``first_poll_s``
    (:func:`_next_poll`). A fixed 0.2 s cost a tenth of a second on average after the last
    chunk, 1% of 20,000 crops' wall time, and polling faster all along costs the workers a
    core's share for nothing.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    interval = min(first_poll_s, poll_s)
    started: tuple[float, int] | None = None  # when progress was first seen, and how much
    while True:
        with db.session_scope(database_url) as session:
            status = job_status(session, job_id)
        if on_progress:
            on_progress(status)
        if status.finished_processing:
            return status
        now = time.monotonic()
        if deadline is not None and now > deadline:
            raise TimeoutError(
                f"job {job_id} still {status.status} after {timeout_s:g} s "
                f"({status.processed}/{status.total} processed): is a worker running?"
            )
        if started is None and status.processed:
            started = (now, status.processed)
        interval = _next_poll(interval, poll_s, first_poll_s, status, started, now)
        time.sleep(interval)


def _next_poll(
    interval: float,
    poll_s: float,
    shortest: float,
    status: JobStatus,
    started: tuple[float, int] | None,
    now: float,
) -> float:
    """The wait before the next poll: half again the last, up to ``poll_s``; but once the rate
    since ``started`` says the job ends sooner than two of those, half of what it has left."""
    interval = min(poll_s, interval * 1.5)
    if started is None or status.processed <= started[1] or now <= started[0]:
        return interval
    rate = (status.processed - started[1]) / (now - started[0])
    left = (status.total - status.processed) / rate
    return max(shortest, min(interval, left / 2))
