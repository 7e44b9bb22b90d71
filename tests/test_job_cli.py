"""The job commands through click's CliRunner, against real Redis and SQLite.

Jobs here are processed by running the task in this process (no worker needed), except in the demo,
which starts its own redis-server and worker like a user's first run does.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import zipfile
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import select

from digits.cli.manage import cli
from digits.worker.store import db
from tests import bad_files
from tests.services import task_body


@pytest.fixture
def env(redis_server, sqlite_url) -> dict[str, str]:
    redis.Redis.from_url(redis_server.url).flushdb()
    return {"DIGITS_BROKER_URL": redis_server.url, "DIGITS_DATABASE_URL": sqlite_url}


def digits(env: dict[str, str], *args: str, ok: bool = True):
    result = CliRunner().invoke(cli, list(args), env=env)
    if ok:
        assert result.exit_code == 0, result.output
    return result


def _scans(mnist, tmp_path, count: int = 12):
    from digits.model.scanlike import scanlike_set

    folder = tmp_path / "scans"
    folder.mkdir()
    labels = {}
    for i, blob in enumerate(scanlike_set(mnist.x_test[:count], seed=0)):
        name = f"env-{i:03d}" + (".png" if blob.startswith(b"\x89PNG") else ".jpg")
        (folder / name).write_bytes(blob)
        labels[name] = int(mnist.y_test[i])
    Image.new("L", (30, 30), 255).save(folder / "blank.png")
    (folder / "torn.jpg").write_bytes(b"\xff\xd8\xff\xe0 torn")
    return folder, labels


def _process_queued(env: dict[str, str], monkeypatch) -> None:
    """Do a worker's job here: pop every queued message and run its task in this process."""
    monkeypatch.setenv("DIGITS_DATABASE_URL", env["DIGITS_DATABASE_URL"])
    from digits.worker.queue.tasks import classify_chunk

    client = redis.Redis.from_url(env["DIGITS_BROKER_URL"])
    for queue in ("interactive", "batch"):
        while (raw := client.rpop(queue)) is not None:
            _, kwargs, _ = task_body(raw)
            assert classify_chunk.apply(kwargs=kwargs).successful()


def test_help_lists_the_job_commands():
    output = CliRunner().invoke(cli, ["--help"]).output
    for name in ("enqueue", "status", "results", "review", "worker", "demo"):
        assert name in output


def test_enqueue_prints_the_job_and_status_shows_it_queued(env, mnist, tmp_path):
    folder, _ = _scans(mnist, tmp_path, count=3)
    job_id = digits(env, "enqueue", str(folder)).stdout.strip()
    status = json.loads(digits(env, "status", job_id, "--json").stdout)
    assert (status["job_id"], status["status"], status["total"], status["processed"]) == (
        job_id,
        "queued",
        5,
        0,
    )
    assert status["created"].endswith("+00:00")  # UTC on every database, SQLite included
    assert digits(env, "status", job_id).stdout.startswith(f"job {job_id}: queued, 0/5")


def test_enqueue_json_and_unreadable_paths(env, mnist, tmp_path):
    folder, _ = _scans(mnist, tmp_path, count=2)
    summary = json.loads(digits(env, "enqueue", str(folder), "--json", "--source", "post").stdout)
    assert summary["items"] == 4 and summary["queue"] == "interactive"
    missing = tmp_path / "nowhere"
    result = digits(env, "enqueue", str(folder), str(missing), ok=False)
    assert result.exit_code == 1
    assert f"{missing}: no such file or directory" in result.output
    assert "nothing was queued" in result.output
    with db.session_scope(env["DIGITS_DATABASE_URL"]) as session:
        assert len(session.scalars(select(db.Job)).all()) == 1  # only the first enqueue


def test_enqueue_refuses_duplicate_keys_naming_the_key(env, mnist, tmp_path):
    folder, _ = _scans(mnist, tmp_path, count=1)
    other = tmp_path / "other"
    other.mkdir()
    (other / "blank.png").write_bytes((folder / "blank.png").read_bytes())
    result = digits(env, "enqueue", str(folder), str(other), ok=False)
    assert result.exit_code == 1 and "duplicate key 'blank.png'" in result.output


def test_readers_never_create_or_migrate_a_database(env, tmp_path):
    """status, results, review and stats only read: a mistyped path is an error, not a new file."""
    missing = tmp_path / "typo" / "digits.sqlite3"
    wrong = {**env, "DIGITS_DATABASE_URL": f"sqlite:///{missing}"}
    for command in (["status", "job"], ["results", "job"], ["review"], ["stats"]):
        result = digits(wrong, *command, ok=False)
        assert result.exit_code == 1, command
        assert f"no database file at {missing} (run digits migrate" in result.output, command
    assert not missing.parent.exists()


def test_unknown_job_is_a_clear_error(env):
    for command in ("status", "results", "review"):
        result = digits(env, command, "no-such-job", ok=False)
        assert result.exit_code == 1 and "no job 'no-such-job'" in result.output, command


def test_results_and_review_match_the_database(env, mnist, tmp_path, model_path, monkeypatch):
    folder, labels = _scans(mnist, tmp_path, count=40)
    first = next(iter(labels))
    formula = "=SUM(1+1)" + Path(first).suffix  # a file name a spreadsheet would evaluate
    (folder / formula).write_bytes((folder / first).read_bytes())
    labels[formula] = labels[first]
    review_env = {**env, "DIGITS_REVIEW_THRESHOLD": "0.9999"}
    job_id = digits(review_env, "enqueue", str(folder)).stdout.strip()
    _process_queued(env, monkeypatch)
    with db.session_scope(env["DIGITS_DATABASE_URL"]) as session:
        items = list(session.scalars(select(db.Item).where(db.Item.job_id == job_id)))
    as_json = json.loads(digits(env, "results", job_id, "--format", "json").stdout)
    assert as_json == [
        {
            "key": i.key,
            "digit": i.digit,
            "confidence": i.confidence,
            "status": i.status,
            "error": i.error,
            "final": i.final,
            "source": i.source,
        }
        for i in sorted(items, key=lambda i: i.id)
    ]
    ok = [i for i in items if i.status == "ok"]
    assert ok and all((i.final, i.source) == (str(i.digit), "model") for i in ok)
    rows = list(csv.DictReader(io.StringIO(digits(env, "results", job_id).stdout)))
    as_text = {formula: "'" + formula}  # kept as text: the CSV's one change to what it shows
    assert [row["key"] for row in rows] == [
        as_text.get(item.key, item.key) for item in sorted(items, key=lambda i: i.id)
    ]
    by_key = {row["key"]: row for row in rows}
    assert by_key["blank.png"]["status"] == "blank"
    assert by_key["torn.jpg"]["status"] == "error" and by_key["torn.jpg"]["error"]
    under = {i.key for i in items if i.confidence is not None and i.confidence < 0.9999}
    review = list(csv.DictReader(io.StringIO(digits(env, "review", job_id).stdout)))
    assert {row["key"] for row in review} == {as_text.get(k, k) for k in under} and under
    assert all(row["job_id"] == job_id for row in review)
    status = json.loads(digits(env, "status", job_id, "--json").stdout)
    # Read, one error, and flagged items no person has settled yet: not done for the business.
    assert status["status"] == "reviewing" and status["awaiting_review"] == len(under)
    assert status["error"] == 1 and status["blank"] == 1
    assert status["ok"] + status["needs_review"] == len(labels)


def test_worker_refuses_unknown_queues(env):
    result = digits(env, "worker", "--queues", "nightly", ok=False)
    assert result.exit_code == 2 and "nightly" in result.output


def test_demo_runs_end_to_end_and_stops_what_it_started(tmp_path, mnist_dir, model_path):
    """No broker at DIGITS_BROKER_URL: the demo starts its own Redis and worker, then both stop."""
    from digits.cli.devtools.local import free_port, redis_answers

    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    env = {
        "DIGITS_BROKER_URL": dead_broker,
        "DIGITS_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "DIGITS_MNIST_DIR": str(mnist_dir),
    }
    result = digits(env, "demo", "--count", "40", "--rows", "5")
    started = [line for line in result.stderr.splitlines() if "started redis-server on" in line]
    assert len(started) == 1
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["key", "truth", "digit", "conf", "status"]
    assert lines[1].startswith("demo/00000_label7.")
    assert any(line.startswith("accuracy ") and "crops/s" in line for line in lines)
    assert not redis_answers(started[0].rsplit(" ", 1)[1])
    with db.session_scope(env["DIGITS_DATABASE_URL"]) as session:
        job = session.scalars(select(db.Job)).one()
        assert (job.source, job.total, job.processed) == ("demo", 40, 40)


def test_demo_runs_offline_without_mnist(tmp_path, model_path):
    """The README's first command on a machine with no network and no MNIST: `bash scripts/run.sh
    demo` draws its crops from the sample shipped in the package (model/shipped/mnist-sample.npz),
    and neither the CLI nor the worker prints TensorFlow's start-up noise (model/quiet.py)."""
    import os
    import subprocess

    from digits.cli.devtools.local import free_port

    root = Path(__file__).resolve().parent.parent
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    dead = f"http://127.0.0.1:{free_port()}"  # every download attempt is refused at once
    env = {
        **os.environ,
        "DIGITS_MNIST_DIR": str(empty),
        "DIGITS_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
        "DIGITS_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "DIGITS_MODEL": str(model_path),
        "KERAS_HOME": str(tmp_path / "keras-home"),
        **{name: dead for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")},
    }
    env.pop("no_proxy", None)
    env.pop("NO_PROXY", None)
    done = subprocess.run(
        ["bash", "scripts/run.sh", "demo", "--count", "30", "--rows", "3"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the demo uses the MNIST sample shipped with digits" in done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith("demo/00000_label7.")
    assert any(line.startswith("accuracy ") for line in lines)
    assert not (tmp_path / "keras-home" / "datasets").exists()  # nothing downloaded
    for noise in ("absl::InitializeLog", "cuda drivers", "cuInit", "oneDNN"):
        assert noise not in done.stderr, done.stderr[-3000:]
    with db.session_scope(env["DIGITS_DATABASE_URL"]) as session:
        job = session.scalars(select(db.Job)).one()
        assert (job.source, job.total, job.processed) == ("demo", 30, 30)


# --- issue 17: bad files in an enqueue, and keys a CSV must not break on ---------------------


def _job_items(env: dict[str, str], job_id: str) -> dict[str, db.Item]:
    with db.session_scope(env["DIGITS_DATABASE_URL"]) as session:
        items = session.scalars(select(db.Item).where(db.Item.job_id == job_id)).all()
    return {item.key: item for item in items}


def test_enqueue_goes_past_every_bad_file_and_lists_it(env, tmp_path):
    # The folder's own name is not UTF-8 either: it goes into the job's source.
    folder = Path(os.fsdecode(os.fsencode(tmp_path) + b"/scans-\xff"))
    folder.mkdir()
    (folder / "good.png").write_bytes(bad_files.png(1))
    bad_files.short_member_zip(folder / "short.zip", bad_files.png(2))
    bad_files.bad_utf8_name_zip(folder / "badname.zip")
    bad_files.future_version_zip(folder / "version.zip")
    bad_files.latin1_named(folder, bad_files.png(5))
    bad_files.symlink_loop(folder)
    device = bad_files.character_device(folder / "device.png")
    with bad_files.fifo(folder / "pipe.png") as watch:
        result = digits(env, "enqueue", os.fsdecode(folder), "--json")
    assert not watch.opened

    summary = json.loads(result.stdout)
    items = _job_items(env, summary["job_id"])
    assert {key: item.status for key, item in items.items()} == {
        "good.png": "pending",
        "short.zip/fine.png": "pending",
        "short.zip/short.png": "error",
        "badname.zip": "error",
        "version.zip": "error",
        bad_files.LATIN1_KEY: "pending",
    }
    assert "truncated" in items["short.zip/short.png"].error
    assert "not valid UTF-8" in items["badname.zip"].error
    assert "zip file version 9.9" in items["version.zip"].error
    shown = os.fsdecode(tmp_path) + "/scans-\\xff"
    for name, why in [
        ("loop-a", "symlink loop: not followed"),
        ("loop-self", "symlink loop: not followed"),
        ("pipe.png", "a FIFO (named pipe): not read"),
    ] + ([("device.png", "a character device: not read")] if device else []):
        assert f"skipped {shown}/{name}: {why}" in result.stderr, name
    with db.session_scope(env["DIGITS_DATABASE_URL"]) as session:
        assert session.get(db.Job, summary["job_id"]).source == f"enqueue {shown}"
    results = digits(env, "results", summary["job_id"], "--format", "json").stdout
    keys = [row["key"] for row in json.loads(results)]
    assert bad_files.LATIN1_KEY in keys


def _unguard(cell: str) -> str:
    """The value a guarded CSV cell stands for: one leading ' off every line that has one."""
    return re.sub(r"(^|(?<=[\r\n]))'", "", cell)


def test_csv_quotes_line_breaks_and_guards_every_line(env, tmp_path):
    folder = tmp_path / "hostile"
    folder.mkdir()
    names = [
        "ENV-0001.png",
        "zz\rENV-0001.png",  # a bare CR used to split this row in two
        "q\r=2+5.png",  # ... and leave a bare formula at the start of the second
        "a\n=1+1.png",
        "-5.png",
        "'-5.png",  # used to print exactly as -5.png did
        "@sum.png",
        "\tx.png",
        'say "hi", twice.png',
    ]
    for n, name in enumerate(names):
        (folder / name).write_bytes(bad_files.png(n))
    with zipfile.ZipFile(folder / "box.zip", "w") as archive:
        archive.writestr("m\r=1+2.png", bad_files.png(20))
        archive.writestr("+7.png", bad_files.png(21))
    job_id = digits(env, "enqueue", str(folder)).stdout.strip()
    keys = set(_job_items(env, job_id))
    assert keys == {*names, "box.zip/m\r=1+2.png", "box.zip/+7.png"}

    out = digits(env, "results", job_id, "--format", "csv").stdout
    header, *rows = list(csv.reader(io.StringIO(out, newline="")))
    assert header == ["key", "digit", "confidence", "status", "error", "final", "source"]
    assert len(rows) == len(keys)  # one row per item, whatever its key holds
    cells = [row[0] for row in rows]
    assert {_unguard(cell) for cell in cells} == keys  # every key comes back exactly
    assert "'-5.png" in cells and "''-5.png" in cells
    formula = ("=", "+", "-", "@", "\t")
    for cell in cells:  # no line of any cell starts a formula
        assert not any(line.startswith(formula) for line in re.split(r"[\r\n]", cell)), cell
    # Nor does any physical line of the file, for a reader that splits lines before fields.
    assert not any(line.startswith(formula) for line in re.split(r"\r\n|\r|\n", out))
    assert all(row[3] == "pending" for row in rows)


def test_jobs_lists_the_newest_first_and_filters_by_status(env, mnist, tmp_path, monkeypatch):
    folder, _ = _scans(mnist, tmp_path, count=3)
    first = digits(env, "enqueue", str(folder), "--source", "monday").stdout.strip()
    _process_queued(env, monkeypatch)
    second = digits(env, "enqueue", str(folder)).stdout.strip()
    digits(env, "cancel", second, "--why", "sent twice")
    third = digits(env, "enqueue", str(folder)).stdout.strip()

    listed = json.loads(digits(env, "jobs", "--json").stdout)
    assert [job["job_id"] for job in listed] == [third, second, first]
    assert [job["status"] for job in listed[:2]] == ["queued", "cancelled"]
    assert listed[2]["processed"] == listed[2]["total"] == 5 and listed[2]["source"] == "monday"
    cancelled = json.loads(digits(env, "jobs", "--status", "cancelled", "--json").stdout)
    assert [job["job_id"] for job in cancelled] == [second]
    newest = json.loads(digits(env, "jobs", "--limit", "1", "--json").stdout)
    assert [job["job_id"] for job in newest] == [third]

    table = digits(env, "jobs").stdout.splitlines()
    assert table[0].split() == [
        "job", "created", "(UTC)", "status", "kind", "read", "errors", "awaiting", "source",
    ]  # fmt: skip
    assert table[1].startswith(third) and table[2].split()[3:6] == ["cancelled", "digit", "5/5"]
    assert table[3].startswith(first) and table[3].endswith("monday")

    wrong = digits(env, "jobs", "--status", "finished", ok=False)
    assert wrong.exit_code == 2 and "choose one of queued, running" in wrong.output


def _python(script: str, **options):
    """``script`` in a fresh interpreter whose stdout is a pipe it buffers (this machine sets
    PYTHONUNBUFFERED, under which a lost flush would not show)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, **options
    )


@pytest.mark.parametrize(
    ("code", "status", "err"),
    [("None", 0, ""), ("3", 3, ""), ("'no such job'", 1, "no such job\n")],
)
def test_a_quick_exit_keeps_what_was_printed_and_the_status(code, status, err):
    """`digits enqueue`, `status` and `classify` end without the interpreter's teardown: what
    they printed, buffered or not, still arrives, the exit handlers run, the status is
    sys.exit's."""
    done = _python(
        "import atexit, sys; from digits.cli.manage import exit_now; "
        "atexit.register(lambda: print('handler ran', file=sys.stderr)); "
        f"print('queued', end=''); exit_now({code})"
    )
    assert (done.returncode, done.stdout) == (status, "queued")
    assert done.stderr == err + "handler ran\n"


def test_a_quick_exit_with_stdout_closed_is_still_an_exit():
    import subprocess
    import sys

    closed = subprocess.run(  # a cron job's `digits status JOB >&-`: sys.stdout is None
        f"{sys.executable} -c 'from digits.cli.manage import exit_now; exit_now(0)' >&-",
        shell=True,
        capture_output=True,
        text=True,
    )
    assert (closed.returncode, closed.stderr) == (0, "")


def test_a_quick_exit_leaves_a_sqlite_database_whole(tmp_path):
    """The pools close at exit, so SQLite folds its WAL into the file: a read-only reader of
    the file (engines.reading_url) and a copy of it see what was written."""
    url = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    done = _python(
        "from digits.worker.store import db; from digits.cli.manage import exit_now; "
        f"db.upgrade({url!r}); "
        f"s = db.session_factory({url!r})(); s.add(db.Operator(name='ann', password_hash='x')); "
        "s.commit(); s.close(); exit_now(0)"
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "jobs.sqlite3",
        "jobs.sqlite3.migrate-lock",
    ]


def test_enqueue_status_and_classify_end_by_the_quick_exit_and_others_do_not(monkeypatch):
    from digits.cli import manage

    ended: list[object] = []

    def recorded(code: object) -> None:
        ended.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(manage, "exit_now", recorded)
    for argv, quick in (
        (["digits", "status", "--help"], True),
        (["digits", "classify", "--help"], True),
        (["digits", "stats", "--help"], False),
    ):
        monkeypatch.setattr("sys.argv", argv)
        ended.clear()
        with pytest.raises(SystemExit):
            manage.main()
        assert ended == ([0] if quick else [])


def test_a_quick_exit_waits_for_a_thread_still_running():
    done = _python(
        "import threading, time; from digits.cli.manage import exit_now; "
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start(); "
        "exit_now(0)"
    )
    assert (done.returncode, done.stdout) == (0, "thread done\n")


def test_a_quick_exit_leaves_a_profiler_its_report(tmp_path):
    import pstats
    import subprocess
    import sys

    script = tmp_path / "quick.py"
    script.write_text("from digits.cli.manage import exit_now\nexit_now(0)\n")
    report = tmp_path / "profile.out"
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(report), str(script)])
    assert done.returncode == 0 and pstats.Stats(str(report)).total_calls > 0
