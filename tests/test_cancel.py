"""Cancelling a job (worker/store/cancels.py): its pending items are never read, what was read
stays, and nothing queued or running writes after it. Real Redis, real workers, SQLite and
PostgreSQL."""

from __future__ import annotations

import json
import time

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import func, select

from digits.cli.manage import cli
from digits.worker.store import cancels, db
from digits.worker.submission import jobs
from digits.worker.submission.jobs import Crop
from tests.services import assert_nothing_lost, job_items


def _crops(scan_crops, copies: int = 1) -> list[Crop]:
    """The scan crops, ``copies`` times under distinct keys: a job long enough to cancel midway."""
    return [
        Crop(f"{n}/{key}", data=blob) for n in range(copies) for key, blob, _label in scan_crops
    ]


def _queued(broker_url: str) -> int:
    """Chunk messages waiting in this Redis database, every queue and priority."""
    client = redis.Redis.from_url(broker_url)
    return sum(client.llen(name) for name in client.keys("*") if client.type(name) == b"list")


def _drained(worker, job_id: str, timeout_s: float = 120.0) -> None:
    """Until no chunk of the job waits in Redis or runs in a child; the timeout stops a hung test."""
    deadline = time.monotonic() + timeout_s
    while _queued(worker.env["DIGITS_BROKER_URL"]) or worker.active(job_id):
        assert time.monotonic() < deadline, worker.log()[-4000:]
        time.sleep(0.1)


def _statuses(database_url: str, job_id: str) -> dict[str, tuple[str, str | None]]:
    return {item.key: (item.status, item.error) for item in job_items(database_url, job_id)}


def test_a_job_cancelled_while_queued_is_dropped_unread_by_the_worker(celery_worker, scan_crops):
    worker = celery_worker
    worker.process.stop()  # its chunks wait in Redis, as behind a long backlog
    try:
        crops = _crops(scan_crops[:600])
        plan = worker.submit(crops)
        assert len(plan.chunks) == 3 and _queued(worker.env["DIGITS_BROKER_URL"]) == 3
        with db.session_scope(worker.database_url) as session:
            done = cancels.cancel(session, plan.job_id, "the wrong folder")
        assert (done.status, done.stopped, done.read, done.total) == ("cancelled", 600, 0, 600)
        assert not done.already_final
    finally:
        worker.restart()
    _drained(worker, plan.job_id)
    for chunk in plan.chunks:
        worker.wait_for_log(f"job {plan.job_id} chunk {chunk.index}: its job was cancelled")
    items = assert_nothing_lost(worker.database_url, plan.job_id, [c.key for c in crops])
    assert {item.status for item in items.values()} == {"error"}
    assert all(
        item.error.startswith("cancelled ")
        and item.error.endswith(": the wrong folder")
        and item.digit is None
        for item in items.values()
    )
    with db.session_scope(worker.database_url) as session:
        job = session.get(db.Job, plan.job_id)
        assert (job.status, job.cancelled is not None, job.finished is not None) == (
            "cancelled",
            True,
            True,
        )
        copies = select(func.count()).where(db.SentChunk.job_id == plan.job_id)
        assert session.scalar(copies) == 0  # nothing for the sweeper to send again
        again = cancels.cancel(session, plan.job_id)
    assert again.already_final and again.stopped == 0  # a second cancel changes nothing


def test_a_job_cancelled_midway_keeps_what_was_read_and_nothing_writes_after(
    celery_worker, scan_crops
):
    worker = celery_worker
    crops = _crops(scan_crops, copies=4)  # 8,000 crops: 32 chunks, seconds of work
    plan = worker.submit(crops)
    deadline = time.monotonic() + 120
    while True:  # until the first chunk is written
        with db.session_scope(worker.database_url) as session:
            started = session.get(db.Job, plan.job_id).processed
        if started:
            break
        assert time.monotonic() < deadline, worker.log()[-4000:]
        time.sleep(0.02)
    # A transaction of its own, as `digits cancel` runs it: on SQLite one that read first could
    # not write once a child's commit got in between.
    with db.session_scope(worker.database_url) as session:
        done = cancels.cancel(session, plan.job_id)
    at_cancel = _statuses(worker.database_url, plan.job_id)
    _drained(worker, plan.job_id)
    time.sleep(0.5)  # a chunk a child was writing as the queue emptied has committed by now
    assert _statuses(worker.database_url, plan.job_id) == at_cancel  # no write after the cancel
    items = assert_nothing_lost(worker.database_url, plan.job_id, [c.key for c in crops])
    cancelled = [i for i in items.values() if (i.error or "").startswith("cancelled ")]
    read = [i for i in items.values() if i.status != "error"]
    assert done.stopped == len(cancelled) > 0 and done.read == len(items) - done.stopped
    assert len(read) >= 256  # the chunk written before the cancel stays as it was read
    assert all(i.digit is not None for i in read if i.status in ("ok", "needs_review"))
    with db.session_scope(worker.database_url) as session:
        assert session.get(db.Job, plan.job_id).status == "cancelled"


def test_an_enqueue_still_sending_stops_once_its_job_is_cancelled(
    redis_server, sqlite_url, scan_crops
):
    from digits.worker.config import Settings

    env = {"DIGITS_BROKER_URL": redis_server.url, "DIGITS_DATABASE_URL": sqlite_url}
    settings = Settings.from_env(env)
    db.upgrade(sqlite_url)
    redis.Redis.from_url(redis_server.url).flushdb()
    plan = jobs.plan_job(_crops(scan_crops[:1024]), settings)  # 4 chunks, in 3 groups
    # What jobs.submit does, with the cancel landing after the first group was read and kept.
    first = jobs._read(plan, settings, plan.chunks[:1])
    with db.session_scope(sqlite_url) as session:
        jobs.create_job(session, plan)
        jobs._keep(session, plan, first)
        cancels.cancel(session, plan.job_id)
    jobs.send_chunks(plan, settings, kept=first)
    assert _queued(redis_server.url) == 1  # the first group went; none after it
    with db.session_scope(sqlite_url) as session:
        assert session.scalar(select(func.count()).where(db.SentChunk.job_id == plan.job_id)) == 0


@pytest.fixture
def env(redis_server, sqlite_url) -> dict[str, str]:
    redis.Redis.from_url(redis_server.url).flushdb()
    return {"DIGITS_BROKER_URL": redis_server.url, "DIGITS_DATABASE_URL": sqlite_url}


def test_digits_cancel_says_what_it_stopped_and_refuses_what_it_cannot(env, scan_crops, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for key, blob, _label in scan_crops[:5]:
        (folder / key.split("/")[-1]).write_bytes(blob)
    runner = CliRunner()
    job_id = runner.invoke(cli, ["enqueue", str(folder)], env=env).stdout.strip()

    result = runner.invoke(cli, ["cancel", job_id, "--why", "sent twice"], env=env)
    assert result.exit_code == 0, result.output
    assert (
        result.stdout
        == f"job {job_id} cancelled: 5 of its 5 items will not be read (0 were final already)\n"
    )
    status = json.loads(runner.invoke(cli, ["status", job_id, "--json"], env=env).stdout)
    assert (status["status"], status["error"], status["processed"]) == ("cancelled", 5, 5)
    rows = runner.invoke(cli, ["results", job_id], env=env).stdout
    assert rows.count(": sent twice") == 5

    again = runner.invoke(cli, ["cancel", job_id, "--json"], env=env)
    assert again.exit_code == 1
    assert json.loads(again.stdout.splitlines()[0])["stopped"] == 0
    assert f"job {job_id} is cancelled already: nothing to cancel" in again.output

    missing = runner.invoke(cli, ["cancel", "no-such-job"], env=env)
    assert missing.exit_code == 1 and "job no-such-job does not exist" in missing.output


def test_downgrading_gives_a_cancelled_job_a_status_the_older_code_knows(database_url, scan_crops):
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine, text

    from digits.worker.config import Settings

    db.upgrade(database_url)
    settings = Settings.from_env({"DIGITS_DATABASE_URL": database_url})
    plan = jobs.plan_job(_crops(scan_crops[:3]), settings)
    with db.session_scope(database_url) as session:
        jobs.create_job(session, plan)
        cancels.cancel(session, plan.job_id)
    db.dispose_all()
    engine = create_engine(database_url)
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(db.MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, "0007")
    with engine.connect() as connection:
        status = connection.execute(text("SELECT status FROM jobs")).scalar_one()
        columns = connection.execute(text("SELECT * FROM jobs")).keys()
    engine.dispose()
    assert status == "failed" and "cancelled" not in columns  # all three items were pending


def test_an_enqueue_waiting_on_its_job_says_when_it_was_cancelled(env, scan_crops, tmp_path):
    import os
    import subprocess
    import sys

    folder = tmp_path / "scans"
    folder.mkdir()
    for key, blob, _label in scan_crops[:5]:
        (folder / key.split("/")[-1]).write_bytes(blob)
    db.upgrade(env["DIGITS_DATABASE_URL"])
    waiting = subprocess.Popen(  # no worker runs: it waits until someone ends the job
        [sys.executable, "-m", "digits.cli.manage", "enqueue", str(folder), "--wait"],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with db.session_scope(env["DIGITS_DATABASE_URL"]) as session:
                job_id = session.scalar(select(db.Job.id))
            if job_id:
                break
            assert time.monotonic() < deadline and waiting.poll() is None
            time.sleep(0.05)
        with db.session_scope(env["DIGITS_DATABASE_URL"]) as session:
            cancels.cancel(session, job_id)
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0 and out.strip() == job_id
    assert f"job {job_id} was cancelled before all of it was read" in err
