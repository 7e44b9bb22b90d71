"""The job database: tables, engines and sessions (the schema's revision: :mod:`.schema`).

SQLite (the default, one file) and PostgreSQL (several worker machines) run the same code. Engines
are made per process and per URL: a connection pool inherited across ``fork`` would share sockets
between Celery's children, so each child opens its own on first use.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from digits.model import kinds
from digits.model.review import DIGIT, ItemStatus
from digits.worker.store.engines import (  # noqa: F401 - re-exported: callers read them here
    ReadOnlyError,
    reading_url,
    sqlite_path,
)
from digits.worker.store.engines import make_engine as _create_engine
from digits.worker.store.schema import (  # noqa: F401 - re-exported: callers read them here
    MIGRATIONS,
    MigrationLockError,
    SchemaError,
    check_schema,
    head_revision,
    upgrade,
)

# Keys are envelope or cheque ids; PostgreSQL's b-tree entries cap a unique key at ~2.7 kB.
MAX_KEY_LENGTH = 512
MODEL_VERSION_LENGTH = 200  # jobs.model_version (migration 0001)


class JobStatus(StrEnum):
    """A job's status, as stored: from its items' (:func:`writes.job_status` decides)."""

    QUEUED = "queued"  # no item processed yet
    RUNNING = "running"
    DONE = "done"  # every item read (some may be blank or for review)
    PARTIAL = "partial"  # some items are errors
    FAILED = "failed"  # every item is an error
    CANCELLED = "cancelled"  # a person stopped it: its pending items were not read (store.cancels)


FINAL_JOB_STATUSES = (JobStatus.DONE, JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELLED)
# A job's items are single digits (DIGIT) or whole fields of one of these kinds (model.kinds: light,
# so the schema does not pull in the image code).
FIELD_KINDS = kinds.NAMES
# Which item columns ``digits results`` prints (a column's ``info``): for digit jobs, field jobs, both.
RESULTS_DIGIT = {"results": (DIGIT,)}
RESULTS_FIELD = {"results": ("field",)}
RESULTS_ALL = {"results": (DIGIT, "field")}
# Who gave an item its final value (items.source): the model, when it was sure enough (ok, blank),
# or a person at the review station. NULL: nobody yet (needs review and not keyed, error, pending).
SOURCE_MODEL = "model"
SOURCE_OPERATOR = "operator"
OPERATOR_NAME_LENGTH = 64


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every one was stored in UTC."""
    if moment is None or moment.tzinfo:
        return moment
    return moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # store.cancels
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    source: Mapped[str | None] = mapped_column(String(200))
    # Chosen by the submitter and carried to every chunk, so one job is judged by one threshold.
    review_threshold: Mapped[float] = mapped_column(Float)
    chunks: Mapped[int] = mapped_column(Integer, default=0)
    queue: Mapped[str | None] = mapped_column(String(32))
    total: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    ok: Mapped[int] = mapped_column(Integer, default=0)
    blank: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[int] = mapped_column(Integer, default=0)
    needs_review: Mapped[int] = mapped_column(Integer, default=0)
    # The version of every model that wrote items of this job, comma-separated (normally one).
    model_version: Mapped[str | None] = mapped_column(String(MODEL_VERSION_LENGTH))
    # What every item of the job is: one digit, or a whole field of a kind in FIELD_KINDS. On the
    # job, not the items: a chunk is read in one batched pass, so its items share one reader.
    kind: Mapped[str] = mapped_column(String(16), default=DIGIT, server_default=DIGIT)
    # Its flagged items are final only when two different operators key the same value
    # (store.reviews): `digits enqueue --double-key`.
    double_key: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (
        UniqueConstraint("job_id", "key", name="uq_items_job_key"),
        Index("ix_items_job_status", "job_id", "status"),
        # The review station's queue across jobs: only the items still awaiting a person, so the
        # index stays small and the worker's writes of every other item never touch it.
        Index(
            "ix_items_awaiting",
            "id",
            sqlite_where=text("status = 'needs_review' AND source IS NULL"),
            postgresql_where=text("status = 'needs_review' AND source IS NULL"),
        ),
        Index("ix_items_crop_sha256", "crop_sha256"),
    )

    # The table is the one list of an item's columns: the worker's upsert writes every column but
    # id, job_id and key (store.writes), and ``digits results`` prints, in this order, the ones
    # whose info names the job's kind (store.results): add an output column here, in a migration
    # and in store.writes.ItemResult, and give it RESULTS_DIGIT, RESULTS_FIELD or RESULTS_ALL.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH), info=RESULTS_ALL)
    digit: Mapped[int | None] = mapped_column(Integer, info=RESULTS_DIGIT)
    # Field items: the string read (``digit`` stays NULL) and what a reviewer needs to check it
    # without rereading the scan (``details``): each digit's guess, confidence, top 3 and box, and
    # the reasons. A digit's ``details`` holds only the reasons, when its ink is faint, its crop
    # holds two digits or lies in a pad (review.FAINT_INK, review.TWO_DIGITS, review.FRAMED).
    text: Mapped[str | None] = mapped_column(Text, info=RESULTS_FIELD)
    confidence: Mapped[float | None] = mapped_column(Float, info=RESULTS_ALL)
    status: Mapped[str] = mapped_column(
        String(16), default=ItemStatus.PENDING.value, info=RESULTS_ALL
    )
    error: Mapped[str | None] = mapped_column(Text, info=RESULTS_ALL)
    details: Mapped[dict | None] = mapped_column(JSON, info=RESULTS_FIELD)
    top3: Mapped[list | None] = mapped_column(JSON)
    multiple_blobs: Mapped[bool] = mapped_column(Boolean, default=False)
    model_version: Mapped[str | None] = mapped_column(String(100))
    processed: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The answer the business takes, as text ("7", "1.480-"), and who gave it (SOURCE_MODEL or
    # SOURCE_OPERATOR): the model's reading when it was sure, a person's once keyed. Last in the
    # printed columns, so consumers that read ``digits results`` by position keep working.
    final: Mapped[str | None] = mapped_column(Text, info=RESULTS_ALL)
    source: Mapped[str | None] = mapped_column(String(16), info=RESULTS_ALL)
    # The crop's bytes, kept for a person (store.crops): by content, so a crop sent twice is
    # stored once. No ON DELETE: `digits purge` lets go of an item's crop before deleting it.
    crop_sha256: Mapped[str | None] = mapped_column(ForeignKey("crops.sha256"))


class Crop(Base):
    """A kept crop's bytes, once per content (sha256), for the review station and the exports.

    Written in the transaction that writes its item (store.writes), removed by ``digits purge``
    once no item refers to it or its retention has passed.
    """

    __tablename__ = "crops"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    stored: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    data: Mapped[bytes] = mapped_column(LargeBinary)  # last: see migration 0006


class Operator(Base):
    """A person who keys at the review station (``digits operator add NAME``)."""

    __tablename__ = "operators"
    __table_args__ = (UniqueConstraint("name", name="uq_operators_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(OPERATOR_NAME_LENGTH))
    password_hash: Mapped[str] = mapped_column(String(200))  # argon2id, with its parameters
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())


class Keying(Base):
    """One value typed by one operator for one item, or their "unreadable": the audit trail.

    Only ever inserted: triggers (migration 0007) refuse every UPDATE and DELETE, so no one, the
    station included, edits what was keyed. ``value`` is NULL when ``unreadable``.
    """

    __tablename__ = "keyings"
    __table_args__ = (
        Index("ix_keyings_item", "item_id"),
        Index("ix_keyings_operator", "operator_id", "keyed"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"))
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id"))
    value: Mapped[str | None] = mapped_column(Text)
    unreadable: Mapped[bool] = mapped_column(Boolean, default=False)
    keyed: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ItemLock(Base):
    """An item shown to one operator until ``until``: nobody else is given it meanwhile.

    Expires by itself (an operator who walks away holds nothing for long); taken and renewed by a
    conditional upsert (store.reviews), so two stations asking at once never both get it.
    """

    __tablename__ = "item_locks"
    __table_args__ = (Index("ix_item_locks_operator", "operator_id"),)

    item_id: Mapped[int] = mapped_column(
        ForeignKey("items.id", ondelete="CASCADE"), primary_key=True
    )
    operator_id: Mapped[int] = mapped_column(ForeignKey("operators.id", ondelete="CASCADE"))
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LoginFailure(Base):
    """Wrong passwords per operator name and per client address, for the station's rate limit."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)  # "name:..." or "addr:..."
    failures: Mapped[int] = mapped_column(Integer)
    first: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Model(Base):
    __tablename__ = "models"

    version: Mapped[str] = mapped_column(String(100), primary_key=True)
    arch: Mapped[str] = mapped_column(String(50))
    test_accuracy: Mapped[float | None] = mapped_column(Float)
    checksum: Mapped[str] = mapped_column(String(64))
    registered: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IngestRun(Base):
    """One ``digits ingest`` (or scheduled) run over an inbox, and its summary once it is known."""

    __tablename__ = "ingest_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    started: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # enqueued: jobs sent, results not yet summarized; finished; incomplete: summarized unfinished.
    state: Mapped[str] = mapped_column(String(16), default="enqueued")
    inbox: Mapped[str] = mapped_column(String(1000))
    done: Mapped[str | None] = mapped_column(String(1000))
    summary: Mapped[dict | None] = mapped_column(JSON)


class IngestedFile(Base):
    """A file taken from an inbox, by content: the same bytes under any name are ingested once."""

    __tablename__ = "ingested_files"
    __table_args__ = (UniqueConstraint("sha256", name="uq_ingested_files_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1000))
    size: Mapped[int] = mapped_column(BigInteger)
    items: Mapped[int] = mapped_column(Integer)
    # Kept when old jobs are deleted: the file was read, and must not be read again.
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    run_id: Mapped[str | None] = mapped_column(ForeignKey("ingest_runs.id", ondelete="SET NULL"))
    ingested: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChunkDelivery(Base):
    """How often one message of a chunk began without finishing: Redis keeps no delivery count.

    A chunk whose crop kills its worker child is redelivered after every death; counting here, in a
    transaction committed before the work starts, lets the task recognise it and stop the loop.
    ``retries`` is part of the key because a retry after a database error is a new message.
    """

    __tablename__ = "chunk_deliveries"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    chunk: Mapped[str] = mapped_column(String(64), primary_key=True)
    retries: Mapped[int] = mapped_column(Integer, primary_key=True)
    deliveries: Mapped[int] = mapped_column(Integer)
    updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ChunkLease(Base):
    """Who runs a chunk now, and until when that claim holds without a renewal (store.leases).

    Redis only knows a chunk is unacknowledged, not whether its holder lives: a lease that is not
    renewed expires within ``leases.LEASE_S``, and the sweeper may then send the chunk again.
    """

    __tablename__ = "chunk_leases"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    chunk: Mapped[str] = mapped_column(String(64), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    since: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    renewed: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    until: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SentChunk(Base):
    """A copy of a chunk's crops from its sending until it is written (store.chunks).

    Redis holds the only other copy, and can lose it (FLUSHALL, a failover, an older AOF): this
    one lets the sweeper send the chunk again. ``touched`` is when the chunk was last sent or seen
    waiting in Redis; ``queue`` where it was sent.
    """

    __tablename__ = "sent_chunks"
    __table_args__ = (Index("ix_sent_chunks_touched", "touched"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    chunk: Mapped[str] = mapped_column(String(64), primary_key=True)
    queue: Mapped[str] = mapped_column(String(32))
    touched: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    crops: Mapped[list] = mapped_column(JSON)  # last: see migration 0006


_engines: dict[tuple[int, str], Engine] = {}


def engine_for(database_url: str) -> Engine:
    """This process's engine for ``database_url``; a forked child never reuses its parent's pool."""
    key = (os.getpid(), database_url)
    if key not in _engines:
        _engines[key] = _create_engine(database_url)
    return _engines[key]


def session_factory(database_url: str) -> sessionmaker[Session]:
    return sessionmaker(engine_for(database_url), expire_on_commit=False)


@contextlib.contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    with session_factory(database_url).begin() as session:
        yield session


def insert_for(session: Session):
    """The dialect's INSERT, the one with ON CONFLICT; the two databases spell it the same way."""
    return insert_of(session.get_bind().dialect.name)


@functools.lru_cache(maxsize=16)
def upsert(dialect: str, table: type[Base], index: tuple[str, ...], updates: tuple[str, ...]):
    """INSERT ... ON CONFLICT (``index``) DO UPDATE SET each of ``updates`` to the row offered,
    built once per dialect and table (:func:`insert_of` says why); run it with the rows as
    parameters."""
    statement = insert_of(dialect)(table)
    return statement.on_conflict_do_update(
        index_elements=[getattr(table, name) for name in index],
        set_={name: statement.excluded[name] for name in updates},
    )


def insert_of(name: str):
    """:func:`insert_for` by the dialect's name: for statements built once per dialect (an
    upsert's ``excluded`` alias copies every column of its table, and building one cost more than
    running it on SQLite)."""
    from sqlalchemy.dialects import postgresql, sqlite

    if name == "postgresql":
        return postgresql.insert
    if name == "sqlite":
        return sqlite.insert
    raise NotImplementedError(f"{name}: only SQLite and PostgreSQL are supported")


def dispose_all() -> None:
    """Close this process's pools (the parent calls it before forking workers, and every process
    as it exits: the last connection to close checkpoints a SQLite database's WAL into the file,
    which a reader of a read-only copy needs, even when the process ends by ``os._exit`` after
    its exit handlers, as ``digits enqueue`` does)."""
    for key in [k for k in _engines if k[0] == os.getpid()]:
        _engines.pop(key).dispose()


atexit.register(dispose_all)
