"""The sweeper: every worker's parent sends again the chunks that nothing will ever run.

Two ways a chunk stalls: its worker was killed outright (the message sits unacknowledged in Redis
until the visibility timeout, an hour by default), or Redis lost the message (FLUSHALL, a
failover, a restart from an older AOF; then nothing would ever bring it back). Both leave a copy
of the chunk in the database (:mod:`digits.worker.store.chunks`) that no live lease covers
(:mod:`digits.worker.store.leases`). Every ``SWEEP_S`` the sweeper:

1. lists the copies untouched for ``chunks.CHECK_AFTER_S`` whose lease (if any) ran out;
2. looks for them in the Redis queues (a server-side script reads only the ids at the end of each
   waiting message, never the crops): one waiting there is touched and left alone, however long
   the backlog in front of it;
3. asks the live workers which chunks their children run now (Celery's ``inspect active``, one
   broadcast of ``INSPECT_S``): one running somewhere is alive, whatever its lease says;
4. claims each one untouched for ``chunks.QUIET_S``, not waiting and not running (an atomic
   compare-and-delete in the database: of several workers' sweepers only one wins) and sends its
   pending crops again under a fresh label, its delivery count carried over.

Step 3 is there because a lease cannot always be renewed by a child that lives: on SQLite a lock
held by another connection (a long transaction, ``BEGIN EXCLUSIVE`` from a backup or a shell)
stops every write, the renewals with the chunk's own write. Its lease runs out while the chunk
waits, the sweeper's claim waits on the same lock, and once the lock is released the claim may get
through first: the live chunk would be sent again, its live delivery counted as one that died.

A message held by a dead worker is in Redis's unacked hash, not in a queue: it counts as not
waiting, and its lease says whether its holder lives. The copy in that hash still comes back at
the visibility timeout, the last backstop; its items are final by then and it writes nothing.

The sweeper is a thread in the worker's parent (it needs no beat), started when the worker is
ready. It imports no model code, sends through an app of its own, and holds no database connection
between sweeps (children forked later must not inherit one).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from celery import Celery

from digits.worker.config import Settings
from digits.worker.queue import messages
from digits.worker.store import chunks, db

log = logging.getLogger("digits.worker")
SWEEP_S = 5.0
# How long a sweep waits for the workers' answers to ``inspect active`` (only when it found lost
# chunks): a worker that does not answer in time runs nothing the sweeper must leave alone.
INSPECT_S = 1.0
# The end of each waiting message in a queue: its properties (correlation_id = the task id) follow
# the body and the headers; Celery caps the headers' argument reprs at about 1 kB each.
_TAIL_BYTES = 16384
# Returns the task ids of the messages waiting in the lists KEYS, reading a hundred at a time and
# only the tail of each inside Redis: a long backlog is never sent over the network.
_QUEUED_IDS = """
local found = {}
for _, key in ipairs(KEYS) do
    local length = redis.call('LLEN', key)
    local start = 0
    while start < length do
        local batch = redis.call('LRANGE', key, start, start + 99)
        for _, entry in ipairs(batch) do
            local id = string.match(string.sub(entry, -ARGV[1]), '"correlation_id": "([^"]*)"')
            if id then found[#found + 1] = id end
        end
        start = start + 100
    end
end
return found
"""


@dataclass
class Sweep:
    """What one sweep found and did, for the log and the tests."""

    quiet: int = 0
    waiting: int = 0
    running: int = 0  # their leases ran out, but a live worker's child runs them
    resent: list[tuple[str, str, str, int]] = field(default_factory=list)  # job, old, new, crops
    skipped: int = 0  # claimed by another sweeper, or nothing pending any more


def queued_task_ids(app: Celery) -> set[str]:
    """The task ids of every chunk message waiting in this app's queues, all priorities."""
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        keys = [
            channel._q_for_pri(name, step)
            for name in messages.QUEUES
            for step in channel.priority_steps
        ]
        found = channel.client.eval(_QUEUED_IDS, len(keys), *keys, _TAIL_BYTES)
    return {item.decode() if isinstance(item, bytes) else str(item) for item in found}


def running_task_ids(app: Celery, timeout_s: float = INSPECT_S) -> set[str]:
    """The task ids the live workers' children run now (``celery inspect active``)."""
    replies = app.control.inspect(timeout=timeout_s).active() or {}
    return {task["id"] for tasks in replies.values() for task in tasks or ()}


def sweep(
    settings: Settings,
    app: Celery,
    now: datetime | None = None,
    job_id: str | None = None,
    force: bool = False,
) -> Sweep:
    """One pass (see the module docstring). ``job_id`` limits it to one job; ``force`` (``digits
    requeue``) sends again every unleased chunk of it not waiting in Redis, however recently
    touched."""
    now = now or db.utcnow()
    report = Sweep()
    try:
        with db.session_scope(settings.database_url) as session:
            untouched = 0.0 if force else chunks.CHECK_AFTER_S
            found = chunks.quiet(session, untouched, now, job_id)
        report.quiet = len(found)
        if not found:
            return report
        waiting_ids = queued_task_ids(app)
        waiting = [chunk for chunk in found if chunk.task_id in waiting_ids]
        report.waiting = len(waiting)
        if waiting:
            with db.session_scope(settings.database_url) as session:
                chunks.touch(session, waiting, now)
        due_before = now if force else now - timedelta(seconds=chunks.QUIET_S)
        lost = [c for c in found if c.task_id not in waiting_ids and _utc(c.touched) < due_before]
        if lost:
            running_ids = running_task_ids(app)
            for chunk in lost:
                if chunk.task_id in running_ids:
                    report.running += 1
                    log.info(
                        "job %s chunk %s: lease run out, but a worker runs it: left alone",
                        chunk.job_id,
                        chunk.chunk,
                    )
            lost = [chunk for chunk in lost if chunk.task_id not in running_ids]
        if lost:
            _declare_queues(app)
        for chunk in lost:
            _resend(settings, app, chunk, now, report)
        return report
    finally:
        db.engine_for(settings.database_url).dispose()


def _resend(
    settings: Settings, app: Celery, found: chunks.Quiet, now: datetime, report: Sweep
) -> None:
    """Claim one lost chunk and send its pending crops again; a failed send leaves its copy
    (touched now) for a later sweep."""
    with db.session_scope(settings.database_url) as session:
        claimed = chunks.claim(session, found, messages.resent_label(found.chunk), now)
    if claimed is None:
        report.skipped += 1
        return
    message = messages.ChunkMessage.encoded(
        claimed.job_id, claimed.chunk, claimed.crops, claimed.threshold, claimed.kind
    )
    messages.send(app, message, claimed.queue)
    report.resent.append((claimed.job_id, claimed.old_chunk, claimed.chunk, len(claimed.crops)))
    log.warning(
        "job %s chunk %s: no live lease, not in any queue and untouched since %s: its %d pending "
        "items sent again as chunk %s (deliveries that died so far: %d)",
        claimed.job_id,
        claimed.old_chunk,
        found.touched.isoformat(timespec="seconds"),
        len(claimed.crops),
        claimed.chunk,
        claimed.carried,
    )


def _declare_queues(app: Celery) -> None:
    """Bindings first: after a FLUSHALL kombu cannot route a message to a queue whose binding
    went with everything else, and a producer that declared it before does not declare again."""
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for queue in app.conf.task_queues or ():
            queue.bind(channel).declare()


class Sweeper(threading.Thread):
    """The sweeper's thread in a worker's parent; :meth:`stop` ends it after the current sweep."""

    def __init__(self, settings: Settings, app: Celery, interval_s: float = SWEEP_S):
        """``app``: one of the sweeper's own (``celery_app.create_app``), closed when it ends,
        so that its broker connections are never the consumer's."""
        super().__init__(name="digits sweeper", daemon=True)
        self.settings = settings
        self.app = app
        self.interval_s = interval_s
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopped.wait(self.interval_s):
                try:
                    sweep(self.settings, self.app)
                except Exception as exc:  # noqa: BLE001 - a broker or database outage: next time
                    log.warning("sweeper: this pass failed, next in %g s: %s", self.interval_s, exc)
        finally:
            self.app.close()

    def stop(self) -> None:
        self._stopped.set()


def _utc(moment: datetime) -> datetime:
    aware = db.as_utc(moment)
    assert aware is not None
    return aware
