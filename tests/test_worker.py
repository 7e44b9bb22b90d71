"""Jobs through a real Celery worker (prefork, two children) on real Redis, SQLite and PostgreSQL.

The module-scoped ``celery_worker`` fixture runs one worker per database backend; the tests below it
run in file order, and the last two read the worker's whole log (model loads, a killed child).
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import re
import signal
import time
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select, text

from digits.cli.manage import cli
from digits.model.card import read_card, version
from digits.worker.config import Settings
from digits.worker.store import db
from digits.worker.submission import jobs

SCANS = 2000
# worker.model_cache.LOADED_MESSAGE as logged: version, process id, loads in that process.
LOADED = r"model (\S+) loaded in process (\d+) \(load (\d+) in this process\)"


@pytest.fixture(scope="module")
def scans(mnist) -> list[tuple[str, bytes, int]]:
    """(key, scan-like crop, true label) for the first 2,000 MNIST test digits."""
    from digits.model.scanlike import scanlike_set

    images, labels = mnist.x_test[:SCANS], mnist.y_test[:SCANS]
    return [
        (f"scan/{i:05d}{_suffix(blob)}", blob, int(label))
        for i, (blob, label) in enumerate(zip(scanlike_set(images, seed=0), labels, strict=True))
    ]


@pytest.fixture(scope="module")
def model_version(model_path) -> str:
    return version(read_card(model_path))


@pytest.fixture(scope="module")
def big_job(celery_worker, scans):
    """The 2,000-crop job, run once per worker and inspected by several tests."""
    plan = celery_worker.submit([jobs.Crop(key, blob) for key, blob, _ in scans], source="2000")
    return plan, celery_worker.wait(plan.job_id)


def _suffix(blob: bytes) -> str:
    return ".png" if blob.startswith(b"\x89PNG") else ".jpg"


def _items(url: str, job_id: str) -> list[db.Item]:
    with db.session_scope(url) as session:
        statement = select(db.Item).where(db.Item.job_id == job_id).order_by(db.Item.id)
        return list(session.scalars(statement))


def _job(url: str, job_id: str) -> db.Job:
    with db.session_scope(url) as session:
        return session.get(db.Job, job_id)


def _assert_counts_agree(job: db.Job, items: list[db.Item]) -> None:
    by_status = collections.Counter(item.status for item in items)
    assert job.total == len(items)
    assert job.processed == len(items) - by_status["pending"]
    assert (job.ok, job.needs_review, job.blank, job.error) == (
        by_status["ok"],
        by_status["needs_review"],
        by_status["blank"],
        by_status["error"],
    )


def _cli(worker, *args: str):
    result = CliRunner().invoke(cli, list(args), env=worker.env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_2000_scanlike_crops_one_row_each_and_accurate(
    celery_worker, scans, big_job, model_version
):
    plan, final = big_job
    items = _items(celery_worker.database_url, plan.job_id)
    keys = collections.Counter(item.key for item in items)
    assert keys == collections.Counter(key for key, _, _ in scans)  # each key exactly once
    assert len(plan.chunks) == 8 and plan.queue == "batch"
    truth = {key: label for key, _, label in scans}
    accuracy = np.mean([item.digit == truth[item.key] for item in items])
    assert accuracy >= 0.99, f"scan-like accuracy from the database: {accuracy:.4f}"
    assert final.status in ("done", "partial", "reviewing")
    assert all(item.status != "pending" for item in items)
    _assert_counts_agree(_job(celery_worker.database_url, plan.job_id), items)
    assert {item.model_version for item in items} == {model_version}
    assert final.model_version == model_version


def test_results_csv_matches_the_database(celery_worker, big_job):
    plan, _ = big_job
    output = _cli(celery_worker, "results", plan.job_id, "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(output)))
    items = _items(celery_worker.database_url, plan.job_id)
    assert len(rows) == len(items) == SCANS
    for row, item in zip(rows, items, strict=True):
        assert row["key"] == item.key
        assert row["digit"] == ("" if item.digit is None else str(item.digit))
        assert row["confidence"] == ("" if item.confidence is None else str(item.confidence))
        assert row["status"] == item.status
        assert row["error"] == (item.error or "")


def test_mixed_good_blank_and_broken_files_end_partial(celery_worker, scans, tmp_path):
    """Through `digits enqueue --wait --json`: every file is an item, none sinks the job."""
    folder = tmp_path / "post"
    (folder / "good").mkdir(parents=True)
    for key, blob, _ in scans[:6]:
        (folder / "good" / key.split("/")[1]).write_bytes(blob)
    for name, value in (("blank-white.png", 255), ("blank-grey.png", 200)):
        Image.new("L", (40, 40), value).save(folder / name)
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.jpg").write_bytes(scans[0][1][:40])
    (folder / "noise.png").write_bytes(os.urandom(300))
    (folder / "huge.png").write_bytes(b"\x89PNG" + b"\0" * 60_000)
    archive = tmp_path / "box.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cheque-1" + _suffix(scans[7][1]), scans[7][1])
        zf.writestr("../escape.png", scans[8][1])
    env = {**celery_worker.env, "DIGITS_MAX_ITEM_BYTES": "50000"}
    result = CliRunner().invoke(
        cli, ["enqueue", str(folder), str(archive), "--wait", "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    items = {item.key: item for item in _items(celery_worker.database_url, summary["job_id"])}
    assert summary["items"] == len(items) == 14
    assert summary["status"] == ("reviewing" if summary["awaiting_review"] else "partial")
    goods = [k for k in items if k.startswith(("good/", "box.zip/cheque-1"))]
    assert len(goods) == 7
    assert {items[k].status for k in goods} <= {"ok", "needs_review"}
    assert items["blank-white.png"].status == items["blank-grey.png"].status == "blank"
    broken = ["empty.png", "truncated.jpg", "noise.png", "huge.png", "box.zip/../escape.png"]
    for key in broken:
        assert items[key].status == "error", key
        assert items[key].error, key
    assert "byte limit" in items["huge.png"].error
    assert "unsafe member name" in items["box.zip/../escape.png"].error
    _assert_counts_agree(_job(celery_worker.database_url, summary["job_id"]), list(items.values()))


def test_review_lists_exactly_the_items_under_the_threshold(celery_worker, scans):
    """A strict threshold so that both sides of it are well populated."""
    crops = [jobs.Crop(key, blob) for key, blob, _ in scans[:300]]
    plan = celery_worker.submit(crops, review_threshold=0.9999)
    celery_worker.wait(plan.job_id)
    items = _items(celery_worker.database_url, plan.job_id)
    under = {i.key for i in items if i.confidence is not None and i.confidence < 0.9999}
    assert under and len(under) < len(items)
    output = _cli(celery_worker, "review", plan.job_id).stdout
    listed = {row["key"] for row in csv.DictReader(io.StringIO(output))}
    assert listed == under
    everywhere = _cli(celery_worker, "review", "--format", "json").stdout
    assert under <= {row["key"] for row in json.loads(everywhere) if row["job_id"] == plan.job_id}
    status = json.loads(_cli(celery_worker, "status", plan.job_id, "--json").stdout)
    assert status["needs_review"] == len(under) and status["job_id"] == plan.job_id


def test_a_faint_digit_or_two_digits_are_read_and_await_a_person_with_the_reason(
    celery_worker, mnist
):
    """A pen digit barely clear of grainy paper (tests/test_faint.py), and a crop of two digits
    side by side (tests/test_two_digits.py), are stored with their reading, needs_review however
    sure, and `digits review` says why: faint_ink, two_digits."""
    from tests.test_faint import ballpoint_on_grain
    from tests.test_two_digits import crop, png

    crops = [jobs.Crop(f"f{i}", ballpoint_on_grain(mnist.x_test[i], i, 80)) for i in range(40)]
    crops += [jobs.Crop("pair", png(crop("one", "zero"))), jobs.Crop("zero", png(crop("zero")))]
    plan = celery_worker.submit(crops)
    celery_worker.wait(plan.job_id)
    items = _items(celery_worker.database_url, plan.job_id)
    faint = {i.key for i in items if "faint_ink" in (i.details or {}).get("reasons", [])}
    assert faint, "some of these digits are faint"
    two = {i.key for i in items if "two_digits" in (i.details or {}).get("reasons", [])}
    assert two == {"pair"}
    for item in items:
        if item.key in faint | two:
            assert item.status == "needs_review" and item.digit is not None and item.final is None
    output = _cli(celery_worker, "review", plan.job_id).stdout
    reasons = {row["key"]: row["reasons"] for row in csv.DictReader(io.StringIO(output))}
    assert all("faint_ink" in reasons[key] for key in faint) and "two_digits" in reasons["pair"]


def test_a_chunk_delivered_twice_leaves_one_row_per_key(celery_worker, scans):
    """Late acknowledgement means redelivery; send a chunk's message again and recount.

    Its items are final by then: the second delivery writes nothing (a warning names them), so
    the job, its rows and its finish time stay exactly as the first delivery left them.
    """
    plan = celery_worker.submit([jobs.Crop(key, blob) for key, blob, _ in scans[:20]])
    first = celery_worker.wait(plan.job_id)
    before = _job(celery_worker.database_url, plan.job_id)
    answers = {
        item.key: (item.digit, item.status)
        for item in _items(celery_worker.database_url, plan.job_id)
    }
    chunk = plan.chunks[0]
    result = celery_worker.app.send_task(
        "digits.classify_chunk", kwargs=plan.message(chunk), queue=plan.queue
    )
    refused = f"job {plan.job_id} chunk 0: results for 20 items refused"
    deadline = time.monotonic() + 120
    while refused not in celery_worker.log():
        assert time.monotonic() < deadline, f"the redelivered chunk was never refused ({result.id})"
        time.sleep(0.2)
    items = _items(celery_worker.database_url, plan.job_id)
    assert len(items) == 20 and len({item.key for item in items}) == 20
    assert {item.key: (item.digit, item.status) for item in items} == answers
    job = _job(celery_worker.database_url, plan.job_id)
    _assert_counts_agree(job, items)
    assert (job.status, job.ok + job.needs_review) == (before.status, first.ok + first.needs_review)
    assert (job.updated, job.finished) == (before.updated, before.finished)
    with db.session_scope(celery_worker.database_url) as session:
        left = session.scalars(
            select(db.ChunkDelivery).where(db.ChunkDelivery.job_id == plan.job_id)
        ).all()
    assert left == []  # a refused delivery leaves no count behind


def test_the_worker_is_ready_only_once_every_child_holds_its_model(
    celery_worker, scans, model_version
):
    """Children load as they start (queue.warmup), and the worker takes no job before: its
    first job costs what its tenth does."""
    from digits.worker.queue.warmup import READY_MESSAGE

    plan = celery_worker.submit([jobs.Crop(key, blob) for key, blob, _ in scans[:8]])
    celery_worker.wait(plan.job_id)
    log = celery_worker.log()
    loads = [m.start() for m in re.finditer(LOADED, log) if m.group(1) == model_version][:2]
    held = log.index(READY_MESSAGE.split(":")[0])
    ready = log.index(" ready.", held)  # Celery's own "celery@host ready."
    assert len(loads) == 2 and max(loads) < held < ready
    assert "2 of 2 loaded" in log[held:ready]
    first_chunk = log.index("chunk done")
    assert ready < first_chunk
    assert "could not rehearse" not in log  # each child ran a chunk's writes once (rehearse)


def test_model_loaded_once_per_child_process(celery_worker, scans, model_version):
    """After all the jobs above: one load per child as it started, none per task (the field
    reader's loads are lines of their own)."""
    plan = celery_worker.submit([jobs.Crop(key, blob) for key, blob, _ in scans[:1024]])
    celery_worker.wait(plan.job_id)
    loads = [
        found for found in re.findall(LOADED, celery_worker.log()) if found[0] == model_version
    ]
    assert len(loads) == 2, loads  # both children, before the first job
    assert len({pid for _, pid, _ in loads}) == len(loads)
    assert {(found, count) for found, _, count in loads} == {(model_version, "1")}
    worker_pid = str(celery_worker.process.process.pid)
    assert all(pid != worker_pid for _, pid, _ in loads)  # never in the parent
    items = _items(celery_worker.database_url, plan.job_id)
    assert {item.model_version for item in items} == {model_version}
    # The children imported TensorFlow: its start-up lines stay out of the log (model/quiet.py).
    for noise in ("absl::InitializeLog", "cuda drivers", "cuInit", "oneDNN"):
        assert noise not in celery_worker.log()


def test_a_child_killed_mid_chunk_loses_nothing(celery_worker, scans):
    """SIGKILL the child running a chunk: the unacknowledged message is redelivered and written."""
    plan = celery_worker.submit([jobs.Crop(key, blob) for key, blob, _ in scans[:1536]])
    inspector = celery_worker.app.control.inspect(destination=[celery_worker.process.hostname])
    deadline = time.monotonic() + 120
    victim = None
    while victim is None:
        assert time.monotonic() < deadline, "no chunk was ever seen running"
        active = (inspector.active() or {}).get(celery_worker.process.hostname) or []
        running = [task for task in active if task["id"].startswith(plan.job_id)]
        if running:
            victim = running[0]["worker_pid"]
        else:
            time.sleep(0.05)
    os.kill(victim, signal.SIGKILL)
    final = celery_worker.wait(plan.job_id)
    assert f"pid:{victim} exited with 'signal 9 (SIGKILL)'" in celery_worker.log()
    items = _items(celery_worker.database_url, plan.job_id)
    assert len(items) == len({item.key for item in items}) == 1536
    assert all(item.status != "pending" for item in items)
    assert final.status in ("done", "partial", "reviewing")
    _assert_counts_agree(_job(celery_worker.database_url, plan.job_id), items)
    # The redelivery was counted (the guard against crops that kill every child) and, once the
    # chunk was written, forgotten: a chunk killed once by accident is not on its way to poison.
    with db.session_scope(celery_worker.database_url) as session:
        left = session.scalars(
            select(db.ChunkDelivery).where(db.ChunkDelivery.job_id == plan.job_id)
        ).all()
    assert left == []
    assert "died mid-way" not in celery_worker.log()


def test_a_chunk_queued_with_its_body_under_base64_is_still_read(celery_worker, scans):
    """Submitters wrap the body in base64 no longer (``celery_app.transport_options``); a chunk
    queued by one from before, waiting in Redis across the upgrade, is read all the same: kombu
    decodes each entry by the encoding its own properties name."""
    import redis

    from tests.bad_files import queue_entry

    crops = [jobs.Crop(key, blob) for key, blob, _ in scans[:6]]
    plan = jobs.plan_job(crops, celery_worker.settings)
    with db.session_scope(celery_worker.database_url) as session:
        jobs.create_job(session, plan)
    body = [[], plan.message(plan.chunks[0]), {"callbacks": None, "errbacks": None, "chain": None}]
    entry = queue_entry(json.dumps(body).encode(), "application/json")
    assert json.loads(entry)["properties"]["body_encoding"] == "base64"
    client = redis.Redis.from_url(celery_worker.env["DIGITS_BROKER_URL"])
    try:
        client.lpush("batch", entry)
    finally:
        client.close()
    # No copy was kept (create_job alone), so no sweeper can send it again in today's form: only
    # the queued entry can finish the job. The timeout only stops a hung test.
    status = celery_worker.wait(plan.job_id, timeout_s=60)
    assert status.ok + status.needs_review == 6
    items = _items(celery_worker.database_url, plan.job_id)
    assert {item.key: item.digit for item in items} == {key: label for key, _, label in scans[:6]}
    # The line follows the commit that wait() saw: wait for it, then count it once.
    celery_worker.wait_for_log(f"chunk done job={plan.job_id} chunk=0 ")
    assert celery_worker.log().count(f"chunk done job={plan.job_id} chunk=0 ") == 1


# --- the task called in this process: redelivery and database failures -------------------------


def _create(url: str, crops: list[jobs.Crop], threshold: float = 0.9) -> jobs.JobPlan:
    plan = jobs.plan_job(crops, Settings(database_url=url, review_threshold=threshold))
    with db.session_scope(url) as session:
        jobs.create_job(session, plan)
    return plan


def _task_on(url: str, monkeypatch: pytest.MonkeyPatch):
    """The task, to run here with Celery's eager ``apply``, writing to ``url``."""
    monkeypatch.setenv("DIGITS_DATABASE_URL", url)
    from digits.worker.queue.tasks import classify_chunk

    return classify_chunk


@pytest.fixture
def in_process(database_url, model_path, monkeypatch):
    return _task_on(database_url, monkeypatch)


@pytest.fixture
def on_postgres(postgres_url, model_path, monkeypatch):
    return _task_on(postgres_url, monkeypatch)


def test_calling_the_task_twice_creates_no_duplicates(in_process, database_url, scans):
    crops = [jobs.Crop(key, blob) for key, blob, _ in scans[:10]] + [jobs.Crop("bad", b"junk")]
    plan = _create(database_url, crops)
    for _ in range(2):
        result = in_process.apply(kwargs=plan.message(plan.chunks[0]))
        assert result.successful(), result.traceback
    items = _items(database_url, plan.job_id)
    assert len(items) == 11
    job = _job(database_url, plan.job_id)
    assert (job.status, job.processed, job.error) == ("partial", 11, 1)
    _assert_counts_agree(job, items)


OUTAGE = """
CREATE FUNCTION refuse_results() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status <> 'error' OR {refuse_errors} THEN
        RAISE EXCEPTION 'simulated outage' USING ERRCODE = '57P03';  -- cannot_connect_now
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON items
    FOR EACH ROW EXECUTE FUNCTION refuse_results();
"""


def _outage(url: str, refuse_errors: bool) -> None:
    """A real database error on the results write (SQLSTATE class 57: OperationalError)."""
    with db.engine_for(url).begin() as connection:
        connection.execute(text(OUTAGE.format(refuse_errors=str(refuse_errors).lower())))


def test_database_errors_retry_then_mark_the_chunk_error(on_postgres, postgres_url, scans):
    """After the configured retries the chunk's items are errors with the reason, not lost."""
    database_url = postgres_url
    plan = _create(database_url, [jobs.Crop(key, blob) for key, blob, _ in scans[:5]])
    _outage(database_url, refuse_errors=False)
    result = on_postgres.apply(kwargs=plan.message(plan.chunks[0]))
    assert result.successful(), result.traceback
    items = _items(database_url, plan.job_id)
    retries = Settings.from_env().db_retries
    assert [item.status for item in items] == ["error"] * 5
    assert all(f"database error after {retries} retries" in item.error for item in items)
    assert all("simulated outage" in item.error for item in items)
    assert _job(database_url, plan.job_id).status == "failed"


def test_a_field_worker_can_load_the_field_reader_as_it_starts(redis_server, sqlite_url, tmp_path):
    """DIGITS_PRELOAD_FIELD_READER: a field job's first chunk then pays no load either (off by
    default: more memory in every child, field jobs or not)."""
    from digits.worker.config import ConfigError
    from digits.worker.queue.warmup import READY_MESSAGE
    from tests.services import running_worker

    env = {"DIGITS_PRELOAD_FIELD_READER": "yes"}
    with running_worker(redis_server.url, sqlite_url, tmp_path / "w.log", 1, env) as worker:
        log = worker.log()
    settings = Settings.from_env({})
    ready = log.index(READY_MESSAGE.split(":")[0])
    # Every model of a field chunk: the sequence reader, the segmenter's digit network, and the
    # cnn that reads the pieces alone with it (the digit chunks' own, loaded once).
    for path in (settings.field_model_path, settings.field_digits_path, settings.model_path):
        model = version(read_card(path))
        loads = [m.start() for m in re.finditer(LOADED, log) if m.group(1) == model]
        assert len(loads) == 1 and loads[0] < ready, model
    with pytest.raises(ConfigError, match="DIGITS_PRELOAD_FIELD_READER='maybe'"):
        Settings.from_env({"DIGITS_PRELOAD_FIELD_READER": "maybe"})


def test_a_child_rehearses_a_chunks_writes_at_start_and_leaves_nothing_behind(database_url):
    """queue.warmup.rehearse runs a one-crop chunk's statements (SQLAlchemy compiles each on its
    first use in a process: the first chunk paid 15 to 30 ms for them) in a transaction it rolls
    back."""
    from sqlalchemy import event, func

    from digits.worker.config import Settings
    from digits.worker.queue import warmup

    settings = Settings.from_env({"DIGITS_DATABASE_URL": database_url})
    ran: list[str] = []

    def seen(conn, cursor, statement, *args):
        ran.append(" ".join(statement.split()).lower())

    engine = db.engine_for(database_url)
    event.listen(engine, "before_cursor_execute", seen)
    try:
        warmup.rehearse(settings)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    for table in ("chunk_deliveries", "chunk_leases", "items", "models"):
        assert any(s.startswith(f"insert into {table}") for s in ran), table
    for table in ("chunk_deliveries", "chunk_leases", "sent_chunks"):
        assert any(s.startswith(f"delete from {table}") for s in ran), table
    assert any(s.startswith("update jobs") for s in ran)
    with db.session_scope(database_url) as session:
        for table in (db.Job, db.Item, db.Model, db.ChunkLease, db.ChunkDelivery, db.SentChunk):
            assert session.scalar(select(func.count()).select_from(table)) == 0, table
