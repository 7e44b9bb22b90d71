"""The benchmark's field measurement (:mod:`.bench`): whole amount fields through both readers.

Four figures, all on this machine and in this run:

1. the segmenter alone (``fields.read_fields``, decode included), one process, one thread;
2. the sequence reader alone (``SequenceReader.read`` on the decoded scans, decode included), one
   process, one thread;
3. both readers as a worker child runs them (``consensus.read_pairs``: the sequence reader
   guides the segmenter, which then cuts differently from 1), one process, one thread; from it,
   the compute ceiling of the worker's children, with no queue or database;
4. end to end: synthetic amount fields (:mod:`model.docgen`, JPEG) submitted as one field job to
   a real worker (prefork, two children, SQLite) started and idle with both readers loaded, from
   the call that submits it to its last row committed.

Fields are rendered once (about 4 ms each) and cached under the crops' cache directory; a job
larger than the distinct fields repeats them under distinct keys.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from digits.cli.devtools.bench_compute import cached_blobs, in_children, job_crops
from digits.cli.devtools.bench_probe import memory, timed_job

KIND = "amount"
POOL_LIMIT = 2_000  # distinct fields rendered and cached
COMPUTE_FIELDS = 256  # distinct fields the one-core phases cycle over
COMPUTE_BATCH = 32  # fields per call in the one-core phases
_LOADED = re.compile(r"model (\S+) loaded in process (\d+)")


# ------------------------------------------------------------------------------------ the fields


def field_pool(count: int, seed: int, data_dir: Path | None, cache_dir: Path) -> list[bytes]:
    """``count`` distinct synthetic amount fields as JPEG bytes, cached by count, seed and code."""
    from digits.model import docgen

    package = Path(docgen.__file__).parent
    code = hashlib.sha256()
    for source in sorted(package.glob("*.py")):
        code.update(source.read_bytes())

    def write() -> list[bytes]:
        from digits.model import data

        mnist = data.load(data_dir)
        found = docgen.documents(
            mnist.x_test, mnist.y_test, count, seed=seed, kind=KIND, split="train"
        )
        return [document.encoded() for document in found]

    return cached_blobs(
        cache_dir / f"fields-{KIND}-{count}-{seed}-{code.hexdigest()[:12]}.npz", write
    )


# ---------------------------------------------------------------------- one core, in children


def _rate(
    read: Callable[[list[bytes]], object],
    blobs: list[bytes],
    seconds: float,
    batch: int = COMPUTE_BATCH,
) -> float:
    """Fields/s of ``read`` over consecutive batches of ``blobs`` for at least ``seconds``."""
    done, started = 0, time.perf_counter()
    while done == 0 or time.perf_counter() - started < seconds:
        start = done % len(blobs)
        part = blobs[start : start + batch]
        read(part)
        done += len(part)
    return done / (time.perf_counter() - started)


def segmenter_child(paths: tuple[str, str], blobs: list[bytes], seconds: float, out) -> None:
    """``read_fields`` as a worker child runs it: one TensorFlow thread, decode included;
    ``paths`` are the field digit network's and the cnn's (``fields.FieldDigits``)."""
    from digits.model.fields import FieldDigits, read_fields

    networks = FieldDigits.load(*paths, threads=1)
    read_fields(networks, blobs[:COMPUTE_BATCH], KIND)  # traces the compiled forward pass
    out.put(_rate(lambda part: read_fields(networks, part, KIND), blobs, seconds))


def pair_child(
    paths: tuple[str, str],
    field_model_path: str,
    blobs: list[bytes],
    seconds: float,
    batch: int,
    out,
) -> None:
    """``consensus.read_pairs`` as a worker child runs a field chunk of ``batch`` fields
    (DIGITS_FIELD_CHUNK_SIZE): both readers, the sequence reader guiding the segmenter, one
    TensorFlow thread, decode included."""
    from digits.model.consensus import read_pairs
    from digits.model.fields import FieldDigits
    from digits.model.sequence import SequenceReader

    networks = FieldDigits.load(*paths, threads=1)
    reader = SequenceReader.load(field_model_path)
    read_pairs(networks, reader, blobs[:8], KIND)  # the first traces, then other shapes
    read_pairs(networks, reader, blobs[8 : 8 + batch], KIND)
    out.put(_rate(lambda part: read_pairs(networks, reader, part, KIND), blobs, seconds, batch))


def sequence_child(field_model_path: str, blobs: list[bytes], seconds: float, out) -> None:
    """The sequence reader on decoded scans, decode included, as ``read_pairs`` calls it."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from digits.model.fields import FIELD_LIMITS
    from digits.model.normalize import decode
    from digits.model.sequence import SequenceReader

    reader = SequenceReader.load(field_model_path)

    def read(part: list[bytes]) -> object:
        return reader.read([decode(b, FIELD_LIMITS) for b in part])

    read(blobs[:8])  # the first trace, then a relaxed one for other shapes
    read(blobs[8 : 8 + COMPUTE_BATCH])
    sequence = _rate(read, blobs, seconds)
    decoded = _rate(lambda part: [decode(b, FIELD_LIMITS) for b in part], blobs, seconds / 4)
    out.put({"sequence": sequence, "decode": decoded})


# ---------------------------------------------------------------------------- through a worker


def reader_pids(log: str, reader_version: str) -> set[int]:
    """The worker children that logged loading the sequence reader."""
    return {int(pid) for name, pid in _LOADED.findall(log) if name == reader_version}


def warm_up(svc, pool: Sequence[bytes], concurrency: int, wait_done: Callable) -> None:
    """Until every child has loaded both readers: single-field jobs, several at once."""
    from digits.model.card import read_card, version
    from digits.worker.submission import jobs

    reader_version = version(read_card(svc.settings.field_model_path))
    for attempt in range(10):
        plans = [
            jobs.submit(
                job_crops(pool, 1, f"warm{attempt}-{i}"),
                svc.settings,
                source="bench field warm-up",
                app=svc.app,
                kind=KIND,
            )
            for i in range(concurrency * 2)
        ]
        for plan in plans:
            wait_done(svc, plan.job_id, poll_s=0.05)
        if len(reader_pids(svc.worker.log(), reader_version)) >= concurrency:
            return
    raise RuntimeError("the worker's children did not all load the sequence reader")


def throughput(svc, pool: Sequence[bytes], count: int, wait_done: Callable) -> dict:
    """One field job of ``count`` fields, from the call that submits it to its last row."""
    job = timed_job(svc, job_crops(pool, count, "fields"), "bench fields", KIND, wait_done)
    return {"fields": count, "fields_per_s": round(job.pop("per_s"), 2), **job}


# ------------------------------------------------------------------------------------ the run


def measure(options, services: Callable, wait_done: Callable, echo: Callable[[str], None]) -> dict:
    """Every field figure as a JSON-ready dict; ``services(workdir)`` starts the SQLite worker."""
    from digits.worker.config import Settings

    settings = Settings.from_env()
    field_model = settings.field_model_path
    pool = field_pool(
        min(options.fields, POOL_LIMIT), options.seed, options.data_dir, options.cache_dir
    )
    echo(f"{len(pool)} distinct synthetic {KIND} fields")
    sample = pool[:COMPUTE_FIELDS]
    seconds = options.compute_seconds
    # The segmenter reads with the field digit network and the cnn, as the worker's field
    # chunks do.
    digits_path = settings.field_digits_path
    paths = (str(digits_path), str(settings.model_path))
    segmenter = in_children(segmenter_child, [(paths, sample, seconds)])[0]
    echo(f"fields: segmenter {segmenter:.1f} fields/s on one core")
    rates = in_children(sequence_child, [(str(field_model), sample, seconds)])[0]
    echo(f"fields: sequence reader {rates['sequence']:.1f} fields/s on one core")
    chunk = settings.field_chunk_size
    pair_args = (paths, str(field_model), sample, seconds, chunk)
    pair = in_children(pair_child, [pair_args])[0]
    echo(f"fields: both readers (read_pairs) {pair:.1f} fields/s on one core")
    # Every field is decoded and read by both readers in one child; children run side by side.
    ceiling = options.concurrency * pair
    with (
        tempfile.TemporaryDirectory(prefix="digits-bench-fields-") as workdir,
        services(Path(workdir)) as svc,
    ):
        warm_up(svc, pool, options.concurrency, wait_done)
        result = throughput(svc, pool, options.fields, wait_done)
        result["memory"] = memory(svc.worker.process.pid)
    result["share_of_compute_ceiling"] = round(result["fields_per_s"] / ceiling, 3)
    echo(f"fields: end to end {json.dumps(result)}")
    return {
        "kind": KIND,
        "distinct": len(pool),
        "field_model": str(field_model),
        "field_digits": str(digits_path),
        "segmenter_per_s_one_core": round(segmenter, 2),
        "sequence_per_s_one_core": round(rates["sequence"], 2),
        "pair_per_s_one_core": round(pair, 2),
        "field_chunk_size": chunk,
        "decode_per_s_one_core": round(rates["decode"], 1),
        "compute_ceiling": {"fields_per_s": round(ceiling, 2), "processes": options.concurrency},
        "end_to_end": result,
    }
