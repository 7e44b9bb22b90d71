"""The settings every subcommand starts from, and what it may do to the database first.

Commands that write (enqueue, ingest, demo, migrate) bring the schema up to date; commands that
only read (status, results, review, stats) check it and change nothing, so a read-only database
role can report and a mistyped SQLite path is not created. Either way a bad setting or an
unreachable database is one clear line, with the password masked.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime

import click


def settings():
    """``Settings.from_env()``, a bad variable reported as a usage error."""
    from digits.worker.config import ConfigError, Settings

    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def migrated_settings():
    """Settings, with the database schema brought up to date (cheap when it already is)."""
    from sqlalchemy.exc import SQLAlchemyError

    from digits.worker.config import mask_url
    from digits.worker.store import db

    current = settings()
    try:
        db.upgrade(current.database_url)
    except (SQLAlchemyError, db.MigrationLockError) as exc:
        raise click.ClickException(f"database {mask_url(current.database_url)}: {exc}") from exc
    return current


def reading_settings():
    """Settings for a command that only reads: the schema is checked, never changed."""
    from sqlalchemy.exc import SQLAlchemyError

    from digits.worker.config import mask_url
    from digits.worker.store import db

    current = settings()
    where = f"database {mask_url(current.database_url)}"
    try:
        # A SQLite file this user may not write is read as it is, never written (db.reading_url).
        current = dataclasses.replace(current, database_url=db.reading_url(current.database_url))
        db.check_schema(current.database_url)
    except db.ReadOnlyError as exc:
        raise click.ClickException(f"{where}: {exc}") from exc
    except db.SchemaError as exc:
        raise click.ClickException(
            f"{where}: {exc} (run digits migrate, or check DIGITS_DATABASE_URL)"
        ) from exc
    except SQLAlchemyError as exc:
        raise click.ClickException(f"{where}: {exc}") from exc
    return current


def since_option(what: str):
    """The ``--since`` option of a listing (stats, jobs, export-corrections): ``what`` names the
    rows it keeps, e.g. "items written" or "jobs created"."""
    return click.option(
        "--since",
        callback=since,
        metavar="DATE",
        help=f"Only {what} since DATE (2026-11-24, 2026-11-24T02:00; UTC unless an offset is "
        "given) or an age (12h, 7d, 2w).",
    )


def since(_ctx, _param, value: str | None) -> datetime | None:
    """The ``--since`` option's callback (:func:`since_option`): a date or ``7d``/``12h``."""
    from digits.worker.store.stats import parse_since

    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
