"""``digits stats`` and ``digits migrate`` against a known database, on SQLite and PostgreSQL.

The database is written row by row with fixed times, so every count, rate and throughput below is
worked out by hand in the comments rather than taken from the code under test.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect

from digits.cli.manage import cli
from digits.worker.store import db
from digits.worker.store.stats import busy_seconds, confidence_distribution, parse_since, statistics

T0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
OLD, NEW = "cnn-aaaaaaaaaaaa", "cnn-bbbbbbbbbbbb"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# (job, status, created, end, [(item status, model, processed at)]); end is finished, or the last
# update of a job still running.
JOBS = [
    ("j1", "partial", 0, 100, [
        ("ok", OLD, 50), ("ok", OLD, 50), ("needs_review", OLD, 50), ("blank", OLD, 50),
        ("error", None, 10),  # rejected at submission: no model wrote it
    ]),
    ("j2", "partial", 60, 160, [("ok", OLD, 150), ("error", OLD, 150), ("ok", OLD, 150)]),
    ("j3", "done", 1000, 1010, [("ok", NEW, 1005), ("needs_review", NEW, 1005)]),
    ("j4", "running", 2000, 2005, [("ok", NEW, 2005), ("pending", None, None)]),
]  # fmt: skip


@pytest.fixture
def known(database_url: str) -> str:
    with db.session_scope(database_url) as session:
        for job_id, status, created, end, items in JOBS:
            finished = at(end) if status != "running" else None
            session.add(
                db.Job(
                    id=job_id,
                    created=at(created),
                    updated=at(end),
                    finished=finished,
                    status=status,
                    review_threshold=0.95,
                    chunks=1,
                    total=len(items),
                )
            )
            session.flush()
            for n, (item_status, model, processed) in enumerate(items):
                session.add(
                    db.Item(
                        job_id=job_id,
                        key=f"{job_id}-{n}",
                        status=item_status,
                        model_version=model,
                        confidence=0.99 if item_status == "ok" else None,
                        processed=None if processed is None else at(processed),
                    )
                )
    return database_url


def _by_model(report: dict) -> dict:
    return {row["model_version"]: row for row in report["models"]}


def test_counts_rates_and_throughput_per_model_version(known):
    with db.session_scope(known) as session:
        report = statistics(session)
    models = _by_model(report)
    old, new, none = models[OLD], models[NEW], models[None]
    assert (old["items"], old["ok"], old["needs_review"], old["blank"], old["error"]) == (
        7,
        4,
        1,
        1,
        1,
    )
    assert (old["review_rate"], old["error_rate"]) == (round(1 / 7, 4), round(1 / 7, 4))
    # j1 [0, 100] and j2 [60, 160] overlap: 160 busy seconds, not 200.
    assert old["busy_s"] == 160 and old["items_per_s"] == round(7 / 160, 3)
    assert old["jobs"] == 2
    # j3 [1000, 1010] and the running j4 up to its last write [2000, 2005]: 15 s.
    assert (new["items"], new["ok"], new["needs_review"], new["busy_s"]) == (3, 2, 1, 15)
    assert new["items_per_s"] == 0.2
    assert new["first"] == at(1005).isoformat() and new["last"] == at(2005).isoformat()
    assert (none["items"], none["error"], none["error_rate"], none["busy_s"]) == (1, 1, 1.0, 100)
    total = report["total"]
    assert (total["items"], total["ok"], total["needs_review"], total["error"]) == (11, 6, 2, 2)
    assert total["busy_s"] == 175 and total["jobs"] == 4
    assert total["items_per_s"] == round(11 / 175, 3)
    assert report["jobs"] == {
        "total": 4,
        "by_status": {"partial": 2, "done": 1, "running": 1},
    }
    assert report["pending_items"] == 1
    assert [row["model_version"] for row in report["models"]] == [OLD, NEW, None]


def test_since_counts_items_written_from_that_moment(known):
    with db.session_scope(known) as session:
        report = statistics(session, since=at(1005))
    # Inclusive: j3's two items written at exactly 1005 count; j3's busy time is clipped to 5 s.
    assert set(_by_model(report)) == {NEW}
    new = _by_model(report)[NEW]
    assert (new["items"], new["busy_s"], new["items_per_s"]) == (3, 10, 0.3)
    assert report["jobs"]["total"] == 1  # only j4 was submitted since
    assert report["pending_items"] == 1


def test_stats_command_prints_the_same_figures(known):
    env = {"DIGITS_DATABASE_URL": known}
    result = CliRunner().invoke(cli, ["stats", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["total"]["items"], report["total"]["busy_s"]) == (11, 175)

    result = CliRunner().invoke(cli, ["stats", "--since", "2026-11-20T02:16:45"], env=env)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("since 2026-11-20T02:16:45+00:00: 1 jobs (running 1), 1 items")
    assert lines[2].split() == [NEW, "3", "2", "1", "0", "0", "33.33%", "0.00%", "0.3", "0", "-"]
    assert lines[3].split()[:2] == ["all", "3"]

    result = CliRunner().invoke(cli, ["stats", "--since", "last tuesday"], env=env)
    assert result.exit_code == 2
    assert "not a date" in result.output


def test_parse_since_and_the_helpers():
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_since("12h", now) == datetime(2026, 11, 24, 0, 0, tzinfo=UTC)
    assert parse_since("2w", now) == datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
    assert parse_since("2026-11-20") == datetime(2026, 11, 20, tzinfo=UTC)
    assert parse_since("2026-11-20T03:00+01:00") == datetime(2026, 11, 20, 2, tzinfo=UTC)
    assert busy_seconds([(at(0), at(10)), (at(5), at(20)), (at(30), at(31))]) == 21
    assert busy_seconds([]) == 0
    spread = confidence_distribution([0.3, 0.85, 0.97, 0.995, 1.0])
    assert spread["bins"] == {
        "0.00-0.50": 1,
        "0.50-0.80": 0,
        "0.80-0.90": 1,
        "0.90-0.95": 0,
        "0.95-0.99": 1,
        "0.99-1.00": 2,
    }
    assert (spread["count"], spread["p50"], spread["p05"]) == (5, 0.97, 0.3)
    assert confidence_distribution([])["p50"] is None


def test_migrate_creates_the_schema_and_masks_the_password(tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    result = CliRunner().invoke(cli, ["migrate"], env={"DIGITS_DATABASE_URL": url})
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"database {url} is at revision {db.head_revision()}"
    tables = set(inspect(db.engine_for(url)).get_table_names())
    assert {"jobs", "items", "models", "ingest_runs", "ingested_files"} <= tables

    # Nothing listens on port 1: the error names the database, never its password.
    unreachable = "postgresql+psycopg://digits:hunter2secret@127.0.0.1:1/digits"
    result = CliRunner().invoke(cli, ["migrate"], env={"DIGITS_DATABASE_URL": unreachable})
    assert result.exit_code == 1
    assert "postgresql+psycopg://digits:***@127.0.0.1:1/digits" in result.output
    assert "hunter2secret" not in result.output
