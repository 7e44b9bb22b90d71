"""Submitting a job: validate the crops, record the job and its items, send one task per chunk.

Every item gets its row at submission (status ``pending``), so a job created with N crops ends with
N item rows whatever happens to its messages, and a lost chunk shows up as items still pending
rather than as a job that quietly finished short. Crops travel base64-encoded inside the JSON
messages, so a worker on another machine needs no shared filesystem.

Sending streams: the rows are made first (they need only the keys), then each chunk's files are
read, its copy kept (store.chunks) and its message sent, a few chunks at a time, so the workers
start on the first chunk while later files are still being read (``digits enqueue`` defers the
reading of a directory's image files to here: :attr:`Crop.path`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from celery import Celery
from sqlalchemy import insert, select, text
from sqlalchemy.exc import SQLAlchemyError

from digits.model.review import ItemStatus
from digits.worker.config import Settings
from digits.worker.queue import messages
from digits.worker.store import chunks as copies
from digits.worker.store import db, writes
from digits.worker.submission.files import read_later

log = logging.getLogger("digits.jobs")
# A job this big gets its rows' statistics gathered at once on PostgreSQL (see _insert_items).
ANALYZE_ROWS = 5000


class JobError(ValueError):
    """The job as a whole cannot be accepted; the message names the offending crop."""


class EnqueueError(RuntimeError):
    """The job was recorded but some chunks could not be sent; their items are marked ``error``."""


class EnqueueInterrupted(KeyboardInterrupt):
    """Ctrl-C while a recorded job's chunks were being sent: the unsent items are ``error`` items
    with the reason, the sent ones will be read, and this names the job so the user can follow it.

    A KeyboardInterrupt still, so that whatever stops on Ctrl-C (an ingest run) stops here too.
    """

    def __init__(self, job_id: str, sent: int, chunks: int, unsent_items: int):
        self.job_id = job_id
        super().__init__(
            f"job {job_id}: interrupted after queuing {sent} of {chunks} chunks; its "
            f"{unsent_items} items not queued are marked error ({INTERRUPTED}); the queued "
            f"ones will be read: follow it with `digits status {job_id}`"
        )


INTERRUPTED = "not queued: enqueue was interrupted before this item's chunk was sent"


# A crop's bytes as given, or the file to read them from when its chunk is sent.
Source = bytes | str | os.PathLike[str]


@dataclass(frozen=True)
class Crop:
    """One crop as the caller hands it over: a key and its bytes, or why they could not be read.

    ``error`` is for crops the submitter already knows are bad (an oversized zip member, say): they
    become ``error`` items at once instead of travelling to a worker.
    """

    key: str
    data: bytes | None = None
    error: str | None = None
    # Or the file to read the bytes from when the crop's chunk is sent, and its size when listed
    # (a file that changed or went since becomes that item's error then): see files.read_later.
    path: str | os.PathLike[str] | None = None
    size: int = 0


@dataclass(frozen=True)
class Chunk:
    index: int
    crops: list[tuple[str, Source]]

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.crops]


@dataclass(frozen=True)
class JobPlan:
    job_id: str
    source: str | None
    review_threshold: float
    queue: str
    keys: list[str]  # every key, in submission order
    chunks: list[Chunk]
    rejected: dict[str, str] = field(default_factory=dict)
    kind: str = db.DIGIT  # or a field kind: every item of the job is read as one
    double_key: bool = False  # flagged items need two operators who agree (store.reviews)

    @property
    def total(self) -> int:
        return len(self.keys)

    def chunk_message(self, chunk: Chunk) -> messages.ChunkMessage:
        return messages.ChunkMessage.of(
            self.job_id, chunk.index, chunk.crops, self.review_threshold, self.kind
        )

    def message(self, chunk: Chunk) -> dict:
        """The keyword arguments of the chunk's task (:mod:`digits.worker.queue.messages`)."""
        return self.chunk_message(chunk).kwargs()


def submit(
    crops: Sequence[Crop],
    settings: Settings,
    source: str | None = None,
    app: Celery | None = None,
    kind: str = db.DIGIT,
    review_threshold: float | None = None,
    double_key: bool = False,
) -> JobPlan:
    """Validate, record and send a job; returns its plan (job id, queue, chunks).

    ``kind`` is what every crop is (``digit``, or a field kind: ``zip``, ``amount``, ``digits``);
    ``review_threshold`` overrides the one ``settings`` give the kind (:func:`choose_threshold`).
    The database must be migrated (:func:`worker.store.schema.upgrade`; the CLI and the worker
    do it).
    """
    plan = plan_job(crops, settings, source, kind, review_threshold, double_key)
    first = _read(plan, settings, next(_groups(plan.chunks), ()))
    # The job's rows and its first chunk's copy in one transaction: one commit less before the
    # first chunk is on the queue (a single-crop job's whole latency is a handful of commits).
    with db.session_scope(settings.database_url) as session:
        create_job(session, plan)
        _keep(session, plan, first)
    send_chunks(plan, settings, app, first)
    return plan


def plan_job(
    crops: Sequence[Crop],
    settings: Settings,
    source: str | None = None,
    kind: str = db.DIGIT,
    review_threshold: float | None = None,
    double_key: bool = False,
) -> JobPlan:
    """Check the job and split it into chunks; :class:`JobError` names the first bad crop."""
    if kind != db.DIGIT and kind not in db.FIELD_KINDS:
        raise JobError(f"item kind {kind!r}: choose {db.DIGIT!r} or one of {db.FIELD_KINDS}")
    _check_size(len(crops), settings)
    _check_keys(crops)
    sendable: list[tuple[str, Source, int]] = []
    rejected: dict[str, str] = {}
    for crop in crops:
        reason = _rejection(crop, settings)
        if reason:
            rejected[crop.key] = reason
        elif crop.path is not None:
            sendable.append((crop.key, crop.path, crop.size))
        else:
            data = bytes(crop.data or b"")
            sendable.append((crop.key, data, len(data)))
    size = settings.chunk_size if kind == db.DIGIT else settings.field_chunk_size
    chunks = [Chunk(i, part) for i, part in enumerate(_split(sendable, size, settings))]
    return JobPlan(
        job_id=str(uuid.uuid4()),
        source=source[:200] if source else None,
        review_threshold=choose_threshold(kind, settings, review_threshold),
        queue=messages.queue_for(len(chunks)),
        keys=[crop.key for crop in crops],
        chunks=chunks,
        rejected=rejected,
        kind=kind,
        double_key=double_key,
    )


def choose_threshold(kind: str, settings: Settings, chosen: float | None = None) -> float:
    """The review threshold a new job is stored with, and every chunk of it is judged by:
    ``chosen``, else DIGITS_REVIEW_THRESHOLD when set, else the kind's default (model.review)."""
    return chosen if chosen is not None else settings.threshold_for(kind)


def create_job(session, plan: JobPlan) -> None:
    """The job row and one row per item, in one transaction; rejected crops are final at once.

    The chunks' copies are kept as each is sent (:func:`send_chunks`), not here: the first chunk
    goes out without waiting for every crop to be read and stored."""
    now = db.utcnow()
    job = db.Job(
        id=plan.job_id,
        source=plan.source,
        review_threshold=plan.review_threshold,
        kind=plan.kind,
        double_key=plan.double_key,
        chunks=len(plan.chunks),
        queue=plan.queue,
        created=now,
        updated=now,
    )
    writes.new_job_counts(job, plan.total, len(plan.rejected), now)
    session.add(job)
    session.flush()  # the items' foreign key needs the job's row first
    _insert_items(session, [_item_row(plan, key, now) for key in plan.keys])


def _insert_items(session, rows: list[dict]) -> None:
    """All of a job's rows, before its first chunk is sent: the workers wait while this runs.

    On PostgreSQL a COPY, inside the session's transaction: 50,000 rows in half the time of the
    executemany (psycopg pipelines one INSERT per row). Elsewhere one Core executemany, which
    skips the ORM's bulk-insert bookkeeping.
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg":
        columns = list(rows[0])
        copy_sql = f"COPY {db.Item.__tablename__} ({', '.join(columns)}) FROM STDIN"
        with (
            connection.connection.driver_connection.cursor() as cursor,
            cursor.copy(copy_sql) as copy,
        ):
            for row in rows:
                copy.write_row([row[name] for name in columns])
        if len(rows) >= ANALYZE_ROWS:
            # Autovacuum would gather statistics a minute or more later; until then the planner
            # takes this job for one of a few rows and its key lookups for a walk through the
            # (job, status) index: 12 ms a chunk for a delivery check at 50,000 crops, 4.5 ms
            # once the job is counted. ANALYZE samples a fixed number of rows (50 ms) and sees
            # this transaction's own.
            connection.execute(text(f"ANALYZE {db.Item.__tablename__}"))
        return
    connection.execute(insert(db.Item), rows)


def _item_row(plan: JobPlan, key: str, now: datetime) -> dict:
    """Uniform rows (same columns in each) so the insert runs as one batched executemany."""
    reason = plan.rejected.get(key)
    return {
        "job_id": plan.job_id,
        "key": key,
        "status": ItemStatus.PENDING if reason is None else ItemStatus.ERROR,
        "error": reason,
        "multiple_blobs": False,
        "processed": None if reason is None else now,
    }


def send_chunks(
    plan: JobPlan, settings: Settings, app: Celery | None = None, kept: Prepared | None = None
) -> None:
    """Read, keep a copy of and publish every chunk, a few at a time (:data:`GROUPS`); if the
    broker fails midway, the unsent items become ``error`` items. ``kept``: the first group, read
    and kept already (:func:`submit` keeps it with the job's rows)."""
    if app is None:
        from digits.worker.queue.celery_app import create_app

        with contextlib.closing(create_app(settings)) as own:  # its broker connections go too
            return send_chunks(plan, settings, own, kept)
    sent = 0  # chunks on the queue so far; counted outside the try so Ctrl-C anywhere sees it
    try:
        for number, group in enumerate(_groups(plan.chunks)):
            try:
                read = kept if kept is not None and number == 0 else _prepare(plan, settings, group)
                if read is None:
                    log.info(
                        "job %s cancelled: %d of %d chunks sent",
                        plan.job_id,
                        sent,
                        len(plan.chunks),
                    )
                    return
            except SQLAlchemyError as exc:  # no copy kept: sending it could lose it for good
                reason = str(exc).splitlines()[0]
                _fail_unsent(plan, settings, plan.chunks[sent:], f"could not be queued: {reason}")
                raise EnqueueError(
                    f"job {plan.job_id}: the database refused the copy of chunk "
                    f"{group[0].index} of {len(plan.chunks)} ({reason}); its items and those "
                    "after it are marked error"
                ) from exc
            for chunk, message in read.ready:
                try:
                    if message is not None:
                        messages.send(app, message, plan.queue)
                except Exception as exc:  # noqa: BLE001 - any broker failure: record it, report it
                    _fail_unsent(plan, settings, plan.chunks[sent:], f"could not be queued: {exc}")
                    raise EnqueueError(
                        f"job {plan.job_id}: could not queue chunk {chunk.index} of "
                        f"{len(plan.chunks)} ({exc}); its items and those after it are marked error"
                    ) from exc
                sent += 1
    except KeyboardInterrupt as interrupt:
        if isinstance(interrupt, EnqueueInterrupted):
            raise
        unsent = plan.chunks[sent:]
        with _sigint_deferred():  # a second Ctrl-C must not leave the marking half done
            _fail_unsent(plan, settings, unsent, INTERRUPTED)
        raise EnqueueInterrupted(
            plan.job_id, sent, len(plan.chunks), sum(len(c.crops) for c in unsent)
        ) from None


# Chunks read, kept and sent together: one at first, so the workers start at once, then more per
# transaction (each is a write the workers' own writes wait for on SQLite).
GROUPS = (1, 1, 2, 4, 8)


def _groups(chunks: Sequence[Chunk]) -> Iterator[Sequence[Chunk]]:
    start = 0
    for size in itertools.chain(GROUPS, itertools.repeat(GROUPS[-1])):
        if start >= len(chunks):
            return
        yield chunks[start : start + size]
        start += size


@dataclass(frozen=True)
class Prepared:
    """A group of chunks read: each chunk with its message (None when none of its files could be
    read), and the error rows of the files that could not be."""

    ready: list[tuple[Chunk, messages.ChunkMessage | None]]
    unreadable: list[writes.ItemResult]


def _prepare(plan: JobPlan, settings: Settings, group: Sequence[Chunk]) -> Prepared | None:
    """The group's messages, their files read, kept in a transaction of their own; None when
    the job was cancelled meanwhile (store.cancels): nothing more of it is read or sent.

    Asked in a transaction of its own: on SQLite one that reads before it writes fails at once
    when a worker's write got in between. A cancel that comes after the question lets this group
    go: each of its chunks is dropped unread, its copy with it (``deliveries.record_in``)."""
    with db.session_scope(settings.database_url) as session:
        if session.scalar(select(db.Job.cancelled).where(db.Job.id == plan.job_id)):
            return None
    read = _read(plan, settings, group)
    with db.session_scope(settings.database_url) as session:
        _keep(session, plan, read)
    return read


def _read(plan: JobPlan, settings: Settings, group: Sequence[Chunk]) -> Prepared:
    """The group's messages, their files read (a chunk left with no crop has no message)."""
    ready: list[tuple[Chunk, messages.ChunkMessage | None]] = []
    unreadable: list[writes.ItemResult] = []
    for chunk in group:
        crops: list[tuple[str, bytes]] = []
        for key, source in chunk.crops:
            if not isinstance(source, bytes):  # a path: read now
                data, error = read_later(source, settings.max_item_bytes)
                if error is not None:
                    unreadable.append(writes.error_results([key], error)[0])
                    continue
                source = data
            crops.append((key, source))
        message = (
            messages.ChunkMessage.of(
                plan.job_id, chunk.index, crops, plan.review_threshold, plan.kind
            )
            if crops
            else None
        )
        ready.append((chunk, message))
    return Prepared(ready, unreadable)


def _keep(session, plan: JobPlan, read: Prepared) -> None:
    """A copy of each message (the sweeper sends again what Redis loses) and the error rows of
    the files that could not be read, in ``session``'s transaction."""
    kept = [(str(m.chunk), m.crops) for _, m in read.ready if m is not None]
    copies.record(session, plan.job_id, kept, plan.queue)
    if read.unreadable:
        writes.write_chunk(session, plan.job_id, read.unreadable, None)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Ignore Ctrl-C while the block runs (main thread only): the caller is already handling
    one and raises it right after, so a second press adds nothing but a half-done write."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _fail_unsent(plan: JobPlan, settings: Settings, chunks: Sequence[Chunk], reason: str) -> None:
    keys = [key for chunk in chunks for key in chunk.keys]
    if not keys:
        return
    with db.session_scope(settings.database_url) as session:
        writes.write_chunk(session, plan.job_id, writes.error_results(keys, reason), None)
        for chunk in chunks:  # a copy kept just before the failure: nothing left to send again
            copies.forget(session, plan.job_id, str(chunk.index))


def _check_size(count: int, settings: Settings) -> None:
    if count == 0:
        raise JobError("a job needs at least one crop")
    if count > settings.max_items_per_job:
        raise JobError(
            f"{count} crops: a job holds at most {settings.max_items_per_job} "
            "(split it, or raise DIGITS_MAX_ITEMS_PER_JOB)"
        )


def _check_keys(crops: Sequence[Crop]) -> None:
    seen: set[str] = set()
    for crop in crops:
        key = crop.key
        if not isinstance(key, str) or not key:
            raise JobError(f"crop key {key!r}: keys must be non-empty strings")
        if len(key) > db.MAX_KEY_LENGTH:
            raise JobError(f"crop key {key[:60]!r}...: longer than {db.MAX_KEY_LENGTH} characters")
        if "\x00" in key:
            raise JobError(f"crop key {key!r}: contains a NUL character")
        if key in seen:
            raise JobError(f"duplicate key {key!r}: every crop in a job needs its own key")
        seen.add(key)


def _rejection(crop: Crop, settings: Settings) -> str | None:
    if crop.error:
        return crop.error
    if crop.path is not None:
        return None  # read when sent, against the same limit (files.read_later)
    if not isinstance(crop.data, bytes | bytearray):
        return f"no crop bytes (got {type(crop.data).__name__})"
    if len(crop.data) > settings.max_item_bytes:
        return f"crop is {len(crop.data)} bytes, over the {settings.max_item_bytes} byte limit"
    return None


def _split(
    crops: list[tuple[str, Source, int]], most: int, settings: Settings
) -> Iterator[list[tuple[str, Source]]]:
    """Chunks of at most ``most`` crops (the job kind's chunk size) and ``max_chunk_bytes``
    bytes, in submission order.

    ``crops`` are (key, bytes or the file to read, size).
    """
    current: list[tuple[str, Source]] = []
    size = 0
    for key, data, length in crops:
        if current and (len(current) == most or size + length > settings.max_chunk_bytes):
            yield current
            current, size = [], 0
        current.append((key, data))
        size += length
    if current:
        yield current
