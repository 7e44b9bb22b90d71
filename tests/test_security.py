"""Security settings on the real stack: a password- and TLS-protected Redis, masked secrets, limits.

The module's worker talks to a redis-server with ``requirepass`` on a TLS-only port, verifying its
certificate against a CA made for the test, and to PostgreSQL through a URL with a password: every
secret comes from the environment, and none may appear in a log line or on a command line.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError as BrokerError

from digits.worker import redact
from digits.worker.config import Settings
from digits.worker.queue.celery_app import create_app
from digits.worker.queue.messages import CLASSIFY_TASK
from digits.worker.store import db
from digits.worker.submission import jobs
from tests.services import (
    assert_nothing_lost,
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
    _wait_for_log(worker, "postgresql://u:***@db/x")
    log = worker.log()
    for secret in (REDIS_PASSWORD, DB_PASSWORD, "stray-pw-7741"):
        assert secret not in log
    assert "database postgresql+psycopg://postgres:***@127.0.0.1" in log  # the start-up line
    assert "Transport://:**@127.0.0.1" in log  # Celery's banner masks its own
    cmdline = Path(f"/proc/{worker.process.process.pid}/cmdline").read_bytes()
    assert REDIS_PASSWORD.encode() not in cmdline and DB_PASSWORD.encode() not in cmdline


def _wait_for_log(worker, text: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in worker.log():
        assert time.monotonic() < deadline, f"never logged: {text}"
        time.sleep(0.2)


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
