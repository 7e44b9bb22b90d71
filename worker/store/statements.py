"""Statements every chunk's write runs, built once and run on the session's own connection.

A single-crop job's latency is a handful of short transactions, and most of a short statement's
time was SQLAlchemy building it and the ORM's bookkeeping round it, not the database: profiled, a
DELETE by (job, chunk) cost about 2.8 times as much through ``Session.execute`` as built once and
run on the connection (the latency figures are in docs/performance.md). They run inside
the session's transaction like any other, but as Core: no autoflush first and no change to the
objects the session holds. So a caller whose session holds pending or loaded rows of these tables
flushes first (every caller today does, or holds none: the worker's write flushes the job's
counts before it forgets the chunk; the submitter flushes the job before its chunks' copies).
"""

from __future__ import annotations

import functools

from sqlalchemy import Table, bindparam, delete, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Delete, Insert, Update

from digits.worker.store.db import Base, Job, Model, insert_of


def delete_chunk_row(session: Session, model: type[Base], job_id: str, chunk: str) -> None:
    """Delete the row of ``model``'s table (a delivery count, a lease, a chunk's copy) that the
    job's chunk has, if any."""
    table = model.__table__
    assert isinstance(table, Table)
    session.connection().execute(_by_chunk(table), {"job_id": job_id, "chunk": chunk})


@functools.lru_cache(maxsize=8)
def _by_chunk(table: Table) -> Delete:
    """Built once per table: SQLAlchemy keys a fresh statement for its compiled cache by walking
    it, which cost more than running it."""
    return delete(table).where(
        table.c.job_id == bindparam("job_id"), table.c.chunk == bindparam("chunk")
    )


def lock_job(session: Session, job_id: str) -> int:
    """``UPDATE jobs SET updated = updated`` on the job's row: its row lock (PostgreSQL) or the
    write lock (SQLite) without a change. Returns the rows matched: 0 when there is no such job."""
    return session.connection().execute(_lock_job(), {"job_id": job_id}).rowcount


@functools.cache
def _lock_job() -> Update:
    """Built once (see :func:`_by_chunk`)."""
    jobs = Job.__table__.c
    return update(Job.__table__).where(jobs.id == bindparam("job_id")).values(updated=jobs.updated)


def register_model(session: Session, row: dict[str, object]) -> None:
    """The ``models`` row (version, arch, test_accuracy, checksum, registered), unless its version
    is there already."""
    session.connection().execute(_register(session.get_bind().dialect.name), row)


@functools.lru_cache(maxsize=2)
def _register(dialect: str) -> Insert:
    """Built once per dialect (``db.insert_of`` says why)."""
    statement = insert_of(dialect)(Model.__table__)
    return statement.on_conflict_do_nothing(index_elements=[Model.__table__.c.version])
