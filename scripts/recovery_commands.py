"""Recovery subcommands: requeue, cancel.

Every worker's sweeper (:mod:`digits.worker.queue.sweeper`) sends again, within a minute, the
chunks that no one runs and Redis lost. ``digits requeue`` does the same for one job at once, by
hand: when no worker runs to sweep, or an operator will not wait. ``digits cancel`` stops a job
sent by mistake (:mod:`digits.worker.store.cancels`).
"""

from __future__ import annotations

import dataclasses
import json

import click

from digits.cli import cli_settings


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def requeue(job_id: str, as_json: bool) -> None:
    """Send JOB's pending items again: those of every chunk no live lease covers and no Redis
    queue holds (a chunk a worker runs, or one still waiting in Redis, is left alone).

    Safe to repeat and safe beside running workers: a result is written once per item, and a
    chunk sent twice writes nothing the second time.
    """
    from sqlalchemy import func, select

    from digits.model.review import ItemStatus
    from digits.worker.queue.celery_app import create_app
    from digits.worker.queue.sweeper import sweep
    from digits.worker.store import db
    from digits.worker.store.results import JobNotFoundError, job_status

    settings = cli_settings.migrated_settings()
    with db.session_scope(settings.database_url) as session:
        try:
            before = job_status(session, job_id)
        except JobNotFoundError as exc:
            raise click.ClickException(str(exc)) from exc
    app = create_app(settings)
    try:
        report = sweep(settings, app, job_id=job_id, force=True)
    except Exception as exc:  # noqa: BLE001 - the broker or the database: one line, not a trace
        raise click.ClickException(f"job {job_id}: nothing re-sent: {exc}") from exc
    finally:
        app.close()
    with db.session_scope(settings.database_url) as session:
        pending = session.scalar(
            select(func.count()).where(
                db.Item.job_id == job_id, db.Item.status == ItemStatus.PENDING.value
            )
        )
        kept = session.scalar(
            select(func.count(func.distinct(db.SentChunk.chunk))).where(
                db.SentChunk.job_id == job_id
            )
        )
    resent_items = sum(crops for *_, crops in report.resent)
    summary = {
        "job_id": job_id,
        "status_before": before.status,
        "pending": int(pending or 0),
        "resent_chunks": [new for _, _, new, _ in report.resent],
        "resent_items": resent_items,
        "waiting_in_redis": report.waiting,
        "running_in_a_worker": report.running,
        "chunks_kept": int(kept or 0),
    }
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(
        f"job {job_id} ({before.status}): {resent_items} pending items sent again in "
        f"{len(report.resent)} chunks; {report.waiting} chunks left waiting in Redis; "
        f"{report.running} left running in a worker; "
        f"{summary['pending']} items pending in all"
    )
    if summary["pending"] and not kept:
        click.echo(
            "no copy of its crops is kept (a job sent before this version, or its chunks were "
            "marked error): enqueue its pending items again",
            err=True,
        )


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option("--why", help="Why it was cancelled: kept in each cancelled item's error.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def cancel(job_id: str, why: str | None, as_json: bool) -> None:
    """Stop JOB: none of its pending items is read. Its chunks still queued are dropped unread by
    the workers, one being read now is not written, an enqueue still sending it stops; what was
    read stays (results, and the items awaiting a person). A job already finished is left as it
    is (exit status 1).
    """
    from digits.worker.store import db
    from digits.worker.store.cancels import cancel as cancel_job
    from digits.worker.store.writes import UnknownJobError

    settings = cli_settings.migrated_settings()
    try:
        with db.session_scope(settings.database_url) as session:
            done = cancel_job(session, job_id, why)
    except UnknownJobError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(done)))
    elif not done.already_final:
        click.echo(
            f"job {job_id} cancelled: {done.stopped} of its {done.total} items will not be read "
            f"({done.read} were final already)"
        )
    if done.already_final:
        raise click.ClickException(f"job {job_id} is {done.status} already: nothing to cancel")


COMMANDS = [requeue, cancel]
