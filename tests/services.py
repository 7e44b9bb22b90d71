"""Real services for the tests (a pytest plugin): Redis, PostgreSQL, databases, Celery workers.

Nothing is mocked. A session starts one redis-server and one PostgreSQL cluster in temporary
directories on free loopback ports and stops them at the end; each test gets a fresh database; a
worker is a real ``celery -A worker.celery_app worker --pool prefork --concurrency 2`` subprocess.
Where the binaries are missing the tests that need them are skipped with the reason, except under
CI (``CI`` set), where a missing service is a failure.

Heavy imports (the worker package pulls in numpy and Celery) stay inside the fixtures, so a broken
worker module fails the tests that use it, not the whole suite's collection.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REDIS_BINARY = "/usr/bin/redis-server"
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
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
    from worker.local import local_redis

    with local_redis() as server:
        yield server


@dataclass
class PostgresServer:
    port: int
    directory: Path
    databases: list[str] = field(default_factory=list)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = f"digits_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return self.url(name)


def _pg_bindir() -> Path | None:
    candidates = sorted(
        glob.glob(PG_BIN_GLOB), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists() and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    return None


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; the tests do, so its tools run as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway cluster: initdb into a temporary directory, pg_ctl start on a free port."""
    bindir = _pg_bindir()
    if bindir is None:
        unavailable(f"PostgreSQL binaries (initdb, pg_ctl) not found under {PG_BIN_GLOB}")
    directory = Path(tempfile.mkdtemp(prefix="digits-pg-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres", "postgres")
        data = directory / "data"
        _run(
            _as_postgres(
                [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
                + ["-E", "UTF8", "--no-sync"]
            ),
            "initdb",
        )
        server = _start_postgres(bindir, data, directory)
        try:
            yield server
        finally:
            _run(
                _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                "pg_ctl stop",
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _start_postgres(bindir: Path, data: Path, directory: Path, attempts: int = 3) -> PostgresServer:
    from worker.local import free_port

    error = None
    for _ in range(attempts):
        port = free_port()
        # Durability buys nothing for a cluster deleted at the end of the session.
        options = (
            f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        argv = [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(directory / "postgres.log")]
        try:
            _run(_as_postgres([*argv, "-o", options, "-w", "-t", "60", "start"]), "pg_ctl start")
            return PostgresServer(port, directory)
        except RuntimeError as exc:  # port taken between probe and bind, usually
            error = exc
    log = directory / "postgres.log"
    raise RuntimeError(f"{error}\n{log.read_text() if log.exists() else ''}")


def make_database_url(backend: str, request: pytest.FixtureRequest, directory: Path) -> str:
    """A fresh empty database of the given backend (a SQLite file, or a new PostgreSQL database)."""
    if backend == "sqlite":
        return f"sqlite:///{directory / f'digits-{uuid.uuid4().hex[:8]}.sqlite3'}"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database per test, once on SQLite and once on PostgreSQL."""
    from worker import db

    url = make_database_url(request.param, request, tmp_path)
    db.upgrade(url)
    return url


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, migrated PostgreSQL database, for what only PostgreSQL can show."""
    from worker import db

    url = postgres_server.create_database()
    db.upgrade(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite database for tests that are about something else."""
    from worker import db

    url = f"sqlite:///{tmp_path / 'digits.sqlite3'}"
    db.upgrade(url)
    return url


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The model the worker will load ($DIGITS_MODEL, else the shipped one)."""
    from worker.config import Settings

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

    @property
    def database_url(self) -> str:
        return self.env["DIGITS_DATABASE_URL"]

    def submit(self, crops, source: str = "test", **overrides):
        """Submit a job to this worker; ``overrides`` replace settings (e.g. review_threshold)."""
        import dataclasses

        from worker import jobs

        settings = dataclasses.replace(self.settings, **overrides)
        return jobs.submit(crops, settings, source=source, app=self.app)

    def wait(self, job_id: str, timeout_s: float = 180.0):
        """The finished job's status; the timeout only stops a hung test, it measures nothing."""
        from worker.results import wait_for_job

        return wait_for_job(self.database_url, job_id, poll_s=0.2, timeout_s=timeout_s)

    def log(self) -> str:
        return self.process.log()


@contextlib.contextmanager
def running_worker(
    broker_base_url: str, database_url: str, log_path: Path, concurrency: int = 2
) -> Iterator[RunningWorker]:
    """Start ``celery -A worker.celery_app worker --pool prefork``, wait for its ping, stop it."""
    from worker import db
    from worker.celery_app import create_app
    from worker.config import Settings
    from worker.local import start_worker

    broker_url = f"{broker_base_url.rsplit('/', 1)[0]}/{next(_redis_databases)}"
    env = {"DIGITS_BROKER_URL": broker_url, "DIGITS_DATABASE_URL": database_url}
    settings = Settings.from_env({**os.environ, **env})
    db.upgrade(database_url)
    app = create_app(settings)
    process = start_worker(env, log_path, concurrency=concurrency)
    worker = RunningWorker(env, settings, app, process)
    _running_workers.append(worker)
    try:
        process.wait_ready(app, timeout_s=90)
        yield worker
    finally:
        _running_workers.remove(worker)
        process.stop()
        app.close()


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
