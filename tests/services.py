"""Real services for the tests (a pytest plugin): Redis, PostgreSQL, databases, Celery workers.

Nothing is mocked. A session starts one redis-server and one PostgreSQL cluster in temporary
directories on free loopback ports and stops them at the end; each test gets a fresh database; a
worker is a real ``celery -A digits.worker.queue.celery_app worker --pool prefork --concurrency 2`` subprocess.
Where the binaries are missing the tests that need them are skipped with the reason, except under
CI (``CI`` set), where a missing service is a failure.

Heavy imports (the worker package pulls in numpy and Celery) stay inside the fixtures, so a broken
worker module fails the tests that use it, not the whole suite's collection.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

if TYPE_CHECKING:
    from digits.cli.devtools.local import LocalPostgres

REDIS_BINARY = "/usr/bin/redis-server"
BACKENDS = ("sqlite", "postgresql")
# Each worker gets its own Redis database so two workers never consume each other's queues.
_redis_databases = itertools.count(1)
_running_workers: list[RunningWorker] = []


def unavailable(message: str) -> None:
    """Skip locally, fail under CI: CI installs every service, so a missing one is broken set-up."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_server() -> Iterator:
    """A redis-server on a free loopback port in a temporary directory."""
    if not (shutil.which("redis-server") or Path(REDIS_BINARY).exists()):
        unavailable("redis-server not installed (apt-get install redis-server)")
    from digits.cli.devtools.local import local_redis

    with local_redis() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """A throwaway cluster (worker.local.local_postgres) without fsync: nothing in it is kept."""
    from digits.cli.devtools.local import PG_BIN_GLOB, local_postgres, postgres_bindir

    if postgres_bindir() is None:
        unavailable(f"PostgreSQL binaries (initdb, pg_ctl) not found under {PG_BIN_GLOB}")
    with local_postgres(durable=False) as server:
        yield server


def make_database_url(backend: str, request: pytest.FixtureRequest, directory: Path) -> str:
    """A fresh empty database of the given backend (a SQLite file, or a new PostgreSQL database)."""
    if backend == "sqlite":
        return f"sqlite:///{directory / f'digits-{uuid.uuid4().hex[:8]}.sqlite3'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database per test, once on SQLite and once on PostgreSQL."""
    from digits.worker.store import db

    url = make_database_url(request.param, request, tmp_path)
    db.upgrade(url)
    return url


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres) -> str:
    """A fresh, migrated PostgreSQL database, for what only PostgreSQL can show."""
    from digits.worker.store import db

    url = postgres_server.create_database()
    db.upgrade(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database for tests that are about something else."""
    from digits.worker.store import db

    url = f"sqlite:///{tmp_path / 'digits.sqlite3'}"
    db.upgrade(url)
    return url


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The model the worker will load ($DIGITS_MODEL, else the shipped one)."""
    from digits.worker.config import Settings

    path = Settings.from_env().model_path
    if not path.is_file():
        unavailable(f"no model at {path}: train one (digits train) or set DIGITS_MODEL")
    return path


@dataclass
class RunningWorker:
    """A live worker subprocess and everything a test needs to talk to it."""

    env: dict[str, str]
    settings: object  # worker.config.Settings bound to this worker's broker and database
    app: object  # a Celery app for sending to this worker
    process: object  # worker.local.WorkerProcess
    concurrency: int = 2

    @property
    def database_url(self) -> str:
        return self.env["DIGITS_DATABASE_URL"]

    def submit(self, crops, source: str = "test", **overrides):
        """Submit a job to this worker; ``overrides`` replace settings (e.g. review_threshold)."""
        import dataclasses

        from digits.worker.submission import jobs

        settings = dataclasses.replace(self.settings, **overrides)
        return jobs.submit(crops, settings, source=source, app=self.app)

    def wait(self, job_id: str, timeout_s: float = 180.0):
        """The finished job's status; the timeout only stops a hung test, it measures nothing."""
        from digits.worker.store.results import wait_for_job

        return wait_for_job(self.database_url, job_id, poll_s=0.2, timeout_s=timeout_s)

    def log(self) -> str:
        """Every process this worker has been (restarts append to the same file)."""
        return self.process.log()

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> None:
        """Until ``text`` is in the log; the timeout only stops a hung test."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log():
            assert time.monotonic() < deadline, f"never logged: {text}\n{self.log()[-4000:]}"
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL to the whole process group: the parent and every child die at once, unwarned."""
        os.killpg(self.process.process.pid, signal.SIGKILL)
        self.process.process.wait(timeout=30)

    def terminate(self, timeout_s: float = 120.0) -> int:
        """SIGTERM to the parent only, as systemd or Docker stop it: a warm shutdown; its status."""
        self.process.process.send_signal(signal.SIGTERM)
        return self.process.process.wait(timeout=timeout_s)

    def restart(self) -> None:
        """A fresh worker with the same environment and log file, once the old one is gone."""
        from digits.cli.devtools.local import start_worker

        self.process.stop()
        self.process = start_worker(self.env, self.process.log_path, self.concurrency)
        self.process.wait_ready(self.app, timeout_s=90)  # running_worker stops this one at the end

    def active(self, task_id_prefix: str) -> list[dict]:
        """Tasks a child runs now whose id (``job:chunk``) starts with ``task_id_prefix``.

        Each is Celery's record of it: ``id``, ``worker_pid`` (the child), ``kwargs`` and so on.
        """
        import kombu.exceptions
        import redis

        hostname = self.process.hostname
        inspector = self.app.control.inspect(destination=[hostname], timeout=1.0)
        try:
            active = (inspector.active() or {}).get(hostname) or []
        except (redis.exceptions.ConnectionError, kombu.exceptions.OperationalError):
            return []  # a pooled connection from before a broker restart; the next poll reconnects
        return [task for task in active if task["id"].startswith(task_id_prefix)]

    def wait_until_running(self, task_id_prefix: str, timeout_s: float = 120.0) -> list[dict]:
        """Until a child runs a matching task; those tasks. The timeout only stops a hung test."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            tasks = self.active(task_id_prefix)
            if tasks:
                return tasks
            time.sleep(0.05)
        raise AssertionError(
            f"no task {task_id_prefix}* ever seen running; log:\n{self.log()[-5000:]}"
        )


def broker_database(url: str, number: int) -> str:
    """``url`` pointing at Redis database ``number``; keeps credentials and TLS query options."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{number}"))


@contextlib.contextmanager
def running_worker(
    broker_base_url: str,
    database_url: str,
    log_path: Path,
    concurrency: int = 2,
    env: dict[str, str] | None = None,
) -> Iterator[RunningWorker]:
    """Start ``celery -A digits.worker.queue.celery_app worker --pool prefork``, wait for its ping, stop it.

    ``env`` adds ``DIGITS_*`` settings (short retry delays, say) for this worker and its submitter.
    """
    from digits.cli.devtools.local import start_worker
    from digits.worker.config import Settings
    from digits.worker.queue.celery_app import create_app
    from digits.worker.store import db

    broker_url = broker_database(broker_base_url, next(_redis_databases))
    env = {**(env or {}), "DIGITS_BROKER_URL": broker_url, "DIGITS_DATABASE_URL": database_url}
    settings = Settings.from_env({**os.environ, **env})
    db.upgrade(database_url)
    app = create_app(settings)
    process = start_worker(env, log_path, concurrency=concurrency)
    worker = RunningWorker(env, settings, app, process, concurrency)
    _running_workers.append(worker)
    try:
        process.wait_ready(app, timeout_s=90)
        yield worker
    finally:
        _running_workers.remove(worker)
        worker.process.stop()  # the latest one: a test may have restarted it
        app.close()


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl command."""
    if not shutil.which("openssl"):
        unavailable("openssl not installed: needed to make a TLS certificate for redis-server")
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2"]
        + ["-subj", "/CN=digits test CA"],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key"]
        + ["-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf"],
    ]
    for step in steps:
        subprocess.run(["openssl", *step], cwd=directory, check=True, capture_output=True)
    return files


@dataclass
class RedisServer:
    """A redis-server that can be killed and started again on the same port, AOF on by default.

    ``appendfsync always``: every write is on disk before Redis answers it, so even SIGKILL loses
    no acknowledged message; that is the setting docs/reliability.md asks production to use.
    """

    directory: Path
    port: int
    password: str | None = None
    tls: TlsFiles | None = None
    appendonly: bool = True
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        query = f"?ssl_cert_reqs=required&ssl_ca_certs={self.tls.ca}" if self.tls else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0{query}"

    def start(self, timeout_s: float = 10.0) -> None:
        from digits.cli.devtools.local import redis_answers

        binary = shutil.which("redis-server") or REDIS_BINARY
        options = {
            "bind": "127.0.0.1",
            "dir": str(self.directory),
            "save": "",
            "appendonly": "yes" if self.appendonly else "no",
            "appendfsync": "always",
            "daemonize": "no",
            "logfile": str(self.directory / "redis.log"),
            "databases": "1024",  # each worker a database of its own (running_worker), as local_redis
        }
        if self.tls:
            options |= {"port": "0", "tls-port": str(self.port), "tls-auth-clients": "no"}
            options |= {"tls-cert-file": str(self.tls.cert), "tls-key-file": str(self.tls.key)}
            options["tls-ca-cert-file"] = str(self.tls.ca)
        else:
            options["port"] = str(self.port)
        if self.password:
            options["requirepass"] = self.password
        argv = [binary] + [part for name, value in options.items() for part in (f"--{name}", value)]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if redis_answers(self.url, timeout_s=0.5):
                return
            time.sleep(0.05)
        log = self.directory / "redis.log"
        raise RuntimeError(f"redis-server did not start: {log.read_text() if log.exists() else ''}")

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to write anything more."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


@contextlib.contextmanager
def redis_process(
    directory: Path, password: str | None = None, tls: TlsFiles | None = None
) -> Iterator[RedisServer]:
    """A restartable redis-server of the test's own (the session one is never restarted)."""
    if not (shutil.which("redis-server") or Path(REDIS_BINARY).exists()):
        unavailable("redis-server not installed (apt-get install redis-server)")
    from digits.cli.devtools.local import free_port

    directory.mkdir(parents=True, exist_ok=True)
    server = RedisServer(directory, free_port(), password=password, tls=tls)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module", params=BACKENDS)
def celery_worker(
    request: pytest.FixtureRequest, redis_server, model_path, tmp_path_factory
) -> Iterator[RunningWorker]:
    """One worker per backend for a whole test module (starting one costs seconds)."""
    directory = tmp_path_factory.mktemp(f"worker-{request.param}")
    url = make_database_url(request.param, request, directory)
    with running_worker(redis_server.url, url, directory / "worker.log") as worker:
        yield worker


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test that used a worker gets the worker's log in its report."""
    report = yield
    if report.failed and call.when in ("setup", "call"):
        for worker in _running_workers:
            if worker in getattr(item, "funcargs", {}).values():
                report.sections.append(("celery worker log", worker.log()[-20_000:]))
    return report


# --- what the fault, bad-input and security tests check after every scenario -------------------

SCAN_CROPS = 2000


@pytest.fixture(scope="session")
def scan_crops(mnist) -> list[tuple[str, bytes, int]]:
    """(key, scan-like crop, true label) for the first 2,000 MNIST test digits, made once."""
    from digits.model.scanlike import scanlike_set

    images, labels = mnist.x_test[:SCAN_CROPS], mnist.y_test[:SCAN_CROPS]
    crops = scanlike_set(images, seed=0)
    return [
        (f"scan/{i:05d}{_suffix(blob)}", blob, int(label))
        for i, (blob, label) in enumerate(zip(crops, labels, strict=True))
    ]


def _suffix(blob: bytes) -> str:
    return ".png" if blob.startswith(b"\x89PNG") else ".jpg"


def job_items(database_url: str, job_id: str) -> list:
    """Every item row of the job, in submission order."""
    from sqlalchemy import select

    from digits.worker.store import db

    with db.session_scope(database_url) as session:
        statement = select(db.Item).where(db.Item.job_id == job_id).order_by(db.Item.id)
        return list(session.scalars(statement))


def assert_nothing_lost(database_url: str, job_id: str, keys: list[str]) -> dict:
    """Each submitted key in exactly one row, none pending, the job's counts equal to its rows.

    Returns the items by key for the scenario's own checks. "Lost" in docs/reliability.md is a key
    missing here, a key written twice, or one still pending after the job ended.
    """
    import collections

    from digits.worker.store import db

    items = job_items(database_url, job_id)
    found = collections.Counter(item.key for item in items)
    assert found == collections.Counter(keys), "a key is missing, extra or written twice"
    pending = [item.key for item in items if item.status == "pending"]
    assert not pending, f"{len(pending)} items still pending, e.g. {pending[:3]}"
    by_status = collections.Counter(item.status for item in items)
    with db.session_scope(database_url) as session:
        job = session.get(db.Job, job_id)
        counts = (job.total, job.processed, job.ok, job.needs_review, job.blank, job.error)
    assert counts == (
        len(items),
        len(items),
        by_status["ok"],
        by_status["needs_review"],
        by_status["blank"],
        by_status["error"],
    )
    return {item.key: item for item in items}


def task_body(entry: bytes | str | dict) -> list:
    """A queued Redis entry's Celery body, ``[args, kwargs, embed]``: the JSON text as it is, or
    under a layer of base64 when the entry says so (entries queued before the body went as it
    is, and the hostile ones of ``bad_files.queue_entry``)."""
    import base64
    import json

    message = entry if isinstance(entry, dict) else json.loads(entry)
    body = message["body"]
    if message["properties"].get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)
