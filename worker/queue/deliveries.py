"""Counting a chunk's deliveries, because Redis does not: the guard against poison chunks.

Late acknowledgement means a chunk whose worker child dies is delivered again. That is what saves a
chunk when a child is killed by accident, and what loops forever when one of its crops kills the
child every time (a decoder crash, the kernel's OOM killer). So each delivery is counted in the
database, committed before any work starts, and forgotten once the chunk is written: a count above
``DIGITS_MAX_DELIVERIES`` means the earlier deliveries all died mid-way, and the task stops trying
the chunk as a whole.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sqlalchemy import ColumnElement, Row, Select, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from digits.model.review import ItemStatus
from digits.worker.store import chunks, db, leases, statements, writes
from digits.worker.store.writes import ForeignKeysError, UnknownJobError

__all__ = [
    "Delivery",
    "ForeignKeysError",
    "UnknownJobError",
    "forget",
    "log_refused",
    "log_unwritten",
    "record",
]
log = logging.getLogger("digits.worker")
# Keys named in one refusal line; the count says how many more there were.
NAMED_KEYS = 10


@dataclass(frozen=True)
class Delivery:
    """What the database says about a chunk message before any work: how often it came, how its
    job is judged (the job row's kind and threshold, never the message's), and which of its items
    are final already (key to status), which no message may change."""

    count: int
    kind: str
    threshold: float
    final: dict[str, str] = field(default_factory=dict)
    cancelled: bool = False  # its job was cancelled: every item is final, nothing is read


def record(
    database_url: str,
    job_id: str,
    chunk: str,
    retries: int,
    keys: Sequence[str],
    holder: leases.Holder | None = None,
    fresh: bool = False,
) -> Delivery:
    """Count this delivery (this one included) and read the job's terms and its items' statuses;
    with ``holder``, also lease the chunk to it in the same transaction (``leases.take_in``) when
    anything is left to run.

    Also checks, before the model spends anything on it, that the job exists and owns every key
    (the results upsert would otherwise add rows to a job that never had them). The count is
    written first: a SQLite transaction that reads before it writes fails at once, without
    waiting, when another writer got in between. A delivery whose items are all final (a chunk
    written, then redelivered because its worker died before the acknowledgement; or a replay)
    is not counted: nothing will run for it.

    A ``fresh`` message (neither a retry nor one the broker delivered before) counted for the
    first time commits without waiting for PostgreSQL's disk (:func:`_terms`); every later
    delivery, the ones the poison-crop rule is for, waits as before.
    """
    with db.session_scope(database_url) as session:
        return record_in(session, job_id, chunk, retries, keys, holder, fresh)


def record_in(
    session: Session,
    job_id: str,
    chunk: str,
    retries: int,
    keys: Sequence[str],
    holder: leases.Holder | None = None,
    fresh: bool = False,
) -> Delivery:
    """:func:`record` inside the caller's transaction (``queue.warmup.rehearse`` rolls it back)."""
    try:
        count = _count(session, job_id, chunk, retries)
    except IntegrityError:  # the foreign key: no such job
        raise UnknownJobError(f"job {job_id} does not exist in this database") from None
    job = _terms(session, job_id, flush_wait=not (fresh and count == 1))
    if job is None:  # the count's foreign key says it exists: only a concurrent delete does this
        raise UnknownJobError(f"job {job_id} does not exist in this database")
    statuses = _statuses(session, job_id, keys)
    unknown = len(set(keys) - set(statuses))
    if unknown:
        raise ForeignKeysError(
            f"{unknown} of the message's {len(keys)} crop keys are not items of job {job_id}"
        )
    final = {key: status for key, status in statuses.items() if status != ItemStatus.PENDING}
    if len(final) == len(statuses):
        forget(session, job_id, chunk)
        chunks.forget(session, job_id, chunk)  # nothing of it is left to send again
    elif holder is not None:
        leases.take_in(session, job_id, chunk, holder)
    return Delivery(count, job.kind, job.review_threshold, final, job.cancelled is not None)


def settle(
    session: Session,
    job_id: str,
    chunk: str,
    results: list[writes.ItemResult],
    model: writes.ModelInfo | None,
    kept: dict[str, bytes] | None = None,
) -> writes.JobCounts:
    """The chunk's results written, and its delivery count, lease and copy gone with them, in
    the caller's transaction: how every chunk ends (``tasks._commit``; ``warmup.rehearse`` runs
    it once and rolls it back)."""
    counts = writes.write_chunk(session, job_id, results, model, kept)
    forget(session, job_id, chunk)
    leases.drop(session, job_id, chunk)
    chunks.forget(session, job_id, chunk)
    return counts


def warm(database_url: str) -> None:
    """Open this process's connection and compile the delivery check's reads, for a job that
    cannot exist: a worker child does it as it starts, so its first chunk does not pay for them
    (with the ORM's set-up, 40 to 70 ms on the first single-crop job after a start)."""
    with db.session_scope(database_url) as session:
        _terms(session, "", flush_wait=False)
        _statuses(session, "", [""])


def _terms(session: Session, job_id: str, flush_wait: bool = True) -> Row | None:
    """The job's kind and threshold: how its chunks are read and judged (never the message's);
    and whether it was cancelled (store.cancels).

    On PostgreSQL the same statement sets two things for the rest of the transaction
    (``set_config`` local to it, as ``SET LOCAL`` would, without a round trip each):

    - the statuses' lookup (:func:`_statuses`) is planned for this job and these keys every time;
    - without ``flush_wait``, the commit returns before the server has flushed it to disk
      (``synchronous_commit`` off). The worker asks this for a fresh chunk's first delivery count
      and lease, the middle one of a single-crop job's three commits. That commit is atomic and
      seen by every other session at once; it can be lost only if the database server itself
      stops without a clean shutdown (a crash, or the kernel killing one of its processes)
      before its WAL writer flushes it, within about 0.6 s (three times ``wal_writer_delay``);
      never when a worker dies. Lost, the chunk's first count is missing (a poison crop is split
      one delivery later; its redeliveries' counts wait for the disk) and its lease with it (the
      sweeper may send the chunk again while it runs; its results are upserts, one row per key,
      so it is written once either way).
    """
    statement = _terms_of(session.get_bind().dialect.name, flush_wait)
    return session.connection().execute(statement, {"job_id": job_id}).first()


@functools.lru_cache(maxsize=4)
def _terms_of(dialect: str, flush_wait: bool) -> Select:
    """:func:`_terms`' statement, built once per dialect and flush (see ``_counting``)."""
    columns: list[ColumnElement] = [db.Job.kind, db.Job.review_threshold, db.Job.cancelled]
    if dialect == "postgresql":
        columns.append(func.set_config("plan_cache_mode", "force_custom_plan", True))
        if not flush_wait:
            columns.append(func.set_config("synchronous_commit", "off", True))
    return select(*columns).where(db.Job.id == bindparam("job_id"))


def _statuses(session: Session, job_id: str, keys: Sequence[str]) -> dict[str, str]:
    """The status of each of ``keys`` the job has an item for, after :func:`_terms`.

    On PostgreSQL the lookup is planned for this job and these keys every time (``_terms`` sets
    it). psycopg prepares a statement it has run five times, and the server then settles on a
    generic plan: with statistics from before a big job's rows existed it went through the (job,
    status) index and compared every row of the job with each of the keys in turn, 400 ms a chunk
    at 50,000 crops and 45% of a worker child's time. A custom plan takes the unique (job, key)
    index once the job's statistics exist (jobs._insert_items gathers them for big jobs; 2 to 8
    ms), and at worst filters the job's rows through a hash of the keys (12 ms at 50,000 crops).
    """
    found = session.connection().execute(_STATUSES, {"job_id": job_id, "keys": list(keys)})
    return {key: status for key, status in found}


_STATUSES = select(db.Item.key, db.Item.status).where(
    db.Item.job_id == bindparam("job_id"), db.Item.key.in_(bindparam("keys", expanding=True))
)


def _count(session: Session, job_id: str, chunk: str, retries: int) -> int:
    row = {
        "job_id": job_id,
        "chunk": chunk,
        "retries": retries,
        "deliveries": 1,
        "updated": db.utcnow(),
    }
    counting = _counting(session.get_bind().dialect.name)
    return int(session.connection().execute(counting, row).scalar_one())


@functools.lru_cache(maxsize=2)
def _counting(dialect: str):
    """The delivery count's upsert, built once per dialect (db.insert_of says why)."""
    table = db.ChunkDelivery
    statement = db.insert_of(dialect)(table)
    return statement.on_conflict_do_update(
        index_elements=[table.job_id, table.chunk, table.retries],
        set_={"deliveries": table.deliveries + 1, "updated": statement.excluded.updated},
    ).returning(table.deliveries)


def forget(session: Session, job_id: str, chunk: str) -> None:
    """Drop the chunk's counts inside the transaction that wrote it: it needs no guarding now."""
    statements.delete_chunk_row(session, db.ChunkDelivery, job_id, chunk)


def already_final(final: Mapping[str, str]) -> dict[str, str]:
    """Why each of these items (key to status) takes no result, in writes.write_chunk's words."""
    return {key: f"the item is final already ({status})" for key, status in final.items()}


def log_unwritten(where: str, counts: writes.JobCounts) -> None:
    """Why a chunk's write stored some results not: its items became final while it was read,
    by another delivery (a warning, :func:`log_refused`), or by a cancel (a line of information:
    a person asked for it)."""
    if not counts.refused:
        return
    if counts.status == db.JobStatus.CANCELLED:
        log.info(
            "%s: its job was cancelled while the chunk was read; %d results not written",
            where,
            len(counts.refused),
        )
    else:
        log_refused(where, counts.refused)


def log_refused(where: str, refused: Mapping[str, str]) -> None:
    """One warning line for the results a chunk may not write, naming keys and why.

    A warning, not an error: the chunk that was written before and came again because its worker
    died before acknowledging it does this, and is harmless. A message that keeps doing it for a
    finished job is someone replaying or forging signed messages: the line names what they tried.
    """
    named = "; ".join(f"{key[:100]!r}: {why}" for key, why in list(refused.items())[:NAMED_KEYS])
    more = len(refused) - NAMED_KEYS
    log.warning(
        "%s: results for %d items refused, nothing written for them (a chunk delivered again "
        "after it was written, or a replayed message): %s%s",
        where,
        len(refused),
        named,
        f"; and {more} more" if more > 0 else "",
    )
