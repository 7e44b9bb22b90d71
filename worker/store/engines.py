"""Engines per URL: PostgreSQL with a connect timeout, SQLite with WAL, a busy timeout and real
transactions; and how a command that only reads opens a SQLite file it may not write.

Kept apart from the tables (:mod:`.db`, which re-exports what callers use) so each stays short.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_CONNECT_TIMEOUT_S = 10


def make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        # A host that drops packets would otherwise hold a task for the OS's TCP timeout.
        return create_engine(url, pool_pre_ping=True, connect_args=_connect_timeout(url))
    immutable = url.query.get("immutable") == "1"  # a reader's snapshot: see reading_url
    if url.database and url.database != ":memory:" and not immutable:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    busy_timeout_ms = _sqlite_busy_timeout_ms(url)
    url = url.difference_update_query(["timeout"])
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})
    hook = functools.partial(_sqlite_connect, busy_ms=busy_timeout_ms, wal=not immutable)
    event.listen(engine, "connect", hook)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _connect_timeout(url: URL) -> dict:
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        return {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    return {}


def _sqlite_busy_timeout_ms(url: URL) -> int:
    """How long a writer waits for SQLite's lock before an error (and a retry): ``?timeout=S``.

    Thirty seconds by default; the fault tests shorten it to see the retries within seconds.
    """
    raw = url.query.get("timeout")
    if raw is None:
        return SQLITE_BUSY_TIMEOUT_MS
    try:
        seconds = float(raw if isinstance(raw, str) else raw[-1])
    except ValueError:
        raise ValueError(f"SQLite URL timeout={raw!r}: not a number of seconds") from None
    return max(0, round(seconds * 1000))


def _sqlite_connect(
    dbapi_connection, _record, busy_ms: int = SQLITE_BUSY_TIMEOUT_MS, wal: bool = True
) -> None:
    """WAL lets the CLI read while two worker children write; SQLAlchemy takes over BEGIN.

    The sqlite3 driver's legacy mode skips BEGIN before SELECT, so a read-then-write transaction
    would not be one; with ``isolation_level = None`` and an explicit BEGIN it is (SQLAlchemy's
    documented recipe for Python < 3.12).
    """
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    if wal:  # setting it is a write; an immutable reader leaves the file as it is
        cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection) -> None:
    connection.exec_driver_sql("BEGIN")


def sqlite_path(database_url: str) -> Path | None:
    """The file of a SQLite database URL (plain or ``file:`` URI form), None for anything else."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    database = str(url.database)
    return Path(database.removeprefix("file:").split("?", 1)[0])


class ReadOnlyError(RuntimeError):
    """A SQLite database this user cannot write and cannot safely read without writing."""


def reading_url(database_url: str) -> str:
    """The URL a command that only reads should use: ``database_url`` itself where this user can
    write what SQLite needs, else an immutable read of the file.

    A WAL database is read through its ``-shm`` index, which a reader creates or writes: with the
    file or its folder read-only (a copy handed to an auditor, a backup mount), even ``mode=ro``
    fails with "attempt to write a readonly database". When no ``-wal`` with changes lies beside
    the file, the file alone holds every committed row, and ``immutable=1`` reads it without any
    lock or index. When one does, reading the file alone would show an older state, so this
    refuses with the reason rather than report stale counts.
    """
    path = sqlite_path(database_url)
    if path is None or not path.is_file() or _sqlite_writable(path):
        return database_url
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise ReadOnlyError(
            f"{path} is read-only here and its {wal.name} holds changes not yet in it: read it "
            "as a user who can write its folder, or checkpoint it first "
            "(sqlite3 FILE 'PRAGMA wal_checkpoint(TRUNCATE)')"
        )
    return f"sqlite:///file:{quote(str(path))}?immutable=1&uri=true"


def _sqlite_writable(path: Path) -> bool:
    """Whether this user can write the file and the index files SQLite keeps beside it."""
    if not os.access(path, os.W_OK):
        return False
    if os.access(path.parent, os.W_OK):
        return True
    beside = [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]
    return all(p.exists() and os.access(p, os.W_OK) for p in beside)
