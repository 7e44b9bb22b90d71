"""The database's schema revision: bringing it to the newest migration, and checking it is there.

Every ``digits`` command that writes, and every worker as it starts, calls :func:`upgrade`. A
database already at :data:`HEAD` (nearly always) is told by one read of Alembic's own table,
without loading Alembic, its environment and its scripts: that took 0.15 s of each
``digits enqueue``, while the workers waited for its first chunk. A new database, an older
schema, or a SQLite file that cannot be opened goes through Alembic under the migration lock;
any other failure to read the revision is raised as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from digits.worker.store.engines import make_engine, sqlite_path

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# The newest migration's revision, as its file in migrations/versions/ names it. A new migration
# moves it (tests/test_db.py checks it is Alembic's head).
HEAD = "0008"
# Any constant works; it only has to be the same for every process migrating one database.
PG_MIGRATION_LOCK = 0x64696769  # "digi"


class SchemaError(RuntimeError):
    """The database is missing or not at this code's schema: ``digits migrate`` is the fix."""


class MigrationLockError(OSError):
    """The lock file beside a SQLite database cannot be made: its folder is not writable."""


def upgrade(database_url: str) -> None:
    """Bring the schema to the newest migration; safe when several processes start at once.

    Called by the CLI and by the worker's parent process before it forks. Concurrent callers are
    serialized (a PostgreSQL advisory lock, or a lock file beside a SQLite database) so two workers
    starting together never both create the tables. A database at :data:`HEAD` is left as it is,
    lock and all: a migration in progress elsewhere has not written the new revision yet, so a
    caller that reads HEAD reads a finished one.
    """
    engine = make_engine(database_url)
    try:
        try:
            if current_revision(engine) == HEAD:
                return
        except SQLAlchemyError:
            if engine.dialect.name != "sqlite":
                raise
            # A SQLite file that cannot be opened: the lock beside it says why (a folder this
            # user may not write), in words a person can act on.
        from alembic import command
        from alembic.config import Config

        with _migration_lock(engine), engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def check_schema(database_url: str) -> None:
    """For readers (status, results, review, stats): the schema must be current, and checking it
    writes nothing, so a read-only role can report and a mistyped SQLite path is not created."""
    path = sqlite_path(database_url)
    if path is not None and not path.is_file():
        raise SchemaError(f"no database file at {path}")
    engine = make_engine(database_url)
    try:
        current = current_revision(engine)
    finally:
        engine.dispose()
    if current != HEAD:
        raise SchemaError(f"schema at revision {current or 'none'}, this digits needs {HEAD}")


def current_revision(engine: Engine) -> str | None:
    """The revision Alembic last wrote, or None where it wrote none (a new database). Any other
    failure (no permission on the table, a corrupt file, a timeout) is raised as it is."""
    with engine.connect() as connection:
        try:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        except SQLAlchemyError:
            connection.rollback()  # PostgreSQL reads nothing more in a failed transaction
            if inspect(connection).has_table("alembic_version"):
                raise
            return None  # nothing was ever migrated here


def head_revision() -> str | None:
    """The newest migration, as Alembic reads it off the scripts (``digits migrate`` prints it)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATION_LOCK})
            try:
                yield
            finally:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATION_LOCK})
                connection.commit()
        return
    database = engine.url.database
    if not database or database == ":memory:":
        yield
        return
    lock = f"{database}.migrate-lock"
    try:
        handle = open(lock, "a")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise MigrationLockError(
            f"cannot write {lock} ({exc.strerror}): the folder of a SQLite database must be "
            "writable by whoever writes to it (SQLite keeps its -wal and -shm files there too)"
        ) from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
