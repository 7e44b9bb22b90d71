"""No stalled jobs (issue 14): leases, the sweeper, ``digits status``'s ``stalled`` and
``digits requeue``.

The scenarios run against the real parts at the default settings (no shortened visibility
timeout: the sweeper, not Redis's hour, must bring the chunks back): a whole worker SIGKILLed
mid-job and a new one started, Redis flushed mid-job, a chunk slower than a lease while the
sweeper runs, and a crop that kills its child every time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from digits.worker.store import db, leases
from digits.worker.submission import jobs


def _job(database_url: str, crops: int = 3) -> jobs.JobPlan:
    from digits.worker.config import Settings

    settings = Settings.from_env({"DIGITS_DATABASE_URL": database_url})
    plan = jobs.plan_job([jobs.Crop(f"k{i}", b"x") for i in range(crops)], settings)
    with db.session_scope(database_url) as session:
        jobs.create_job(session, plan)
    return plan


def _lease(database_url: str, job_id: str, chunk: str) -> db.ChunkLease | None:
    with db.session_scope(database_url) as session:
        return session.get(db.ChunkLease, (job_id, chunk))


# --- leases -----------------------------------------------------------------------------------


def test_a_lease_is_taken_renewed_and_dropped_and_never_comes_back(database_url):
    plan = _job(database_url)
    me = leases.Holder.here("worker@test")
    leases.take(database_url, plan.job_id, "0", me)
    first = _lease(database_url, plan.job_id, "0")
    assert first is not None and (first.hostname, first.pid) == ("worker@test", me.pid)
    until = db.as_utc(first.until)
    assert until is not None
    assert timedelta(seconds=29) < until - db.utcnow() <= timedelta(seconds=leases.LEASE_S)
    assert leases.renew(database_url, plan.job_id, "0", me, seconds=300)
    # Renewing for less never shortens it: a retry's extension stands.
    assert leases.renew(database_url, plan.job_id, "0", me)
    kept = db.as_utc(_lease(database_url, plan.job_id, "0").until)  # type: ignore[union-attr]
    assert kept is not None and kept - db.utcnow() > timedelta(seconds=250)
    # Another holder's renewal changes nothing; after the drop, nothing renews it back.
    assert not leases.renew(database_url, plan.job_id, "0", leases.Holder("other", 1))
    with db.session_scope(database_url) as session:
        assert [lease.chunk for lease in leases.live(session, plan.job_id)] == ["0"]
        leases.drop(session, plan.job_id, "0")
    assert not leases.renew(database_url, plan.job_id, "0", me)
    assert _lease(database_url, plan.job_id, "0") is None


def test_the_worker_takes_the_lease_where_it_counts_the_delivery_unless_nothing_is_left(
    sqlite_url,
):
    from digits.worker.queue import deliveries
    from digits.worker.store import writes

    plan = _job(sqlite_url, crops=2)
    me = leases.Holder.here("worker@test")
    delivery = deliveries.record(sqlite_url, plan.job_id, "0", 0, ["k0", "k1"], me)
    lease = _lease(sqlite_url, plan.job_id, "0")
    assert delivery.count == 1 and lease is not None
    assert (lease.hostname, lease.pid) == ("worker@test", me.pid)
    # held() then renews that lease instead of taking another, and the write drops it.
    with (
        leases.held(sqlite_url, plan.job_id, "0", taken=me),
        db.session_scope(sqlite_url) as session,
    ):
        results = [writes.ItemResult(key=k, status="blank") for k in ("k0", "k1")]
        writes.write_chunk(session, plan.job_id, results, None)
        leases.drop(session, plan.job_id, "0")
    assert _lease(sqlite_url, plan.job_id, "0") is None
    # A redelivery whose items are all final runs nothing: it takes no lease.
    again = deliveries.record(sqlite_url, plan.job_id, "0", 1, ["k0", "k1"], me)
    assert set(again.final) == {"k0", "k1"} and _lease(sqlite_url, plan.job_id, "0") is None
    # A chunk of a job that does not exist takes nothing either (the transaction rolls back).
    with pytest.raises(deliveries.UnknownJobError):
        deliveries.record(sqlite_url, "no-such-job", "0", 0, ["k0"], me)
    assert _lease(sqlite_url, "no-such-job", "0") is None


def test_only_a_fresh_chunks_first_count_commits_without_waiting_for_postgresqls_disk(
    postgres_url,
):
    """A fresh message's first delivery count and lease skip the WAL flush (``deliveries._terms``
    turns ``synchronous_commit`` off for that transaction); a retry's, a redelivery's and a second
    count wait."""
    from sqlalchemy import event, text

    from digits.worker.queue import deliveries

    plan = _job(postgres_url, crops=1)
    engine = db.engine_for(postgres_url)
    seen: list[str] = []

    def committing(conn) -> None:
        """What the transaction's commit is about to do."""
        raw = conn.connection.dbapi_connection
        seen.append(raw.execute("SHOW synchronous_commit").fetchone()[0])

    # The test cluster runs without synchronous commits: this database's connections get them
    # back, so that "off" can only come from the transaction itself.
    with engine.connect() as connection:
        name = engine.url.database
        connection.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit TO on'))
        connection.commit()
    engine.dispose()
    me = leases.Holder.here("w")
    event.listen(engine, "commit", committing)
    try:
        deliveries.record(postgres_url, plan.job_id, "0", 0, ["k0"], me, fresh=True)
        first, seen[:] = list(seen), []
        with db.session_scope(postgres_url) as session:
            after = session.execute(text("SHOW synchronous_commit")).scalar()
        seen[:] = []
        deliveries.record(postgres_url, plan.job_id, "0", 0, ["k0"], me, fresh=True)  # count 2
        again, seen[:] = list(seen), []
        deliveries.record(postgres_url, plan.job_id, "0", 1, ["k0"], me, fresh=False)  # a retry
        retried = list(seen)
    finally:
        event.remove(engine, "commit", committing)
    assert first == ["off"]  # the count and the lease committed without the flush
    assert after == "on"  # the setting ends with its transaction
    assert again == ["on"] and retried == ["on"]
    assert _lease(postgres_url, plan.job_id, "0") is not None


def test_the_delivery_checks_statuses_are_planned_for_their_job_and_keys(postgres_url):
    """The statuses lookup runs with a custom plan (``plan_cache_mode``, set by the job's terms
    just before it): a generic plan once walked a big job's every row for each key."""
    from sqlalchemy import event

    from digits.worker.queue import deliveries

    plan = _job(postgres_url, crops=2)
    engine = db.engine_for(postgres_url)
    modes: list[str] = []

    def looking_up(conn, cursor, statement, parameters, context, executemany) -> None:
        if "FROM items" in statement:
            modes.append(cursor.connection.execute("SHOW plan_cache_mode").fetchone()[0])

    event.listen(engine, "before_cursor_execute", looking_up)
    try:
        deliveries.record(postgres_url, plan.job_id, "0", 0, ["k0", "k1"], leases.Holder.here("w"))
    finally:
        event.remove(engine, "before_cursor_execute", looking_up)
    assert modes == ["force_custom_plan"]


def test_a_held_lease_is_renewed_by_its_thread_and_kept_for_a_retry(
    sqlite_url, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(leases, "RENEW_S", 0.05)
    plan = _job(sqlite_url)
    with leases.held(sqlite_url, plan.job_id, "0", "w@test"):
        taken = _lease(sqlite_url, plan.job_id, "0")
        assert taken is not None
        time.sleep(0.5)
        renewed = _lease(sqlite_url, plan.job_id, "0")
        assert renewed is not None and renewed.renewed > taken.renewed
    # Ending normally means the chunk was written, and the write drops the lease itself.
    with pytest.raises(RuntimeError), leases.held(sqlite_url, plan.job_id, "1", "w@test"):
        raise RuntimeError("not a retry")
    assert _lease(sqlite_url, plan.job_id, "1") is None
    with (
        pytest.raises(RuntimeError),
        leases.held(sqlite_url, plan.job_id, "2", "w@test") as lease,
    ):
        lease.keep(120)
        raise RuntimeError("a retry in 120 s")
    kept = _lease(sqlite_url, plan.job_id, "2")
    assert kept is not None
    assert db.as_utc(kept.until) - db.utcnow() > timedelta(seconds=140)  # type: ignore[operator]


def test_a_written_chunk_leaves_no_lease(sqlite_url, model_path, monkeypatch):
    from tests.test_worker import _task_on

    task = _task_on(sqlite_url, monkeypatch)
    plan = _job(sqlite_url)
    result = task.apply(kwargs=plan.message(plan.chunks[0]))
    assert result.successful(), result.traceback
    with db.session_scope(sqlite_url) as session:
        assert session.scalars(select(db.ChunkLease)).all() == []


# --- copies, claims and the sweeper, against a real Redis (no worker) ---------------------------


@pytest.fixture
def broker(tmp_path):
    """A redis-server of the test's own: the sweeper tests flush it."""
    from tests.services import redis_process

    with redis_process(tmp_path / "redis") as server:
        yield server


def _sender(broker, database_url: str, tmp_path):
    from digits.worker.config import Settings
    from digits.worker.queue.celery_app import create_app

    env = {
        "DIGITS_BROKER_URL": broker.url,
        "DIGITS_DATABASE_URL": database_url,
        "DIGITS_MESSAGE_KEY_FILE": str(tmp_path / "message.key"),
        "DIGITS_CHUNK_SIZE": "2",
    }
    settings = Settings.from_env(env)
    return settings, create_app(settings)


def _age(database_url: str, job_id: str, seconds: float) -> None:
    """Make the job's chunks and its row look untouched for ``seconds``."""
    from sqlalchemy import update

    then = db.utcnow() - timedelta(seconds=seconds)
    with db.session_scope(database_url) as session:
        session.execute(
            update(db.SentChunk).where(db.SentChunk.job_id == job_id).values(touched=then)
        )
        session.execute(update(db.Job).where(db.Job.id == job_id).values(updated=then))


def _copies(database_url: str, job_id: str) -> dict[str, list]:
    with db.session_scope(database_url) as session:
        rows = session.scalars(select(db.SentChunk).where(db.SentChunk.job_id == job_id))
        return {row.chunk: [key for key, _ in row.crops] for row in rows}


def test_the_sweeper_leaves_waiting_and_leased_chunks_and_resends_lost_ones_once(
    broker, database_url, tmp_path
):
    from digits.worker.queue import sweeper
    from digits.worker.store import chunks
    from digits.worker.store.results import job_status

    settings, app = _sender(broker, database_url, tmp_path)
    plan = jobs.submit([jobs.Crop(f"k{i}", b"x") for i in range(5)], settings, app=app)
    assert _copies(database_url, plan.job_id) == {
        "0": ["k0", "k1"],
        "1": ["k2", "k3"],
        "2": ["k4"],
    }
    assert sweeper.queued_task_ids(app) == {f"{plan.job_id}:{i}" for i in range(3)}
    _age(database_url, plan.job_id, 120)
    # Waiting in Redis behind a backlog, however old: touched, never sent twice.
    report = sweeper.sweep(settings, app)
    assert (report.quiet, report.waiting, report.resent) == (3, 3, [])
    with db.session_scope(database_url) as session:
        assert job_status(session, plan.job_id).status == "queued"
    # Redis loses everything (FLUSHALL); chunk 1 is being run (a live lease), chunk 0 died twice.
    broker_client = __import__("redis").Redis.from_url(broker.url)
    broker_client.flushall()
    _age(database_url, plan.job_id, 120)
    leases.take(database_url, plan.job_id, "1", leases.Holder("alive@test", 1))
    with db.session_scope(database_url) as session:
        session.add(
            db.ChunkDelivery(
                job_id=plan.job_id, chunk="0", retries=0, deliveries=2, updated=db.utcnow()
            )
        )
        assert job_status(session, plan.job_id).status == "queued"  # a lease is live
        leases.drop(session, plan.job_id, "1")
    with db.session_scope(database_url) as session:
        assert job_status(session, plan.job_id).status == "stalled"
    leases.take(database_url, plan.job_id, "1", leases.Holder("alive@test", 1))
    report = sweeper.sweep(settings, app)
    assert sorted(report.resent) == [
        (plan.job_id, "0", "0r1", 2),
        (plan.job_id, "2", "2r1", 1),
    ]
    assert sweeper.queued_task_ids(app) == {f"{plan.job_id}:0r1", f"{plan.job_id}:2r1"}
    assert set(_copies(database_url, plan.job_id)) == {"0r1", "1", "2r1"}
    with db.session_scope(database_url) as session:
        carried = session.get(db.ChunkDelivery, (plan.job_id, "0r1", 0))
        assert carried is not None and carried.deliveries == 2  # poison crops stay bounded
        assert session.get(db.ChunkDelivery, (plan.job_id, "0", 0)) is None
        assert job_status(session, plan.job_id).status == "queued"
    # Sent again moments ago: nothing more to do, and a second sweeper's claim of an old row fails.
    assert sweeper.sweep(settings, app).resent == []
    stale = chunks.Quiet(plan.job_id, "0", "batch", db.utcnow() - timedelta(seconds=120))
    with db.session_scope(database_url) as session:
        assert chunks.claim(session, stale, "0r1") is None
    app.close()


def test_the_sweeper_leaves_a_chunk_a_worker_runs_though_its_lease_ran_out(
    broker, database_url, tmp_path, monkeypatch
):
    """A lease that ran out is no proof that its child died (on SQLite a lock held elsewhere
    stops the renewals with every other write): the sweeper asks the workers first."""
    from digits.worker.queue import sweeper

    settings, app = _sender(broker, database_url, tmp_path)
    plan = jobs.submit([jobs.Crop(f"k{i}", b"x") for i in range(3)], settings, app=app)
    __import__("redis").Redis.from_url(broker.url).flushall()
    long_ago = db.utcnow() - timedelta(seconds=120)
    leases.take(database_url, plan.job_id, "0", leases.Holder("alive@test", 1), now=long_ago)
    _age(database_url, plan.job_id, 120)
    monkeypatch.setattr(sweeper, "running_task_ids", lambda app: {f"{plan.job_id}:0"})
    report = sweeper.sweep(settings, app)
    assert (report.quiet, report.running, report.resent) == (2, 1, [(plan.job_id, "1", "1r1", 1)])
    assert set(_copies(database_url, plan.job_id)) == {"0", "1r1"}
    app.close()


def test_two_sweepers_at_once_send_each_lost_chunk_once(broker, database_url, tmp_path):
    import threading

    from digits.worker.queue import sweeper
    from digits.worker.queue.celery_app import create_app

    settings, app = _sender(broker, database_url, tmp_path)
    plan = jobs.submit([jobs.Crop(f"k{i}", b"x") for i in range(5)], settings, app=app)
    __import__("redis").Redis.from_url(broker.url).flushall()
    _age(database_url, plan.job_id, 120)
    apps = [app, create_app(settings)]
    reports: list[sweeper.Sweep] = []
    start = threading.Barrier(2)

    def run(own) -> None:
        start.wait()
        reports.append(sweeper.sweep(settings, own))

    threads = [threading.Thread(target=run, args=(own,)) for own in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    resent = sorted(new for report in reports for _, _, new, _ in report.resent)
    assert resent == ["0r1", "1r1", "2r1"]
    assert sweeper.queued_task_ids(app) == {f"{plan.job_id}:{new}" for new in resent}
    client = __import__("redis").Redis.from_url(broker.url)
    assert sum(client.llen(key) for key in client.keys("batch*")) == 3  # no message twice
    for own in apps:
        own.close()


def test_requeue_sends_a_stalled_jobs_pending_items_again(broker, sqlite_url, tmp_path):
    from click.testing import CliRunner

    from digits.cli.manage import cli

    settings, app = _sender(broker, sqlite_url, tmp_path)
    plan = jobs.submit([jobs.Crop(f"k{i}", b"x") for i in range(3)], settings, app=app)
    app.close()
    __import__("redis").Redis.from_url(broker.url).flushall()
    _age(sqlite_url, plan.job_id, 120)
    env = {
        "DIGITS_BROKER_URL": broker.url,
        "DIGITS_DATABASE_URL": sqlite_url,
        "DIGITS_MESSAGE_KEY_FILE": str(tmp_path / "message.key"),
    }
    runner = CliRunner()
    shown = runner.invoke(cli, ["status", plan.job_id], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"job {plan.job_id}: stalled, 0/3 processed" in shown.output
    result = runner.invoke(cli, ["requeue", plan.job_id, "--json"], env=env)
    assert result.exit_code == 0, result.output
    summary = __import__("json").loads(result.output)
    assert summary["status_before"] == "stalled"
    assert (summary["resent_items"], summary["pending"]) == (3, 3)
    assert sorted(summary["resent_chunks"]) == ["0r1", "1r1"]
    again = runner.invoke(cli, ["requeue", plan.job_id, "--json"], env=env)
    assert __import__("json").loads(again.output)["waiting_in_redis"] == 2  # left alone now
    assert __import__("json").loads(again.output)["resent_items"] == 0


def test_a_resent_chunk_keeps_its_deaths_so_a_poison_chunk_is_still_split(
    broker, sqlite_url, tmp_path, model_path, monkeypatch
):
    """A crop that kills the whole worker each time comes back through the sweeper, not Redis:
    the deaths carried to the fresh label still end in the split (and then in one error)."""
    from digits.worker.queue import sweeper
    from digits.worker.store import chunks
    from tests.test_worker import _task_on

    settings, app = _sender(broker, sqlite_url, tmp_path)
    monkeypatch.setenv("DIGITS_BROKER_URL", broker.url)
    monkeypatch.setenv("DIGITS_MESSAGE_KEY_FILE", str(tmp_path / "message.key"))
    plan = jobs.submit([jobs.Crop(f"k{i}", b"x") for i in range(2)], settings, app=app)
    __import__("redis").Redis.from_url(broker.url).flushall()
    with db.session_scope(sqlite_url) as session:  # three deliveries of chunk 0 died
        session.add(
            db.ChunkDelivery(
                job_id=plan.job_id, chunk="0", retries=0, deliveries=3, updated=db.utcnow()
            )
        )
    _age(sqlite_url, plan.job_id, 120)
    assert sweeper.sweep(settings, app).resent == [(plan.job_id, "0", "0r1", 2)]
    app.close()
    with db.session_scope(sqlite_url) as session:
        copy = session.get(db.SentChunk, (plan.job_id, "0r1"))
        assert copy is not None
        message = jobs.messages.ChunkMessage(plan.job_id, "0r1", copy.crops, 0.9)
    task = _task_on(sqlite_url, monkeypatch)
    sent: list[str] = []  # the task's own app was bound to the default broker at import
    monkeypatch.setattr(
        jobs.messages, "send", lambda _app, message, **_kw: sent.append(str(message.chunk))
    )
    result = task.apply(kwargs=message.kwargs(), delivery_info={"routing_key": "batch"})
    assert result.successful(), result.traceback
    assert result.result["split"] == 2  # the fourth delivery in all: split, not tried whole
    assert sent == ["0r1.0", "0r1.1"]
    assert set(_copies(sqlite_url, plan.job_id)) == {"0r1.0", "0r1.1"}
    assert chunks.QUIET_S < 60


# --- real workers at the default settings --------------------------------------------------------

BIG = 1536  # six chunks of 256: two running, four queued when the fault hits
RECOVERY_S = 90.0


@pytest.fixture(scope="module")
def aof_broker(tmp_path_factory):
    """This module's redis-server (AOF, fsync always): it is flushed and restarted here."""
    from tests.services import redis_process

    with redis_process(tmp_path_factory.mktemp("recovery-redis")) as server:
        yield server


def _submit(worker, scan_crops, count: int = BIG) -> tuple[jobs.JobPlan, list[str]]:
    crops = [jobs.Crop(key, blob) for key, blob, _ in scan_crops[:count]]
    return worker.submit(crops), [crop.key for crop in crops]


def _processed(database_url: str, job_id: str) -> int:
    with db.session_scope(database_url) as session:
        job = session.get(db.Job, job_id)
        assert job is not None
        return job.processed


def _all_read(items: dict) -> None:
    errors = {key: item.error for key, item in items.items() if item.status == "error"}
    assert not errors, f"{len(errors)} items became errors, e.g. {list(errors.items())[:2]}"


def _recovered(worker, url: str, job_id: str, keys: list[str], since: float, what: str) -> None:
    """The job ends within ``RECOVERY_S`` of ``since``, every key once and read, and a sweeper
    (not Redis's hour) sent the lost chunks again."""
    from tests.services import assert_nothing_lost

    worker.wait(job_id, timeout_s=240)
    took = time.monotonic() - since
    print(f"done {took:.1f} s after {what}")
    _all_read(assert_nothing_lost(url, job_id, keys))
    assert took < RECOVERY_S
    assert "items sent again as chunk" in worker.log()


@pytest.mark.parametrize("backend", ["postgresql", pytest.param("sqlite", marks=pytest.mark.slow)])
def test_whole_worker_sigkilled_mid_job_a_new_one_finishes_it_within_90s(
    backend, request, aof_broker, model_path, scan_crops, tmp_path
):
    from tests.services import make_database_url, running_worker

    url = make_database_url(backend, request, tmp_path)
    with running_worker(aof_broker.url, url, tmp_path / "worker.log") as worker:
        plan, keys = _submit(worker, scan_crops)
        worker.wait_until_running(plan.job_id)
        worker.kill()
        killed = time.monotonic()
        assert _processed(url, plan.job_id) < BIG, "the kill came after the job ended"
        worker.restart()  # a new worker: the queued chunks at once, the dead one's by its sweeper
        _recovered(worker, url, plan.job_id, keys, time.monotonic(), "the new worker started")
        print(f"{backend}: {time.monotonic() - killed:.1f} s after the kill")
        assert f"job {plan.job_id} chunk " in worker.log()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def test_redis_flushed_mid_job_the_lost_chunks_come_back_within_90s(
    backend, request, aof_broker, model_path, scan_crops, tmp_path
):
    import redis

    from tests.services import make_database_url, running_worker

    url = make_database_url(backend, request, tmp_path)
    with running_worker(aof_broker.url, url, tmp_path / "worker.log") as worker:
        plan, keys = _submit(worker, scan_crops)
        worker.wait_until_running(plan.job_id)
        redis.Redis.from_url(aof_broker.url).flushall()
        _recovered(worker, url, plan.job_id, keys, time.monotonic(), "FLUSHALL")


# SQLite's lock wait for the slow-chunk scenario's worker: longer than the test holds the lock,
# so the chunk's write (and every renewal and claim) waits through it instead of failing.
SQLITE_LOCK_WAIT_S = 120


@contextlib.contextmanager
def _writes_held(backend: str, url: str, plan: jobs.JobPlan) -> Iterator[Callable[[], None]]:
    """Hold up the write of ``plan``'s chunk 0 until the block ends; yields ``start`` to call
    once that chunk has been sent.

    PostgreSQL: a row lock on one of its items, taken before anything is sent, stops that
    chunk's write alone. SQLite has no row locks: ``BEGIN EXCLUSIVE`` from another connection
    stops every writer (readers go on: WAL), so it is taken only once the chunk's delivery is
    counted and its lease taken (the child then loads its model, seconds) and before it writes.
    """
    if backend == "postgresql":
        holder = db.engine_for(url).connect()
        lock = holder.begin()
        holder.execute(
            select(db.Item)
            .where(db.Item.job_id == plan.job_id, db.Item.key == plan.keys[3])
            .with_for_update()
        )
        try:
            yield lambda: None
        finally:
            lock.rollback()
            holder.close()
        return
    path = db.sqlite_path(url)
    assert path is not None
    exclusive = sqlite3.connect(path, timeout=30, isolation_level=None)

    def start() -> None:
        deadline = time.monotonic() + 120
        while _lease(url, plan.job_id, "0") is None:
            assert time.monotonic() < deadline, "chunk 0 never took its lease"
            time.sleep(0.01)
        exclusive.execute("BEGIN EXCLUSIVE")
        assert _processed(url, plan.job_id) == 0, "chunk 0 was written before the lock"

    try:
        yield start
    finally:
        if exclusive.in_transaction:
            exclusive.execute("ROLLBACK")
        exclusive.close()


@pytest.mark.parametrize("backend", ["postgresql", pytest.param("sqlite", marks=pytest.mark.slow)])
def test_the_sweeper_never_resends_a_chunk_a_live_worker_still_runs(
    backend, request, aof_broker, model_path, scan_crops, tmp_path
):
    """A chunk kept slow past its lease, its copy's quiet time and several sweeps (its write waits
    on a lock the test holds, see :func:`_writes_held`): never sent again; one delivery in all.

    On PostgreSQL its lease is renewed through the hold. On SQLite the renewals wait on the lock
    like every write, so the lease runs out (past its grace) while the chunk still runs and the
    sweeper finds it lost by its lease: the workers' answer (``inspect active``) keeps it from
    claiming it. (Without that its claim waited on the same lock, got it first when it was
    released, and sent the live chunk again as ``0r1``.)
    """
    from digits.worker.queue import sweeper
    from digits.worker.store import chunks
    from tests.services import assert_nothing_lost, make_database_url, running_worker

    url = make_database_url(backend, request, tmp_path)
    hold_s = 50.0
    if backend == "sqlite":
        url += f"?timeout={SQLITE_LOCK_WAIT_S}"
        hold_s = 55.0  # past the lease's end, its grace, the copy's quiet time and a sweep
    with running_worker(aof_broker.url, url, tmp_path / "worker.log") as worker:
        crops = [jobs.Crop(key, blob) for key, blob, _ in scan_crops[:8]]
        plan = jobs.plan_job(crops, worker.settings)
        with db.session_scope(url) as session:
            jobs.create_job(session, plan)
        with _writes_held(backend, url, plan) as start:
            jobs.send_chunks(plan, worker.settings, worker.app)
            worker.wait_until_running(plan.job_id)
            start()
            time.sleep(hold_s)
            lease = _lease(url, plan.job_id, "0")
            assert lease is not None, "chunk 0's lease was dropped: written, or claimed"
            with db.session_scope(url) as session:
                counted = session.get(db.ChunkDelivery, (plan.job_id, "0", 0))
                assert counted is not None and counted.deliveries == 1
                copy = session.get(db.SentChunk, (plan.job_id, "0"))
                assert copy is not None
            now = db.utcnow()
        if backend == "postgresql":
            assert lease.renewed - lease.since > timedelta(seconds=30)
        else:  # nothing could renew it: to the sweeper lost for a sweep or more before the end
            swept = now - timedelta(seconds=sweeper.SWEEP_S)
            assert db.as_utc(lease.until) < swept - timedelta(seconds=chunks.LEASE_GRACE_S)
            assert db.as_utc(copy.touched) < swept - timedelta(seconds=chunks.QUIET_S)
        worker.wait(plan.job_id)
        _all_read(assert_nothing_lost(url, plan.job_id, plan.keys))
        log = worker.log()
    assert "sent again" not in log
    assert log.count(f"chunk done job={plan.job_id} chunk=0 ") == 1
    if backend == "sqlite":  # a sweeper found it lost by its lease, and asked the workers
        assert f"job {plan.job_id} chunk 0: lease run out, but a worker runs it" in log
    assert _copies(url, plan.job_id) == {}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_the_only_worker_killed_and_none_for_2_minutes_then_one_finishes_within_90s(
    backend, request, aof_broker, model_path, scan_crops, tmp_path
):
    """No worker, no sweeper: the job shows ``stalled`` until one starts; it then finishes."""
    from digits.worker.store.results import job_status
    from tests.services import make_database_url, running_worker

    url = make_database_url(backend, request, tmp_path)
    with running_worker(aof_broker.url, url, tmp_path / "worker.log") as worker:
        plan, keys = _submit(worker, scan_crops)
        worker.wait_until_running(plan.job_id)
        worker.kill()
        time.sleep(120)
        with db.session_scope(url) as session:
            assert job_status(session, plan.job_id).status == "stalled"
        worker.restart()
        _recovered(worker, url, plan.job_id, keys, time.monotonic(), "the new worker started")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_redis_restarted_from_a_truncated_aof_the_lost_chunks_come_back_within_90s(
    backend, request, model_path, scan_crops, tmp_path
):
    """The AOF cut in the middle of the job's chunks (a disk that lost its last writes): Redis
    loads what precedes the cut (``aof-load-truncated``), and the sweeper sends the rest."""
    from tests.services import make_database_url, redis_process, running_worker

    url = make_database_url(backend, request, tmp_path)
    with (
        redis_process(tmp_path / "redis") as server,
        running_worker(server.url, url, tmp_path / "worker.log") as worker,
    ):
        aof = max((tmp_path / "redis").rglob("*.incr.aof"), key=lambda p: p.stat().st_mtime)
        before = aof.stat().st_size
        plan, keys = _submit(worker, scan_crops)
        worker.wait_until_running(plan.job_id)
        server.kill()
        grown = aof.stat().st_size - before
        with open(aof, "r+b") as handle:  # half the job's chunks gone, the cut mid-command
            handle.truncate(before + grown // 2 + 7)
        server.start()
        what = f"Redis restarted, its AOF cut by {grown // 2} bytes"
        _recovered(worker, url, plan.job_id, keys, time.monotonic(), what)
    assert "aof-load-truncated" in (tmp_path / "redis" / "redis.log").read_text()


def _kill_twice_on_the_guilty(worker, url: str, plan: jobs.JobPlan) -> None:
    """Both deaths land on the guilty chunk alone, after its delivery's count has committed and
    before its results are written.

    One child (concurrency 1), restarted before each guilty delivery, so that the guilty chunk is
    the only one running: chunks 0 and 2 are read first, by a worker of their own; the split's
    other one-crop chunks wait in Redis and are read after. The chunk's lease is taken in the
    transaction that counts its delivery, so the lease row's appearing is the count's commit.

    On PostgreSQL the test holds the job's row lock meanwhile: a chunk's write takes it first,
    while counting a delivery, taking a lease and splitting a chunk only refer to the job row,
    so the guilty deliveries are counted and then wait to be written, whenever the kill lands.
    SQLite has no row locks (its database lock would stop the count too), so there the kill
    must land between the count's commit and the write: the test polls for the lease every
    10 ms. On both, the innocent crops' count checks that the chunk was not written before the
    kill.
    """
    from digits.worker.store import chunks

    first, guilty, last = plan.chunks
    with db.session_scope(url) as session:  # not sent yet: no copy for a sweeper to send
        chunks.forget(session, plan.job_id, "1")
    jobs.send_chunks(dataclasses.replace(plan, chunks=[first, last]), worker.settings, worker.app)
    deadline = time.monotonic() + 120
    while _processed(url, plan.job_id) < 16:
        assert time.monotonic() < deadline, "the innocent crops were not read"
        time.sleep(0.2)
    worker.restart()
    with db.session_scope(url) as session:  # as a submitter sends it: its copy first
        chunks.record(session, plan.job_id, [("1", plan.chunk_message(guilty).crops)], plan.queue)
    holder = db.engine_for(url).connect() if url.startswith("postgresql") else None
    try:
        if holder is not None:  # every write of the job waits; counts, leases and splits do not
            holder.begin()
            # NO KEY UPDATE, as a write's own lock: rows that refer to the job (a count, a lease)
            # take a KEY SHARE lock on it, which FOR UPDATE would block.
            found = select(db.Job).where(db.Job.id == plan.job_id)
            holder.execute(found.with_for_update(key_share=True))
        jobs.send_chunks(dataclasses.replace(plan, chunks=[guilty]), worker.settings, worker.app)
        for label in ("1", "1r1.0"):  # 1r1.0 from the split of 1r1, which its sweeper sends
            deadline = time.monotonic() + 150
            while _lease(url, plan.job_id, label) is None:
                assert time.monotonic() < deadline, f"chunk {label} never took its lease"
                time.sleep(0.01)
            worker.kill()
            assert _processed(url, plan.job_id) == 16, f"chunk {label} was written before the kill"
            worker.restart()  # its sweeper sends the dead chunk again
    finally:
        if holder is not None:
            holder.close()  # rolls the lock back: the one-crop chunks after 1r1.0 are written


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_crop_that_kills_the_whole_worker_every_time_ends_as_one_error(
    backend, request, aof_broker, model_path, scan_crops, tmp_path
):
    """Each death takes the whole worker, so each delivery after the first comes from a sweeper,
    under a fresh label: the deaths carried across the labels still split the chunk and then
    fail the guilty crop alone. ``DIGITS_MAX_DELIVERIES=1`` keeps it to two deaths.

    Each death lands on the guilty chunk alone, after its delivery was counted and before it is
    written (``_kill_twice_on_the_guilty``).
    """
    from tests.services import assert_nothing_lost, make_database_url, running_worker

    url = make_database_url(backend, request, tmp_path)
    env = {"DIGITS_MAX_DELIVERIES": "1"}
    log_path = tmp_path / "worker.log"
    with running_worker(aof_broker.url, url, log_path, 1, env=env) as worker:
        crops = [jobs.Crop(key, blob) for key, blob, _ in scan_crops[:24]]
        plan = jobs.plan_job(crops, dataclasses.replace(worker.settings, chunk_size=8))
        with db.session_scope(url) as session:
            jobs.create_job(session, plan)
        guilty, died = plan.chunks[1].crops[0][0], "1r1.0"
        _kill_twice_on_the_guilty(worker, url, plan)
        worker.wait(plan.job_id, timeout_s=180)
        items = assert_nothing_lost(url, plan.job_id, plan.keys)
        log = worker.log()
    assert items[guilty].status == "error"
    assert "worker process died 1 times" in (items[guilty].error or "")
    _all_read({key: item for key, item in items.items() if key != guilty})
    assert f"job {plan.job_id} chunk 1r1: died mid-way on 1 deliveries" in log
    assert f"job {plan.job_id} chunk {died}: no live lease" in log


def test_a_claim_loses_to_a_delivery_that_took_the_lease_after_the_sweep_read_it(
    broker, database_url, tmp_path
):
    """Between the sweep's read and its claim a redelivered message may start the chunk: the
    claim must leave a chunk with a live lease alone, or its live delivery counts as a death."""
    from digits.worker.store import chunks, leases

    settings, app = _sender(broker, database_url, tmp_path)
    plan = jobs.submit([jobs.Crop(f"k{i}", b"x") for i in range(2)], settings, app=app)
    _age(database_url, plan.job_id, 120)
    with db.session_scope(database_url) as session:
        (found,) = chunks.quiet(session, job_id=plan.job_id)
    leases.take(database_url, plan.job_id, found.chunk, leases.Holder("elsewhere", 4242))
    with db.session_scope(database_url) as session:
        assert chunks.claim(session, found, f"{found.chunk}r1") is None
    assert list(_copies(database_url, plan.job_id)) == [found.chunk]  # the copy is kept
    app.close()
