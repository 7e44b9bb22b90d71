"""Chunk leases: which worker child runs a chunk now, renewed while it runs, gone when written.

Redis knows only that a message is unacknowledged, not whether the process holding it lives: the
chunks of a worker killed outright (an OOM kill, a lost machine) stay unacknowledged until the
visibility timeout, an hour by default. A lease says who runs the chunk (the Celery hostname and
the child's pid), since when and until when. The child renews it every ``RENEW_S`` from a thread,
so a chunk that runs for a long time (a slow database, retries) keeps it; a child or worker that
dies stops renewing, and its lease is over ``LEASE_S`` after the last renewal. The sweeper
(:mod:`digits.worker.queue.sweeper`) sends again only chunks that no live lease covers.

A retried chunk (a database error, a model that cannot be loaded) waits in its worker's memory
for its countdown with no child running it: its lease is kept for the countdown and ``LEASE_S``
more (:func:`extend`), so the sweeper leaves it alone while its worker lives.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import func, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from digits.worker.store import db, statements

log = logging.getLogger("digits.worker")
# What taking a lease sets on a lease that exists: who holds it, since and until when.
_HOLDING = ("hostname", "pid", "since", "renewed", "until")
# A lease not renewed for this long is over: a dead child's chunk is abandoned within it.
LEASE_S = 30.0
# Three renewals per lease: one may fail (a busy SQLite, a slow query) without losing it.
RENEW_S = 10.0


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: the Celery worker's hostname (several may share a machine) and the pid
    of the child running the chunk."""

    hostname: str
    pid: int

    @classmethod
    def here(cls, hostname: str | None = None) -> Holder:
        return cls(hostname or socket.gethostname(), os.getpid())


def take(
    database_url: str, job_id: str, chunk: str, holder: Holder, now: datetime | None = None
) -> None:
    """Lease the chunk to ``holder`` for ``LEASE_S``, whoever held it before (a redelivery after
    its child died takes over the dead child's lease)."""
    with db.session_scope(database_url) as session:
        take_in(session, job_id, chunk, holder, now)


def take_in(
    session: Session, job_id: str, chunk: str, holder: Holder, now: datetime | None = None
) -> None:
    """:func:`take` inside the caller's transaction: the worker takes the lease in the one that
    counts the delivery (``queue.deliveries.record``), a commit less per chunk."""
    now = now or db.utcnow()
    values = {
        "job_id": job_id,
        "chunk": chunk,
        "hostname": holder.hostname[:255],
        "pid": holder.pid,
        "since": now,
        "renewed": now,
        "until": now + timedelta(seconds=LEASE_S),
    }
    dialect = session.get_bind().dialect.name
    taking = db.upsert(dialect, db.ChunkLease, ("job_id", "chunk"), _HOLDING)
    session.connection().execute(taking, values)


def renew(
    database_url: str, job_id: str, chunk: str, holder: Holder, seconds: float = LEASE_S
) -> bool:
    """Push the lease's end to ``seconds`` from now, if ``holder`` still holds it; never shortens
    it (an extension for a retry stands) and never brings back a lease that was dropped."""
    now = db.utcnow()
    until = now + timedelta(seconds=seconds)
    table = db.ChunkLease
    with db.session_scope(database_url) as session:
        latest = func.max if session.get_bind().dialect.name == "sqlite" else func.greatest
        result = session.execute(
            update(table)
            .where(
                table.job_id == job_id,
                table.chunk == chunk,
                table.hostname == holder.hostname[:255],
                table.pid == holder.pid,
            )
            .values(renewed=now, until=latest(table.until, until))
        )
    return cast(CursorResult, result).rowcount == 1


def drop(session: Session, job_id: str, chunk: str) -> None:
    """End the chunk's lease inside the transaction that wrote it (or replaced it)."""
    statements.delete_chunk_row(session, db.ChunkLease, job_id, chunk)


def live(session: Session, job_id: str, now: datetime | None = None) -> list[db.ChunkLease]:
    """The job's leases that have not run out."""
    now = now or db.utcnow()
    statement = select(db.ChunkLease).where(
        db.ChunkLease.job_id == job_id, db.ChunkLease.until > now
    )
    return list(session.scalars(statement.order_by(db.ChunkLease.chunk)))


class Lease:
    """A held lease and its renewal thread; see :func:`held`."""

    def __init__(self, database_url: str, job_id: str, chunk: str, holder: Holder):
        self.database_url, self.job_id, self.chunk, self.holder = (
            database_url,
            job_id,
            chunk,
            holder,
        )
        self.keep_s: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._renew_until_stopped, name=f"lease {job_id}:{chunk}", daemon=True
        )

    def keep(self, seconds: float) -> None:
        """On leaving, keep the lease ``seconds`` (and ``LEASE_S``) longer instead of dropping it:
        the chunk was retried with that countdown and waits in this worker for it."""
        self.keep_s = max(0.0, seconds)

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(RENEW_S):
            try:
                if not renew(self.database_url, self.job_id, self.chunk, self.holder):
                    return  # written (and dropped) meanwhile, or taken over: nothing to renew
            except SQLAlchemyError as exc:  # the next renewal may get through; LEASE_S allows it
                log.warning(
                    "job %s chunk %s: lease renewal failed: %s",
                    self.job_id,
                    self.chunk,
                    str(exc).splitlines()[0][:200],
                )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # Not joined: a renewal waiting on a busy database must not hold the chunk up. A renewal
        # that lands after the drop updates nothing (renew never inserts).
        self._stop.set()


@contextlib.contextmanager
def held(
    database_url: str,
    job_id: str,
    chunk: str,
    hostname: str | None = None,
    taken: Holder | None = None,
) -> Iterator[Lease]:
    """Take the chunk's lease (unless ``taken`` already holds it: :func:`take_in`) and renew it
    until the block ends.

    A block that ends normally has written the chunk (the write drops the lease in its own
    transaction) or replaced it. One that ends by an exception after :meth:`Lease.keep` leaves the
    lease for the retry's countdown; any other exception drops it here, if the database answers
    (else it runs out by itself within ``LEASE_S``).
    """
    lease = Lease(database_url, job_id, chunk, taken or Holder.here(hostname))
    if taken is None:
        take(database_url, job_id, chunk, lease.holder)
    lease.start()
    try:
        yield lease
    except BaseException:
        lease.stop()
        with contextlib.suppress(SQLAlchemyError):
            if lease.keep_s is not None:
                renew(database_url, job_id, chunk, lease.holder, lease.keep_s + LEASE_S)
            else:
                with db.session_scope(database_url) as session:
                    drop(session, job_id, chunk)
        raise
    lease.stop()
