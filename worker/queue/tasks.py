"""The one task: classify a chunk of crops with one Classifier call and write it in one transaction.

Failure handling, from the most to the least common:

* a bad crop (not an image, too big, unreadable) is an ``error`` item; the chunk carries on;
* a crop the model call fails on: ``Classifier.classify`` runs the batch again one crop at a time,
  so only that crop becomes an ``error`` item;
* a database error (``OperationalError``: locked, restarting, unreachable) retries the task with
  exponential backoff and full jitter; after ``DIGITS_DB_RETRIES`` retries the chunk's items are
  written as ``error`` with the reason; if the database cannot take even that, the chunk is kept
  (retried at the longest backoff until the database answers), never acknowledged unwritten;
* a model this worker cannot load is the worker's fault, not the crops': the chunk is parked at
  the longest backoff until it can (a worker refuses to start at all without its model file);
* anything else while classifying (the soft time limit hits, say) records the chunk's items as
  ``error`` with the reason and then fails the task, so nothing stays pending;
* a worker child killed mid-chunk: the message was not acknowledged, so Redis redelivers it and
  the items still pending are written (killed after its write, the chunk's items are final and
  the redelivery writes nothing). Deliveries are counted in the database (Redis
  keeps no count): past ``DIGITS_MAX_DELIVERIES`` the chunk is split into one-crop chunks, and a
  one-crop chunk past it is an ``error`` item, so a crop that kills its worker cannot loop forever;
* a whole worker killed outright, or a chunk lost inside Redis: the chunk's lease (taken when it
  starts, renewed while it runs, kept for a retry's countdown; :mod:`..store.leases`) runs out,
  and a worker's sweeper (:mod:`.sweeper`) sends its pending items again from the copy the
  database keeps (:mod:`..store.chunks`), dropped with the lease when the chunk is written;
* a message that is not one of ours (wrong shapes, no or a wrong signature, an unknown job, keys
  its job does not have) is logged and dropped before any work; it cannot add items to a job;
* a message naming items that are final already (a chunk written, then redelivered because its
  worker died before the acknowledgement; a replayed message) writes nothing for them: the refusal
  is logged as a warning and the rest of the chunk, if any, is read. A job is judged by its own
  row's review threshold and kind, whatever a message says.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn

from celery.exceptions import Retry
from celery.utils.time import get_exponential_backoff_interval
from sqlalchemy.exc import OperationalError

from digits.model.consensus import FieldAnswer, read_pairs
from digits.model.fields import FIELD_LIMITS, FieldDigits
from digits.model.inference import Classifier, Prediction
from digits.model.limits import DEFAULT_LIMITS
from digits.model.normalize import normalize_many
from digits.model.review import ItemStatus, decide
from digits.model.sequence import SequenceReader
from digits.worker.config import ConfigError, Settings, mask_url
from digits.worker.queue import deliveries, messages, model_cache, signing
from digits.worker.queue.celery_app import app
from digits.worker.queue.stages import StageClock
from digits.worker.store import chunks, db, leases, writes
from digits.worker.store import crops as kept_crops

log = logging.getLogger("digits.worker")


# No Celery retry limit: _write decides, past DIGITS_DB_RETRIES, between error rows and parking.
@app.task(bind=True, name=messages.CLASSIFY_TASK, max_retries=None)
def classify_chunk(
    self,
    job_id: str,
    chunk: int | str,
    crops: list[list[str]],
    threshold: float | None = None,
    kind: str | None = None,
    signature: str | None = None,
) -> dict:
    """Classify ``crops`` (``[key, base64]`` pairs) of job ``job_id`` and store the results.

    ``signature`` (:mod:`.signing`) must hold before anything else is done. ``threshold`` is
    not used: the job row's is (a message is no authority on how its job is judged; it carries
    the threshold for its format's sake). ``kind`` is absent from digit jobs' messages, is
    covered by the signature when present, and the job row's kind is the one read.
    """
    started = time.monotonic()
    settings = Settings.from_env()
    problem = messages.problem(job_id, chunk, crops, threshold, kind)
    if problem:
        log.error("message %s is not a chunk, dropped: %s", self.request.id, problem)
        return {"dropped": problem}
    label = str(chunk)
    where = f"job {job_id} chunk {label}"
    try:
        forged = signing.problem(
            signing.message_key(settings), job_id, label, crops, kind, signature
        )
    except ConfigError as exc:  # this worker's key, not the message, is at fault
        _unavailable(self, settings, where, "the message key", exc)
    if forged:
        log.error(
            "%s: message %s dropped, neither read nor written: %s", where, self.request.id, forged
        )
        return {"dropped": forged}
    keys = [key for key, _ in crops]
    holder = leases.Holder.here(self.request.hostname)
    try:
        # The lease (so that no sweeper sends the chunk again while this child runs it) is taken
        # in the transaction that counts the delivery, unless nothing is left to run.
        # Fresh: neither a retry nor a message the broker gave out before (kombu marks one it
        # restored after its worker died); its first count need not wait for the disk.
        info = self.request.delivery_info or {}
        fresh = not self.request.retries and not info.get("redelivered")
        delivery = deliveries.record(
            settings.database_url, job_id, label, self.request.retries, keys, holder, fresh
        )
    except OperationalError as exc:  # before any work, so a parked chunk costs next to nothing
        _retry(self, settings, where, exc)
    except (writes.UnknownJobError, deliveries.ForeignKeysError) as exc:
        log.error("%s: %s in %s; message dropped", where, exc, mask_url(settings.database_url))
        return {"dropped": str(exc)}
    if delivery.cancelled and len(delivery.final) == len(keys):
        log.info("%s: its job was cancelled; %d crops dropped unread", where, len(keys))
        return {"job_id": job_id, "chunk": label, "cancelled": len(keys)}
    if delivery.final:
        deliveries.log_refused(where, deliveries.already_final(delivery.final))
        crops = [pair for pair in crops if pair[0] not in delivery.final]
        if not crops:
            return {"job_id": job_id, "chunk": label, "refused": len(delivery.final)}
    try:
        with leases.held(settings.database_url, job_id, label, taken=holder) as lease:
            try:
                return _run(self, settings, job_id, label, crops, delivery, started)
            except Retry as retry:  # the chunk waits in this worker for its countdown
                lease.keep(_seconds_until(retry.when))
                raise
    except OperationalError as exc:  # the lease could not be taken or given up
        _retry(self, settings, where, exc)


def _run(
    self,
    settings: Settings,
    job_id: str,
    label: str,
    crops: list[list[str]],
    delivery: deliveries.Delivery,
    started: float,
) -> dict:
    """The chunk's work once its message is known good and its lease taken."""
    where = f"job {job_id} chunk {label}"
    kind, threshold = delivery.kind, delivery.threshold
    keys = [key for key, _ in crops]
    if delivery.count > settings.max_deliveries:
        message = messages.ChunkMessage.encoded(job_id, label, crops, threshold, kind)
        return _poisoned(self, settings, message, delivery.count)
    size = sum(len(encoded) for _, encoded in crops)
    if size > messages.encoded_limit(settings.max_chunk_bytes):
        reason = (
            f"the chunk's message carried {size} bytes of base64, over this worker's limit of "
            f"{settings.max_chunk_bytes} crop bytes (DIGITS_MAX_CHUNK_BYTES): not read"
        )
        log.error("%s: %s", where, reason)
        _write(self, settings, job_id, label, writes.error_results(keys, reason), None)
        return {"job_id": job_id, "chunk": label, "error": reason}
    # A single crop's digit is read by the cnn, a field's by the field digit network with it.
    digits_path = settings.model_path  # the one that failed, if one does
    try:
        classifier: Classifier | FieldDigits = model_cache.classifier(digits_path)
        if kind != db.DIGIT:
            digits_path = settings.field_digits_path
            classifier = model_cache.field_digits(digits_path, settings.model_path)
    except Exception as exc:  # noqa: BLE001 - this worker's model, not the crops, is at fault
        _unavailable(self, settings, where, f"the model {digits_path}", exc)
    reader = None
    if kind != db.DIGIT:
        try:
            reader = model_cache.field_reader(settings.field_model_path)
        except Exception as exc:  # noqa: BLE001 - this worker's field model, not the crops
            _unavailable(self, settings, where, f"the model {settings.field_model_path}", exc)
    clock = StageClock()
    try:
        results = classify(classifier, crops, threshold, settings, kind, reader, clock)
    except Exception as exc:
        log.exception("%s: classification failed", where)
        failed = writes.error_results(keys, f"classification failed: {_first_line(exc)}")
        _write(self, settings, job_id, label, failed, None)
        raise
    model = writes.ModelInfo.from_card(classifier.version, classifier.card)
    # The crops a person will need (DIGITS_KEEP_CROPS), written with their items.
    results, kept = kept_crops.chosen(results, crops, settings.keep_crops, settings.max_item_bytes)
    counts = _write(self, settings, job_id, label, results, model, kept)
    clock.lap("store")
    # One key=value line per chunk, for log search and for throughput by grep; the stage seconds
    # say where a slow chunk's time went, and `digits bench --e2e-files` adds them up.
    log.info(
        "chunk done job=%s chunk=%s items=%d seconds=%.3f %s model=%s job_status=%s "
        "processed=%d/%d",
        job_id,
        label,
        len(crops),
        time.monotonic() - started,
        clock.line(),
        model.version,
        *_progress(counts),
    )
    return {"job_id": job_id, "chunk": label, "pid": os.getpid(), "model": model.version}


def _poisoned(task, settings: Settings, message: messages.ChunkMessage, count: int) -> dict:
    """Every earlier delivery died mid-way: isolate the crop doing it instead of looping.

    A chunk of several crops is sent again as one-crop chunks (the innocent ones then finish in one
    delivery each); a one-crop chunk that keeps dying is its item's ``error``.
    """
    job_id, label, crops = message.job_id, str(message.chunk), message.crops
    where = f"job {job_id} chunk {label}"
    died = count - 1
    if len(crops) > 1:
        info = task.request.delivery_info or {}
        queue = info.get("routing_key") or messages.BATCH_QUEUE
        split = message.split()
        with db.session_scope(
            settings.database_url
        ) as session:  # copies first: Redis may lose them
            chunks.record(session, job_id, [(str(m.chunk), m.crops) for m in split], queue)
        try:
            for alone in split:
                messages.send(task.app, alone, queue=queue, priority=info.get("priority"))
        except Exception as exc:  # noqa: BLE001 - the broker refused: split again later, whole
            # Acknowledged now, the crops not yet sent would be pending for ever; sending the
            # ones already sent twice is harmless (one row per key, written by upsert).
            log.error("%s: sending the one-crop chunks failed, retrying the split: %s", where, exc)
            raise task.retry(exc=exc, countdown=settings.db_retry_backoff_s) from exc
        with db.session_scope(settings.database_url) as session:
            deliveries.forget(session, job_id, label)  # its crops are counted under their own
            leases.drop(session, job_id, label)
            chunks.forget(session, job_id, label)
        log.error(
            "%s: died mid-way on %d deliveries (a crop that kills its worker?); "
            "sent again as %d one-crop chunks",
            where,
            died,
            len(crops),
        )
        return {"job_id": job_id, "chunk": label, "split": len(crops)}
    reason = (
        f"this crop's worker process died {died} times while reading it "
        f"(DIGITS_MAX_DELIVERIES={settings.max_deliveries}): not tried again"
    )
    log.error("%s: %s", where, reason)
    failed, kept = kept_crops.chosen(
        writes.error_results([crops[0][0]], reason),
        crops,
        settings.keep_crops,
        settings.max_item_bytes,
    )
    _write(task, settings, job_id, label, failed, None, kept)
    return {"job_id": job_id, "chunk": label, "error": reason}


def _write(
    task,
    settings: Settings,
    job_id: str,
    label: str,
    results: list[writes.ItemResult],
    model: writes.ModelInfo | None,
    kept: dict[str, bytes] | None = None,
) -> writes.JobCounts:
    """Write the chunk, or retry; past the retries its items are errors; never acked unwritten.

    When even the error rows cannot be written (the database is still unreachable), the chunk is
    parked: retried at the longest backoff for as long as it takes. Its message is the only copy
    of the results' inputs, so acknowledging it would leave the items pending forever.
    """
    where = f"job {job_id} chunk {label}"
    keys = [result.key for result in results]
    retries = task.request.retries
    try:
        return _commit(settings, job_id, label, results, model, kept)
    except OperationalError as exc:
        if retries < settings.db_retries:
            _retry(task, settings, where, exc)
        reason = f"database error after {retries} retries: {_first_line(exc)}"
    except writes.UnknownJobError:
        log.error("%s: no such job in %s; chunk dropped", where, mask_url(settings.database_url))
        raise
    except writes.ForeignKeysError as exc:
        log.error("%s: %s; chunk dropped", where, exc)
        raise
    except Exception as exc:
        log.exception("%s: writing the results failed", where)
        reason = f"writing the results failed: {_first_line(exc)}"
        _commit_or_retry(task, settings, job_id, label, keys, reason)
        raise
    log.error("%s: %s; marking its items error", where, reason)
    return _commit_or_retry(task, settings, job_id, label, keys, reason)


def _commit_or_retry(
    task, settings: Settings, job_id: str, label: str, keys: Sequence[str], reason: str
) -> writes.JobCounts:
    try:
        return _commit(settings, job_id, label, writes.error_results(keys, reason), None)
    except OperationalError as exc:
        _retry(task, settings, f"job {job_id} chunk {label}", exc)


def _commit(
    settings: Settings,
    job_id: str,
    label: str,
    results: list[writes.ItemResult],
    model: writes.ModelInfo | None,
    kept: dict[str, bytes] | None = None,
) -> writes.JobCounts:
    with db.session_scope(settings.database_url) as session:
        counts = deliveries.settle(session, job_id, label, results, model, kept)
    deliveries.log_unwritten(f"job {job_id} chunk {label}", counts)
    return counts


def _retry(task, settings: Settings, where: str, exc: OperationalError) -> NoReturn:
    """Send the chunk again after an exponential, fully jittered delay (AWS's "full jitter").

    Past ``DIGITS_DB_RETRIES`` the delay stays at its maximum: the chunk is parked, not dropped.
    """
    retries = task.request.retries
    countdown = get_exponential_backoff_interval(
        factor=settings.db_retry_backoff_s,
        retries=min(retries, 32),
        maximum=settings.db_retry_backoff_max_s,
        full_jitter=True,
    )
    if retries < settings.db_retries:
        log.warning(
            "%s: database error, retry %d of %d in %d s: %s",
            where,
            retries + 1,
            settings.db_retries,
            countdown,
            _first_line(exc),
        )
    else:
        log.error(
            "%s: database still failing after %d retries; chunk parked, next try in %d s: %s",
            where,
            retries,
            countdown,
            _first_line(exc),
        )
    raise task.retry(exc=exc, countdown=countdown)


def _unavailable(task, settings: Settings, where: str, what: str, exc: Exception) -> NoReturn:
    """A worker that cannot load a model (or its message key) must not turn good crops into
    errors: the chunk waits, at the longest backoff, for this worker to be fixed or for another
    worker to take it."""
    countdown = settings.db_retry_backoff_max_s
    log.error(
        "%s: %s cannot be loaded; chunk parked, next try in %d s: %s",
        where,
        what,
        countdown,
        _first_line(exc),
    )
    raise task.retry(exc=exc, countdown=countdown)


def _seconds_until(when: object) -> float:
    """A Retry's ``when`` (a countdown in seconds, or an eta) as seconds from now."""
    if isinstance(when, int | float):
        return float(when)
    if isinstance(when, datetime):
        return max(0.0, (when - datetime.now(when.tzinfo or UTC)).total_seconds())
    return 0.0


def _progress(counts: writes.JobCounts) -> tuple[str, int, int]:
    return counts.status, counts.processed, counts.total


def classify(
    classifier,
    crops: Sequence[Sequence[str]],
    threshold: float,
    settings: Settings,
    kind: str = db.DIGIT,
    reader: SequenceReader | None = None,
    clock: StageClock | None = None,
) -> list[writes.ItemResult]:
    """One ``Classifier.classify`` call for the whole chunk; undecodable crops become errors.

    Field chunks (``kind`` zip, amount or digits) make one ``read_pairs`` call instead: both
    readers read every field (all the segmenter's candidate digits of all the chunk's fields go
    through the digit network together, all the lines through the sequence reader together).
    """
    if kind != db.DIGIT and kind not in db.FIELD_KINDS:
        raise ValueError(f"unknown item kind {kind!r}")
    clock = clock or StageClock()
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
        if reader is None:
            raise ValueError("a field chunk needs the sequence reader")
        answers = read_pairs(
            classifier, reader, [decoded[i] for i in readable], kind, threshold, limits
        )
        clock.lap("read")
        found = dict(zip(readable, answers, strict=True))
        # The item's model_version names the field digit network; these the other two.
        models = {"field_model": reader.version, "apart_model": classifier.apart.version}
        return [
            _field_result(key, found.get(index), errors.get(index), models)
            for index, (key, _) in enumerate(crops)
        ]
    normalized = normalize_many([decoded[i] for i in readable], limits, lap=clock.lap)
    predictions = classifier.classify_crops(normalized, threshold)
    clock.lap("infer")
    by_index = dict(zip(readable, predictions, strict=True))
    return [
        _result(key, by_index.get(index), errors.get(index), threshold)
        for index, (key, _) in enumerate(crops)
    ]


def _result(
    key: str, prediction: Prediction | None, error: str | None, threshold: float
) -> writes.ItemResult:
    if prediction is None:
        return writes.ItemResult(key=key, status=ItemStatus.ERROR, error=error)
    # Judged on the stored (rounded) confidence, so that every row under the threshold is in the
    # review list (Prediction.needs_review compares the unrounded value); a faint one, or two
    # digits in one crop, are too.
    verdict = decide(prediction.status, prediction.confidence, threshold, prediction.problems)
    return writes.ItemResult(
        key=key,
        status=verdict.status,
        digit=prediction.digit,
        confidence=prediction.confidence,
        top3=[[digit, p] for digit, p in prediction.top3] or None,
        error=prediction.error,
        multiple_blobs=prediction.multiple_blobs,
        details={"reasons": verdict.reasons} if prediction.problems else None,
    )


def _field_result(
    key: str, reading: FieldAnswer | None, error: str | None, models: dict[str, str]
) -> writes.ItemResult:
    """A field's row: the agreed text, its confidence, and what a reviewer needs: both readers'
    readings, the value, the reasons and the segmenter's per-digit guesses and boxes.

    The pair's answer was judged by model.review.decide (in consensus.decide) on its rounded
    confidence, so that the review list is exactly the rows under the job's threshold plus those
    whose readers disagree or whose text fails its kind's check: the row takes that verdict.
    """
    if reading is None:
        return writes.ItemResult(key=key, status=ItemStatus.ERROR, error=error)
    status = ItemStatus.NEEDS_REVIEW if reading.needs_review else ItemStatus(reading.status)
    reasons = reading.reasons
    answer = reading.as_dict()
    details = {
        "kind": reading.kind,
        "valid": reading.valid,
        "value": reading.value,
        "reasons": reasons,
        "readers": answer["readers"],
        **models,
        "digits": [
            {
                "digit": guess["digit"],
                "confidence": guess["confidence"],
                "top3": [list(pair) for pair in guess["top3"]],
                "box": list(guess["box"]),
            }
            for guess in answer["digits"]
        ],
    }
    return writes.ItemResult(
        key=key,
        status=status,
        confidence=reading.confidence,
        error=reading.error,
        text=reading.text,
        details=details if status != ItemStatus.ERROR else None,
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
