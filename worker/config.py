"""Every setting of the queue, the worker and the job commands, read from the environment at once.

The CLI, the Celery app and the tasks all build a :class:`Settings` from the same variables, so a
submitter and a worker on another machine agree as long as their environments do. A bad value is a
start-up error naming the variable, never a surprise deep inside a task.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from digits.model import review
from digits.model.card import SHIPPED_FIELD_DIGITS, SHIPPED_FIELD_MODEL, SHIPPED_MODEL
from digits.model.limits import DEFAULT_LIMITS

ROOT = Path(__file__).resolve().parent.parent
# Absolute, so the CLI and a worker started from another directory open the same file.
DEFAULT_DATABASE_URL = f"sqlite:///{ROOT / 'var' / 'digits.sqlite3'}"
DEFAULT_BROKER_URL = "redis://localhost:6379/0"
# Where the chunk messages' signing key is made and kept when DIGITS_MESSAGE_KEY is unset: beside
# the default database, so a submitter and the workers of one machine share it (queue.signing).
DEFAULT_MESSAGE_KEY_FILE = ROOT / "var" / "message.key"
# A key shorter than this could be guessed offline from one signed message (openssl rand -hex 32).
MIN_MESSAGE_KEY_LENGTH = 32
# Bounded by the bind-parameter limits of one multi-row upsert (PostgreSQL: 65535 per statement).
MAX_CHUNK_SIZE = 2000
# Which crops the worker keeps in the database (store.crops): those a person must see (needs review
# or error), every one, or none.
KEEP_CROPS = ("review", "all", "none")
# The review station's session-signing key, made once beside the default database when
# DIGITS_STATION_SECRET is unset (like the message key).
DEFAULT_STATION_SECRET_FILE = ROOT / "var" / "station.key"


class ConfigError(ValueError):
    """An environment variable holds a value the worker cannot run with."""


@dataclass(frozen=True)
class Settings:
    broker_url: str = DEFAULT_BROKER_URL
    database_url: str = DEFAULT_DATABASE_URL
    # None: each job takes its kind's default (model.review.threshold_for); set, it rules them all.
    review_threshold: float | None = None
    chunk_size: int = 256
    # Fields per chunk of a field job. A field costs a worker child about a hundred crops' work
    # (each candidate cut of the segmenter in three looks, and the sequence reader): chunks of
    # 256 fields held 1.2 GB at peak in a child, of 32 fields 0.94 GB, and 512 fields were read
    # 2-4% faster so (docs/performance.md).
    field_chunk_size: int = 32
    # Crops of one chunk travel in one message; this caps a message however large the crops are.
    max_chunk_bytes: int = 32 * 1024 * 1024
    max_items_per_job: int = 100_000
    # What `digits enqueue` reads into memory for one job: a bound on zip bombs of small members.
    max_job_bytes: int = 1024 * 1024 * 1024
    max_item_bytes: int = DEFAULT_LIMITS.max_bytes
    model_path: Path = SHIPPED_MODEL
    # The sequence reader of whole fields, the second of the two readers that must agree.
    field_model_path: Path = SHIPPED_FIELD_MODEL
    # The digit network the segmenter of fields reads its cuts with (single digits use model_path).
    field_digits_path: Path = SHIPPED_FIELD_DIGITS
    # Each worker child loads its models as it starts (queue.warmup); one that takes longer than this
    # is killed and replaced by Celery, and the worker stops waiting to say it is ready.
    model_load_timeout_s: int = 120
    # Load the field reader and the field digit network as each child starts too, so a field
    # job's first chunk costs what its tenth does (else it pays the loads once per child). Off by
    # default: the field reader alone held 26 MB more in every child (744 MB against 718 at
    # peak), and the field digit network is a second copy of the cnn, whether field jobs come or not.
    preload_field_reader: bool = False
    db_retries: int = 5
    # Deliveries of one chunk that may die mid-way (a killed child) before it is split into one-crop
    # chunks, and a one-crop chunk's item marked error: Redis alone would redeliver it forever.
    max_deliveries: int = 3
    db_retry_backoff_s: int = 2
    db_retry_backoff_max_s: int = 120
    task_time_limit_s: int = 600
    # Redis redelivers a message nobody acknowledged within this time; it must outlast the longest
    # task and the longest retry countdown, or a slow chunk would run twice at once.
    visibility_timeout_s: int = 3600
    # Nightly ingestion (worker/schedule.py): off unless a cron expression "m h dom mon dow" is set.
    ingest_schedule: str | None = None
    ingest_inbox: Path | None = None
    ingest_done: Path | None = None
    # The zone the schedule's hours are in (Celery's ``timezone``).
    timezone: str = "UTC"
    # The secret chunk messages are signed with (queue.signing): write access to Redis must not be
    # write access to the results. Unset, the key file below is used (made once if missing).
    message_key: str | None = field(default=None, repr=False)
    message_key_file: Path = DEFAULT_MESSAGE_KEY_FILE
    # The crops kept for people (KEEP_CROPS), and for how long `digits purge` leaves them once
    # their item is settled.
    keep_crops: str = "review"
    crop_retention_days: int = 90
    # The review station (worker/station): how long an item shown to an operator stays theirs
    # without a keystroke, how many wrong passwords a name or an address may try per window, how
    # long a login lasts, and whether its cookie is for HTTPS only (behind a TLS proxy: set it).
    review_lock_s: int = 300
    login_max_failures: int = 5
    login_window_s: int = 900
    session_max_age_s: int = 12 * 3600
    station_https: bool = False
    station_secret: str | None = field(default=None, repr=False)
    station_secret_file: Path = DEFAULT_STATION_SECRET_FILE

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``DIGITS_*`` variables; unset or empty ones take the defaults above."""
        env = os.environ if env is None else env
        defaults = cls()
        settings = cls(
            broker_url=_text(env, "DIGITS_BROKER_URL", defaults.broker_url),
            database_url=_text(env, "DIGITS_DATABASE_URL", defaults.database_url),
            review_threshold=_number(env, "DIGITS_REVIEW_THRESHOLD", None),
            chunk_size=_integer(env, "DIGITS_CHUNK_SIZE", defaults.chunk_size),
            field_chunk_size=_integer(env, "DIGITS_FIELD_CHUNK_SIZE", defaults.field_chunk_size),
            max_chunk_bytes=_integer(env, "DIGITS_MAX_CHUNK_BYTES", defaults.max_chunk_bytes),
            max_items_per_job=_integer(env, "DIGITS_MAX_ITEMS_PER_JOB", defaults.max_items_per_job),
            max_job_bytes=_integer(env, "DIGITS_MAX_JOB_BYTES", defaults.max_job_bytes),
            max_item_bytes=_integer(env, "DIGITS_MAX_ITEM_BYTES", defaults.max_item_bytes),
            model_path=Path(_text(env, "DIGITS_MODEL", str(defaults.model_path))),
            field_model_path=Path(_text(env, "DIGITS_FIELD_MODEL", str(defaults.field_model_path))),
            field_digits_path=Path(
                _text(env, "DIGITS_FIELD_DIGITS", str(defaults.field_digits_path))
            ),
            model_load_timeout_s=_integer(
                env, "DIGITS_MODEL_LOAD_TIMEOUT", defaults.model_load_timeout_s
            ),
            preload_field_reader=_flag(
                env, "DIGITS_PRELOAD_FIELD_READER", defaults.preload_field_reader
            ),
            db_retries=_integer(env, "DIGITS_DB_RETRIES", defaults.db_retries, minimum=0),
            max_deliveries=_integer(env, "DIGITS_MAX_DELIVERIES", defaults.max_deliveries),
            db_retry_backoff_s=_integer(
                env, "DIGITS_DB_RETRY_BACKOFF", defaults.db_retry_backoff_s
            ),
            db_retry_backoff_max_s=_integer(
                env, "DIGITS_DB_RETRY_BACKOFF_MAX", defaults.db_retry_backoff_max_s
            ),
            task_time_limit_s=_integer(env, "DIGITS_TASK_TIME_LIMIT", defaults.task_time_limit_s),
            visibility_timeout_s=_integer(
                env, "DIGITS_VISIBILITY_TIMEOUT", defaults.visibility_timeout_s
            ),
            ingest_schedule=env.get("DIGITS_INGEST_SCHEDULE", "").strip() or None,
            ingest_inbox=_path(env, "DIGITS_INGEST_INBOX"),
            ingest_done=_path(env, "DIGITS_INGEST_DONE"),
            timezone=_text(env, "DIGITS_TIMEZONE", defaults.timezone),
            message_key=env.get("DIGITS_MESSAGE_KEY") or None,
            message_key_file=Path(
                _text(env, "DIGITS_MESSAGE_KEY_FILE", str(defaults.message_key_file))
            ),
            keep_crops=_text(env, "DIGITS_KEEP_CROPS", defaults.keep_crops).strip().lower(),
            crop_retention_days=_integer(
                env, "DIGITS_CROP_RETENTION_DAYS", defaults.crop_retention_days
            ),
            review_lock_s=_integer(env, "DIGITS_REVIEW_LOCK_S", defaults.review_lock_s),
            login_max_failures=_integer(
                env, "DIGITS_LOGIN_MAX_FAILURES", defaults.login_max_failures
            ),
            login_window_s=_integer(env, "DIGITS_LOGIN_WINDOW_S", defaults.login_window_s),
            session_max_age_s=_integer(env, "DIGITS_SESSION_MAX_AGE_S", defaults.session_max_age_s),
            station_https=_flag(env, "DIGITS_STATION_HTTPS", defaults.station_https),
            station_secret=env.get("DIGITS_STATION_SECRET") or None,
            station_secret_file=Path(
                _text(env, "DIGITS_STATION_SECRET_FILE", str(defaults.station_secret_file))
            ),
        )
        settings.check()
        return settings

    def check(self) -> None:
        """Reject combinations that would lose or duplicate work rather than fail at start-up."""
        if self.review_threshold is not None and not 0.0 <= self.review_threshold <= 1.0:
            raise ConfigError(
                f"DIGITS_REVIEW_THRESHOLD={self.review_threshold}: must be between 0 and 1"
            )
        if self.chunk_size > MAX_CHUNK_SIZE:
            raise ConfigError(
                f"DIGITS_CHUNK_SIZE={self.chunk_size}: at most {MAX_CHUNK_SIZE} crops per chunk"
            )
        if self.field_chunk_size > MAX_CHUNK_SIZE:
            raise ConfigError(
                f"DIGITS_FIELD_CHUNK_SIZE={self.field_chunk_size}: at most {MAX_CHUNK_SIZE} "
                "fields per chunk"
            )
        if self.max_item_bytes > self.max_job_bytes:
            raise ConfigError(
                f"DIGITS_MAX_ITEM_BYTES={self.max_item_bytes} exceeds "
                f"DIGITS_MAX_JOB_BYTES={self.max_job_bytes}: one crop must fit in a job"
            )
        if self.max_item_bytes > self.max_chunk_bytes:
            raise ConfigError(
                f"DIGITS_MAX_ITEM_BYTES={self.max_item_bytes} exceeds "
                f"DIGITS_MAX_CHUNK_BYTES={self.max_chunk_bytes}: one crop must fit in a message"
            )
        longest = max(self.task_time_limit_s, self.db_retry_backoff_max_s)
        if self.visibility_timeout_s <= longest:
            raise ConfigError(
                f"DIGITS_VISIBILITY_TIMEOUT={self.visibility_timeout_s}: must exceed the task "
                f"time limit and the longest retry delay ({longest} s), or running chunks are "
                "redelivered"
            )
        _check_secret("DIGITS_MESSAGE_KEY", self.message_key)
        if self.keep_crops not in KEEP_CROPS:
            raise ConfigError(
                f"DIGITS_KEEP_CROPS={self.keep_crops!r}: choose one of {', '.join(KEEP_CROPS)}"
            )
        _check_secret("DIGITS_STATION_SECRET", self.station_secret)
        if self.ingest_schedule and self.ingest_inbox is None:
            raise ConfigError(
                f"DIGITS_INGEST_SCHEDULE={self.ingest_schedule!r} needs DIGITS_INGEST_INBOX: "
                "the directory to ingest"
            )

    def threshold_for(self, kind: str) -> float:
        """The review threshold a new job of ``kind`` is stored with (model.review decides)."""
        return review.threshold_for(kind, self.review_threshold)

    @property
    def soft_time_limit_s(self) -> int:
        """Leaves the task time to record its chunk as failed before the hard limit kills it."""
        return max(1, self.task_time_limit_s - min(30, self.task_time_limit_s // 10))


def _check_secret(name: str, value: str | None) -> None:
    """A key set in the environment must be long enough not to be guessed offline, and not
    .env.example's placeholder, which is public: signing with it would sign for anyone."""
    if value is None:
        return
    if len(value) < MIN_MESSAGE_KEY_LENGTH:
        raise ConfigError(
            f"{name}: {len(value)} characters, at least {MIN_MESSAGE_KEY_LENGTH} needed "
            "(openssl rand -hex 32 makes one)"
        )
    if value.startswith("change-me"):
        raise ConfigError(
            f"{name} is still .env.example's placeholder: set one of your own "
            "(openssl rand -hex 32)"
        )


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    return env.get(name) or default


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    return Path(raw) if raw else None


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for logs (broker and database URLs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))


def _integer(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not an integer") from None
    if value < minimum:
        raise ConfigError(f"{name}={value}: must be at least {minimum}")
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: not a yes/no value (1, 0, true, false, yes, no, on, off)")


def _number(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: not a number") from None
