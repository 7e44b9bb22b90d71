"""No cold start: every child loads its models as it starts, and the worker is ready only after.

A chunk used to load the model on its child's first call (seconds of TensorFlow start-up, in every
child at once), so the first job after a start paid for it. Now each prefork child loads in
``worker_process_init``, before it tells the pool it is up, so the pool never hands a chunk to a
child without its model (a child that replaces a dead one does the same before it takes work).

And the worker does not say it is ready before that: the parent's :class:`WaitForModels` step
runs after the pool has forked and before the consumer starts (Celery's Consumer step is the last
of the worker's), waiting for each child's report on a pipe made before the fork. Until then the
worker takes no message from Redis (other workers can have them), does not answer ``ping`` and
has not logged ``ready``. Celery kills a child that is not up within ``worker_proc_alive_timeout``
(4 s by default, less than a load takes): celery_app sets it from ``DIGITS_MODEL_LOAD_TIMEOUT``.

A child whose load fails reports that too and carries on: its first chunk tries again and, if the
model is still unreadable, parks the chunk with the reason (tasks._unavailable), as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections.abc import Callable

from celery import bootsteps

from digits.worker.config import Settings

log = logging.getLogger("digits.worker")
READY_MESSAGE = "every child holds its models: %d of %d loaded in %.1f s"

_reports: tuple[int, int] | None = None  # (read end, write end), made in the parent before fork


def open_reports() -> None:
    """In the worker's parent, before the pool forks: the pipe the children report on."""
    global _reports
    if _reports is None:
        _reports = os.pipe()
        # Children that replace dead ones later report to no one: a full pipe must not block them.
        os.set_blocking(_reports[1], False)


def load_in_child(settings: Settings) -> None:
    """``worker_process_init``: load this child's models, then tell the parent how it went."""
    import cv2
    from sqlalchemy.exc import SQLAlchemyError

    from digits.worker.queue import deliveries, model_cache

    # One OpenCV thread, as one TensorFlow thread: a child has a core of its own, and on crops of
    # a few thousand pixels a thread pool costs more than it saves (components: 11 us -> 7 us).
    cv2.setNumThreads(1)
    started = time.monotonic()
    try:
        model_cache.preload(settings)
        outcome = "ok"
    except Exception:  # noqa: BLE001 - the child stays up; its first chunk reports the model
        log.exception("child %d could not load its models; its first chunk will retry", os.getpid())
        outcome = "failed"
    try:
        deliveries.warm(settings.database_url)
    except SQLAlchemyError as exc:  # the database may come later: the first chunk waits for it
        log.warning("child %d could not reach the database yet: %s", os.getpid(), exc)
    else:
        try:
            rehearse(settings)
        except Exception as exc:  # noqa: BLE001 - a read-only or busy database: the first chunk pays
            log.warning("child %d could not rehearse a chunk's writes: %s", os.getpid(), exc)
    if _reports is not None:
        line = f"{os.getpid()} {outcome} {time.monotonic() - started:.2f}\n"
        with contextlib.suppress(BlockingIOError):  # full: long after start-up, no one waits
            os.write(_reports[1], line.encode("ascii"))  # under PIPE_BUF: one atomic write


def rehearse(settings: Settings) -> None:
    """A chunk's whole way through the database once, for a one-crop job made for it, in one
    transaction that is rolled back: nothing is left behind.

    SQLAlchemy compiles each statement the first time a process runs it, and a chunk runs about
    twenty (the delivery count, the lease, the results, the job's counts, the clean-up): a child's
    first single-crop chunk took 28 to 43 ms against 10 to 17 ms for the ones after it. A job
    created here is never committed, so no reader, sweeper or count ever sees it.
    """
    import uuid

    from digits.model.review import ItemStatus
    from digits.worker.queue import deliveries
    from digits.worker.store import db, leases, writes

    job_id = str(uuid.uuid4())
    model = writes.ModelInfo("rehearsal", "rehearsal", None, "")
    result = writes.ItemResult("rehearsal", ItemStatus.OK, digit=0, confidence=1.0, top3=[[0, 1.0]])
    session = db.session_factory(settings.database_url)()
    try:
        # The rows a submitter makes for a one-crop job (submission.jobs.create_job, which this
        # module cannot import: the submitter imports the Celery app, which imports this).
        session.add(db.Job(id=job_id, source="worker start-up", review_threshold=1.0, total=1))
        session.flush()  # the job before its item: no relationship orders the two for the ORM
        session.add(db.Item(job_id=job_id, key="rehearsal", status=ItemStatus.PENDING))
        session.flush()
        deliveries.record_in(session, job_id, "0", 0, ["rehearsal"], leases.Holder.here())
        deliveries.settle(session, job_id, "0", [result], model)
    finally:
        session.rollback()
        session.close()


class WaitForModels(bootsteps.StartStopStep):
    """The parent waits here, after the fork and before the consumer, for every child's report."""

    requires = ("celery.worker.components:Pool",)
    label = "WaitForModels"

    def start(self, parent) -> None:
        if _reports is None or not _prefork(parent):
            return
        wanted, timeout_s = parent.concurrency, Settings.from_env().model_load_timeout_s
        # The pool's own processes: a child that dies while loading will never report, so waiting
        # on would wait for nothing (and Celery stops a worker whose children die at start).
        children = list(getattr(getattr(parent.pool, "_pool", None), "_pool", None) or [])
        started = time.monotonic()
        loaded, failed = _collect(
            _reports[0], wanted, started + timeout_s, lambda: any(_dead(c) for c in children)
        )
        seconds = time.monotonic() - started
        if loaded + failed < wanted:
            log.warning(
                "only %d of %d children reported their models after %.1f s: a child died while "
                "loading (Celery then stops the worker: a supervisor restarts it), or "
                "DIGITS_MODEL_LOAD_TIMEOUT passed",
                loaded + failed,
                wanted,
                seconds,
            )
        log.info(READY_MESSAGE, loaded, wanted, seconds)


def _prefork(parent) -> bool:
    """Only the prefork pool runs worker_process_init in children; solo and threads never report."""
    from celery.concurrency.prefork import TaskPool

    return isinstance(parent.pool, TaskPool)


def _dead(child) -> bool:
    return child.exitcode is not None


def _collect(
    fd: int, wanted: int, deadline: float, one_died: Callable[[], bool]
) -> tuple[int, int]:
    """Read reports until ``wanted`` distinct children have sent one, the deadline passes, or a
    child that has not reported is dead (it never will)."""
    outcomes: dict[str, str] = {}
    pending = b""
    while len(outcomes) < wanted:
        left = deadline - time.monotonic()
        if left <= 0 or one_died():
            break
        readable, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not readable:
            continue
        pending += os.read(fd, 4096)
        *lines, pending = pending.split(b"\n")
        for line in lines:
            pid, outcome, _seconds = line.decode("ascii").split()
            outcomes[pid] = outcome
    loaded = sum(outcome == "ok" for outcome in outcomes.values())
    return loaded, len(outcomes) - loaded
