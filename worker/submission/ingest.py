"""Ingesting an inbox: every new image file and zip archive in a directory is read once, by content.

A scanner (or a person) drops files in a directory; ``digits ingest`` or the scheduled task
(:mod:`worker.schedule`) takes what is new. New means new content: each file's sha256 is recorded
with the job that reads it, in the same transaction that creates the job, so a file dropped twice,
under another name, or left behind by a run that died before moving it, is read once. The sha256 is
unique in the table, so two runs racing over one inbox cannot both record a file: the loser's
transaction fails and it leaves those files where they are for the next run.

Per job the order is: record (job, items, files) in one transaction, send the chunks, move the
files to the done directory. A run killed after recording and before sending leaves a job whose
chunks were never sent; a worker's sweeper sends them from the database's copies (issue 14), and
its files count as already ingested. A run interrupted with Ctrl-C while sending unrecords the
files of that job, whose unsent items are marked, so the next run reads them again.

Names starting with a dot are ignored, so an uploader can write ``.name`` and rename it when
complete; without that convention a half-written file may be read (:mod:`.inbox` says what else is
left out).

One bad file never stops a run: whatever reading a file or its archive raises (the families in
``files.FILE_ERRORS``) stays with that file, with the reason. A file that cannot be read at all
(gone, unreadable) is a ``failed`` entry and waits in the inbox; an archive that cannot be opened
(a name flagged UTF-8 that is not, an unsupported zip version) or a member that cannot be read (a
member shorter than its header says) is an ``error`` item of the job. The run goes on with the
others; the scheduled task runs this same code.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from celery import Celery
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from digits.model.review import ItemStatus
from digits.worker.config import Settings
from digits.worker.queue.celery_app import BATCH_QUEUE
from digits.worker.store import db
from digits.worker.store.stats import RESULT_STATUSES, confidence_distribution, rate
from digits.worker.submission import jobs
from digits.worker.submission.collect import collect
from digits.worker.submission.files import FILE_ERRORS, describe
from digits.worker.submission.inbox import InboxFile, scan
from digits.worker.submission.names import key_for, name_of, shown

log = logging.getLogger("digits.ingest")
# Crops held in memory for one job; a larger inbox becomes several jobs.
MAX_JOB_BYTES = 256 * 1024 * 1024
# Problems listed in a summary; the counts beside them are always complete.
MAX_LISTED = 100
# sha256 values per IN (...) lookup.
LOOKUP_BATCH = 500


class IngestError(RuntimeError):
    """The run cannot start (no such inbox, done directory not writable)."""


@dataclass
class IngestRun:
    """What one run did with each file; :meth:`enqueue_summary` is what it stores at once."""

    run_id: str
    inbox: Path
    done: Path | None
    started: datetime
    jobs: list[str] = field(default_factory=list)
    ingested: list[str] = field(default_factory=list)
    items: int = 0
    duplicates: list[tuple[str, str | None]] = field(default_factory=list)  # (name, earlier job)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # not for us; left in place
    failed: list[tuple[str, str]] = field(default_factory=list)  # left in place for the next run
    not_moved: list[tuple[str, str]] = field(default_factory=list)  # ingested, still in the inbox
    enqueue_error: str | None = None

    def enqueue_summary(self) -> dict:
        problems = [
            {"path": name, "problem": kind, "why": why}
            for kind, entries in (
                ("failed", self.failed),
                ("not moved", self.not_moved),
                ("skipped", self.skipped),
            )
            for name, why in entries
        ]
        return {
            "run_id": self.run_id,
            "inbox": shown(self.inbox),
            "done": _s(self.done),
            "started": self.started.isoformat(),
            "files": {
                "ingested": len(self.ingested),
                "duplicate": len(self.duplicates),
                "skipped": len(self.skipped),
                "failed": len(self.failed),
                "not_moved": len(self.not_moved),
            },
            "items_enqueued": self.items,
            "jobs": list(self.jobs),
            "enqueue_error": self.enqueue_error,
            "problems": problems[:MAX_LISTED],
        }


def ingest(
    inbox: Path, done: Path | None, settings: Settings, app: Celery | None = None
) -> IngestRun:
    """Enqueue the inbox's new files as batch jobs, record them, move them to ``done``."""
    inbox, done = _check_directories(inbox, done)
    run = IngestRun(str(uuid.uuid4()), inbox, done, db.utcnow())
    with db.session_scope(settings.database_url) as session:
        session.add(
            db.IngestRun(id=run.run_id, started=run.started, inbox=shown(inbox), done=_s(done))
        )
    try:
        fresh = _drop_known(list(scan(inbox, done, run.skipped, run.failed)), settings, run)
        for batch in _batches(fresh, settings, run):
            if not _submit(batch, settings, app, run):
                break  # the broker is failing: the rest waits for the next run
    except Exception as exc:
        # What was enqueued before the failure is recorded all the same: its jobs run, and the
        # run's summary must name them (the files not reached wait for the next run).
        run.enqueue_error = run.enqueue_error or f"the run stopped early: {exc!r}"
        raise
    finally:
        with db.session_scope(settings.database_url) as session:
            _store_run(session, run.run_id, summary=run.enqueue_summary())
    log.info(
        "ingest run %s: %d files ingested (%d items, %d jobs), %d duplicate, %d skipped, %d failed",
        run.run_id,
        len(run.ingested),
        run.items,
        len(run.jobs),
        len(run.duplicates),
        len(run.skipped),
        len(run.failed),
    )
    return run


def _check_directories(inbox: Path, done: Path | None) -> tuple[Path, Path | None]:
    inbox = Path(inbox).resolve()
    if not inbox.is_dir():
        raise IngestError(f"{shown(inbox)}: no such inbox directory")
    if done is None:
        return inbox, None
    done = Path(done).resolve()
    if done == inbox:
        raise IngestError(f"{shown(done)}: the done directory must not be the inbox itself")
    try:
        done.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise IngestError(
            f"{shown(done)}: cannot create the done directory: {describe(exc)}"
        ) from exc
    return inbox, done


def _drop_known(files: list[InboxFile], settings: Settings, run: IngestRun) -> list[InboxFile]:
    """Files whose content was ingested before (or earlier in this run) are moved, not read."""
    known = _known_hashes([file.sha256 for file in files], settings)
    fresh: list[InboxFile] = []
    for file in files:
        if file.sha256 in known:
            run.duplicates.append((file.name, known[file.sha256]))
            _move(file, run)
        else:
            known[file.sha256] = None
            fresh.append(file)
    return fresh


def _known_hashes(hashes: Sequence[str], settings: Settings) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    with db.session_scope(settings.database_url) as session:
        for start in range(0, len(hashes), LOOKUP_BATCH):
            part = hashes[start : start + LOOKUP_BATCH]
            statement = select(db.IngestedFile.sha256, db.IngestedFile.job_id).where(
                db.IngestedFile.sha256.in_(part)
            )
            found.update(session.execute(statement).all())
    return found


def _batches(
    files: Iterable[InboxFile], settings: Settings, run: IngestRun
) -> Iterator[list[tuple[InboxFile, list[jobs.Crop]]]]:
    """Files grouped into jobs of at most DIGITS_MAX_ITEMS_PER_JOB crops and MAX_JOB_BYTES."""
    batch: list[tuple[InboxFile, list[jobs.Crop]]] = []
    count = size = 0
    for file in files:
        crops = _crops(file, settings, run)
        if not crops:
            continue
        weight = sum(len(crop.data or b"") for crop in crops)
        if batch and (
            count + len(crops) > settings.max_items_per_job or size + weight > MAX_JOB_BYTES
        ):
            yield batch
            batch, count, size = [], 0, 0
        batch.append((file, crops))
        count, size = count + len(crops), size + weight
    if batch:
        yield batch


def _crops(file: InboxFile, settings: Settings, run: IngestRun) -> list[jobs.Crop]:
    """The file's crops keyed by its inbox path (zip members: ``archive.zip/member``)."""
    # The job's limits bound the reading itself: a zip bomb dropped in the inbox stops at them.
    try:
        found = collect(
            [file.path],
            settings.max_item_bytes,
            max_crops=settings.max_items_per_job,
            max_total_bytes=settings.max_job_bytes,
        )
    except FILE_ERRORS as exc:  # collect keeps each failure to its file; this is the backstop
        run.failed.append((file.name, f"unreadable: {describe(exc)}"))
        return []
    if found.unreadable:
        run.failed.append(
            (file.name, "unreadable: " + "; ".join(why for _, why in found.unreadable))
        )
        return []
    if found.refused:
        run.failed.append((file.name, found.refused))
        return []
    if not found.crops:
        run.skipped.append((file.name, "an archive with no images in it"))
        return []
    # collect() keys a file given by path with its bare name; the inbox path keeps keys unique.
    prefix = len(key_for(file.path.name))
    return [dataclasses.replace(crop, key=file.name + crop.key[prefix:]) for crop in found.crops]


def _submit(
    batch: list[tuple[InboxFile, list[jobs.Crop]]],
    settings: Settings,
    app: Celery | None,
    run: IngestRun,
) -> bool:
    """One job for the batch; False when the broker failed and the run should stop."""
    crops = [crop for _, file_crops in batch for crop in file_crops]
    try:
        plan = jobs.plan_job(crops, settings, source=f"ingest {run.inbox}"[:200])
    except jobs.JobError as exc:
        if len(batch) == 1:
            run.failed.append((batch[0][0].name, str(exc)))
            return True
        # One file's crops spoil the job (duplicate member names, say): find it, keep the rest.
        return all(_submit([part], settings, app, run) for part in batch)
    # A night's files are batch work even when they fit one chunk: keep the interactive queue free.
    plan = dataclasses.replace(plan, queue=BATCH_QUEUE)
    if not _record(plan, batch, settings, run):
        return True
    try:
        jobs.send_chunks(plan, settings, app)
    except jobs.EnqueueInterrupted:
        # Ctrl-C: the unsent items are marked; unrecord the files so the next run reads them
        # again instead of taking them for done (as for a broker failure, below).
        _forget(plan.job_id, settings)
        raise
    except jobs.EnqueueError as exc:
        _forget(plan.job_id, settings)
        run.enqueue_error = str(exc)
        run.failed.extend(
            (file.name, "could not be queued; left for the next run") for file, _ in batch
        )
        log.error("ingest run %s: %s", run.run_id, exc)
        return False
    run.jobs.append(plan.job_id)
    run.items += plan.total
    for file, _ in batch:
        run.ingested.append(file.name)
        _move(file, run)
    return True


def _record(
    plan: jobs.JobPlan,
    batch: list[tuple[InboxFile, list[jobs.Crop]]],
    settings: Settings,
    run: IngestRun,
) -> bool:
    """The job, its items and its files in one transaction; False if another run took a file."""
    rows = [
        {
            "sha256": file.sha256,
            "path": file.name[:1000],
            "size": file.size,
            "items": len(crops),
            "job_id": plan.job_id,
            "run_id": run.run_id,
            "ingested": run.started,
        }
        for file, crops in batch
    ]
    try:
        with db.session_scope(settings.database_url) as session:
            jobs.create_job(session, plan)
            session.execute(insert(db.IngestedFile), rows)
    except IntegrityError:
        why = "recorded by another ingestion run at the same time; left for the next run"
        run.failed.extend((file.name, why) for file, _ in batch)
        return False
    return True


def _forget(job_id: str, settings: Settings) -> None:
    """Unrecord the files of a job that could not be queued, so the next run reads them again."""
    with db.session_scope(settings.database_url) as session:
        session.execute(delete(db.IngestedFile).where(db.IngestedFile.job_id == job_id))


def _move(file: InboxFile, run: IngestRun) -> None:
    if run.done is None:
        return  # the table marks it: the next run skips it by content
    # The real relative path, not the (escaped) name: the file keeps its place and its bytes.
    target = _free_name(run.done / file.path.relative_to(run.inbox), file.sha256)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(file.path, target)
    except OSError as exc:
        run.not_moved.append((file.name, f"ingested, but not moved to {run.done}: {exc}"))


def _free_name(target: Path, sha256: str) -> Path:
    """``target``, or beside it with the content's hash when a file of that name is already done."""
    if not target.exists():
        return target
    candidate = target.with_name(f"{target.stem}.{sha256[:12]}{target.suffix}")
    counter = 1
    while candidate.exists():
        candidate = target.with_name(f"{target.stem}.{sha256[:12]}-{counter}{target.suffix}")
        counter += 1
    return candidate


def jobs_finished(database_url: str, run_id: str) -> bool:
    """Whether every job of the run has reached a final status (done, partial, failed or cancelled)."""
    with db.session_scope(database_url) as session:
        job_ids = _run_row(session, run_id).summary.get("jobs", [])
        if not job_ids:
            return True
        unfinished = session.scalar(
            select(func.count())
            .select_from(db.Job)
            .where(db.Job.id.in_(job_ids), db.Job.status.not_in(db.FINAL_JOB_STATUSES))
        )
    return unfinished == 0


def summarize(database_url: str, run_id: str, waited: bool = True) -> dict:
    """The run's summary from the database, stored in its row and as JSON in the done directory.

    ``waited``: the caller is done waiting (the jobs finished, or it gave up). Rates are left out
    of a summary nobody waited for: only crops rejected at submission would have a result yet.
    """
    with db.session_scope(database_url) as session:
        row = _run_row(session, run_id)
        started, job_ids = db.as_utc(row.started), row.summary.get("jobs", [])
        summary = {**row.summary, **_results(session, job_ids)}
        finished = _all_final(session, job_ids)
        end = (_end_time(session, job_ids) if finished else None) or db.utcnow()
    summary["state"] = "finished" if finished else "incomplete" if waited else "enqueued"
    if not waited and not finished:
        summary["review_rate"] = summary["error_rate"] = None
    summary["finished"] = end.isoformat() if finished else None
    summary["duration_s"] = round((end - started).total_seconds(), 3)
    with db.session_scope(database_url) as session:
        _store_run(
            session,
            run_id,
            summary=summary,
            state=summary["state"],
            finished=end if finished else None,
        )
    _write_file(summary)
    return summary


def _store_run(session, run_id: str, **values) -> None:
    """A write-first transaction: on SQLite, reading first and then writing while a worker commits
    fails at once with "database is locked" instead of waiting for the lock."""
    session.execute(update(db.IngestRun).where(db.IngestRun.id == run_id).values(**values))


def _run_row(session, run_id: str) -> db.IngestRun:
    row = session.get(db.IngestRun, run_id)
    if row is None or row.summary is None:
        raise LookupError(f"no ingest run {run_id!r} in this database")
    return row


def _results(session, job_ids: list[str]) -> dict:
    by_status = dict(
        session.execute(
            select(db.Item.status, func.count())
            .where(db.Item.job_id.in_(job_ids))
            .group_by(db.Item.status)
        ).all()
    )
    names = [*RESULT_STATUSES, ItemStatus.PENDING]
    items = {name.value: by_status.get(name, 0) for name in names}
    items["total"] = sum(by_status.values())
    processed = items["total"] - items["pending"]
    confidences = session.scalars(
        select(db.Item.confidence).where(
            db.Item.job_id.in_(job_ids), db.Item.confidence.is_not(None)
        )
    ).all()
    return {
        "items": items,
        "review_rate": rate(items["needs_review"], processed),
        "error_rate": rate(items["error"], processed),
        "confidence": confidence_distribution(confidences),
    }


def _all_final(session, job_ids: list[str]) -> bool:
    statuses = session.scalars(select(db.Job.status).where(db.Job.id.in_(job_ids))).all()
    return all(status in db.FINAL_JOB_STATUSES for status in statuses)


def _end_time(session, job_ids: list[str]) -> datetime | None:
    """When the run's last job finished: the run's duration does not depend on who polled when."""
    if not job_ids:
        return None
    last = session.scalar(select(func.max(db.Job.finished)).where(db.Job.id.in_(job_ids)))
    return db.as_utc(last) if last else None


def _write_file(summary: dict) -> None:
    """``ingest-<start>-<run>.json`` beside the done files, for whoever looks there first."""
    if not summary.get("done"):
        return
    started = datetime.fromisoformat(summary["started"]).astimezone(UTC)
    name = f"ingest-{started:%Y%m%dT%H%M%SZ}-{summary['run_id'][:8]}.json"
    path = Path(name_of(summary["done"])) / name
    try:
        temporary = path.with_name(f".{name}.tmp")
        temporary.write_text(json.dumps(summary, indent=2) + "\n")
        temporary.replace(path)
    except OSError as exc:
        log.warning("ingest run %s: summary not written to %s: %s", summary["run_id"], path, exc)


def _s(path: Path | None) -> str | None:
    return shown(path) if path else None
