"""The job database on SQLite and PostgreSQL: migrations, chunk upserts, counts, concurrency."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from sqlalchemy import create_engine, func, select, text

from digits.worker.config import Settings
from digits.worker.store import db, schema, writes
from digits.worker.submission.jobs import Crop, create_job, plan_job
from tests.services import BACKENDS, make_database_url

MODEL = writes.ModelInfo(
    version="cnn-0123456789ab", arch="cnn", test_accuracy=0.99, checksum="f" * 64
)


def _new_job(url: str, keys: list[str], chunk_size: int = 256) -> str:
    settings = Settings(database_url=url, chunk_size=chunk_size)
    plan = plan_job([Crop(key, b"\x89PNG not really") for key in keys], settings)
    with db.session_scope(url) as session:
        create_job(session, plan)
    return plan.job_id


def _ok(key: str, digit: int = 7, confidence: float = 0.99) -> writes.ItemResult:
    status = "ok" if confidence >= 0.9 else "needs_review"
    return writes.ItemResult(key, status, digit, confidence, [[digit, confidence]])


def _job(url: str, job_id: str) -> db.Job:
    with db.session_scope(url) as session:
        return session.get(db.Job, job_id)


def _item_count(url: str, job_id: str) -> int:
    with db.session_scope(url) as session:
        return session.scalar(select(func.count()).where(db.Item.job_id == job_id))


def test_migrations_create_exactly_the_models(database_url):
    """The migration and the typed models describe the same schema (autogenerate finds nothing)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.engine_for(database_url).connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), db.Base.metadata)
    assert diff == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_is_safe_when_processes_race(backend, request, tmp_path):
    """Several workers starting at once on a fresh database: one migrates, none fails."""
    fresh = make_database_url(backend, request, tmp_path)
    errors: list[BaseException] = []

    def migrate() -> None:
        try:
            db.upgrade(fresh)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with db.engine_for(fresh).connect() as connection:
        from alembic.migration import MigrationContext

        assert MigrationContext.configure(connection).get_current_revision() == db.head_revision()


def test_the_head_revision_the_code_knows_is_alembics():
    """A new migration moves ``schema.HEAD`` too; else every database would look out of date."""
    assert schema.head_revision() == schema.HEAD


def test_a_current_database_is_checked_without_alembic(database_url):
    """Starting on a current database (every `digits enqueue`) reads one row and loads no Alembic;
    an older one is still brought up to date through it."""
    code = (
        "import sys; from digits.worker.store import schema; "
        f"schema.upgrade({database_url!r}); schema.check_schema({database_url!r}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'alembic'))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]"

    from alembic import command
    from alembic.config import Config

    db.dispose_all()
    engine = create_engine(database_url)
    with engine.begin() as connection:  # one migration back, as a database of the release before
        config = Config()
        config.set_main_option("script_location", str(schema.MIGRATIONS))
        config.attributes["connection"] = connection
        command.downgrade(config, "0007")
    engine.dispose()
    with pytest.raises(db.SchemaError, match=f"at revision 0007, this digits needs {schema.HEAD}"):
        db.check_schema(database_url)
    db.upgrade(database_url)
    db.check_schema(database_url)


def test_a_revision_that_cannot_be_read_is_that_error_not_an_empty_database(database_url):
    """Only a missing ``alembic_version`` means "never migrated"; a table that is there but
    cannot be read (here a column gone) is reported as it is, not as revision none."""
    from sqlalchemy.exc import SQLAlchemyError

    with db.engine_for(database_url).begin() as connection:
        connection.execute(text("ALTER TABLE alembic_version RENAME COLUMN version_num TO v"))
    with pytest.raises(SQLAlchemyError, match="version_num"):
        db.check_schema(database_url)
    engine = create_engine(database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
        assert schema.current_revision(engine) is None
    finally:
        engine.dispose()


def test_new_job_has_a_pending_row_per_crop(database_url):
    job_id = _new_job(database_url, [f"env-{i}" for i in range(10)])
    job = _job(database_url, job_id)
    assert (job.status, job.total, job.processed) == ("queued", 10, 0)
    assert _item_count(database_url, job_id) == 10


def test_a_chunk_written_again_changes_no_final_item(database_url):
    """A redelivered chunk, or a message replayed with other answers: the items it names that are
    final keep their results, the pending ones it names are written, nothing else moves."""
    keys = [f"cheque-{i}" for i in range(6)]
    job_id = _new_job(database_url, keys)
    first = [_ok(k) for k in keys[:3]]
    with db.session_scope(database_url) as session:
        assert writes.write_chunk(session, job_id, first, MODEL).refused == {}
    before = _job(database_url, job_id)
    again = [_ok(keys[0], 1, 0.5), _ok(keys[1]), writes.ItemResult(keys[2], "blank")]
    for _ in range(2):
        with db.session_scope(database_url) as session:
            counts = writes.write_chunk(session, job_id, again, MODEL)
    assert counts.refused == dict.fromkeys(keys[:3], "the item is final already (ok)")
    assert _item_count(database_url, job_id) == 6
    assert (counts.status, counts.processed, counts.ok, counts.needs_review, counts.blank) == (
        "running",
        3,
        3,
        0,
        0,
    )
    assert _job(database_url, job_id).updated == before.updated  # the job row untouched too
    with db.session_scope(database_url) as session:
        item = session.scalars(select(db.Item).where(db.Item.key == keys[0])).one()
        assert (item.digit, item.confidence, item.status) == (7, 0.99, "ok")
        assert item.model_version == MODEL.version
        assert session.get(db.Model, MODEL.version).checksum == MODEL.checksum
    # Half final, half pending: the pending half is written, the final half refused.
    mixed = [writes.ItemResult(keys[2], "blank"), writes.ItemResult(keys[3], "blank")]
    with db.session_scope(database_url) as session:
        counts = writes.write_chunk(session, job_id, mixed, MODEL)
    assert list(counts.refused) == [keys[2]]
    assert (counts.processed, counts.ok, counts.blank) == (4, 3, 1)


def test_a_finished_job_takes_no_results(database_url):
    keys = ["a", "b"]
    job_id = _new_job(database_url, keys)
    with db.session_scope(database_url) as session:
        writes.write_chunk(session, job_id, [_ok(k) for k in keys], MODEL)
    done = _job(database_url, job_id)
    with db.session_scope(database_url) as session:
        counts = writes.write_chunk(session, job_id, [writes.ItemResult("a", "error")], None)
    assert counts.refused == {"a": "its job is finished (done)"}
    job = _job(database_url, job_id)
    assert (job.status, job.ok, job.error, job.finished, job.updated) == (
        "done",
        2,
        0,
        done.finished,
        done.updated,
    )


def test_results_for_keys_the_job_lacks_add_nothing(database_url):
    """The write itself refuses them (the task checks first too): the whole write rolls back."""
    job_id = _new_job(database_url, ["a", "b"])
    with (
        pytest.raises(writes.ForeignKeysError, match="1 of the chunk's 2 keys are not items"),
        db.session_scope(database_url) as session,
    ):
        writes.write_chunk(session, job_id, [_ok("a"), _ok("forged")], MODEL)
    assert _item_count(database_url, job_id) == 2
    job = _job(database_url, job_id)
    assert (job.status, job.processed) == ("queued", 0)


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        (["ok", "needs_review", "blank"], "done"),
        (["ok", "error", "blank"], "partial"),
        (["error", "error", "error"], "failed"),
    ],
)
def test_final_status_follows_the_items(database_url, statuses, expected):
    keys = ["a", "b", "c"]
    job_id = _new_job(database_url, keys)
    results = [
        writes.ItemResult(key, status, error="broken" if status == "error" else None)
        for key, status in zip(keys, statuses, strict=True)
    ]
    with db.session_scope(database_url) as session:
        writes.write_chunk(session, job_id, results, MODEL)
    job = _job(database_url, job_id)
    assert job.status == expected
    assert job.finished is not None
    assert job.processed == job.total == 3
    assert job.ok + job.needs_review + job.blank + job.error == 3


def test_chunk_for_an_unknown_job_is_refused(database_url):
    with (
        pytest.raises(writes.UnknownJobError, match="no-such-job"),
        db.session_scope(database_url) as session,
    ):
        writes.write_chunk(session, "no-such-job", [_ok("a")], MODEL)


def test_concurrent_chunks_of_one_job_count_each_other(database_url):
    """Two writers at once (two children, two machines): the counts still match the items."""
    keys = [f"k{i:04d}" for i in range(400)]
    job_id = _new_job(database_url, keys, chunk_size=20)
    chunks = [keys[i : i + 20] for i in range(0, len(keys), 20)]
    errors: list[BaseException] = []

    def write(part: list[list[str]]) -> None:
        try:
            for chunk in part:
                with db.session_scope(database_url) as session:
                    writes.write_chunk(session, job_id, [_ok(k) for k in chunk], MODEL)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(chunks[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    job = _job(database_url, job_id)
    assert (job.status, job.processed, job.ok) == ("done", 400, 400)
    assert _item_count(database_url, job_id) == 400


def test_counts_moved_by_each_chunk_match_a_recount_mid_job(database_url):
    """Two writers, redelivered chunks with other answers: the running counts stay exact."""
    keys = [f"k{i:04d}" for i in range(400)]
    job_id = _new_job(database_url, keys, chunk_size=20)
    statuses = ("ok", "needs_review", "blank", "error")
    chunks = [keys[i : i + 20] for i in range(0, 380, 20)]  # the last chunk stays pending
    errors: list[BaseException] = []

    def write(part: list[list[str]], shift: int) -> None:
        try:
            for n, chunk in enumerate(part):
                results = [
                    writes.ItemResult(key, statuses[(i + n + shift) % 4])
                    for i, key in enumerate(chunk)
                ]
                with db.session_scope(database_url) as session:
                    writes.write_chunk(session, job_id, results, MODEL)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    # The second pair of writers redelivers every chunk with different answers.
    threads = [threading.Thread(target=write, args=(chunks[i::2], i)) for i in range(2)]
    threads += [threading.Thread(target=write, args=(chunks[i::2], i + 1)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    job = _job(database_url, job_id)
    with db.session_scope(database_url) as session:
        recount = writes.refresh_job(session, job_id)
    assert recount.status == "running"
    stored = (job.total, job.processed, job.ok, job.needs_review, job.blank, job.error)
    assert stored == (
        recount.total,
        recount.processed,
        recount.ok,
        recount.needs_review,
        recount.blank,
        recount.error,
    )
    assert (job.total, job.processed) == (400, 380)


def test_a_job_written_by_many_model_versions_keeps_its_chunks(database_url):
    """Each rollout adds a version to the job; past the column's width the list ends in +more."""
    keys = [f"zip-{i}" for i in range(12)]
    job_id = _new_job(database_url, keys)
    for i, key in enumerate(keys):
        model = writes.ModelInfo(f"cnn-{i:012x}", "cnn", 0.99, f"{i:064x}")
        with db.session_scope(database_url) as session:
            writes.write_chunk(session, job_id, [_ok(key)], model)
    job = _job(database_url, job_id)
    assert (job.status, job.processed) == ("done", 12)
    assert len(job.model_version) <= db.MODEL_VERSION_LENGTH
    assert job.model_version.startswith("cnn-000000000000,cnn-000000000001,")
    assert job.model_version.endswith(",+more")


def test_item_result_carries_every_per_row_column_of_the_table():
    """One list of an item's columns, the table: the upsert's columns and ItemResult's fields
    agree with it, so a new output column is added in db.Item (and a migration) and here."""
    import dataclasses

    per_row = {c.name for c in db.Item.__table__.columns} - {"id", *writes.PER_CHUNK_COLUMNS}
    assert {f.name for f in dataclasses.fields(writes.ItemResult)} == per_row
    assert set(writes.RESULT_COLUMNS) == per_row - {"key"} | {"model_version", "processed"}


def test_review_thresholds_have_one_owner():
    """model/review.py owns the thresholds: a job takes its kind's unless one is chosen."""
    from digits.model import review

    assert Settings().threshold_for(db.DIGIT) == review.REVIEW_THRESHOLD
    assert Settings().threshold_for("zip") == review.FIELD_REVIEW_THRESHOLDS["zip"]
    assert Settings(review_threshold=0.95).threshold_for("zip") == 0.95  # chosen, not "default"
    assert review.decide("ok", 0.949, 0.95) == (review.ItemStatus.NEEDS_REVIEW, ["low_confidence"])
    assert review.decide("ok", 0.95, 0.95, ["not_zip"]).reasons == ["not_zip"]
    assert review.decide("blank", None, 0.95) == (review.ItemStatus.BLANK, [])
    # A confidence that is no number is never enough.
    nan = review.decide("ok", float("nan"), 0.5)
    assert nan == (review.ItemStatus.NEEDS_REVIEW, ["low_confidence"])
