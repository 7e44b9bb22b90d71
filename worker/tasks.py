"""The one task: classify a chunk of crops with one Classifier call and write it in one transaction.

Failure handling, from the most to the least common:

* a bad crop (not an image, too big, unreadable) is an ``error`` item; the chunk carries on;
* a database error (``OperationalError``: locked, restarting, unreachable) retries the task with
  exponential backoff and jitter; after the last retry the chunk's items are written as ``error``
  with the reason, and if even that write fails the task fails loudly;
* anything else while classifying (the model file is missing, the soft time limit hits) records the
  chunk's items as ``error`` with the reason and then fails the task, so nothing stays pending;
* a worker child killed mid-chunk: the message was not acknowledged, so Redis redelivers it and the
  upsert makes the second write replace the first.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import time
from collections.abc import Sequence

from sqlalchemy.exc import OperationalError

from model.fields import FIELD_LIMITS, FieldReading, read_fields
from model.inference import Prediction
from model.normalize import DEFAULT_LIMITS
from worker import db, model_cache, store
from worker.celery_app import TASK_NAME, app
from worker.config import Settings

log = logging.getLogger("digits.worker")
# Decorator arguments are fixed when the worker imports this module.
_settings = Settings.from_env()


@app.task(
    bind=True,
    name=TASK_NAME,
    autoretry_for=(OperationalError,),
    max_retries=_settings.db_retries,
    retry_backoff=_settings.db_retry_backoff_s,
    retry_backoff_max=_settings.db_retry_backoff_max_s,
    retry_jitter=True,
)
def classify_chunk(
    self,
    job_id: str,
    chunk: int,
    crops: list[list[str]],
    threshold: float,
    kind: str | None = None,
) -> dict:
    """Classify ``crops`` (``[key, base64]`` pairs) of job ``job_id`` and store the results.

    ``kind`` is absent from digit jobs' messages; a field message that lost it (re-sent crop by
    crop) is read by the kind stored on its job.
    """
    started = time.monotonic()
    settings = Settings.from_env()
    keys = [key for key, _ in crops]
    where = f"job {job_id} chunk {chunk}"
    try:
        classifier = model_cache.classifier(settings.model_path)
        results = classify(
            classifier, crops, threshold, settings, kind or _job_kind(settings, job_id)
        )
    except Exception as exc:
        log.exception("%s: classification failed", where)
        _record_failure(settings, job_id, keys, f"classification failed: {exc}")
        raise
    model = store.ModelInfo.from_card(classifier.version, classifier.card)
    last_try = self.request.retries >= self.max_retries
    counts = _store(settings, job_id, where, results, model, self.request.retries, last_try)
    # One key=value line per chunk, for log search and for throughput by grep.
    log.info(
        "chunk done job=%s chunk=%d items=%d seconds=%.3f model=%s job_status=%s processed=%d/%d",
        job_id,
        chunk,
        len(crops),
        time.monotonic() - started,
        model.version,
        *_progress(counts),
    )
    return {"job_id": job_id, "chunk": chunk, "pid": os.getpid(), "model": model.version}


def _store(
    settings: Settings,
    job_id: str,
    where: str,
    results: list[store.ItemResult],
    model: store.ModelInfo,
    retries: int,
    last_try: bool,
) -> store.JobCounts:
    """Write the chunk; on the last try a database error turns its items into recorded errors."""
    keys = [result.key for result in results]
    try:
        with db.session_scope(settings.database_url) as session:
            return store.write_chunk(session, job_id, results, model)
    except OperationalError as exc:
        if not last_try:
            log.warning("%s: database error, will retry: %s", where, _first_line(exc))
            raise
        reason = f"database error after {retries} retries: {_first_line(exc)}"
        log.error("%s: %s; marking its items error", where, reason)
        return _record_failure(settings, job_id, keys, reason)
    except store.UnknownJobError:
        log.error("%s: no such job in %s; chunk dropped", where, _safe_url(settings.database_url))
        raise
    except Exception as exc:
        log.exception("%s: writing the results failed", where)
        _record_failure(settings, job_id, keys, f"writing the results failed: {_first_line(exc)}")
        raise


def _progress(counts: store.JobCounts) -> tuple[str, int, int]:
    return counts.status, counts.processed, counts.total


def classify(
    classifier,
    crops: Sequence[Sequence[str]],
    threshold: float,
    settings: Settings,
    kind: str = db.DIGIT,
) -> list[store.ItemResult]:
    """One ``Classifier.classify`` call for the whole chunk; undecodable crops become errors.

    Field chunks (``kind`` zip, amount or digits) make one ``read_fields`` call instead: all the
    candidate digits of all the chunk's fields go through the network together.
    """
    if kind != db.DIGIT and kind not in db.FIELD_KINDS:
        raise ValueError(f"unknown item kind {kind!r}")
    base = DEFAULT_LIMITS if kind == db.DIGIT else FIELD_LIMITS
    limits = dataclasses.replace(base, max_bytes=settings.max_item_bytes)
    decoded: list[bytes] = []
    errors: dict[int, str] = {}
    for index, (_key, encoded) in enumerate(crops):
        try:
            decoded.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError, TypeError) as exc:
            errors[index] = f"crop is not valid base64: {exc}"
            decoded.append(b"")
    readable = [i for i in range(len(crops)) if i not in errors]
    if kind != db.DIGIT:
        readings = read_fields(classifier, [decoded[i] for i in readable], kind, threshold, limits)
        found = dict(zip(readable, readings, strict=True))
        return [
            _field_result(key, found.get(index), errors.get(index), threshold)
            for index, (key, _) in enumerate(crops)
        ]
    predictions = classifier.classify([decoded[i] for i in readable], threshold, limits)
    by_index = dict(zip(readable, predictions, strict=True))
    return [
        _result(key, by_index.get(index), errors.get(index), threshold)
        for index, (key, _) in enumerate(crops)
    ]


def _result(
    key: str, prediction: Prediction | None, error: str | None, threshold: float
) -> store.ItemResult:
    if prediction is None:
        return store.ItemResult(key=key, status="error", error=error)
    status = prediction.status
    # Judged on the stored (rounded) confidence, so that the review list is exactly the rows
    # under the threshold: Prediction.needs_review compares the unrounded value.
    if status == "ok" and prediction.confidence < threshold:
        status = "needs_review"
    return store.ItemResult(
        key=key,
        status=status,
        digit=prediction.digit,
        confidence=prediction.confidence,
        top3=[[digit, p] for digit, p in prediction.top3] or None,
        error=prediction.error,
        multiple_blobs=prediction.multiple_blobs,
    )


def _record_failure(
    settings: Settings, job_id: str, keys: Sequence[str], reason: str
) -> store.JobCounts:
    """Write the chunk's items as ``error``; lets a database error propagate (the task fails)."""
    with db.session_scope(settings.database_url) as session:
        return store.write_chunk(session, job_id, store.error_results(keys, reason), None)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _field_result(
    key: str, reading: FieldReading | None, error: str | None, threshold: float
) -> store.ItemResult:
    """A field's row: the text, its confidence, and the per-digit details a reviewer needs.

    Review is judged again on the stored (rounded) confidence, as for digits, so that the review
    list is exactly the rows under the job's threshold plus those failing their kind's check.
    """
    if reading is None:
        return store.ItemResult(key=key, status="error", error=error)
    status, reasons = reading.status, []
    if status == "ok":
        if reading.confidence < threshold:
            reasons.append("low_confidence")
        if not reading.valid:
            reasons.append(f"not_{reading.kind}")
        status = "needs_review" if reasons else "ok"
    details = {
        "kind": reading.kind,
        "valid": reading.valid,
        "reasons": reasons,
        "digits": [
            {
                "digit": guess.digit,
                "confidence": guess.confidence,
                "top3": [[digit, p] for digit, p in guess.top3],
                "box": list(guess.box),
            }
            for guess in reading.digits
        ],
    }
    return store.ItemResult(
        key=key,
        status=status,
        confidence=reading.confidence,
        error=reading.error,
        text=reading.text,
        details=details if status != "error" else None,
    )


def _job_kind(settings: Settings, job_id: str) -> str:
    with db.session_scope(settings.database_url) as session:
        return store.job_kind(session, job_id)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
