"""The chunk message, the one contract between a submitter and a worker: its fields, its queues, its
task name, how it is sent and how a worker checks one it received.

Submission (:mod:`digits.worker.submission.jobs`) sends a job's chunks with :func:`send`, and the
task (:mod:`digits.worker.queue.tasks`) re-sends a chunk that keeps killing its worker as one-crop
chunks with :func:`send` too, so both carry the same fields. Crops travel base64-encoded inside the
JSON message: a worker on another machine needs no shared filesystem. Nothing here imports Celery's
app, so any room may import this module.

Every message is signed (:mod:`.signing`) with the key of the process that builds it: the key, like
the broker's password, belongs to the machine's environment, not to a job. A worker verifies it
before anything else, and takes the job's review threshold and kind from the job row: the message
names its job, and the job row, written at submission, is the authority on how it is judged.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from digits.worker.config import MAX_CHUNK_SIZE
from digits.worker.queue import signing
from digits.worker.store.db import DIGIT, FIELD_KINDS, MAX_KEY_LENGTH

# Task names are part of the messages already queued in Redis: never rename them.
CLASSIFY_TASK = "digits.classify_chunk"
INGEST_TASK = "digits.ingest_inbox"
FINISH_TASK = "digits.finish_ingest"

INTERACTIVE_QUEUE = "interactive"
BATCH_QUEUE = "batch"
QUEUES = (INTERACTIVE_QUEUE, BATCH_QUEUE)
# Redis has no message priorities of its own: kombu keeps one list per priority step (0, 3, 6, 9)
# for each queue and a consumer's BRPOP names them step by step across all its queues, step 0
# first. Without this a worker alternates between the queues, so a single interactive crop could
# wait while batch chunks keep being taken; with it, the next child to finish takes it first.
QUEUE_PRIORITY = {INTERACTIVE_QUEUE: 0, BATCH_QUEUE: 9}

# "7" for a chunk as submitted, "7.12" for its 13th crop sent alone after the chunk kept dying,
# "7r2" for chunk 7 sent again a second time by a sweeper (queue.sweeper), "7r2.12", "7r2.12r1".
CHUNK_LABEL = re.compile(r"\d{1,9}(?:[.r]\d{1,9}){0,3}")
_RESENT = re.compile(r"^(.*)r(\d{1,9})$")
MAX_JOB_ID = 36


def queue_for(chunks: int) -> str:
    """A job of one chunk is interactive (a single envelope); larger ones are batch work."""
    return INTERACTIVE_QUEUE if chunks <= 1 else BATCH_QUEUE


@dataclass(frozen=True)
class ChunkMessage:
    """One chunk of a job as it travels: ``crops`` are ``[key, base64]`` pairs.

    ``kind`` is left out of digit jobs' messages, so they stay what workers from before fields
    expect, and a field chunk reaching such a worker fails instead of being misread.
    ``threshold`` is the job's as submitted, carried so the format stays what it was; workers
    judge by the job row's, so it is neither signed nor trusted.
    """

    job_id: str
    chunk: int | str  # the chunk's index, or "index.position" for a crop re-sent alone
    crops: list[list[str]]
    threshold: float
    kind: str | None = None

    @classmethod
    def of(
        cls,
        job_id: str,
        chunk: int | str,
        crops: Sequence[tuple[str, bytes]],
        threshold: float,
        kind: str = DIGIT,
    ) -> ChunkMessage:
        """A chunk of raw crops, encoded for the wire."""
        encoded = [[key, base64.b64encode(data).decode("ascii")] for key, data in crops]
        return cls.encoded(job_id, chunk, encoded, threshold, kind)

    @classmethod
    def encoded(
        cls,
        job_id: str,
        chunk: int | str,
        crops: list[list[str]],
        threshold: float,
        kind: str = DIGIT,
    ) -> ChunkMessage:
        """A chunk of crops already on the wire's ``[key, base64]`` form, for a job of ``kind``
        (a re-send: the sweeper's, or a poison chunk's)."""
        return cls(job_id, chunk, crops, threshold, None if kind == DIGIT else kind)

    @property
    def task_id(self) -> str:
        """One id per chunk: Flower and the logs name a chunk by it."""
        return f"{self.job_id}:{self.chunk}"

    def kwargs(self, key: bytes | None = None) -> dict[str, Any]:
        """The task's keyword arguments, JSON-safe and signed with ``key`` (by default this
        process's message key, :func:`signing.message_key`)."""
        out: dict[str, Any] = {
            "job_id": self.job_id,
            "chunk": self.chunk,
            "crops": self.crops,
            "threshold": self.threshold,
        }
        if self.kind is not None:
            out["kind"] = self.kind
        key = signing.message_key() if key is None else key
        out[signing.SIGNATURE_FIELD] = signing.sign(
            key, self.job_id, self.chunk, self.crops, self.kind
        )
        return out

    def split(self) -> list[ChunkMessage]:
        """One message per crop, labelled ``chunk.position``, every other field kept."""
        return [
            ChunkMessage(self.job_id, f"{self.chunk}.{i}", [crop], self.threshold, self.kind)
            for i, crop in enumerate(self.crops)
        ]


def resent_label(label: str) -> str:
    """The label a chunk is sent again under: a fresh one, so its delivery count (carried over
    by store.chunks.claim) is not mixed with a copy of the old message that may still turn up;
    ``7`` -> ``7r1`` -> ``7r2``, so labels do not grow with each re-send."""
    found = _RESENT.match(label)
    if found:
        return f"{found.group(1)}r{int(found.group(2)) + 1}"
    return f"{label}r1"


def send(app, message: ChunkMessage, queue: str, priority: int | None = None) -> None:
    """Publish one chunk message, signed, on ``queue`` (at the queue's priority unless one is
    given)."""
    app.send_task(
        CLASSIFY_TASK,
        kwargs=message.kwargs(),
        queue=queue,
        priority=QUEUE_PRIORITY.get(queue) if priority is None else priority,
        task_id=message.task_id,
    )


def problem(
    job_id: object, chunk: object, crops: object, threshold: object, kind: object = None
) -> str | None:
    """Why these task arguments cannot be a chunk a submitter made, or None when they can.

    JSON gives any shape; checking here keeps a malformed or hostile message from reaching the
    database or the model, and names what was wrong in the log. ``threshold`` may be absent: it
    is not used (the job row's is), only checked for shape when present. The signature is checked
    after this (:mod:`.signing`), on arguments known to have the right shapes.
    """
    if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_JOB_ID:
        return f"job_id {str(job_id)[:60]!r}: not a job id"
    if isinstance(chunk, bool) or not (
        (isinstance(chunk, int) and chunk >= 0)
        or (isinstance(chunk, str) and CHUNK_LABEL.fullmatch(chunk))
    ):
        return f"chunk {str(chunk)[:60]!r}: not a chunk number"
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            return f"threshold {str(threshold)[:60]!r}: not a number"
        if not 0.0 <= threshold <= 1.0:
            return f"threshold {threshold}: not between 0 and 1"
    if kind is not None and kind != DIGIT and kind not in FIELD_KINDS:
        return f"kind {str(kind)[:60]!r}: not a kind of item"
    if not isinstance(crops, list) or not 0 < len(crops) <= MAX_CHUNK_SIZE:
        return f"crops: not a list of 1 to {MAX_CHUNK_SIZE} [key, base64] pairs"
    seen: set[str] = set()
    for index, pair in enumerate(crops):
        if not (
            isinstance(pair, list)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and isinstance(pair[1], str)
        ):
            return f"crop {index}: not a [key, base64] pair of strings"
        key = pair[0]
        if not key or len(key) > MAX_KEY_LENGTH or "\x00" in key:
            return f"crop {index}: key {key[:60]!r} is empty, too long or holds a NUL"
        if key in seen:
            return f"crop {index}: key {key[:60]!r} appears twice"
        seen.add(key)
    return None


def encoded_limit(max_chunk_bytes: int) -> int:
    """Base64 length of ``max_chunk_bytes`` crop bytes: what one chunk's message may carry."""
    return 4 * ((max_chunk_bytes + 2) // 3)


# Room for everything in a queue entry but the crops' bytes: the task's headers, the envelope's
# properties, the JSON punctuation. Celery caps the headers' repr of the arguments at 1 kB.
ENVELOPE_SLACK = 1024 * 1024


def entry_limit(max_chunk_bytes: int) -> int:
    """The largest Redis queue entry a submitter within ``max_chunk_bytes`` can make.

    The crops' base64, their keys at their worst (every character of a key JSON-escaped as a
    surrogate pair, 12 bytes), and the envelope around the body, itself base64 in the entries
    submitters made before the body went as it is (``celery_app.transport_options``), which
    may still be queued: 78 MB for the default 32 MiB. A worker refuses larger entries before decoding them
    (:mod:`.transport`), so one message cannot grow its memory by gigabytes.
    """
    keys = MAX_CHUNK_SIZE * (12 * MAX_KEY_LENGTH + 16)
    return encoded_limit(encoded_limit(max_chunk_bytes) + keys + ENVELOPE_SLACK) + ENVELOPE_SLACK
