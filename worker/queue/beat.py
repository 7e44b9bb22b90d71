"""Ingestion on a schedule: the Celery beat entry built from the environment.

``celery -A digits.worker.queue.celery_app beat`` sends ``digits.ingest_inbox`` at
DIGITS_INGEST_SCHEDULE (cron syntax, in DIGITS_TIMEZONE); the task itself, and the one that
completes the run's summary, are submission's (:mod:`digits.worker.submission.scheduled`), which
the app includes by name, so the queue never imports submission.
"""

from __future__ import annotations

import logging
import zoneinfo

from celery.schedules import crontab
from celery.signals import beat_init

from digits.worker.config import ConfigError, Settings, mask_url
from digits.worker.queue.messages import INGEST_TASK

SCHEDULE_ENTRY = "digits-ingest"

log = logging.getLogger("digits.schedule")


def parse_cron(expression: str) -> crontab:
    """``"m h dom mon dow"`` as a crontab; a bad field is a ConfigError naming the variable."""
    fields = expression.split()
    if len(fields) != 5:
        raise ConfigError(
            f"DIGITS_INGEST_SCHEDULE={expression!r}: five fields expected "
            '("minute hour day-of-month month day-of-week", e.g. "0 2 * * *")'
        )
    minute, hour, day_of_month, month, day_of_week = fields
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month,
            day_of_week=day_of_week,
        )
    except ValueError as exc:
        raise ConfigError(f"DIGITS_INGEST_SCHEDULE={expression!r}: {exc}") from None


def beat_config(settings: Settings) -> dict:
    """Celery settings for beat: the ingestion entry when a schedule is set, and the time zone."""
    try:
        zoneinfo.ZoneInfo(settings.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"DIGITS_TIMEZONE={settings.timezone!r}: not a known time zone") from None
    config: dict = {"timezone": settings.timezone, "beat_schedule": {}}
    if settings.ingest_schedule:
        done = settings.ingest_done
        config["beat_schedule"][SCHEDULE_ENTRY] = {
            "task": INGEST_TASK,
            "schedule": parse_cron(settings.ingest_schedule),
            "kwargs": {"inbox": str(settings.ingest_inbox), "done": str(done) if done else None},
            # An ingestion missed by far (beat was down) is not worth running late: the next will.
            "options": {"expires": 6 * 3600},
        }
    return config


@beat_init.connect
def _log_schedule(sender=None, **_kwargs) -> None:
    """Beat's start-up line: what it will send and where, passwords masked."""
    settings = Settings.from_env()
    if settings.ingest_schedule:
        log.info(
            "beat: ingesting %s (done: %s) at %r %s; broker %s",
            settings.ingest_inbox,
            settings.ingest_done or "files stay, marked in the database",
            settings.ingest_schedule,
            settings.timezone,
            mask_url(settings.broker_url),
        )
    else:
        log.info("beat: no ingestion scheduled (DIGITS_INGEST_SCHEDULE is not set)")
