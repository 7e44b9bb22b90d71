"""Job subcommands: enqueue, status, results, review, worker, demo.

Thin on top of :mod:`worker`: these parse options, call it, and print. Everything heavy (Celery,
SQLAlchemy, TensorFlow) is imported inside the commands so ``digits --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import click

from digits.cli import cli_settings
from digits.model import kinds

format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "json"]),
    default="csv",
    show_default=True,
    help="csv: a header and one row per item, RFC 4180 (CRLF line ends; a field holding a comma, "
    "a quote, CR or LF is quoted); a value, and each line inside a value, that starts with "
    "= + - @ tab CR or ' gets one leading ' so a spreadsheet keeps it as text (drop one ' from the "
    "start of each line that has one to get the value back); json: one array of objects.",
)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="Block with a progress bar until the job ends.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the id.")
@click.option("--source", help="Where the scans came from (stored with the job).")
@click.option("--timeout", type=click.FloatRange(min=0), help="With --wait: give up after SECONDS.")
@click.option(
    "--field",
    "field_kind",
    type=click.Choice(kinds.NAMES),
    help="Each file is a whole field of this kind (read as a string), not one digit.",
)
@click.option(
    "--double-key",
    is_flag=True,
    help="Items flagged for review are final only when two different operators key the same "
    "value at the review station (a disagreement goes to a third).",
)
def enqueue(
    paths: tuple[Path, ...],
    wait: bool,
    as_json: bool,
    source: str | None,
    timeout: float | None,
    field_kind: str | None,
    double_key: bool,
) -> None:
    """Queue image files, directories (recursively) and zip archives as one job.

    Each crop's key is its path relative to the PATH given (a zip member: archive.zip/member).
    Prints the job id. A --field job is reviewed under its kind's threshold
    (model/review.py FIELD_REVIEW_THRESHOLDS) unless DIGITS_REVIEW_THRESHOLD is set.
    """
    from digits.worker.submission import jobs
    from digits.worker.submission.collect import collect
    from digits.worker.submission.names import shown

    settings = cli_settings.migrated_settings()
    found = collect(
        paths,
        settings.max_item_bytes,
        max_crops=settings.max_items_per_job,
        max_total_bytes=settings.max_job_bytes,
        defer=True,  # read as their chunks are sent: the workers start on the first at once
    )
    # Paths come back from collect in the escaped form (submission.names): printable, storable.
    for path, why in found.skipped:
        click.echo(f"skipped {path}: {why}", err=True)
    if found.refused:
        raise click.ClickException(f"{found.refused}; nothing was queued")
    if found.unreadable:
        lines = "\n".join(f"  {path}: {why}" for path, why in found.unreadable)
        raise click.ClickException(f"cannot read these paths; nothing was queued:\n{lines}")
    try:
        plan = jobs.submit(
            found.crops,
            settings,
            source=shown(source) if source else _default_source(paths),
            # DIGITS_REVIEW_THRESHOLD, when set, rules any kind of job; left unset, a field job
            # takes the field default, not the digit one (Settings.threshold_for).
            kind=field_kind or "digit",
            double_key=double_key,
        )
    except (jobs.JobError, jobs.EnqueueError) as exc:
        raise click.ClickException(str(exc)) from exc
    except jobs.EnqueueInterrupted as interrupt:
        click.echo(f"Interrupted: {interrupt}", err=True)
        raise SystemExit(130) from None  # the shell's code for Ctrl-C
    summary = {
        "job_id": plan.job_id,
        "kind": plan.kind,
        "items": plan.total,
        "chunks": len(plan.chunks),
        "queue": plan.queue,
        "rejected": len(plan.rejected),
        "skipped": len(found.skipped),
        "double_key": plan.double_key,
    }
    if wait:
        try:
            final = _wait_with_progress(settings.database_url, plan.job_id, plan.total, timeout)
        except KeyboardInterrupt:
            click.echo(
                f"Stopped waiting; job {plan.job_id} is queued and goes on: "
                f"`digits status {plan.job_id}`",
                err=True,
            )
            raise SystemExit(130) from None
        summary.update(_counts(final.as_json()))
        status = final.status
    else:
        status = _job_status(plan.job_id).status
    if status == "cancelled":  # by `digits cancel` as it was sent or read: sending stopped then
        click.echo(f"job {plan.job_id} was cancelled before all of it was read", err=True)
    click.echo(json.dumps(summary) if as_json else plan.job_id)


def _default_source(paths: Iterable[Path]) -> str:
    from digits.worker.submission.names import shown

    return "enqueue " + " ".join(shown(path) for path in paths)


def _counts(status: dict) -> dict:
    names = (
        "status",
        "processed",
        "ok",
        "needs_review",
        "blank",
        "error",
        "model_version",
        "awaiting_review",
    )
    return {name: status[name] for name in names}


def _wait_with_progress(database_url: str, job_id: str, total: int, timeout: float | None):
    from digits.worker.store.results import wait_for_job

    with click.progressbar(length=total, label=f"job {job_id}", file=sys.stderr) as bar:
        done = 0

        def advance(status) -> None:
            nonlocal done
            bar.update(status.processed - done)
            done = status.processed

        try:
            return wait_for_job(database_url, job_id, on_progress=advance, timeout_s=timeout)
        except TimeoutError as exc:
            raise click.ClickException(str(exc)) from exc


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: status, counts, model.")
def status(job_id: str, as_json: bool) -> None:
    """Show a job's status and counts, and how many of its items still await a person.

    A job whose items are all read but some still await a person is ``reviewing``: done for the
    business only once none are left.
    """
    state = _job_status(job_id)
    if as_json:
        click.echo(json.dumps(state.as_json()))
        return
    click.echo(
        f"job {state.job_id}: {state.status}, {state.processed}/{state.total} processed "
        f"(ok {state.ok}, needs review {state.needs_review}, blank {state.blank}, "
        f"error {state.error}); {state.awaiting_review} awaiting a person"
        + (" (double keying)" if state.double_key else "")
        + f"; model {state.model_version or '-'}; kind {state.kind}"
    )


def _job_status(job_id: str):
    from digits.worker.store import db
    from digits.worker.store.results import JobNotFoundError, job_status

    settings = cli_settings.reading_settings()
    with db.session_scope(settings.database_url) as session:
        try:
            return job_status(session, job_id)
        except JobNotFoundError as exc:
            raise click.ClickException(str(exc)) from exc


@click.command()
@click.argument("job_id", metavar="JOB")
@format_option
def results(job_id: str, fmt: str) -> None:
    """Print one row per item: key, digit, confidence, status, error, final, source.

    For a field job: key, text, confidence, status, error, details (each digit's guess, top 3 and
    box, and why the field needs review), final, source. ``final`` is the answer to take: the
    model's reading when it was sure, a person's once keyed (``source`` model or operator; empty
    while the item awaits a person).
    """
    from digits.worker.store import db
    from digits.worker.store.results import (
        JobNotFoundError,
        job_items,
        job_status,
        result_fields,
        result_row,
    )

    settings = cli_settings.reading_settings()
    with db.session_scope(settings.database_url) as session:
        try:
            fields = result_fields(job_status(session, job_id).kind)
            rows = (result_row(item, fields) for item in job_items(session, job_id))
            _write_rows(rows, fields, fmt)
        except JobNotFoundError as exc:
            raise click.ClickException(str(exc)) from exc


@click.command()
@click.argument("job_id", metavar="[JOB]", required=False)
@format_option
def review(job_id: str | None, fmt: str) -> None:
    """List the items still awaiting a person (read, but under the review threshold, and not
    keyed yet at the review station: digits review-server).

    Fields are listed with their text, and also when the text fails its kind's check (reasons).
    """
    from digits.worker.store import db
    from digits.worker.store.results import (
        REVIEW_FIELDS,
        JobNotFoundError,
        review_items,
        review_row,
    )

    settings = cli_settings.reading_settings()
    with db.session_scope(settings.database_url) as session:
        try:
            items = review_items(session, job_id)
        except JobNotFoundError as exc:
            raise click.ClickException(str(exc)) from exc
        _write_rows((review_row(item) for item in items), REVIEW_FIELDS, fmt)


# What a spreadsheet takes for the start of a formula (= + - @; tab and CR hide one), and the quote
# itself: a value that already starts with ' is guarded too, so "-5.png" (printed '-5.png) and
# "'-5.png" (printed ''-5.png) stay apart and one ' off each guarded line gives the value back.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
# The start of the value and of every line inside it (after CR or LF) where one of those follows.
_UNGUARDED_LINE = re.compile(rf"(?:^|(?<=[\r\n]))(?=[{re.escape(''.join(FORMULA_STARTS))}])")


def _write_rows(rows: Iterator[dict], fields: tuple[str, ...], fmt: str) -> None:
    out = sys.stdout
    if fmt == "json":
        out.write("[")
        for n, row in enumerate(rows):
            out.write(("," if n else "") + "\n" + json.dumps(row))
        out.write("\n]\n")
        return
    # CRLF line ends: the csv module quotes a field holding any character of the line terminator,
    # so with "\n" alone a bare CR went out unquoted and split the row in two for most readers.
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: _csv_value(row[name]) for name in fields})


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, list):  # top3: "7:0.61 1:0.30 9:0.05"
        return " ".join(f"{digit}:{p}" for digit, p in value)
    if isinstance(value, dict):  # a field's details: the JSON the database holds, on one line
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, str):
        # Keys are file names and zip member names from outside: "=HYPERLINK(...).png" must stay
        # text in a reviewer's spreadsheet, not become a formula (OWASP's CSV injection advice: a
        # leading quote), and so must every line of "q\r=2+5" for whatever splits it into lines.
        return _UNGUARDED_LINE.sub("'", value)
    return value


@click.command()
@click.option("--concurrency", type=click.IntRange(min=1), default=2, show_default=True)
@click.option(
    "--queues", default="interactive,batch", show_default=True, help="Comma-separated queues."
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int, queues: str, loglevel: str) -> None:
    """Run a worker (prefork pool): the same as `celery -A digits.worker.queue.celery_app worker ...`."""
    from digits.worker.queue.celery_app import app, worker_command
    from digits.worker.queue.messages import QUEUES

    wanted = [name.strip() for name in queues.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(QUEUES))
    if not wanted or unknown:
        raise click.BadParameter(f"{', '.join(unknown) or 'none'}: queues are {', '.join(QUEUES)}")
    cli_settings.settings()
    hostname = f"digits-{os.getpid()}@{socket.gethostname()}"
    argv = worker_command(hostname, concurrency, wanted, loglevel)
    app.worker_main(argv[argv.index("worker") :])


@click.command()
@click.option("--count", type=click.IntRange(1, 10_000), default=500, show_default=True)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DIGITS_MNIST_DIR",
    help="Directory with the MNIST IDX files or mnist.npz [env DIGITS_MNIST_DIR].",
)
@click.option("--rows", type=click.IntRange(min=0), default=15, show_default=True)
def demo(count: int, data_dir: Path | None, rows: int) -> None:
    """The main job end to end: scan-like crops through Redis, two worker processes, the database.

    Starts a local redis-server if none answers at DIGITS_BROKER_URL, and a worker; stops both.
    """
    from digits.cli.devtools.local import local_redis, redis_answers, start_worker
    from digits.worker.queue.celery_app import create_app

    settings = cli_settings.migrated_settings()
    if not settings.model_path.is_file():
        raise click.ClickException(f"{settings.model_path}: no model (train one: digits train)")
    crops, labels = _demo_crops(count, data_dir)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="digits-demo-")))
        broker_url = settings.broker_url
        if not redis_answers(broker_url):
            server = stack.enter_context(local_redis(workdir / "redis"))
            broker_url = server.url
            click.echo(f"started redis-server on {broker_url}", err=True)
        settings = dataclasses.replace(settings, broker_url=broker_url)
        env = {"DIGITS_BROKER_URL": broker_url, "DIGITS_DATABASE_URL": settings.database_url}
        env["DIGITS_MODEL"] = str(settings.model_path)
        app = create_app(settings)
        stack.callback(app.close)
        process = start_worker(env, workdir / "worker.log")
        stack.callback(process.stop)
        stack.push(_log_on_error(process))
        click.echo("starting a worker (prefork, concurrency 2)...", err=True)
        process.wait_ready(app)
        _run_demo_job(settings, app, crops, labels, rows)


def _log_on_error(process):
    """An exit callback that shows the worker's log when the demo fails, before it is deleted."""

    def show(exc_type, _exc, _tb) -> bool:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            click.echo(f"--- worker log (tail) ---\n{process.log()[-4000:]}", err=True)
        return False

    return show


def _demo_crops(count: int, data_dir: Path | None) -> tuple[list, dict[str, int]]:
    from digits.model.scanlike import scanlike_set
    from digits.worker.submission.jobs import Crop

    images, truth = _demo_digits(count, data_dir)
    crops, labels = [], {}
    for index, (blob, label) in enumerate(zip(scanlike_set(images, seed=0), truth, strict=True)):
        suffix = ".png" if blob.startswith(b"\x89PNG") else ".jpg"
        key = f"demo/{index:05d}_label{int(label)}{suffix}"
        crops.append(Crop(key, blob))
        labels[key] = int(label)
    return crops, labels


def _demo_digits(count: int, data_dir: Path | None):
    """MNIST test digits to draw the crops from: the directory's when one is given and readable,
    else the sample shipped with the package (its first 1,000). Never a download: the demo must
    run on a machine without network."""
    from digits.model import data

    if data_dir is not None:
        try:
            mnist = data.load(data_dir)
            return mnist.x_test[:count], mnist.y_test[:count]
        except data.DataError as exc:
            click.echo(f"{exc}; the demo uses the MNIST sample shipped with digits", err=True)
    try:
        images, labels = data.sample()
    except data.DataError as exc:
        raise click.ClickException(f"{exc}; point --data or DIGITS_MNIST_DIR at MNIST") from exc
    if count > len(images):
        click.echo(
            f"{len(images)} crops, all the shipped sample has (--data or DIGITS_MNIST_DIR: more)",
            err=True,
        )
    return images[:count], labels[:count]


def _run_demo_job(settings, app, crops, labels: dict[str, int], rows: int) -> None:
    from digits.worker.store import db
    from digits.worker.store.results import job_items
    from digits.worker.submission import jobs

    started = time.monotonic()
    plan = jobs.submit(crops, settings, source="demo", app=app)
    click.echo(f"job {plan.job_id}: {plan.total} crops in {len(plan.chunks)} chunks", err=True)
    final = _wait_with_progress(settings.database_url, plan.job_id, plan.total, None)
    elapsed = time.monotonic() - started
    with db.session_scope(settings.database_url) as session:
        items = list(job_items(session, plan.job_id))
    correct = sum(item.digit == labels[item.key] for item in items)
    click.echo(f"{'key':<26} {'truth':>5} {'digit':>5} {'conf':>7}  status")
    for item in items[:rows]:
        digit = "-" if item.digit is None else item.digit
        confidence = "-" if item.confidence is None else f"{item.confidence:.4f}"
        click.echo(
            f"{item.key:<26} {labels[item.key]:>5} {digit:>5} {confidence:>7}  {item.status}"
        )
    click.echo(
        f"\njob {final.job_id}: {final.status}; ok {final.ok}, needs review {final.needs_review}, "
        f"blank {final.blank}, error {final.error}; model {final.model_version}"
    )
    click.echo(
        f"accuracy {correct / len(items):.2%} ({correct}/{len(items)} against the known labels); "
        f"{len(items) / elapsed:.0f} crops/s ({elapsed:.1f} s from submission to the last row; "
        "the children loaded the model before the worker said it was ready)"
    )


COMMANDS = [enqueue, status, results, review, worker, demo]
