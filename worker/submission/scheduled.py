"""The scheduled ingestion's two tasks: enqueue the inbox, then complete the run's summary.

Beat (:mod:`digits.worker.queue.beat`) sends ``digits.ingest_inbox`` on its schedule. That task
only enqueues: a worker child waiting for chunks that need worker children would deadlock a small
pool. It hands the run to ``digits.finish_ingest``, which checks back every ``poll_s`` seconds (a
retry with a countdown, holding no child meanwhile) and stores the summary once the run's jobs
have ended, or as incomplete after a day.

A message redelivered after a worker died mid-run simply ingests again: files are recognised by
content, so nothing is read twice. The Celery app includes this module by name (no import), so
the queue does not depend on submission.
"""

from __future__ import annotations

import logging
from pathlib import Path

from celery import shared_task

from digits.worker.config import ConfigError, Settings
from digits.worker.queue.messages import FINISH_TASK, INGEST_TASK
from digits.worker.submission import ingest

FINISH_POLL_S = 60
# A day of polls; a run whose jobs are still not done by then gets an incomplete summary.
FINISH_MAX_POLLS = 24 * 60

log = logging.getLogger("digits.schedule")


# A night's inbox can take far longer than a chunk, so its own limits. Acknowledged on receipt: a
# run cut short is not sent again (a second run racing the first would read the inbox twice over);
# the files it did not reach wait, unrecorded, for the next run.
INGEST_TIME_LIMIT_S = 6 * 3600


@shared_task(
    bind=True,
    name=INGEST_TASK,
    acks_late=False,
    time_limit=INGEST_TIME_LIMIT_S,
    soft_time_limit=INGEST_TIME_LIMIT_S - 60,
)
def ingest_inbox(
    self, inbox: str | None = None, done: str | None = None, poll_s: float = FINISH_POLL_S
) -> dict:
    """Enqueue the inbox's new files and leave the summary to :func:`finish_ingest`."""
    settings = Settings.from_env()
    inbox = inbox or (str(settings.ingest_inbox) if settings.ingest_inbox else None)
    if not inbox:
        raise ConfigError("no inbox given and DIGITS_INGEST_INBOX is not set")
    done = done or (str(settings.ingest_done) if settings.ingest_done else None)
    run = ingest.ingest(Path(inbox), Path(done) if done else None, settings, app=self.app)
    # Each file that could not be read failed alone (ingest goes on past it): name it in the log,
    # where whoever watches the nightly run looks first; the stored summary lists them too.
    for name, why in run.failed[: ingest.MAX_LISTED]:
        log.warning("ingest run %s: %s failed: %s", run.run_id, name, why)
    send_finish(self.app, run.run_id, poll_s)
    summary = run.enqueue_summary()
    return {key: summary[key] for key in ("run_id", "files", "items_enqueued", "jobs")}


def send_finish(app, run_id: str, poll_s: float = FINISH_POLL_S) -> None:
    """Have a worker complete the run's summary once its jobs end (``digits ingest --no-wait``)."""
    app.send_task(FINISH_TASK, args=[run_id], kwargs={"poll_s": poll_s}, countdown=poll_s)


@shared_task(bind=True, name=FINISH_TASK, max_retries=FINISH_MAX_POLLS)
def finish_ingest(self, run_id: str, poll_s: float = FINISH_POLL_S) -> dict:
    """Store the run's summary once its jobs have ended; until then, check back later."""
    settings = Settings.from_env()
    last_poll = self.request.retries >= self.max_retries
    if not last_poll and not ingest.jobs_finished(settings.database_url, run_id):
        raise self.retry(countdown=poll_s)
    summary = ingest.summarize(settings.database_url, run_id, waited=True)
    items = summary["items"]
    log.info(
        "ingest run %s %s: %d items (ok %d, review %d, blank %d, error %d) in %.1f s",
        run_id,
        summary["state"],
        items["total"],
        items["ok"],
        items["needs_review"],
        items["blank"],
        items["error"],
        summary["duration_s"],
    )
    return {key: summary[key] for key in ("run_id", "state", "items", "duration_s")}
