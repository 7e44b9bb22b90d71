"""Faults against the real parts: killed and stopped workers, a crashed Redis, database outages,
chunks that keep killing their worker, and a model call that fails on one crop.

Each scenario submits a job, breaks something while it runs, lets it recover and then checks with
``assert_nothing_lost`` that every key is in the database exactly once and none is pending: the
"items lost" column of docs/reliability.md. The workers run on a Redis of this module's own (AOF
on, so it can be crashed) with short retry and redelivery settings (``FAULT_ENV``), so recovery
takes seconds; a scenario that kills or stops its worker restarts it for the next one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, text

from digits.worker.store import db
from digits.worker.submission import jobs
from tests.services import assert_nothing_lost, job_items, redis_process, running_worker

FAULT_ENV = {
    "DIGITS_DB_RETRIES": "4",
    "DIGITS_DB_RETRY_BACKOFF": "1",
    "DIGITS_DB_RETRY_BACKOFF_MAX": "3",
    "DIGITS_MAX_DELIVERIES": "2",
    # Long enough for a child's first chunk (it loads the model), short enough that a chunk held
    # by a worker killed outright is redelivered within seconds: the visibility timeout.
    "DIGITS_TASK_TIME_LIMIT": "20",
    "DIGITS_VISIBILITY_TIMEOUT": "21",
}
# The database outage: shortened for every change; the slow form is the 30 s.
OUTAGE_S = 6.0
LONG_OUTAGE_S = 30.0
BIG = 1536  # six chunks of 256: two running, four queued while the fault hits


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """This module's redis-server, AOF with fsync on every write, so it can be crashed."""
    with redis_process(tmp_path_factory.mktemp("aof-redis")) as server:
        yield server


@pytest.fixture(scope="module")
def pg_worker(broker, postgres_server, model_path, tmp_path_factory):
    directory = tmp_path_factory.mktemp("pg-worker")
    url = postgres_server.create_database()
    with running_worker(broker.url, url, directory / "worker.log", env=FAULT_ENV) as worker:
        yield worker


@pytest.fixture(scope="module")
def sqlite_worker(broker, model_path, tmp_path_factory):
    """SQLite with a 2 s lock wait (``?timeout=2``) instead of 30 s, to see retries quickly."""
    directory = tmp_path_factory.mktemp("sqlite-worker")
    url = f"sqlite:///{directory / 'digits.sqlite3'}?timeout=2"
    with running_worker(broker.url, url, directory / "worker.log", env=FAULT_ENV) as worker:
        yield worker


def _submit(worker, scan_crops, count: int = BIG) -> tuple[jobs.JobPlan, list[str]]:
    """Submit once the worker answers: one still reconnecting after the Redis crash scenario
    would take the whole job the moment it is back and finish it before a fault could hit."""
    worker.process.wait_ready(worker.app, timeout_s=90)
    crops = [jobs.Crop(key, blob) for key, blob, _ in scan_crops[:count]]
    return worker.submit(crops), [crop.key for crop in crops]


def _assert_all_read(items: dict) -> None:
    """Scan-like digits: every one read, none turned into an error by the fault."""
    errors = {key: item.error for key, item in items.items() if item.status == "error"}
    assert not errors, f"{len(errors)} items became errors, e.g. {list(errors.items())[:2]}"


def _processed(worker, job_id: str) -> int:
    with db.session_scope(worker.database_url) as session:
        return session.get(db.Job, job_id).processed


# --- 1. SIGKILL: a child is test_worker.py's; here the whole worker, parent and children ------


def test_whole_worker_sigkilled_mid_job_then_restarted_loses_nothing(pg_worker, scan_crops):
    plan, keys = _submit(pg_worker, scan_crops)
    pg_worker.wait_until_running(plan.job_id)
    pg_worker.kill()
    assert _processed(pg_worker, plan.job_id) < BIG, "the kill came after the job ended"
    # The chunks the dead worker held stay unacknowledged in Redis; the new worker takes the
    # queued ones at once and restores the held ones when their visibility timeout passes.
    pg_worker.restart()
    pg_worker.wait(plan.job_id)
    _assert_all_read(assert_nothing_lost(pg_worker.database_url, plan.job_id, keys))


# --- 5. SIGTERM: a warm shutdown finishes what runs; the rest waits in Redis for a worker --------


def test_sigterm_mid_job_finishes_running_chunks_and_requeues_the_rest(sqlite_worker, scan_crops):
    plan, keys = _submit(sqlite_worker, scan_crops)
    running = sqlite_worker.wait_until_running(plan.job_id)
    status = sqlite_worker.terminate()
    assert status == 0, f"warm shutdown exited with {status}"
    chunks = {task["id"].split(":")[1] for task in running}
    finished = _chunk_keys(plan, chunks)
    items = {item.key: item for item in job_items(sqlite_worker.database_url, plan.job_id)}
    assert all(items[key].status != "pending" for key in finished), "a running chunk was dropped"
    assert any(item.status == "pending" for item in items.values()), "SIGTERM came too late"
    sqlite_worker.restart()
    sqlite_worker.wait(plan.job_id)
    _assert_all_read(assert_nothing_lost(sqlite_worker.database_url, plan.job_id, keys))


def _chunk_keys(plan: jobs.JobPlan, chunks: set[str]) -> list[str]:
    return [key for chunk in plan.chunks if str(chunk.index) in chunks for key, _ in chunk.crops]


# --- 2. Redis crashes (SIGKILL, AOF on) while jobs are queued and running, and comes back --------


def test_redis_crash_and_restart_loses_no_job_and_strands_none(sqlite_worker, broker, scan_crops):
    big, big_keys = _submit(sqlite_worker, scan_crops)
    small, small_keys = _submit(sqlite_worker, scan_crops[BIG:], count=40)
    sqlite_worker.wait_until_running(big.job_id)
    broker.kill()
    time.sleep(2)  # the worker notices and starts reconnecting
    broker.start()
    after, after_keys = _submit(sqlite_worker, scan_crops[BIG + 40 :], count=40)
    for plan, keys in ((big, big_keys), (small, small_keys), (after, after_keys)):
        sqlite_worker.wait(plan.job_id)
        _assert_all_read(assert_nothing_lost(sqlite_worker.database_url, plan.job_id, keys))


# --- 3. The database goes away mid-job: PostgreSQL stopped, SQLite locked -----------------------


@pytest.mark.parametrize(
    "outage_s", [OUTAGE_S, pytest.param(LONG_OUTAGE_S, marks=pytest.mark.slow)], ids=["6s", "30s"]
)
def test_postgres_stopped_mid_job_retries_then_completes(
    pg_worker, postgres_server, scan_crops, outage_s
):
    plan, keys = _submit(pg_worker, scan_crops)
    pg_worker.wait_until_running(plan.job_id)
    postgres_server.stop()
    try:
        time.sleep(outage_s)
    finally:
        postgres_server.start()
    pg_worker.wait(plan.job_id)
    _assert_all_read(assert_nothing_lost(pg_worker.database_url, plan.job_id, keys))
    _assert_retried_with_backoff(pg_worker.log(), plan.job_id, parked=outage_s >= LONG_OUTAGE_S)


@pytest.mark.parametrize(
    "outage_s", [OUTAGE_S, pytest.param(LONG_OUTAGE_S, marks=pytest.mark.slow)], ids=["6s", "30s"]
)
def test_sqlite_locked_mid_job_retries_then_completes(sqlite_worker, scan_crops, outage_s):
    plan, keys = _submit(sqlite_worker, scan_crops)
    sqlite_worker.wait_until_running(plan.job_id)
    path = sqlite_worker.database_url.removeprefix("sqlite:///").split("?")[0]
    holder = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # every writer now waits 2 s, then fails and retries
        time.sleep(outage_s)
        holder.execute("COMMIT")
    finally:
        holder.close()
    sqlite_worker.wait(plan.job_id)
    _assert_all_read(assert_nothing_lost(sqlite_worker.database_url, plan.job_id, keys))
    # Each attempt holds a child for the 2 s lock wait, so 30 s need not exhaust the retries here.
    _assert_retried_with_backoff(sqlite_worker.log(), plan.job_id, parked=False)


def _assert_retried_with_backoff(log: str, job_id: str, parked: bool) -> None:
    """The task's own log lines: retries counted up, each delay drawn from the doubling range.

    ``parked``: the outage outlasted every retry (a refused connection fails at once), so chunks
    must have been kept past them rather than written off.
    """
    pattern = rf"job {job_id} chunk \d+: database error, retry (\d+) of 4 in (\d+) s"
    retries = [(int(n), int(delay)) for n, delay in re.findall(pattern, log)]
    assert retries, "no retry was logged: the outage was never seen"
    assert all(delay <= min(3, 2 ** (n - 1)) for n, delay in retries)  # full jitter, capped
    if parked:
        assert re.search(rf"job {job_id} chunk \d+: database still failing after 4 retries", log)


OUTAGE_TRIGGER = """
CREATE FUNCTION refuse_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.job_id = '{job_id}' THEN
        RAISE EXCEPTION 'simulated outage' USING ERRCODE = '57P03';  -- cannot_connect_now
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON items
    FOR EACH ROW EXECUTE FUNCTION refuse_items();
"""


def test_a_chunk_the_database_refuses_even_as_errors_is_parked_not_dropped(pg_worker, scan_crops):
    """Past the retries even the error rows fail: the chunk waits in Redis, then is written.

    (When the error rows can be written, the items become errors with the reason: the eager
    ``test_database_errors_retry_then_mark_the_chunk_error`` in test_worker.py.)
    """
    crops = [jobs.Crop(key, blob) for key, blob, _ in scan_crops[:5]]
    plan = jobs.plan_job(crops, pg_worker.settings)
    with db.session_scope(pg_worker.database_url) as session:
        jobs.create_job(session, plan)
    engine = db.engine_for(pg_worker.database_url)
    with engine.begin() as connection:
        connection.execute(text(OUTAGE_TRIGGER.format(job_id=plan.job_id)))
    try:
        jobs.send_chunks(plan, pg_worker.settings, pg_worker.app)
        parked = f"job {plan.job_id} chunk 0: database still failing after 4 retries; chunk parked"
        pg_worker.wait_for_log(parked, timeout_s=120)
    finally:
        with engine.begin() as connection:
            connection.execute(text("DROP TRIGGER refuse ON items; DROP FUNCTION refuse_items()"))
    pg_worker.wait(plan.job_id)
    _assert_all_read(assert_nothing_lost(pg_worker.database_url, plan.job_id, plan.keys))


# --- a chunk that kills its worker every time: counted, split, and its one guilty crop failed ----


def test_a_chunk_that_kills_its_child_every_time_is_split_and_only_its_guilty_crop_fails(
    pg_worker, scan_crops
):
    """The child dies whenever it reaches one crop (here: killed while blocked on that crop's row).

    Redis alone would redeliver the chunk forever. With ``DIGITS_MAX_DELIVERIES=2`` the third
    delivery splits it into one-crop chunks; the guilty one dies twice more and is then an error.
    A row lock the test holds on the guilty item makes the death land there every time, exactly:
    each writer blocks on it until the test kills its process.
    """
    crops = [jobs.Crop(key, blob) for key, blob, _ in scan_crops[:24]]
    plan = jobs.plan_job(crops, dataclasses.replace(pg_worker.settings, chunk_size=8))
    with db.session_scope(pg_worker.database_url) as session:
        jobs.create_job(session, plan)
    guilty_chunk, guilty_index = 1, 3
    guilty = plan.chunks[guilty_chunk].crops[guilty_index][0]
    engine = db.engine_for(pg_worker.database_url)
    holder = engine.connect()
    lock = holder.begin()
    holder.execute(
        select(db.Item)
        .where(db.Item.job_id == plan.job_id, db.Item.key == guilty)
        .with_for_update()
    )
    try:
        jobs.send_chunks(plan, pg_worker.settings, pg_worker.app)
        for label in (f"{guilty_chunk}", f"{guilty_chunk}.{guilty_index}"):
            for delivery in (1, 2):
                _wait_for_delivery(pg_worker, plan.job_id, label, delivery)
                for task in pg_worker.wait_until_running(f"{plan.job_id}:{label}"):
                    os.kill(task["worker_pid"], signal.SIGKILL)
    finally:
        lock.rollback()
        holder.close()
    pg_worker.wait(plan.job_id)
    items = assert_nothing_lost(pg_worker.database_url, plan.job_id, plan.keys)
    assert items[guilty].status == "error"
    assert "worker process died 2 times" in items[guilty].error
    _assert_all_read({key: item for key, item in items.items() if key != guilty})
    assert (
        f"job {plan.job_id} chunk {guilty_chunk}: died mid-way on 2 deliveries" in pg_worker.log()
    )


def _wait_for_delivery(worker, job_id: str, label: str, count: int, timeout_s: float = 120) -> None:
    """Until the chunk's delivery ``count`` is committed (it is, before the chunk does any work)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with db.session_scope(worker.database_url) as session:
            counted = session.scalar(
                select(db.ChunkDelivery.deliveries).where(
                    db.ChunkDelivery.job_id == job_id,
                    db.ChunkDelivery.chunk == label,
                    db.ChunkDelivery.retries == 0,
                )
            )
        if counted == count:
            return
        assert time.monotonic() < deadline, f"chunk {label} never reached delivery {count}"
        time.sleep(0.1)


# --- 4. The model call fails on one crop of a chunk: only that crop fails -----------------------


STRICT_MODEL = """
import sys
import keras

shipped = keras.saving.load_model(sys.argv[1], compile=False)
pixels = keras.Input((28, 28, 1))
ink = keras.layers.GlobalAveragePooling2D()(pixels)
over = keras.layers.Discretization(bin_boundaries=[0.45])(ink)
checked = keras.layers.IntegerLookup(vocabulary=[0], num_oov_indices=0)(over)
nothing = keras.layers.Dense(10, kernel_initializer="zeros", bias_initializer="zeros")(checked)
keras.Model(pixels, keras.layers.Add()([shipped(pixels), nothing])).save(sys.argv[2])
"""


@pytest.fixture(scope="module")
def strict_model(tmp_path_factory, model_path) -> Path:
    """The shipped network plus a check that fails the whole call when a crop is mostly ink.

    A test double, because no real crop breaks the real model: 457,000 mutated PNG, JPEG, GIF,
    TIFF, BMP and WebP files all came back as a reading or a clean error. The check is standard
    Keras layers (an IntegerLookup that allows no unknown value), so the worker loads the file
    through its ordinary ``DIGITS_MODEL`` path, and the crop that trips it is a real image. Built
    in a subprocess: TensorFlow set up in the test process would refuse the thread settings later
    in-process tests give it.
    """
    path = tmp_path_factory.mktemp("strict-model") / "strict.keras"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    argv = [sys.executable, "-c", STRICT_MODEL, str(model_path), str(path)]
    subprocess.run(argv, check=True, capture_output=True, env=env, timeout=300)
    return path


def _filled_square() -> bytes:
    """A real image: a solid black square on white paper, which normalizes to mostly ink."""
    page = np.full((48, 48), 255, np.uint8)
    page[8:40, 8:40] = 0
    out = io.BytesIO()
    Image.fromarray(page).save(out, format="PNG")
    return out.getvalue()


def test_a_model_call_failing_on_one_crop_fails_only_that_crop(
    strict_model, redis_server, scan_crops, tmp_path
):
    env = {"DIGITS_MODEL": str(strict_model)}
    url = f"sqlite:///{tmp_path / 'digits.sqlite3'}"
    with running_worker(
        redis_server.url, url, tmp_path / "worker.log", concurrency=1, env=env
    ) as worker:
        crops = [jobs.Crop(key, blob) for key, blob, _ in scan_crops[:255]]
        crops.insert(100, jobs.Crop("square.png", _filled_square()))
        plan = worker.submit(crops)
        assert len(plan.chunks) == 1  # the square shares its batch with 255 digits
        worker.wait(plan.job_id)
        items = assert_nothing_lost(url, plan.job_id, plan.keys)
    assert items["square.png"].status == "error"
    assert items["square.png"].error.startswith("model failed on this crop")
    assert "found OOV values" in items["square.png"].error
    rest = {key: item for key, item in items.items() if key != "square.png"}
    _assert_all_read(rest)
    truth = {key: label for key, _, label in scan_crops}
    accuracy = np.mean([item.digit == truth[key] for key, item in rest.items()])
    assert accuracy >= 0.98  # the other 255 went through the same network, one at a time


# --- the worker's own model missing: refused at start, parked if it goes later -----------------


def test_a_worker_without_its_model_file_refuses_to_start(redis_server, tmp_path):
    from digits.cli.devtools.local import start_worker

    env = {"DIGITS_MODEL": str(tmp_path / "absent.keras")}
    env["DIGITS_BROKER_URL"] = redis_server.url
    env["DIGITS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'digits.sqlite3'}"
    worker = start_worker(env, tmp_path / "worker.log", concurrency=1)
    assert worker.process.wait(timeout=60) == 1
    assert f"no model file at {tmp_path / 'absent.keras'}" in worker.log()


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"DIGITS_MESSAGE_KEY": "short"}, "DIGITS_MESSAGE_KEY: 5 characters"),
        ({"DIGITS_MESSAGE_KEY_FILE": "/proc/no-such-dir/message.key"}, "no message key"),
    ],
)
def test_a_worker_without_a_usable_message_key_refuses_to_start(
    redis_server, tmp_path, setting, says
):
    from digits.cli.devtools.local import start_worker

    env = {**setting, "DIGITS_BROKER_URL": redis_server.url}
    env["DIGITS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'digits.sqlite3'}"
    worker = start_worker(env, tmp_path / "worker.log", concurrency=1)
    assert worker.process.wait(timeout=60) != 0  # 1 from start-up, 2 from Celery's own check
    assert says in worker.log()


def test_a_child_killed_while_it_loads_stops_the_worker_at_once(redis_server, tmp_path):
    """The parent waits for every child's model before it takes work (queue.warmup); a child that
    dies meanwhile will never report, so the parent stops waiting at once, and Celery refuses to
    run with a child lost at start: the worker exits non-zero for its supervisor to restart,
    instead of hanging for DIGITS_MODEL_LOAD_TIMEOUT (120 s) or taking work it cannot do."""
    from digits.cli.devtools.local import start_worker

    env = {"DIGITS_BROKER_URL": redis_server.url}
    env["DIGITS_DATABASE_URL"] = f"sqlite:///{tmp_path / 'digits.sqlite3'}"
    worker = start_worker(env, tmp_path / "worker.log", concurrency=2)
    try:
        children: list[str] = []
        deadline = time.monotonic() + 30
        while len(children) < 2 and time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError):
                pid = worker.process.pid
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            time.sleep(0.02)
        assert "loaded in process" not in worker.log()  # still loading: a load takes seconds
        os.kill(int(children[0]), signal.SIGKILL)
        assert worker.process.wait(timeout=60) != 0
        assert re.search(r"only [01] of 2 children reported their models", worker.log())
    finally:
        worker.stop()


def test_a_model_unreadable_when_children_start_parks_the_chunk_instead_of_failing_its_crops(
    redis_server, model_path, scan_crops, mnist, tmp_path
):
    """Its crops are not to blame: they stay pending until the worker can read the model again.

    The file exists (the parent checks that much) but is not a model when the children load it
    as they start; each child's first chunk tries again, and parks while it still cannot. A
    field chunk needs the cnn too (for the digits written apart), and its message names it.
    """
    from digits.model.fieldgen import field_set
    from digits.worker.submission import jobs

    model = tmp_path / "cnn.keras"
    model.write_bytes(b"not a keras archive")
    env = {**FAULT_ENV, "DIGITS_MODEL": str(model)}
    url = f"sqlite:///{tmp_path / 'digits.sqlite3'}"
    with running_worker(redis_server.url, url, tmp_path / "worker.log", 1, env) as worker:
        assert "could not load its models" in worker.log()
        plan, keys = _submit(worker, scan_crops, count=20)
        worker.wait_for_log(
            f"job {plan.job_id} chunk 0: the model {model} cannot be loaded", timeout_s=120
        )
        assert {item.status for item in job_items(url, plan.job_id)} == {"pending"}
        fields = [
            jobs.Crop(f"zip-{i}", f.data)
            for i, f in enumerate(field_set(mnist.x_test, mnist.y_test, 3, "zip", seed=5))
        ]
        zips = jobs.submit(fields, worker.settings, source="test", app=worker.app, kind="zip")
        worker.wait_for_log(
            f"job {zips.job_id} chunk 0: the model {model} cannot be loaded", timeout_s=120
        )
        shutil.copyfile(model_path, model)
        worker.wait(plan.job_id)
        _assert_all_read(assert_nothing_lost(url, plan.job_id, keys))
        worker.wait(zips.job_id)
        read = assert_nothing_lost(url, zips.job_id, [crop.key for crop in fields])
        assert all(item.text for item in read.values())


# --- 6. Soak: scripts/soak.py's 200,000 crops, shortened to 10,000 -------------------------------


def test_soak_10000_crops_through_one_worker_memory_stays_flat(
    redis_server, model_path, scan_crops, tmp_path
):
    """The shortened soak: resident memory of the worker's process tree, first vs last quarter."""
    from digits.cli.devtools import soak

    url = f"sqlite:///{tmp_path / 'soak.sqlite3'}"
    with running_worker(redis_server.url, url, tmp_path / "worker.log") as worker:
        pool = [blob for _, blob, _ in scan_crops]
        result = soak.run(
            worker.settings, worker.app, worker.process.process.pid, pool, 10_000, say=print
        )
    print(result.report())
    assert result.lost == 0
    assert all(quarter.samples for quarter in result.quarters)
    assert result.growth < soak.MAX_GROWTH, result.report()
