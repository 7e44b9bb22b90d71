"""The Celery application: ``celery -A digits.worker.queue.celery_app worker`` starts a worker.

Importing it is cheap (no TensorFlow): the worker's parent process imports it before forking its
children, and the model must only ever be built inside a child (see :mod:`.model_cache`). The
tasks are included by module name (:mod:`.tasks`, :mod:`digits.worker.submission.scheduled`), so
this module imports neither: senders (submission) may import it without a circle.
"""

from __future__ import annotations

import logging
import ssl
import sys
from collections.abc import Sequence
from urllib.parse import urlsplit

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_after_setup,
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)
from kombu import Exchange, Queue

from digits.model import quiet
from digits.worker.config import Settings, mask_url
from digits.worker.queue import beat, warmup
from digits.worker.queue.messages import BATCH_QUEUE, QUEUES

TASK_MODULES = ["digits.worker.queue.tasks", "digits.worker.submission.scheduled"]
# Before the children import TensorFlow: its start-up lines stay out of the worker log.
quiet.install()

log = logging.getLogger("digits.worker")


def celery_config(settings: Settings) -> dict:
    """Celery settings that make a crashed or restarted worker lose nothing."""
    return {
        "broker_url": settings.broker_url,
        # kombu's Redis transport, but a junk entry in a queue is dropped instead of stopping the
        # worker (worker/transport.py).
        "broker_transport": "digits.worker.queue.transport:Transport",
        "broker_use_ssl": broker_ssl(settings.broker_url),
        "broker_connection_retry_on_startup": True,
        # A message is Redis-invisible to other workers until acknowledged or this long passes.
        "broker_transport_options": transport_options(settings),
        # Messages carry crops from anywhere; pickle would let a sender run code in the worker.
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        # Results live in the database, not in a result backend.
        "task_ignore_result": True,
        # Acknowledge after the chunk is written, so a worker killed mid-chunk gets it redelivered.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message per child at a time: a long batch chunk never hides a waiting interactive one.
        "worker_prefetch_multiplier": 1,
        # Children load their models before they report up (queue.warmup): allow them the time.
        "worker_proc_alive_timeout": settings.model_load_timeout_s,
        "task_time_limit": settings.task_time_limit_s,
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_queues": [Queue(name, Exchange(name, "direct"), routing_key=name) for name in QUEUES],
        "task_default_queue": BATCH_QUEUE,
        "task_create_missing_queues": False,
        "worker_hijack_root_logger": True,
    }


def transport_options(settings: Settings) -> dict:
    """Redis transport options: the body as it is, and how long a message may stay
    unacknowledged, and how soon after.

    A worker killed outright (SIGKILL to the whole process group, a machine lost) leaves its
    running chunks unacknowledged in Redis; another worker restores them once the visibility
    timeout has passed, at its next sweep. kombu sweeps every ``interval * throttle`` seconds (100 s
    by default); a sweep is one ZRANGE, so sweep every tenth of the timeout, at most every 10 s.
    """
    return {
        # The body is JSON text already, the crops base64 inside it: kombu's default second
        # layer of base64 around it made each entry a third larger and cost the submitter and
        # the worker's parent an encoding and a decoding (7 ms a chunk of 256 crops, together).
        # None, not "utf-8": workers from before this took only None or base64, and kombu
        # decodes each entry by its own properties, so base64 entries queued before still read.
        "body_encoding": None,
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 10)),
        "unacked_restore_throttle": 1,
    }


def broker_ssl(broker_url: str) -> dict | None:
    """For ``rediss://``: verify the server's certificate unless the URL's query says otherwise.

    kombu's own default for a bare ``rediss://`` is ``CERT_NONE`` (encrypted, but to anyone); the
    URL's ``ssl_cert_reqs``, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile`` and
    ``ssl_check_hostname`` are passed through and take precedence over this.
    """
    if urlsplit(broker_url).scheme != "rediss":
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def create_app(settings: Settings | None = None) -> Celery:
    """An app bound to ``settings`` (by default the environment's); senders may make their own."""
    settings = settings or Settings.from_env()
    celery = Celery("digits", include=TASK_MODULES)
    celery.conf.update(celery_config(settings))
    celery.conf.update(beat.beat_config(settings))
    celery.steps["worker"].add(warmup.WaitForModels)
    return celery


def worker_command(
    hostname: str, concurrency: int = 2, queues: Sequence[str] = QUEUES, loglevel: str = "INFO"
) -> list[str]:
    """The command line ``digits worker`` documents: prefork, both queues."""
    # fmt: off
    return [
        sys.executable, "-m", "celery", "-A", "digits.worker.queue.celery_app", "worker",
        "--pool", "prefork", "--concurrency", str(concurrency), "--queues", ",".join(queues),
        "--loglevel", loglevel, "--hostname", hostname, "--without-gossip", "--without-mingle",
    ]
    # fmt: on


app = create_app()


@worker_init.connect
def _migrate_before_fork(**_kwargs) -> None:
    """Runs once in the worker's parent, before the pool forks: the only process that migrates."""
    from sqlalchemy.orm import configure_mappers

    from digits.worker.config import ConfigError
    from digits.worker.queue import model_cache, signing
    from digits.worker.store import db

    try:
        settings = Settings.from_env()
        # A key that cannot be had would otherwise park or fail every chunk, one by one.
        signing.message_key(settings)
    except ConfigError as exc:
        raise SystemExit(f"digits worker: {exc}") from exc
    if not settings.model_path.is_file():
        # The worker stops here, loudly, rather than parking every chunk it takes. SystemExit,
        # because Celery's signals log and swallow an Exception from their handlers.
        raise SystemExit(
            f"digits worker: no model file at {settings.model_path}: set DIGITS_MODEL to a "
            ".keras model (digits train writes one)"
        )
    try:
        db.upgrade(settings.database_url)
    except db.MigrationLockError as exc:
        raise SystemExit(
            f"digits worker: database {mask_url(settings.database_url)}: {exc}"
        ) from exc
    db.dispose_all()
    # The ORM's mappers are set up once, here, and inherited: each child's first chunk would
    # otherwise spend 30 ms on it (configuring touches no connection).
    configure_mappers()
    model_cache.forbid_in_this_process()
    warmup.open_reports()
    log.info("database schema is current; children load their models as they start")


@worker_process_init.connect
def _load_models(**_kwargs) -> None:
    """In each child as it starts, before it takes work: see .warmup."""
    warmup.load_in_child(Settings.from_env())


_sweepers: list = []


@worker_ready.connect
def _start_sweeper(**_kwargs) -> None:
    """In the parent, once its children run: send again the chunks no one will run (.sweeper)."""
    from digits.worker.queue.sweeper import Sweeper

    settings = Settings.from_env()
    sweeper = Sweeper(settings, create_app(settings))
    sweeper.start()
    _sweepers.append(sweeper)


@worker_shutdown.connect
def _stop_sweeper(**_kwargs) -> None:
    while _sweepers:
        _sweepers.pop().stop()


@celeryd_after_setup.connect
def _log_start_up(**_kwargs) -> None:
    """The line an operator greps for first; here, as worker_init runs before logging is set up."""
    settings = Settings.from_env()
    log.info(
        "digits worker starting: model %s, broker %s, database %s",
        _model_version(settings.model_path),
        mask_url(settings.broker_url),
        mask_url(settings.database_url),
    )


def _model_version(path) -> str:
    """From the model's card (no TensorFlow here); a missing model is named, not fatal, here."""
    from digits.model.card import read_card, version

    try:
        return f"{version(read_card(path))} ({path})"
    except (OSError, KeyError, ValueError) as exc:
        return f"unreadable at {path} ({exc})"


@after_setup_logger.connect
@after_setup_task_logger.connect
def _mask_secrets_in_logs(logger: logging.Logger, **_kwargs) -> None:
    """Every handler Celery sets up masks passwords, whoever logs the line (worker.redact)."""
    from digits.worker import redact

    redact.install(logger)
