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
    digits, an amount with one decimal), digits whose ink is faint (``review.FAINT_INK``),
    digit crops that hold two digits (``review.TWO_DIGITS``) and crops inside a pad that is not
    their paper (``review.FRAMED``).
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
    second, one indexed read each time, except as it nears the end its rate foretells: then
    each wait is half the time left (:class:`_Pace`). A fixed 0.2 s cost a tenth of a second on
    average after the last chunk, 1% of 20,000 crops' wall time, and polling faster all along
    costs the workers a core's share for nothing.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pace = _Pace(poll_s, min(first_poll_s, poll_s))
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
        time.sleep(pace.next(status.processed, status.total, now))


class _Pace:
    """The waits between polls of a job: half again each time, from ``shortest`` up to
    ``longest``; but while the job's rate so far says it ends sooner than that, half the time
    it has left (never under ``shortest``). The end is foretold from the last change seen, so
    once it is overdue (the last chunk slower than the rest, or a stall: a chunk lost until the
    sweeper sends it again) the waits grow again as at the start."""

    def __init__(self, longest: float, shortest: float):
        self.longest, self.shortest = longest, shortest
        self.interval = shortest / 1.5  # the first wait is ``shortest``
        self.first: tuple[float, int] | None = None  # when progress was first seen, and how much
        self.last: tuple[float, int] | None = None  # the latest change seen

    def next(self, processed: int, total: int, now: float) -> float:
        if processed and (self.last is None or processed != self.last[1]):
            self.last = (now, processed)
            self.first = self.first or self.last
        self.interval = min(self.longest, self.interval * 1.5)
        if self.first is None or self.last is None:
            return self.interval
        (t0, p0), (t1, p1) = self.first, self.last
        if t1 <= t0 or p1 <= p0:  # one change seen so far: no rate yet
            return self.interval
        ends = t1 + (total - p1) * (t1 - t0) / (p1 - p0)
        if now < ends:
            self.interval = max(self.shortest, min(self.interval, (ends - now) / 2))
        return self.interval
