"""``digits bench --e2e-files N``: the user's path from crop files on disk to rows, timed from outside.

What a user does, nothing more: N scan-like crop files in a directory (PNG and JPEG, dark ink on
uneven paper: MNIST test digits through :mod:`model.scanlike`, seeded, the renderer the rest of the
benchmark uses; a 28 to 128 px digit with its margins is about 25 to 235 px on the longer side, the
manifest says exactly), a real ``celery worker --pool prefork --concurrency 2`` started and left
idle a few seconds, then the installed ``digits enqueue DIR --wait`` as a subprocess, timed from its
start to its exit. Each of ``runs`` runs per database gets a fresh database, Redis and worker, so
each job meets whatever cold start a newly started worker has. The raw model rate (bench_compute's,
in as many single-threaded processes as the worker has children) is measured in the same run, so
the ratio between the two holds even when a shared machine makes both wander.

Where the time goes is read from outside too (:mod:`.bench_files_probe`): the worker's log (each
chunk's stages, when each chunk arrived and started, each child's model load), Redis's queue
lengths (how long chunks sat there), the enqueue process's own CPU (``os.wait4``) and CPU per role
(:func:`.bench_probe.cpu_accounting`), so a run that other work crowded says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digits.cli.devtools.bench import BACKENDS, DEFAULT_CACHE, Machine
from digits.cli.devtools.bench_compute import in_children, normalized_pixels, raw_child
from digits.cli.devtools.bench_files_probe import QueueDepth, Roles, log_events, where_time_went
from digits.cli.devtools.bench_files_report import targets
from digits.cli.devtools.bench_probe import cpu_accounting

IDLE_S = 3.0  # the worker sits idle this long after it answers a ping, before the job
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class FilesOptions:
    files: int = 20_000
    runs: int = 3
    backends: tuple[str, ...] = BACKENDS
    concurrency: int = 2
    seed: int = 0
    compute_seconds: float = 5.0  # the raw model rate's timed phase
    data_dir: Path | None = None
    cache_dir: Path = DEFAULT_CACHE
    model_path: Path | None = None


# ------------------------------------------------------------------------------------------ files


def scan_files(count: int, seed: int, data_dir: Path | None, cache_dir: Path) -> tuple[Path, dict]:
    """``count`` crop files and their manifest, rendered once per count, seed and renderer.

    Digit ``i`` is MNIST test digit ``i % 10000`` drawn with its own stream (seed, i), so past
    10,000 files a digit repeats but no file does. The directory is renamed into place and the
    manifest written after it, so a run that dies half-way leaves nothing that looks finished.
    """
    from PIL import Image

    from digits.model import data, scanlike

    renderer = hashlib.sha256(Path(scanlike.__file__).read_bytes()).hexdigest()[:12]
    name = f"e2e-files-{count}-{seed}-{renderer}"
    directory, manifest_path = cache_dir / name, cache_dir / f"{name}.json"
    if manifest_path.is_file() and directory.is_dir():
        return directory, json.loads(manifest_path.read_text())
    shutil.rmtree(directory, ignore_errors=True)
    images = data.load(data_dir).x_test
    blobs = scanlike.scanlike_set(images[np.arange(count) % len(images)], seed=seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=cache_dir))
    formats = {"png": 0, "jpeg": 0}
    sides = []
    for i, blob in enumerate(blobs):
        kind = "jpeg" if blob.startswith(b"\xff\xd8") else "png"
        formats[kind] += 1
        (temporary / f"{i:06d}.{'jpg' if kind == 'jpeg' else 'png'}").write_bytes(blob)
        sides.append(max(Image.open(io.BytesIO(blob)).size))
    temporary.rename(directory)
    manifest = {
        "count": count,
        "seed": seed,
        "directory": str(directory),
        "formats": formats,
        "longer_side_px": [min(sides), max(sides)],
        "bytes": sum(len(b) for b in blobs),
        "source": "MNIST test digits, model.scanlike",
    }
    manifest_path.with_suffix(".tmp").write_text(json.dumps(manifest, indent=2) + "\n")
    manifest_path.with_suffix(".tmp").replace(manifest_path)
    return directory, manifest


def raw_rate(model_path: Path, directory: Path, chunk: int, options: FilesOptions) -> dict:
    """The network alone on these crops, normalized beforehand: the ceiling no queue can beat."""
    crops = [path.read_bytes() for path in sorted(directory.iterdir())[: chunk * 4]]
    pixels = normalized_pixels(crops)
    job = (str(model_path), pixels, chunk, options.compute_seconds)
    rates = in_children(raw_child, [job] * options.concurrency, barrier=True)
    return {
        "per_s": round(sum(rates), 1),
        "per_process": [round(r, 1) for r in rates],
        "processes": options.concurrency,
        "batch": chunk,
    }


# ------------------------------------------------------------------------------------- one run


def enqueue_command() -> list[str]:
    """The installed ``digits`` beside this Python (what a user types), else its module."""
    beside = Path(sys.executable).with_name("digits")
    return [str(beside)] if beside.is_file() else [sys.executable, "-m", "digits.cli.manage"]


def run_enqueue(directory: Path, env: dict[str, str], workdir: Path) -> dict:
    """``digits enqueue DIR --wait`` from its start to its exit, with its own CPU and memory."""
    argv = [*enqueue_command(), "enqueue", str(directory), "--wait"]
    out, err = workdir / "enqueue.out", workdir / "enqueue.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        started_wall, started = time.time(), time.perf_counter()
        process = subprocess.Popen(
            argv, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
        )
        _, status, usage = os.wait4(process.pid, 0)  # this process's rusage, no one else's
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}:\n{err.read_text()}")
    return {
        "job_id": out.read_text().split()[-1],  # what `digits enqueue` prints last
        "started": started_wall,
        "wall_s": round(wall, 3),
        "user_s": round(usage.ru_utime, 2),
        "sys_s": round(usage.ru_stime, 2),
        "max_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def one_run(
    options: FilesOptions, database_url: str, postgres_pid: int | None, files: Path, workdir: Path
) -> dict:
    """A fresh Redis and worker on a fresh database; the worker idles, then the enqueue runs."""
    from digits.cli.devtools.local import local_redis, start_worker
    from digits.model.inference import default_model_path
    from digits.worker.config import Settings
    from digits.worker.queue.celery_app import create_app

    load_before = os.getloadavg()
    with local_redis(workdir / "redis") as redis:
        env = {
            "DIGITS_BROKER_URL": redis.url,
            "DIGITS_DATABASE_URL": database_url,
            "DIGITS_MODEL": str(options.model_path or default_model_path()),
        }
        settings = Settings.from_env({**os.environ, **env})
        app = create_app(settings)
        launched = time.time()
        worker = start_worker(env, workdir / "worker.log", options.concurrency)
        try:
            worker.wait_ready(app, timeout_s=READY_TIMEOUT_S)
            ready = time.time()
            first_ms = first_crop_ms(files, settings, app)
            time.sleep(IDLE_S)
            roles = Roles(worker.process.pid, redis.process.pid, postgres_pid)
            with cpu_accounting(roles) as cpu, QueueDepth(redis.url) as depth:
                enqueue = run_enqueue(files, env, workdir)
        finally:
            worker.stop()
            app.close()
        log = worker.log()
    # The enqueue process ran outside every role: its CPU came out of "others" (other work).
    enqueue["cpu_s"] = round(enqueue["user_s"] + enqueue["sys_s"], 2)
    cpu["cpu_s"]["enqueue"] = enqueue["cpu_s"]
    cpu["others_cpu_s"] = round(max(0.0, cpu["others_cpu_s"] - enqueue["cpu_s"]), 2)
    job_id, started = enqueue.pop("job_id"), enqueue.pop("started")
    counts = job_counts(database_url, job_id)
    result = {
        **counts,
        "crops_per_s": round(counts["items"] / enqueue["wall_s"], 1),
        "enqueue": enqueue,
        "worker_ready_s": round(ready - launched, 2),  # from its start to answering a ping
        "first_crop_ms": round(first_ms, 1),  # one crop, the first job after the worker started
        "worker_idle_s": round(started - ready, 2),
        "load_before": load_before,
        **where_time_went(log_events(log), job_id, started),
        "cpu": cpu,
    }
    result["queue"] = depth.summary(result["chunks"]["count"], started)
    return result


def first_crop_ms(files: Path, settings, app) -> float:
    """One crop submitted the moment the worker is ready, until its row is committed (a 1 ms
    poll): the first job after a start, which a cold start would make seconds long.

    The submitting side is warmed first (its database connection and ORM set-up, the job rows'
    statements in a transaction rolled back, its broker connection), as a service that submits
    all day is: what is left is the worker's first job, which is what this measures.
    """
    from digits.worker.store import db
    from digits.worker.store.results import wait_for_job
    from digits.worker.submission import jobs

    first = min(files.iterdir())
    crop = jobs.Crop(f"first/{first.name}", first.read_bytes())
    with db.session_factory(settings.database_url)() as session:
        jobs.create_job(session, jobs.plan_job([crop], settings))
        session.rollback()
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection()
    started = time.perf_counter()
    plan = jobs.submit([crop], settings, source="bench first crop", app=app)
    wait_for_job(settings.database_url, plan.job_id, poll_s=0.001, timeout_s=120)
    return (time.perf_counter() - started) * 1000.0


def job_counts(database_url: str, job_id: str) -> dict:
    from digits.worker.store import db
    from digits.worker.store.results import job_status

    with db.session_scope(database_url) as session:
        final = job_status(session, job_id)
    db.dispose_all()
    names = ("status", "ok", "needs_review", "blank", "error")
    return {"job_id": job_id, "items": final.total, **{n: getattr(final, n) for n in names}}


# ------------------------------------------------------------------------------------- the run


@contextlib.contextmanager
def databases(backend: str) -> Iterator[Callable[[Path], tuple[str, int | None]]]:
    """A maker of fresh databases for ``backend``: a new SQLite file, or a new database in one
    throwaway PostgreSQL cluster (durable, as production runs it) for all of this backend's runs."""
    from digits.cli.devtools.local import local_postgres

    if backend == "sqlite":
        yield lambda workdir: (f"sqlite:///{workdir / 'bench.sqlite3'}", None)
        return
    with local_postgres() as cluster:
        yield lambda _workdir: (cluster.create_database(), cluster.pid)


def run(options: FilesOptions, echo: Callable[[str], None] = print) -> dict:
    """Every run on every backend, beside the raw model rate, as a JSON-ready dict."""
    from digits.cli.devtools.local import postgres_bindir
    from digits.model.inference import default_model_path
    from digits.worker.config import Settings

    machine = Machine.now()
    model_path = Path(options.model_path or default_model_path())
    options = dataclasses.replace(options, model_path=model_path)
    chunk = Settings.from_env().chunk_size
    files, manifest = scan_files(options.files, options.seed, options.data_dir, options.cache_dir)
    echo(
        f"{options.files} crop files in {files}; {machine.nproc} cores, load {machine.load_before}"
    )
    raw = raw_rate(model_path, files, chunk, options)
    echo(f"raw inference: {raw['per_s']:.0f} crops/s ({options.concurrency} x 1 thread)")
    backends: dict[str, dict] = {}
    for backend in options.backends:
        if backend == "postgresql" and postgres_bindir() is None:
            backends[backend] = {"skipped": "PostgreSQL binaries not installed"}
            continue
        runs = []
        with databases(backend) as fresh:
            for number in range(1, options.runs + 1):
                with tempfile.TemporaryDirectory(prefix=f"digits-e2e-{backend}-") as name:
                    url, postgres_pid = fresh(Path(name))
                    runs.append(one_run(options, url, postgres_pid, files, Path(name)))
                echo(f"{backend} run {number}: {runs[-1]['crops_per_s']:.0f} crops/s")
        median = statistics.median(r["crops_per_s"] for r in runs)
        backends[backend] = {
            "runs": runs,
            "median_crops_per_s": round(median, 1),
            "share_of_raw": round(median / raw["per_s"], 3),
        }
    machine.load_after = os.getloadavg()
    report = {
        "command": _command(options),
        "machine": dataclasses.asdict(machine),
        "model": str(model_path),
        "chunk_size": chunk,
        "concurrency": options.concurrency,
        "idle_before_job_s": IDLE_S,
        "files": manifest,
        "raw_inference": raw,
        "backends": backends,
    }
    report["targets"] = targets(backends)
    return report


def _command(options: FilesOptions) -> str:
    argv = ["digits bench", "--e2e-files", str(options.files), "--runs", str(options.runs)]
    return " ".join([*argv, "--backends", ",".join(options.backends)])
