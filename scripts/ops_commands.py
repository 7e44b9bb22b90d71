"""Operations subcommands: migrate, ingest, stats, jobs.

What a deployment runs besides the workers: the one-shot schema migration, the nightly inbox
ingestion (also run by Celery beat, see :mod:`digits.worker.submission.scheduled`), the
statistics an operator checks after a rollout and the list of recent jobs. Heavy imports stay
inside the commands so ``digits --help`` stays instant.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click

from digits.cli import cli_settings


@click.command()
def migrate() -> None:
    """Bring the database at DIGITS_DATABASE_URL to the newest schema.

    The stack's one-shot migration service runs this before the workers start; running it again
    is harmless, and several at once wait for each other.
    """
    from digits.worker.config import mask_url
    from digits.worker.store import db

    settings = cli_settings.migrated_settings()
    click.echo(f"database {mask_url(settings.database_url)} is at revision {db.head_revision()}")


@click.command()
@click.argument("inbox", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--done",
    type=click.Path(file_okay=False, path_type=Path),
    help="Move processed files here (else they stay, marked in the database) and write the "
    "run's summary here as JSON.",
)
@click.option(
    "--no-wait", is_flag=True, help="Summarize what was enqueued; a worker completes it later."
)
@click.option("--timeout", type=click.FloatRange(min=0), help="Stop waiting after SECONDS.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def ingest(inbox: Path, done: Path | None, no_wait: bool, timeout: float | None, as_json: bool):
    """Enqueue every new image file and zip archive in INBOX, once per content.

    A file whose bytes were ingested before (under any name) is not read again. Names starting
    with a dot are ignored (upload as .name, then rename). Waits for the jobs, then prints and
    stores the run's summary: counts, review and error rates, confidences, duration.
    """
    from digits.worker.queue.celery_app import create_app
    from digits.worker.submission import ingest as ingestion
    from digits.worker.submission.scheduled import send_finish

    settings = cli_settings.migrated_settings()
    app = create_app(settings)
    try:
        try:
            run = ingestion.ingest(inbox, done, settings, app=app)
        except ingestion.IngestError as exc:
            raise click.ClickException(str(exc)) from exc
        if no_wait and run.jobs:
            send_finish(app, run.run_id)
    finally:
        app.close()
    timed_out = not no_wait and not _wait(settings.database_url, run.jobs, timeout)
    summary = ingestion.summarize(settings.database_url, run.run_id, waited=not no_wait)
    click.echo(json.dumps(summary) if as_json else _describe(summary))
    if run.enqueue_error:
        raise click.ClickException(f"stopped early: {run.enqueue_error}")
    if timed_out:
        raise click.ClickException(f"jobs still running after {timeout:g} s; summary incomplete")


def _wait(database_url: str, job_ids: list[str], timeout: float | None) -> bool:
    """Whether every job ended within ``timeout`` (shared by all of them)."""
    import time

    from digits.worker.store.results import wait_for_job

    deadline = None if timeout is None else time.monotonic() + timeout
    for job_id in job_ids:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            wait_for_job(database_url, job_id, timeout_s=left)
        except TimeoutError:
            return False
    return True


def _describe(summary: dict) -> str:
    files, items = summary["files"], summary["items"]
    lines = [
        f"ingest run {summary['run_id']} ({summary['state']}): {summary['inbox']} -> "
        f"{summary['done'] or 'files left in place'}; {summary['duration_s']:.1f} s",
        f"files: {files['ingested']} ingested, {files['duplicate']} duplicate, "
        f"{files['skipped']} skipped, {files['failed']} failed, {files['not_moved']} not moved",
        f"items: {items['total']} (ok {items['ok']}, needs review {items['needs_review']}, "
        f"blank {items['blank']}, error {items['error']}, pending {items['pending']}); "
        f"review rate {_percent(summary['review_rate'])}, "
        f"error rate {_percent(summary['error_rate'])}",
        _describe_confidence(summary["confidence"]),
        f"jobs: {' '.join(summary['jobs']) or '-'}",
    ]
    lines += [f"  {p['problem']}: {p['path']}: {p['why']}" for p in summary["problems"]]
    return "\n".join(lines)


def _describe_confidence(confidence: dict) -> str:
    if not confidence["count"]:
        return "confidence: no items read"
    bins = ", ".join(f"{label}: {count}" for label, count in confidence["bins"].items())
    return f"confidence: p05 {confidence['p05']}, median {confidence['p50']}; {bins}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


@click.command()
@cli_settings.since_option("items written")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def stats(since: datetime | None, as_json: bool) -> None:
    """Throughput, review rate, error rate and counts per model version, and how often the
    operators who keyed its flagged items changed its answer (keyed, changed%)."""
    from digits.worker.store import db
    from digits.worker.store.stats import statistics

    settings = cli_settings.reading_settings()
    with db.session_scope(settings.database_url) as session:
        report = statistics(session, since)
    click.echo(json.dumps(report) if as_json else _stats_table(report))


STATS_COLUMNS = (
    ("model", 22),
    ("items", 9),
    ("ok", 9),
    ("review", 8),
    ("blank", 7),
    ("error", 7),
    ("review%", 8),
    ("error%", 8),
    ("items/s", 9),
    ("keyed", 7),
    ("changed%", 9),
)


def _stats_table(report: dict) -> str:
    jobs = report["jobs"]
    by_status = ", ".join(f"{name} {count}" for name, count in sorted(jobs["by_status"].items()))
    lines = [
        f"since {report['since'] or 'the beginning'}: {jobs['total']} jobs"
        + (f" ({by_status})" if by_status else "")
        + f", {report['pending_items']} items pending",
        "".join(
            f"{name:>{width}}" if i else f"{name:<{width}}"
            for i, (name, width) in enumerate(STATS_COLUMNS)
        ),
    ]
    for row in [*report["models"], {**report["total"], "model_version": "all"}]:
        lines.append(_stats_row(row))
    return "\n".join(lines)


def _stats_row(row: dict) -> str:
    rate = row["items_per_s"]
    cells = [
        row["model_version"] or "(no model)",
        row["items"],
        row["ok"],
        row["needs_review"],
        row["blank"],
        row["error"],
        _percent(row["review_rate"]),
        _percent(row["error_rate"]),
        "-" if rate is None else f"{rate:.1f}",
        row["keyed"],
        _percent(row["change_rate"]),
    ]
    return "".join(
        f"{cell:>{width}}" if i else f"{cell:<{width}}"
        for i, (cell, (_, width)) in enumerate(zip(cells, STATS_COLUMNS, strict=True))
    )


@click.command()
@cli_settings.since_option("jobs created")
@click.option(
    "--status",
    metavar="STATUS",
    help="Only jobs shown with this status, as `digits status` shows it: queued, running, "
    "stalled, reviewing, done, partial, failed or cancelled.",
)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON array, as `digits status --json`.")
def jobs(since: datetime | None, status: str | None, limit: int, as_json: bool) -> None:
    """The newest jobs first: id, when created (UTC), status, kind, items read of all, errors,
    items awaiting a person, and where they came from."""
    from digits.worker.store import db
    from digits.worker.store.results import SHOWN_STATUSES, recent_jobs

    if status is not None and status not in SHOWN_STATUSES:
        raise click.BadParameter(
            f"{status!r}: choose one of {', '.join(SHOWN_STATUSES)}", param_hint="--status"
        )
    settings = cli_settings.reading_settings()
    with db.session_scope(settings.database_url) as session:
        found = recent_jobs(session, since, status, limit)
    if as_json:
        click.echo(json.dumps([job.as_json() for job in found]))
        return
    click.echo(
        f"{'job':<36}  {'created (UTC)':<16}  {'status':<9}  {'kind':<6}  {'read':>13}  "
        f"{'errors':>6}  {'awaiting':>8}  source"
    )
    for job in found:
        read = f"{job.processed}/{job.total}"
        click.echo(
            f"{job.job_id:<36}  {job.created:%Y-%m-%d %H:%M}  {job.status:<9}  {job.kind:<6}  "
            f"{read:>13}  {job.error:>6}  {job.awaiting_review:>8}  {job.source or '-'}"
        )


COMMANDS = [migrate, ingest, stats, jobs]
