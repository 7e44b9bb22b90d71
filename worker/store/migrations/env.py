"""Alembic environment: runs on the connection :func:`worker.store.schema.upgrade` hands over.

Used from the ``alembic`` command line too (``alembic -c worker/store/alembic.ini ...``), where the URL
comes from ``DIGITS_DATABASE_URL`` like everywhere else.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from digits.worker.store.db import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    from digits.worker.config import Settings

    return config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url())
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


def _run(connection) -> None:
    # SQLite cannot ALTER most things in place; batch mode rebuilds tables for such migrations.
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
