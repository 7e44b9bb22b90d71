"""A SQLite database someone may read but not write: a copy handed to an auditor, a backup mount.

Commands that only read (status, results, stats) work on it; commands that would write say why
they cannot, in one line. Before, every reader failed with "attempt to write a readonly database"
(setting WAL mode and creating the ``-shm`` index are writes), and ``enqueue`` into a read-only
folder ended in a PermissionError traceback.

The commands run as ``nobody`` when the tests run as root (root ignores file modes).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from digits.worker.config import Settings
from digits.worker.store import db
from digits.worker.submission import jobs

DIGITS = str(Path(sys.executable).with_name("digits"))
NOBODY = 65534


@pytest.fixture
def folder() -> Iterator[Path]:
    """A folder outside pytest's root-only tmp tree, so that ``nobody`` can reach it."""
    path = Path(tempfile.mkdtemp(prefix="digits-ro-"))
    path.chmod(0o755)
    yield path
    for p in [path, *path.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    shutil.rmtree(path)


def run_as_reader(*args: str, url: str) -> subprocess.CompletedProcess:
    command = [DIGITS, *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: cannot drop to a user files bind")
        command = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *command]
    env = {**os.environ, "DIGITS_DATABASE_URL": url, "DIGITS_BROKER_URL": "redis://127.0.0.1:1/0"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd="/")


def _database_with_a_job(folder: Path) -> tuple[str, str]:
    url = f"sqlite:///{folder / 'digits.sqlite3'}"
    db.upgrade(url)
    plan = jobs.plan_job([jobs.Crop(f"k{i}", b"x") for i in range(5)], Settings(database_url=url))
    with db.session_scope(url) as session:
        jobs.create_job(session, plan)
    db.dispose_all()  # the last connection checkpoints the -wal into the file and removes it
    return url, plan.job_id


def _make_read_only(folder: Path) -> None:
    for p in folder.iterdir():
        p.chmod(0o444)
    folder.chmod(0o555)


def test_readers_report_from_a_database_they_cannot_write(folder):
    url, job_id = _database_with_a_job(folder)
    _make_read_only(folder)

    status = run_as_reader("status", job_id, "--json", url=url)
    assert status.returncode == 0, status.stderr
    assert (json.loads(status.stdout)["total"], json.loads(status.stdout)["status"]) == (
        5,
        "queued",
    )
    results = run_as_reader("results", job_id, "--format", "csv", url=url)
    assert results.returncode == 0, results.stderr
    assert results.stdout.count("\n") == 6  # the header and the five items
    assert run_as_reader("stats", url=url).returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == [
        "digits.sqlite3",
        "digits.sqlite3.migrate-lock",
    ]


def test_a_reader_refuses_when_unmerged_changes_sit_in_the_wal(folder):
    url, job_id = _database_with_a_job(folder)
    holder = sqlite3.connect(folder / "digits.sqlite3")
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute("UPDATE jobs SET source = 'changed after the checkpoint'")
    holder.commit()  # committed into the -wal, which stays while this connection is open
    try:
        _make_read_only(folder)
        status = run_as_reader("status", job_id, url=url)
    finally:
        holder.close()
    assert status.returncode == 1
    assert "digits.sqlite3-wal holds changes not yet in it" in status.stderr
    assert "Traceback" not in status.stderr


def test_writing_into_a_read_only_folder_is_one_clear_line(folder, tmp_path):
    folder.chmod(0o555)
    scan = folder / "scan.png"
    url = f"sqlite:///{folder / 'new.sqlite3'}"
    enqueue = run_as_reader("enqueue", str(scan), url=url)
    assert enqueue.returncode == 1
    assert "cannot write" in enqueue.stderr and "must be writable" in enqueue.stderr
    assert "Traceback" not in enqueue.stderr
