"""Inbox ingestion against the real stack: Redis, a prefork Celery worker, SQLite and PostgreSQL.

The module-scoped ``celery_worker`` runs once per database backend and its database is shared by
the tests below, so each test draws its scans from its own MNIST indices: equal bytes in two tests
would (rightly) be taken as the same file seen twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from digits.cli.manage import cli
from digits.worker.store import db
from tests import bad_files

# worker.tasks: one key=value line per chunk.
CHUNK_LINE = "chunk done job={job} chunk=0 items={items} seconds="


def _scan(mnist, index: int) -> tuple[bytes, int]:
    """A scan-like crop of MNIST test digit ``index`` and its label; its own seed, its own bytes."""
    from digits.model.scanlike import scanlike_set

    return scanlike_set(mnist.x_test[index : index + 1], seed=index)[0], int(mnist.y_test[index])


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _ingest(worker, *args: str, ok: bool = True, **limits: str):
    env = {"DIGITS_BROKER_URL": worker.env["DIGITS_BROKER_URL"], **limits}
    env["DIGITS_DATABASE_URL"] = worker.database_url
    result = CliRunner().invoke(cli, ["ingest", *map(str, args), "--json"], env=env)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _summary(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def _items(url: str, job_ids: list[str]) -> dict[str, db.Item]:
    with db.session_scope(url) as session:
        items = session.scalars(select(db.Item).where(db.Item.job_id.in_(job_ids))).all()
    return {item.key: item for item in items}


def _files(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink()
    }


def test_new_files_are_read_once_and_moved_with_a_summary(celery_worker, mnist, tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    labels = {}
    for i, name in enumerate(["a.png", "b.png", "day2/c.png"]):
        blob, labels[name] = _scan(mnist, i)
        _write(inbox / name, blob)
    with zipfile.ZipFile(_write(inbox / "batch.zip", b""), "w") as archive:
        for i in range(3, 7):
            blob, labels[f"batch.zip/m{i}.png"] = _scan(mnist, i)
            archive.writestr(f"m{i}.png", blob)

    summary = _summary(_ingest(celery_worker, inbox, "--done", done))

    assert summary["state"] == "finished"
    assert summary["files"] == {
        "ingested": 4,
        "duplicate": 0,
        "skipped": 0,
        "failed": 0,
        "not_moved": 0,
    }
    assert summary["items"]["total"] == summary["items_enqueued"] == 7
    assert summary["items"]["pending"] == 0
    assert summary["confidence"]["count"] == 7
    assert summary["review_rate"] == round(summary["items"]["needs_review"] / 7, 4)
    assert summary["duration_s"] > 0
    [job_id] = summary["jobs"]
    items = _items(celery_worker.database_url, [job_id])
    assert set(items) == set(labels)
    assert all(item.digit == labels[key] for key, item in items.items() if item.status == "ok")
    # Moved keeping their place; the summary beside them equals the one printed and stored.
    assert _files(inbox) == set()
    [written] = done.glob("ingest-*.json")
    assert json.loads(written.read_text()) == summary
    assert _files(done) == {"a.png", "b.png", "day2/c.png", "batch.zip", written.name}
    with db.session_scope(celery_worker.database_url) as session:
        run = session.get(db.IngestRun, summary["run_id"])
        assert (run.state, run.summary) == ("finished", summary)
        job = session.get(db.Job, job_id)
        assert job.queue == "batch"  # one chunk, yet nightly work stays off the interactive queue
        recorded = session.scalars(
            select(db.IngestedFile.path).where(db.IngestedFile.job_id == job_id)
        ).all()
    assert sorted(recorded) == ["a.png", "b.png", "batch.zip", "day2/c.png"]
    assert CHUNK_LINE.format(job=job_id, items=7) in celery_worker.log()


def test_a_file_seen_twice_is_processed_once(celery_worker, mnist, tmp_path):
    inbox = tmp_path / "inbox"
    first = {name: _scan(mnist, 10 + i)[0] for i, name in enumerate(["a.jpg", "b.jpg"])}
    for name, blob in first.items():
        _write(inbox / name, blob)
    _write(inbox / "a-again.jpg", first["a.jpg"])  # the same bytes twice in one run

    # No --done: the files stay where they are, and the database remembers them.
    one = _summary(_ingest(celery_worker, inbox))
    assert one["files"]["ingested"] == 2
    assert one["files"]["duplicate"] == 1
    assert one["items"]["total"] == 2
    assert _files(inbox) == {"a.jpg", "a-again.jpg", "b.jpg"}

    _write(inbox / "c.jpg", _scan(mnist, 12)[0])
    _write(inbox / "sub" / "b-renamed.jpg", first["b.jpg"])
    two = _summary(_ingest(celery_worker, inbox))
    assert two["files"]["ingested"] == 1
    assert two["files"]["duplicate"] == 4
    assert two["items"]["total"] == 1
    assert set(_items(celery_worker.database_url, two["jobs"])) == {"c.jpg"}

    # A third run with --done reads nothing and clears the inbox; same names do not collide.
    done = tmp_path / "done"
    _write(done / "a.jpg", b"an earlier night's a.jpg")
    three = _summary(_ingest(celery_worker, inbox, "--done", done))
    assert (three["files"]["ingested"], three["files"]["duplicate"]) == (0, 5)
    assert three["jobs"] == [] and three["items"]["total"] == 0
    assert three["state"] == "finished"
    assert _files(inbox) == set()
    assert len(list(done.rglob("*.jpg"))) == 6
    assert (done / "a.jpg").read_bytes() == b"an earlier night's a.jpg"
    with db.session_scope(celery_worker.database_url) as session:
        hashes = session.scalars(
            select(db.IngestedFile.sha256).where(
                db.IngestedFile.run_id.in_([one["run_id"], two["run_id"]])
            )
        ).all()
    assert len(hashes) == 3


def test_a_partly_broken_inbox_reads_what_it_can(celery_worker, mnist, tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    good, label = _scan(mnist, 20)
    _write(inbox / "good.png", good)
    _write(inbox / "torn.jpg", b"\xff\xd8\xff\xe0 torn in transit " + os.urandom(8))
    _write(inbox / "broken.zip", b"PK\x03\x04 not really an archive " + os.urandom(8))
    _write(inbox / "notes.txt", b"scanned by the night shift")
    _write(inbox / ".uploading.png", _scan(mnist, 21)[0])
    with zipfile.ZipFile(_write(inbox / "mixed.zip", b""), "w") as archive:
        archive.writestr("readme.txt", "not a crop")
        archive.writestr("m.png", _scan(mnist, 22)[0])
    with zipfile.ZipFile(_write(inbox / "empty.zip", b""), "w") as archive:
        archive.writestr("readme.txt", "no crops here")
    twice = zipfile.ZipFile(_write(inbox / "twice.zip", b""), "w")
    with pytest.warns(UserWarning, match="Duplicate name"), twice as archive:
        archive.writestr("x.png", _scan(mnist, 23)[0])
        archive.writestr("x.png", _scan(mnist, 24)[0])
    (inbox / "link.png").symlink_to(inbox / "good.png")

    summary = _summary(_ingest(celery_worker, inbox, "--done", done))

    assert summary["state"] == "finished"
    assert summary["files"] == {
        "ingested": 4,
        "duplicate": 0,
        "skipped": 3,
        "failed": 1,
        "not_moved": 0,
    }
    problems = {p["path"]: p["problem"] for p in summary["problems"]}
    assert problems == {
        "notes.txt": "skipped",
        "empty.zip": "skipped",
        "link.png": "skipped",
        "twice.zip": "failed",
    }
    items = _items(celery_worker.database_url, summary["jobs"])
    assert {key: item.status for key, item in items.items() if item.status == "error"} == {
        "torn.jpg": "error",
        "broken.zip": "error",
    }
    assert set(items) == {"good.png", "torn.jpg", "broken.zip", "mixed.zip/m.png"}
    assert items["good.png"].digit == label
    assert summary["items"]["error"] == 2
    assert summary["error_rate"] == 0.5
    # What could not be read stays for a person (or the next run) to deal with.
    assert _files(inbox) == {".uploading.png", "notes.txt", "empty.zip", "twice.zip", "link.png"}
    assert {"good.png", "torn.jpg", "broken.zip", "mixed.zip"} <= _files(done)


def test_an_archive_over_a_jobs_limits_fails_alone(celery_worker, mnist, tmp_path):
    inbox = tmp_path / "inbox"
    good, label = _scan(mnist, 60)
    _write(inbox / "good.png", good)
    with zipfile.ZipFile(_write(inbox / "many.zip", b""), "w") as archive:
        for i in range(61, 65):  # four crops where a job may hold three
            archive.writestr(f"m{i}.png", _scan(mnist, i)[0])
    with zipfile.ZipFile(_write(inbox / "bomb.zip", b""), "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(3):  # 3 x 800 kB of zeros: a few kB packed, over 2 MB unpacked
            archive.writestr(f"z{i}.png", b"\0" * 800_000)

    summary = _summary(
        _ingest(
            celery_worker,
            inbox,
            DIGITS_MAX_ITEMS_PER_JOB="3",
            DIGITS_MAX_ITEM_BYTES="1000000",
            DIGITS_MAX_JOB_BYTES="2000000",
        )
    )

    problems = {p["path"]: p["problem"] for p in summary["problems"]}
    assert problems == {"many.zip": "failed", "bomb.zip": "failed"}
    reasons = " ".join(p["why"] for p in summary["problems"])
    assert "more than 3 crops" in reasons and "more than 2000000 bytes" in reasons
    items = _items(celery_worker.database_url, summary["jobs"])
    assert set(items) == {"good.png"} and items["good.png"].digit == label


def test_no_wait_summarizes_what_was_enqueued(celery_worker, mnist, tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    for i in range(3):
        _write(inbox / f"n{i}.png", _scan(mnist, 30 + i)[0])

    summary = _summary(_ingest(celery_worker, inbox, "--done", done, "--no-wait"))

    assert summary["state"] in ("enqueued", "finished")  # a fast worker may already be done
    assert summary["items_enqueued"] == summary["items"]["total"] == 3
    assert summary["files"]["ingested"] == 3
    if summary["state"] == "enqueued":
        assert summary["review_rate"] is None and summary["finished"] is None
    assert len(list(done.glob("ingest-*.json"))) == 1
    celery_worker.wait(summary["jobs"][0])


def test_the_scheduled_task_ingests_through_a_real_worker(celery_worker, mnist, tmp_path):
    from digits.worker.queue.messages import INGEST_TASK

    inbox, done = tmp_path / "inbox", tmp_path / "done"
    for i in range(2):
        _write(inbox / f"s{i}.png", _scan(mnist, 40 + i)[0])
    _write(inbox / "torn.png", b"\x89PNG\r\n\x1a\n torn " + os.urandom(8))

    celery_worker.app.send_task(
        INGEST_TASK, kwargs={"inbox": str(inbox), "done": str(done), "poll_s": 0.5}
    )
    run = _finished_run(celery_worker.database_url, str(inbox.resolve()))

    summary = run.summary
    assert summary["files"]["ingested"] == 3
    assert summary["items"]["total"] == 3
    assert summary["items"]["error"] == 1
    assert summary["error_rate"] == round(1 / 3, 4)
    assert _files(inbox) == set()
    [written] = done.glob("ingest-*.json")
    assert json.loads(written.read_text()) == summary
    assert f"ingest run {run.id} finished: 3 items" in celery_worker.log()


def _finished_run(url: str, inbox: str, timeout_s: float = 120.0) -> db.IngestRun:
    """Poll for the run's stored summary; the timeout only stops a hung test."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.session_scope(url) as session:
            run = session.scalars(
                select(db.IngestRun).where(
                    db.IngestRun.inbox == inbox, db.IngestRun.state == "finished"
                )
            ).first()
        if run is not None:
            return run
        time.sleep(0.2)
    raise AssertionError(f"no finished ingest run for {inbox} after {timeout_s:g} s")


def test_two_runs_racing_over_a_file_record_it_once(database_url, mnist, tmp_path, monkeypatch):
    """The loser of the race (its lookup missed the winner's row) records nothing, sends nothing."""
    from digits.worker.config import Settings
    from digits.worker.submission import ingest

    inbox = tmp_path / "inbox"
    path = _write(inbox / "raced.png", _scan(mnist, 50)[0])
    with db.session_scope(database_url) as session:
        session.add(db.IngestRun(id="winner", inbox=str(inbox), summary={}))
        session.flush()
        session.add(
            db.IngestedFile(
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                path="raced.png",
                size=path.stat().st_size,
                items=1,
                run_id="winner",
            )
        )
    monkeypatch.setattr(ingest, "_known_hashes", lambda hashes, settings: {})
    settings = Settings.from_env({"DIGITS_DATABASE_URL": database_url})

    run = ingest.ingest(inbox, tmp_path / "done", settings)

    assert run.jobs == [] and run.ingested == []
    assert [name for name, _ in run.failed] == ["raced.png"]
    assert path.exists()
    with db.session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(db.Job)) == 0
        assert session.scalar(select(func.count()).select_from(db.IngestedFile)) == 1


def test_beat_schedule_is_built_from_the_environment(tmp_path):
    from celery.schedules import crontab

    from digits.worker.config import ConfigError, Settings
    from digits.worker.queue.beat import SCHEDULE_ENTRY
    from digits.worker.queue.celery_app import create_app
    from digits.worker.queue.messages import INGEST_TASK

    env = {
        "DIGITS_INGEST_SCHEDULE": "30 2 * * 1-5",
        "DIGITS_INGEST_INBOX": str(tmp_path / "inbox"),
        "DIGITS_INGEST_DONE": str(tmp_path / "done"),
        "DIGITS_TIMEZONE": "Europe/Paris",
    }
    app = create_app(Settings.from_env(env))
    entry = app.conf.beat_schedule[SCHEDULE_ENTRY]
    assert entry["task"] == INGEST_TASK
    assert entry["schedule"] == crontab(minute="30", hour="2", day_of_week="1-5")
    assert entry["kwargs"] == {
        "inbox": env["DIGITS_INGEST_INBOX"],
        "done": env["DIGITS_INGEST_DONE"],
    }
    assert app.conf.timezone == "Europe/Paris"
    app.loader.import_default_modules()  # what a worker does first: the included task modules
    assert INGEST_TASK in app.tasks
    app.close()

    unscheduled = create_app(Settings.from_env({}))
    assert unscheduled.conf.beat_schedule == {}
    unscheduled.close()

    bad = [
        ({**env, "DIGITS_INGEST_SCHEDULE": "30 2 * *"}, "five fields"),
        ({**env, "DIGITS_INGEST_SCHEDULE": "61 2 * * *"}, "61 > 59"),
        ({**env, "DIGITS_TIMEZONE": "Mars/Olympus"}, "DIGITS_TIMEZONE"),
    ]
    for variables, message in bad:
        with pytest.raises(ConfigError, match=message):
            create_app(Settings.from_env(variables))
    without_inbox = {k: v for k, v in env.items() if k != "DIGITS_INGEST_INBOX"}
    with pytest.raises(ConfigError, match="DIGITS_INGEST_INBOX"):
        Settings.from_env(without_inbox)


def test_worker_start_up_line_names_model_broker_and_database(celery_worker, model_path):
    from digits.model.card import read_card, version
    from digits.worker.config import mask_url

    line = (
        f"digits worker starting: model {version(read_card(model_path))} ({model_path}), "
        f"broker {mask_url(celery_worker.env['DIGITS_BROKER_URL'])}, "
        f"database {mask_url(celery_worker.database_url)}"
    )
    assert line in celery_worker.log()


def test_passwords_are_masked_in_logged_urls():
    from digits.worker.config import mask_url

    assert mask_url("redis://:s3cr@t@redis:6379/0") == "redis://:***@redis:6379/0"
    assert (
        mask_url("postgresql+psycopg://digits:p%40ss@db:5432/digits")
        == "postgresql+psycopg://digits:***@db:5432/digits"
    )
    assert mask_url("redis://localhost:6379/0") == "redis://localhost:6379/0"
    assert mask_url("sqlite:////var/lib/digits.sqlite3") == "sqlite:////var/lib/digits.sqlite3"


def test_ingest_refuses_a_missing_inbox(celery_worker, tmp_path):
    result = _ingest(celery_worker, tmp_path / "nowhere", ok=False)
    assert result.exit_code == 1
    assert "no such inbox directory" in result.output


# --- issue 17: one bad file never stops a run ------------------------------------------------


def test_one_bad_file_never_stops_a_run(celery_worker, mnist, tmp_path):
    inbox, done = tmp_path / "inbox", tmp_path / "done"
    (inbox / "day2").mkdir(parents=True)
    good, label = _scan(mnist, 70)
    _write(inbox / "good.png", good)
    bad_files.short_member_zip(inbox / "short.zip", _scan(mnist, 71)[0])
    bad_files.bad_utf8_name_zip(inbox / "badname.zip")
    bad_files.future_version_zip(inbox / "version.zip")
    bad_files.unknown_compression_zip(inbox / "method.zip", _scan(mnist, 72)[0])
    latin, latin_label = _scan(mnist, 73)
    latin_path = bad_files.latin1_named(inbox / "day2", latin)
    device = bad_files.character_device(inbox / "device.png")
    with bad_files.fifo(inbox / "pipe.png") as watch:
        summary = _summary(_ingest(celery_worker, inbox, "--done", done))
    assert not watch.opened, "the run opened a FIFO"

    assert summary["state"] == "finished"
    problems = {p["path"]: (p["problem"], p["why"]) for p in summary["problems"]}
    assert problems == {
        "pipe.png": ("skipped", "a FIFO (named pipe): not read"),
        **({"device.png": ("skipped", "a character device: not read")} if device else {}),
    }
    latin_key = f"day2/{bad_files.LATIN1_KEY}"
    items = _items(celery_worker.database_url, summary["jobs"])
    assert {key: item.status == "error" for key, item in items.items()} == {
        "good.png": False,
        "short.zip/fine.png": False,
        "short.zip/short.png": True,
        "badname.zip": True,
        "version.zip": True,
        "method.zip/fine.png": False,
        "method.zip/aes.png": True,
        latin_key: False,
    }
    assert "truncated" in items["short.zip/short.png"].error
    assert "not valid UTF-8" in items["badname.zip"].error
    assert "zip file version 9.9" in items["version.zip"].error
    assert "compression method is not supported" in items["method.zip/aes.png"].error
    for key, expected in (("good.png", label), (latin_key, latin_label)):
        if items[key].status == "ok":
            assert items[key].digit == expected, key
    # Moved under its own bytes; recorded, listed and stored under its key.
    assert (done / latin_path.relative_to(inbox)).read_bytes() == latin
    assert _files(inbox) == set()  # every regular file read and moved; the FIFO left alone
    assert (inbox / "pipe.png").exists()
    with db.session_scope(celery_worker.database_url) as session:
        recorded = session.scalars(
            select(db.IngestedFile.path).where(db.IngestedFile.run_id == summary["run_id"])
        ).all()
    assert latin_key in recorded and len(recorded) == 6


def test_the_scheduled_task_goes_past_bad_files(celery_worker, mnist, tmp_path):
    from digits.worker.queue.messages import INGEST_TASK

    inbox, done = tmp_path / "inbox", tmp_path / "done"
    _write(inbox / "s.png", _scan(mnist, 80)[0])
    bad_files.short_member_zip(inbox / "short.zip", _scan(mnist, 81)[0])
    bad_files.latin1_named(inbox, _scan(mnist, 82)[0])
    with bad_files.fifo(inbox / "pipe.png") as watch:
        celery_worker.app.send_task(
            INGEST_TASK, kwargs={"inbox": str(inbox), "done": str(done), "poll_s": 0.5}
        )
        run = _finished_run(celery_worker.database_url, str(inbox.resolve()))
    assert not watch.opened, "the run opened a FIFO"

    summary = run.summary
    assert summary["files"] == {
        "ingested": 3,
        "duplicate": 0,
        "skipped": 1,
        "failed": 0,
        "not_moved": 0,
    }
    assert summary["problems"] == [
        {"path": "pipe.png", "problem": "skipped", "why": "a FIFO (named pipe): not read"}
    ]
    items = _items(celery_worker.database_url, summary["jobs"])
    assert set(items) == {
        "s.png",
        "short.zip/fine.png",
        "short.zip/short.png",
        bad_files.LATIN1_KEY,
    }
    assert summary["items"]["error"] == 1 and items["short.zip/short.png"].status == "error"
