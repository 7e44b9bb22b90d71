"""Review station subcommands: review-server, operator, purge, export-corrections.

``digits review`` (job_commands) lists what awaits a person; these run the station where people
key it, manage who may, let kept crops go after their retention, and hand what people keyed to
training (``digits train --extra DIR``).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import click

from digits.cli import cli_settings


@click.command("review-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--log-level", default="info", show_default=True)
def review_server(host: str, port: int, log_level: str) -> None:
    """Serve the review station, where operators key the items the model could not read.

    Loopback by default: put it behind a TLS reverse proxy (and set DIGITS_STATION_HTTPS=1) to
    open it to a network. Operators log in with accounts made by `digits operator add NAME`.
    """
    import uvicorn

    from digits.worker.config import ConfigError
    from digits.worker.station.app import create_app

    settings = cli_settings.migrated_settings()
    try:
        app = create_app(settings)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@click.group()
def operator() -> None:
    """Accounts of the review station's operators."""


@operator.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
def operator_add(name: str, password_stdin: bool) -> None:
    """Make an account (the password is asked twice, and stored as an argon2 hash)."""
    from digits.worker.store import db, operators

    settings = cli_settings.migrated_settings()
    password = _password(password_stdin)
    try:
        with db.session_scope(settings.database_url) as session:
            account = operators.add(session, name, password)
    except operators.OperatorError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"operator {account.name} added")


@operator.command("password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin's first line.")
def operator_password(name: str, password_stdin: bool) -> None:
    """Set a new password."""
    from digits.worker.store import db, operators

    settings = cli_settings.migrated_settings()
    password = _password(password_stdin)
    try:
        with db.session_scope(settings.database_url) as session:
            operators.set_password(session, name, password)
    except operators.OperatorError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"operator {name}: password changed")


@operator.command("disable")
@click.argument("name")
def operator_disable(name: str) -> None:
    """Stop an account at once: its sessions end, the items it held go back to the queue.

    What it keyed stays in the audit trail."""
    _set_active(name, False)


@operator.command("enable")
@click.argument("name")
def operator_enable(name: str) -> None:
    """Let a disabled account log in again."""
    _set_active(name, True)


def _set_active(name: str, active: bool) -> None:
    from digits.worker.store import db, operators

    settings = cli_settings.migrated_settings()
    try:
        with db.session_scope(settings.database_url) as session:
            operators.set_active(session, name, active)
    except operators.OperatorError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"operator {name} {'enabled' if active else 'disabled'}")


@operator.command("list")
def operator_list() -> None:
    """Every account, and whether it may log in."""
    from digits.worker.store import db, operators

    settings = cli_settings.reading_settings()
    with db.session_scope(settings.database_url) as session:
        for account in operators.accounts(session):
            click.echo(f"{account.name}\t{'active' if account.active else 'disabled'}")


@click.command()
@click.option(
    "--days",
    type=click.IntRange(min=0),
    help="Retention: let go of crops of items settled this many days ago or more "
    "[default: DIGITS_CROP_RETENTION_DAYS, 90].",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def purge(days: int | None, as_json: bool) -> None:
    """Delete kept crops past their retention, and any crop no item refers to.

    Crops of items still awaiting a person are kept whatever their age (they are counted).
    Keyed values, items and jobs are not touched.
    """
    from digits.worker.store import crops, db

    settings = cli_settings.migrated_settings()
    days = settings.crop_retention_days if days is None else days
    with db.session_scope(settings.database_url) as session:
        done = crops.purge(session, days)
        left = crops.footprint(session)
    report = {"days": days, **done.__dict__, "left": left}
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"crops older than {days} days: {done.crops_deleted} deleted ({done.bytes_deleted} bytes), "
        f"{done.items_released} items let go of theirs; {done.awaiting_kept} kept because their "
        f"item still awaits a person; {left['crops']} crops ({left['bytes']} bytes) kept"
    )


@click.command("export-corrections")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--job", "job_id", help="Only this job's items.")
@cli_settings.since_option("items keyed")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as one JSON object.")
def export_corrections(
    directory: Path, job_id: str | None, since: datetime | None, as_json: bool
) -> None:
    """Write the crops people keyed, with their values, as a labelled data set.

    DIRECTORY/digit/ holds single digits and DIRECTORY/<kind>/ whole fields, each with a
    labels.csv (file,label: `digits train --extra DIRECTORY` fine-tunes the digit network on
    it; `digits evaluate --fields --labelled DIRECTORY/amount --kind amount` scores the field
    readers), and manifest.json says what was written and what was left out, and why.
    """
    from digits.worker.store import corrections, db

    settings = cli_settings.reading_settings()
    with db.session_scope(settings.database_url) as session:
        try:
            manifest = corrections.export(session, directory, job_id=job_id, since=since)
        except corrections.ExportError as exc:
            raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(manifest))
        return
    sets = ", ".join(f"{kind} {n}" for kind, n in manifest["written"].items()) or "nothing"
    skipped = ", ".join(f"{why} {n}" for why, n in manifest["left_out"].items()) or "none"
    click.echo(f"{directory}: {sets}; left out: {skipped}")


COMMANDS = [review_server, operator, purge, export_corrections]
