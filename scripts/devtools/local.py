"""Starting a throwaway Redis and a real Celery worker on this machine (``digits demo``, the tests).

Both run as child processes in their own process group, so stopping them ends exactly what was
started: the worker's parent and its prefork children, the one redis-server, nothing else.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from digits.worker.queue.celery_app import worker_command
from digits.worker.queue.messages import QUEUES

ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = "redis-server"


class ServiceError(RuntimeError):
    """A local service did not start; the message carries the tail of its log."""


def free_port() -> int:
    """A port nobody listens on right now (the caller retries if it is taken before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.exceptions.RedisError, OSError):
        return False
    finally:
        client.close()


@dataclass
class LocalRedis:
    process: subprocess.Popen
    port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        _stop_group(self.process, timeout_s=10)


@contextlib.contextmanager
def local_redis(directory: Path | None = None) -> Iterator[LocalRedis]:
    """A redis-server on a free loopback port with no persistence, stopped on exit."""
    binary = shutil.which(REDIS_SERVER) or "/usr/bin/redis-server"
    if not Path(binary).exists():
        raise ServiceError("redis-server not found: install it (apt-get install redis-server)")
    with contextlib.ExitStack() as stack:
        if directory is None:
            temporary = tempfile.TemporaryDirectory(prefix="digits-redis-")
            directory = Path(stack.enter_context(temporary))
        directory.mkdir(parents=True, exist_ok=True)
        server = _start_redis(binary, directory)
        try:
            yield server
        finally:
            server.stop()


def _start_redis(binary: str, directory: Path, attempts: int = 3) -> LocalRedis:
    log = directory / "redis.log"
    for _ in range(attempts):
        port = free_port()
        options = {
            "port": str(port),
            "bind": "127.0.0.1",
            "dir": str(directory),
            "save": "",  # no persistence: a demo or test broker starts empty
            "appendonly": "no",
            "daemonize": "no",
            "protected-mode": "yes",
            "logfile": str(log),
            # The tests give each worker a database of its own on one server; Redis's default 16
            # ran out once the suite started more than 15 workers.
            "databases": "1024",
        }
        argv = [binary] + [part for name, value in options.items() for part in (f"--{name}", value)]
        process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = LocalRedis(process, port, directory)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            if redis_answers(server.url, timeout_s=0.5):
                return server
            time.sleep(0.05)
        server.stop()  # port taken between probe and bind, usually: try another
    raise ServiceError(f"redis-server did not start; its log:\n{_tail(log)}")


@dataclass
class WorkerProcess:
    """A ``celery -A digits.worker.queue.celery_app worker`` subprocess with its own log file."""

    process: subprocess.Popen
    hostname: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, app, timeout_s: float = 60.0) -> None:
        """Until the worker answers a ping, or raise with its log if it died or never answered."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServiceError(
                    f"worker exited with status {self.process.returncode}; its log:\n"
                    f"{_tail(self.log_path)}"
                )
            if _answers_ping(app, self.hostname):
                return
        raise ServiceError(
            f"worker not ready after {timeout_s:g} s; its log:\n{_tail(self.log_path)}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        """Warm shutdown (running chunks finish), then SIGKILL to the group if it hangs."""
        _stop_group(self.process, timeout_s=timeout_s)


def _answers_ping(app, hostname: str) -> bool:
    """A ping through a pooled connection that a broker restart broke fails once; the next
    one reconnects, so a refused or stale connection is only "not yet"."""
    import kombu.exceptions
    import redis

    try:
        return bool(app.control.ping(destination=[hostname], timeout=0.5))
    except (redis.exceptions.ConnectionError, kombu.exceptions.OperationalError):
        time.sleep(0.2)
        return False


def start_worker(
    env: Mapping[str, str],
    log_path: Path,
    concurrency: int = 2,
    queues: Sequence[str] = QUEUES,
) -> WorkerProcess:
    """Start a worker with ``env`` (DIGITS_* variables); call :meth:`WorkerProcess.wait_ready`."""
    hostname = f"digits-{uuid.uuid4().hex[:8]}@{socket.gethostname()}"
    child_env = {**os.environ, **env}
    child_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), child_env.get("PYTHONPATH", "")])
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            worker_command(hostname, concurrency, queues),
            cwd=ROOT,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(process, hostname, log_path)


def _stop_group(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM to the leader only (a Celery parent then stops its children itself), then SIGKILL."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout_s)
    # The group outlives its leader if a child lingers; it holds only what we started.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


@dataclass
class LocalPostgres:
    """A throwaway PostgreSQL cluster: one server, databases created on demand."""

    port: int
    directory: Path
    bindir: Path
    durable: bool = True

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def pid(self) -> int:
        """The postmaster's process id (every backend is its child)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

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
        return self.url(name)

    def start(self) -> None:
        """Start on ``port`` (again, after ``stop``: every URL handed out before works again)."""
        log = self.directory / "postgres.log"
        argv = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(log)]
        _run_pg([*argv, "-o", self._options(), "-w", "-t", "60", "start"])

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: every connection ends and nothing answers the port."""
        _run_pg([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def _options(self) -> str:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1"
        # A backend whose client was killed gives up its locks within a second, even while it
        # waits on a lock (what production should set too: docs/reliability.md).
        options += " -c client_connection_check_interval=1000"
        if not self.durable:  # nothing to keep in a cluster deleted at the end
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        return options


def postgres_bindir() -> Path | None:
    """The newest installed server's bin directory (Debian keeps initdb and pg_ctl off PATH)."""
    import glob

    found = [Path(p) for p in glob.glob(PG_BIN_GLOB)]
    for candidate in sorted(found, key=lambda p: int(p.parent.name), reverse=True):
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    return None


@contextlib.contextmanager
def local_postgres(durable: bool = True) -> Iterator[LocalPostgres]:
    """initdb into a new temporary directory, start on a free loopback port; removed on exit.

    The directory is made here, not taken from the caller, because as root the server runs as the
    postgres user, who must own it and reach it (a caller's private temporary directory would not
    do). ``durable`` keeps PostgreSQL's default fsync and synchronous commit, so what a benchmark
    measures against it is what a production server would do, only on a local socket; tests turn
    it off.
    """
    bindir = postgres_bindir()
    if bindir is None:
        raise ServiceError(f"PostgreSQL binaries (initdb, pg_ctl) not found under {PG_BIN_GLOB}")
    with tempfile.TemporaryDirectory(prefix="digits-pg-") as name:
        directory = Path(name)
        if os.geteuid() == 0:
            shutil.chown(directory, "postgres", "postgres")
        _run_pg(
            [str(bindir / "initdb"), "-D", str(directory / "data"), "-U", "postgres"]
            + ["--auth=trust", "-E", "UTF8", "--no-sync"]
        )
        server = _start_postgres(bindir, directory, durable)
        try:
            yield server
        finally:
            server.stop()


def _start_postgres(
    bindir: Path, directory: Path, durable: bool, attempts: int = 3
) -> LocalPostgres:
    for _ in range(attempts):
        server = LocalPostgres(free_port(), directory, bindir, durable)
        try:
            server.start()
            return server
        except ServiceError:  # port taken between probe and bind, usually: try another
            continue
    raise ServiceError(f"PostgreSQL did not start; its log:\n{_tail(directory / 'postgres.log')}")


def _run_pg(argv: list[str]) -> None:
    """PostgreSQL refuses to run as root, so as root its tools run as the postgres user."""
    tool = Path(argv[0]).name
    if os.geteuid() == 0:
        argv = ["runuser", "-u", "postgres", "--", *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise ServiceError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}")
