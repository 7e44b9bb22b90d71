"""Security settings on the real stack: a password- and TLS-protected Redis, masked secrets, limits.

The module's worker talks to a redis-server with ``requirepass`` on a TLS-only port, verifying its
certificate against a CA made for the test, and to PostgreSQL through a URL with a password: every
secret comes from the environment, and none may appear in a log line or on a command line.

Then what someone who can write to that Redis can do with messages (nothing to the results: they
are signed, a final result is never rewritten, the job row's threshold rules) and with one huge
entry (nothing to the worker's memory).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import stat
import uuid
from pathlib import Path

import pytest
import redis
from kombu.exceptions import OperationalError as BrokerError

from digits.worker import redact
from digits.worker.config import ConfigError, Settings
from digits.worker.queue import messages, signing
from digits.worker.queue.celery_app import create_app
from digits.worker.queue.messages import CLASSIFY_TASK
from digits.worker.store import db
from digits.worker.submission import jobs
from tests.bad_files import queue_entry
from tests.services import (
    assert_nothing_lost,
    job_items,
    make_tls_files,
    redis_process,
    running_worker,
)

REDIS_PASSWORD = "rEd1s-s3cret-8213"
DB_PASSWORD = "pg-s3cret-5521"
# A password nobody configured, inside a message: only the log filter can catch it.
STRAY_URL = "postgresql://u:stray-pw-7741@db/x"
MAX_CHUNK_BYTES = 300_000


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory, tls):
    with redis_process(
        tmp_path_factory.mktemp("secure-redis"), password=REDIS_PASSWORD, tls=tls
    ) as server:
        yield server


@pytest.fixture(scope="module")
def worker(secure_redis, postgres_server, model_path, tmp_path_factory):
    directory = tmp_path_factory.mktemp("secure-worker")
    # The test cluster trusts local connections, so the password is carried but never checked.
    url = postgres_server.create_database().replace("postgres@", f"postgres:{DB_PASSWORD}@")
    env = {"DIGITS_MAX_CHUNK_BYTES": str(MAX_CHUNK_BYTES), "DIGITS_MAX_ITEM_BYTES": "200000"}
    with running_worker(secure_redis.url, url, directory / "worker.log", env=env) as running:
        yield running


def test_a_job_runs_through_a_password_and_tls_protected_redis(worker, scan_crops, secure_redis):
    assert worker.env["DIGITS_BROKER_URL"].startswith(f"rediss://:{REDIS_PASSWORD}@")
    plan = worker.submit([jobs.Crop(key, blob) for key, blob, _ in scan_crops[:300]])
    worker.wait(plan.job_id)
    assert_nothing_lost(worker.database_url, plan.job_id, plan.keys)
    # redis-server saw TLS clients: its port speaks nothing else.
    assert "tls-port" in " ".join(secure_redis.process.args)


def _connect(url: str) -> None:
    app = create_app(Settings(broker_url=url))
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=0, timeout=5)
    finally:
        app.close()


def _replace_query(url: str, query: str) -> str:
    return url.split("?")[0] + query


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("wrong password", "invalid username-password pair"),
        ("plain redis:// to the TLS port", "Connection"),
        ("no CA: the certificate cannot be verified", "CERTIFICATE_VERIFY_FAILED"),
    ],
)
def test_the_broker_refuses_what_is_not_authenticated_and_verified(secure_redis, change, expected):
    url = secure_redis.url
    if change == "wrong password":
        url = url.replace(REDIS_PASSWORD, "not-the-password")
    elif change.startswith("plain"):
        url = _replace_query(url.replace("rediss://", "redis://"), "")
    else:  # rediss:// verifies by default (kombu's own default would be CERT_NONE)
        url = _replace_query(url, "")
    with pytest.raises(BrokerError) as refused:
        _connect(url)
    message = str(refused.value) + repr(refused.value.__cause__)
    assert expected in message
    assert REDIS_PASSWORD not in message


def test_no_secret_in_any_log_line_nor_on_the_command_line(worker, scan_crops):
    """The start-up line masks at its call site; a stray URL in a message only the filter masks."""
    app = worker.app
    app.send_task(
        CLASSIFY_TASK,
        kwargs={"job_id": STRAY_URL, "chunk": 0, "crops": [["k", "AAAA"]], "threshold": 0.5},
        queue="batch",
        task_id=f"forged-{uuid.uuid4()}",
    )
    worker.wait_for_log("postgresql://u:***@db/x")
    log = worker.log()
    for secret in (REDIS_PASSWORD, DB_PASSWORD, "stray-pw-7741"):
        assert secret not in log
    assert "database postgresql+psycopg://postgres:***@127.0.0.1" in log  # the start-up line
    assert "Transport://:**@127.0.0.1" in log  # Celery's banner masks its own
    cmdline = Path(f"/proc/{worker.process.process.pid}/cmdline").read_bytes()
    assert REDIS_PASSWORD.encode() not in cmdline and DB_PASSWORD.encode() not in cmdline


def test_a_message_over_the_byte_limit_makes_its_items_errors_unread(worker):
    """A submitter with a larger DIGITS_MAX_CHUNK_BYTES, or a forger: the worker's limit holds."""
    keys = [f"big-{i}.png" for i in range(3)]
    crops = [jobs.Crop(key, b"\x89PNG" + bytes(150_000)) for key in keys]
    settings = dataclasses.replace(worker.settings, max_chunk_bytes=1_000_000)
    plan = jobs.plan_job(crops, settings)
    assert len(plan.chunks) == 1
    with db.session_scope(worker.database_url) as session:
        jobs.create_job(session, plan)
    jobs.send_chunks(plan, settings, worker.app)
    worker.wait(plan.job_id)
    items = assert_nothing_lost(worker.database_url, plan.job_id, keys)
    for key in keys:
        assert items[key].status == "error"
        assert f"over this worker's limit of {MAX_CHUNK_BYTES} crop bytes" in items[key].error


# --- the filter itself, on every kind of line ----------------------------------------------------


@pytest.fixture
def captured():
    """A logger with one handler that has the filter, and the text it wrote."""
    import io

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"test-redact-{uuid.uuid4()}")
    logger.addHandler(handler)
    logger.propagate = False
    env = {"DIGITS_BROKER_URL": f"redis://:{REDIS_PASSWORD}@h:6379/0", "OTHER": "x"}
    redact.install(logger, env=env)
    yield logger, stream
    logger.removeHandler(handler)


def test_the_filter_masks_urls_dsn_passwords_and_configured_secrets(captured):
    logger, stream = captured
    logger.warning(
        "broker %s up", f"rediss://user:{REDIS_PASSWORD}@h:6380/0?ssl_cert_reqs=required"
    )
    logger.warning("dsn host=db password='%s' user=app", "two words")
    logger.warning("plain mention of %s in text", REDIS_PASSWORD)
    try:
        raise RuntimeError(f"could not reach postgresql://app:{DB_PASSWORD}@db:5432/digits")
    except RuntimeError:
        logger.exception("failed")
    text = stream.getvalue()
    assert "rediss://user:***@h:6380/0?ssl_cert_reqs=required" in text
    assert "password=***" in text
    assert "plain mention of *** in text" in text
    assert "postgresql://app:***@db:5432/digits" in text
    for secret in (REDIS_PASSWORD, DB_PASSWORD, "two words"):
        assert secret not in text


# --- messages: signed, never rewriting what is final, judged by the job row ----------------------


def _send(worker, kwargs: dict) -> None:
    """Straight into the worker's Redis queue, as anyone holding the broker's password can."""
    worker.app.send_task(CLASSIFY_TASK, kwargs=kwargs, queue="batch", task_id=str(uuid.uuid4()))


def _encoded(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def test_a_message_pushed_into_redis_cannot_rewrite_a_finished_job(worker, scan_crops):
    """The issue's case: a hand-made chunk naming a finished job, one of its keys and an image of
    another digit, with threshold 0. Unsigned, wrongly signed, or signed by a key holder (a
    replay): each is refused and logged, and the job and its items stay as they were."""
    plan = worker.submit([jobs.Crop(key, blob) for key, blob, _ in scan_crops[:3]])
    worker.wait(plan.job_id)
    before = {item.key: (item.digit, item.status, item.confidence) for item in _items(worker, plan)}
    job = _job_row(worker, plan.job_id)
    target = plan.keys[0]
    other = next(blob for _, blob, label in scan_crops[100:] if label != before[target][0])
    crops = [[target, _encoded(other)]]
    forged = {"job_id": plan.job_id, "crops": crops, "threshold": 0.0}
    wrong_key = b"not-the-key-of-this-deployment-0123456789"
    _send(worker, forged | {"chunk": 90})
    _send(
        worker,
        forged | {"chunk": 91, "signature": signing.sign(wrong_key, plan.job_id, 91, crops, None)},
    )
    _send(worker, messages.ChunkMessage(plan.job_id, 92, crops, 0.0).kwargs())
    worker.wait_for_log(f"job {plan.job_id} chunk 90: message")
    worker.wait_for_log(f"job {plan.job_id} chunk 91: message")
    worker.wait_for_log(f"job {plan.job_id} chunk 92: results for 1 items refused")
    log = worker.log()
    assert "neither read nor written: unsigned" in log
    assert "neither read nor written: wrong signature" in log
    assert f"{target!r}: the item is final already ({before[target][1]})" in log
    after = {item.key: (item.digit, item.status, item.confidence) for item in _items(worker, plan)}
    assert after == before
    again = _job_row(worker, plan.job_id)
    assert (again.status, again.finished, again.updated, again.ok, again.needs_review) == (
        job.status,
        job.finished,
        job.updated,
        job.ok,
        job.needs_review,
    )


def test_the_review_threshold_is_the_job_rows_not_the_messages(worker, scan_crops):
    """A job stored with a strict threshold, its chunk sent signed saying 0.0: judged by 0.9999."""
    crops = [jobs.Crop(key, blob) for key, blob, _ in scan_crops[200:260]]
    plan = jobs.plan_job(crops, dataclasses.replace(worker.settings, review_threshold=0.9999))
    with db.session_scope(worker.database_url) as session:
        jobs.create_job(session, plan)
    chunk = plan.chunks[0]
    _send(worker, messages.ChunkMessage.of(plan.job_id, chunk.index, chunk.crops, 0.0).kwargs())
    worker.wait(plan.job_id)
    items = assert_nothing_lost(worker.database_url, plan.job_id, plan.keys)
    read = [item for item in items.values() if item.status in ("ok", "needs_review")]
    under = {item.key for item in read if item.confidence < 0.9999}
    assert under, "no confidence under 0.9999: the test shows nothing"
    assert {item.key for item in read if item.status == "needs_review"} == under


def test_a_worker_without_the_senders_key_reads_nothing(scan_crops, secure_redis, tmp_path):
    """Submitter and worker with different keys (DIGITS_MESSAGE_KEY): every chunk is dropped as
    wrongly signed before the database or the model, and the items stay pending."""
    url = f"sqlite:///{tmp_path / 'digits.sqlite3'}"
    env = {"DIGITS_MESSAGE_KEY": "k" * 40}
    with running_worker(secure_redis.url, url, tmp_path / "worker.log", env=env) as running:
        plan = jobs.plan_job(
            [jobs.Crop(key, blob) for key, blob, _ in scan_crops[:2]], running.settings
        )
        with db.session_scope(url) as session:
            jobs.create_job(session, plan)
        chunk = plan.chunks[0]
        message = messages.ChunkMessage.of(plan.job_id, chunk.index, chunk.crops, 0.95)
        _send(running, message.kwargs(b"m" * 40))
        running.wait_for_log(f"job {plan.job_id} chunk 0: message")
        assert "neither read nor written: wrong signature" in running.log()
        _send(running, message.kwargs(b"k" * 40))  # the worker's key: read
        running.wait(plan.job_id)
        assert "k" * 40 not in running.log()
    assert_nothing_lost(url, plan.job_id, plan.keys)


def _items(worker, plan) -> list:
    return job_items(worker.database_url, plan.job_id)


def _job_row(worker, job_id: str) -> db.Job:
    with db.session_scope(worker.database_url) as session:
        return session.get(db.Job, job_id)


# --- an oversized entry: refused by its length, the parent's memory bounded ----------------------

HUGE_ENTRY = 64 * 1024 * 1024


def _memory_kb(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in kB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def _huge_envelope(size: int) -> bytes:
    """A well-formed chunk message of about ``size`` bytes as a queue entry: one crop of zeros."""
    crop = "A" * (size * 3 // 4 - 4096)
    body = json.dumps(
        [[], {"job_id": str(uuid.uuid4()), "chunk": 0, "crops": [["huge.png", crop]]}, {}]
    ).encode()
    return queue_entry(body, "application/json").encode()


def test_an_oversized_entry_is_refused_before_decoding_and_memory_stays_bounded(worker, scan_crops):
    """64 MB pushed into the queue of a worker whose chunks carry 300 kB: dropped by its length.

    Before, decoding it (text, JSON, base64, the arguments, the copy for a child) raised the
    parent's peak by 320 MB and left it 95 MB larger for good. Now the parent only reads the
    reply: its peak rises by about three times the entry (redis-py's read buffer and the reply,
    197 MB) and all of it is given back (1 MB kept).
    """
    pid = worker.process.process.pid
    entry = _huge_envelope(HUGE_ENTRY)
    assert len(entry) > messages.entry_limit(MAX_CHUNK_BYTES) * 3
    start = _memory_kb(pid)
    client = redis.Redis.from_url(worker.env["DIGITS_BROKER_URL"])
    try:
        client.lpush("batch", entry)
    finally:
        client.close()
    del entry
    worker.wait_for_log("chunk message can take (DIGITS_MAX_CHUNK_BYTES); not decoded")
    plan = worker.submit([jobs.Crop(key, blob) for key, blob, _ in scan_crops[:4]])
    worker.wait(plan.job_id)  # and it still works
    end = _memory_kb(pid)
    peak_growth_mb = (end["VmHWM"] - max(start["VmHWM"], start["VmRSS"])) / 1024
    kept_mb = (end["VmRSS"] - start["VmRSS"]) / 1024
    assert peak_growth_mb < 4 * HUGE_ENTRY / 2**20, (start, end)
    assert kept_mb < 24, (start, end)


# --- the signature and its key, without services -------------------------------------------------


def test_the_signature_covers_job_chunk_crops_and_kind():
    key = b"s" * 32
    crops = [["a.png", "AAAA"], ["b.png", "BBBB"]]
    signature = signing.sign(key, "job-1", 0, crops, None)
    assert (
        signing.problem(key, "job-1", "0", crops, None, signature) is None
    )  # 0 and "0": one chunk
    changed = [
        ("job-2", 0, crops, None),
        ("job-1", 1, crops, None),
        ("job-1", 0, [["a.png", "BBBB"], ["b.png", "AAAA"]], None),
        ("job-1", 0, [["a.pngAAAA", ""], ["b.png", "BBBB"]], None),  # a key moved into an image
        ("job-1", 0, crops[:1], None),
        ("job-1", 0, crops, "zip"),
        ("job-1", 0, crops, ""),
    ]
    for job_id, chunk, other, kind in changed:
        assert signing.problem(key, job_id, chunk, other, kind, signature), (job_id, chunk, other)
    assert signing.problem(b"t" * 32, "job-1", 0, crops, None, signature).startswith("wrong")
    assert signing.problem(key, "job-1", 0, crops, None, None) == "unsigned"
    assert signing.problem(key, "job-1", 0, crops, None, 5) == "the signature is not a string"
    assert signing.problem(key, "job-1", 0, crops, None, "\udcff")  # no crash on odd text


def test_signatures_stay_what_workers_of_earlier_releases_compute():
    """Chunks queued by one release are read by the next: the digest of a fixed body is fixed
    (these were computed by the release before the signing was rewritten, session 26)."""
    key = b"k" * 32
    crops = [["env-1.png", "iVBORw0KGgo="], ["caf\u00e9/\ud800.png", ""]]
    assert signing.sign(key, "0f1e2d3c-job", 7, crops, None) == (
        "4ba0d5a55ee34c84ce20747757770341a9992f95aa9f31ff03e184748ec77072"
    )
    assert signing.sign(key, "0f1e2d3c-job", "7.3", [["a", "QQ=="]], "amount") == (
        "14152a14a9414b8ca59d217165a61098fc31b35ca9b5b138a41f302f2c31031f"
    )


def test_without_a_key_one_is_made_once_and_shared(tmp_path):
    path = tmp_path / "var" / "message.key"
    settings = Settings(message_key_file=path)
    key = signing.message_key(settings)
    assert len(key) == 64 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert signing.message_key(Settings(message_key_file=path)) == key
    signing._keys.clear()  # another process: reads the same file
    assert signing.message_key(Settings(message_key_file=path)) == key
    assert list(path.parent.iterdir()) == [path]  # no draft left behind
    assert signing.message_key(Settings(message_key="e" * 32, message_key_file=path)) == b"e" * 32


def test_a_short_or_unmakeable_key_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="DIGITS_MESSAGE_KEY: 5 characters, at least 32"):
        Settings.from_env({"DIGITS_MESSAGE_KEY": "short"})
    placeholder = "change-me-message-key-at-least-32-characters"  # .env.example's
    with pytest.raises(ConfigError, match="still .env.example's placeholder"):
        Settings.from_env({"DIGITS_MESSAGE_KEY": placeholder})
    short = tmp_path / "short.key"
    short.write_text("abc\n")
    with pytest.raises(ConfigError, match="3 characters, at least 32"):
        signing.message_key(Settings(message_key_file=short))
    blocked = tmp_path / "file"
    blocked.write_text("")
    for path in (
        blocked / "message.key",
        blocked / "var" / "message.key",
    ):  # unreadable, unmakeable
        with pytest.raises(ConfigError, match="set DIGITS_MESSAGE_KEY"):
            signing.message_key(Settings(message_key_file=path))
    assert "x" * 40 not in repr(Settings(message_key="x" * 40))


def test_the_key_is_masked_in_logs():
    assert redact.env_secrets({"DIGITS_MESSAGE_KEY": "q" * 40}) == ["q" * 40]
