"""Throughput and latency of the whole path, each measured against its own ceiling, in one run.

    python scripts/devtools/bench.py [--crops 50000] [--latency-jobs 500] [--json PATH]
    digits bench ...                                        (the same options)

What it measures, in this order, all on this machine and in this run (so ratios between the figures
hold even when a shared machine makes the absolute ones wander):

1. the seed's way: one ``model.predict`` call per already-normalized image;
2. raw inference: the compiled forward pass on already-normalized chunks, in as many processes
   of one TensorFlow thread as the worker has children: the ceiling no queue can beat;
3. normalization alone (decode included), one process, one thread: crops/s on one core;
4. end to end, per database: scan-like crops submitted as one job (rows created, chunks sent to
   Redis), a real ``celery worker --pool prefork --concurrency 2`` classifying them, until the last
   row is written; the client, Redis, the database and the worker all share this machine;
5. latency of single-crop jobs, from the call that submits one to its result committed in the
   database (seen by a 1 ms poll), on an idle queue and while a large batch is running;
6. the resident memory (now and peak) of the worker's parent and of each child;
7. whole amount fields (:mod:`.bench_fields`): each reader alone on one core, and one field job
   through a real worker (SQLite) from submission to its last row (``--fields N``, 0 to skip;
   ``--fields-only`` measures nothing else).

Crops are scan-like MNIST test digits (:mod:`model.scanlike`: JPEG or PNG, 28 to 128 px, noise,
blur, colour). Rendering costs about 3 ms each, so the distinct crops (at most 10,000) are cached
under ``var/bench``; a larger job repeats them under distinct keys, which costs the worker the same.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/devtools/bench.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


from digits.cli.devtools.bench_compute import (
    crop_pool,
    in_children,
    job_crops,
    normalize_child,
    normalized_pixels,
    raw_child,
    seed_rate,
)
from digits.cli.devtools.bench_fields import measure as measure_fields
from digits.cli.devtools.bench_probe import (
    children,
    memory,
    percentiles,
    profiled,
    timed_job,
)
from digits.cli.devtools.bench_report import table, targets

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CACHE = ROOT / "var" / "bench"
POOL_LIMIT = 10_000  # distinct crops: the MNIST test set
LATENCY_POLL_S = 0.001
BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True)
class BenchOptions:
    crops: int = 50_000
    latency_jobs: int = 500
    seed_images: int = 300
    compute_seconds: float = 5.0  # per timed compute phase (raw inference, normalization)
    backends: tuple[str, ...] = BACKENDS
    concurrency: int = 2
    data_dir: Path | None = None
    cache_dir: Path = DEFAULT_CACHE
    postgres_url: str | None = None  # an existing database instead of a throwaway cluster
    profile_dir: Path | None = None  # py-spy the children during the throughput run
    model_path: Path | None = None
    seed: int = 0
    fields: int = 1_000  # amount fields in the field job; 0 skips the field measurement
    fields_only: bool = False  # the field measurement alone


@dataclass
class Machine:
    nproc: int
    cpu_model: str
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    python: str = platform.python_version()

    @classmethod
    def now(cls) -> Machine:
        return cls(os.cpu_count() or 1, _cpu_model(), os.getloadavg())


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


@dataclass
class Services:
    """A broker, a database and a running worker for one backend, with a client app for them."""

    settings: object  # worker.config.Settings
    app: object  # celery.Celery
    worker: object  # worker.local.WorkerProcess
    engine: object  # sqlalchemy.Engine, for the latency poll
    redis_pid: int
    postgres_pid: int | None  # the postmaster of a throwaway cluster; None otherwise

    def processes(self) -> dict[str, list[int]]:
        """Who spends the CPU of a run, by role: each is a list of process ids."""
        parent = self.worker.process.pid
        roles = {
            "client": [os.getpid()],
            "worker_parent": [parent],
            "worker_children": children(parent),
            "redis": [self.redis_pid],
        }
        if self.postgres_pid:
            roles["postgres"] = [self.postgres_pid, *children(self.postgres_pid)]
        return roles


@contextlib.contextmanager
def services(options: BenchOptions, backend: str, workdir: Path, model_path: Path) -> Iterator:
    from digits.cli.devtools.local import local_postgres, local_redis, start_worker
    from digits.worker.config import Settings
    from digits.worker.queue.celery_app import create_app
    from digits.worker.store import db

    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(local_redis(workdir / "redis"))
        postgres_pid = None
        if backend == "sqlite":
            database_url = f"sqlite:///{workdir / 'bench.sqlite3'}"
        elif options.postgres_url:
            database_url = options.postgres_url
        else:
            cluster = stack.enter_context(local_postgres())
            database_url = cluster.create_database()
            postgres_pid = cluster.pid
        env = {
            "DIGITS_BROKER_URL": redis.url,
            "DIGITS_DATABASE_URL": database_url,
            "DIGITS_MODEL": str(model_path),
        }
        settings = Settings.from_env({**os.environ, **env})
        db.upgrade(database_url)
        app = create_app(settings)
        stack.callback(app.close)
        worker = start_worker(env, workdir / f"worker-{backend}.log", options.concurrency)
        stack.callback(worker.stop)
        worker.wait_ready(app, timeout_s=120)
        engine = db.engine_for(database_url)
        yield Services(settings, app, worker, engine, redis.process.pid, postgres_pid)
        db.dispose_all()


def submit(svc: Services, crops: Sequence, source: str):
    from digits.worker.submission import jobs

    return jobs.submit(crops, svc.settings, source=source, app=svc.app)


def job_state(svc: Services, job_id: str) -> str:
    """One light query on the job's row: what a polling client pays per poll."""
    from sqlalchemy import select

    from digits.worker.store import db

    with svc.engine.connect() as connection:
        return connection.execute(select(db.Job.status).where(db.Job.id == job_id)).scalar_one()


def wait_done(svc: Services, job_id: str, poll_s: float, timeout_s: float = 3600) -> None:
    from digits.worker.store.db import FINAL_JOB_STATUSES

    deadline = time.monotonic() + timeout_s
    while job_state(svc, job_id) not in FINAL_JOB_STATUSES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} unfinished after {timeout_s} s")
        time.sleep(poll_s)


def warm_up(svc: Services, pool: Sequence[bytes], concurrency: int) -> None:
    """Until every child has loaded its model: a model load is a start-up cost, not throughput."""
    from digits.worker.queue.model_cache import LOADED_MESSAGE

    marker = LOADED_MESSAGE.split("%s", 1)[1].split("%d", 1)[0]  # " loaded in process "
    for attempt in range(10):
        chunk = svc.settings.chunk_size
        crops = job_crops(pool, chunk * concurrency * 2, f"warm{attempt}")
        wait_done(svc, submit(svc, crops, "bench warm-up").job_id, poll_s=0.05)
        if svc.worker.log().count(marker) >= concurrency:
            return
    raise RuntimeError("the worker's children did not all load the model")


def throughput(svc: Services, pool: Sequence[bytes], count: int) -> dict:
    """One job of ``count`` crops, from the call that submits it to its last row committed."""
    from digits.model.review import DIGIT

    job = timed_job(svc, job_crops(pool, count, "batch"), "bench throughput", DIGIT, wait_done)
    return {"crops": count, "crops_per_s": round(job.pop("per_s"), 1), **job}


def latency_ms(svc: Services, crop) -> float:
    started = time.perf_counter()
    plan = submit(svc, [crop], "bench latency")
    wait_done(svc, plan.job_id, poll_s=LATENCY_POLL_S, timeout_s=120)
    return (time.perf_counter() - started) * 1000.0


def idle_latency(svc: Services, pool: Sequence[bytes], jobs: int) -> dict:
    from digits.worker.submission.jobs import Crop

    samples = [latency_ms(svc, Crop(f"idle/{i}", pool[i % len(pool)])) for i in range(jobs)]
    return percentiles(samples)


def loaded_latency(svc: Services, pool: Sequence[bytes], jobs: int, batch: int) -> dict:
    """Single-crop jobs one after another while a batch job keeps the batch queue full.

    A sample counts only if the batch was still running when its result arrived; when the batch
    ends another is submitted, so every sample met a busy worker.
    """
    from digits.worker.store.db import FINAL_JOB_STATUSES
    from digits.worker.submission.jobs import Crop

    samples: list[float] = []
    batches, batch_crops, attempts = 0, 0, 0
    current = None
    while len(samples) < jobs and attempts < jobs * 3:
        if current is None or job_state(svc, current) in FINAL_JOB_STATUSES:
            current = submit(svc, job_crops(pool, batch, f"load{batches}"), "bench load").job_id
            batches, batch_crops = batches + 1, batch_crops + batch
        attempts += 1
        sample = latency_ms(svc, Crop(f"loaded/{attempts}", pool[attempts % len(pool)]))
        if job_state(svc, current) not in FINAL_JOB_STATUSES:
            samples.append(sample)
    wait_done(svc, current, poll_s=0.05)
    return {**percentiles(samples), "batches": batches, "batch_crops": batch_crops}


def end_to_end(options: BenchOptions, backend: str, pool: list[bytes], model_path: Path) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix=f"digits-bench-{backend}-") as workdir,
        services(options, backend, Path(workdir), model_path) as svc,
    ):
        warm_up(svc, pool, options.concurrency)
        idle = idle_latency(svc, pool, options.latency_jobs)
        directory = options.profile_dir / backend if options.profile_dir else None
        with profiled(children(svc.worker.process.pid), directory) as profile:
            result = throughput(svc, pool, options.crops)
        if profile:
            result["profile"] = profile
        loaded = loaded_latency(svc, pool, options.latency_jobs, options.crops)
        result.update(
            chunk_size=svc.settings.chunk_size,
            latency_idle=idle,
            latency_loaded=loaded,
            memory=memory(svc.worker.process.pid),
        )
        return result


# ------------------------------------------------------------------------------------ the run


def run(options: BenchOptions, echo: Callable[[str], None] = print) -> dict:
    """Every measurement, as a JSON-ready dict; ``echo`` gets one line per finished phase."""
    from digits.model.inference import default_model_path

    machine = Machine.now()
    model_path = Path(options.model_path or default_model_path())
    report: dict = {
        "command": " ".join(["python scripts/devtools/bench.py", *_argv(options)]),
        "machine": None,
        "model": str(model_path),
    }
    if not options.fields_only:
        report.update(digit_measurements(options, machine, model_path, echo))
    if options.fields:
        report["fields"] = measure_fields(
            options,
            lambda workdir: services(options, "sqlite", workdir, model_path),
            wait_done,
            echo,
        )
    machine.load_after = os.getloadavg()
    report["machine"] = dataclasses.asdict(machine)
    report["targets"] = targets(report)
    return report


def digit_measurements(
    options: BenchOptions, machine: Machine, model_path: Path, echo: Callable[[str], None]
) -> dict:
    """Seed, raw inference, normalization and every backend end to end, on digit crops."""
    from digits.cli.devtools.local import postgres_bindir
    from digits.model.inference import BATCH
    from digits.worker.config import Settings

    chunk = Settings.from_env().chunk_size
    pool = crop_pool(
        min(options.crops, POOL_LIMIT), options.seed, options.data_dir, options.cache_dir
    )
    pixels = normalized_pixels(pool[: max(options.seed_images, chunk * 4)])
    echo(f"{len(pool)} distinct scan-like crops; {machine.nproc} cores, load {machine.load_before}")

    seed = seed_rate(model_path, pixels[: options.seed_images])
    echo(f"seed predict per image: {seed:.1f} images/s")
    raw = in_children(
        raw_child,
        [(str(model_path), pixels, chunk, options.compute_seconds)] * options.concurrency,
        barrier=True,
    )
    echo(f"raw inference: {sum(raw):.0f} images/s ({options.concurrency} x 1 thread)")
    norm = in_children(
        normalize_child, [(pool[:2000], chunk, options.compute_seconds)], barrier=False
    )[0]
    echo(f"normalization: {norm:.0f} crops/s on one core")

    backends: dict[str, dict] = {}
    for backend in options.backends:
        if backend == "postgresql" and not options.postgres_url and postgres_bindir() is None:
            backends[backend] = {"skipped": "PostgreSQL binaries not installed"}
            continue
        backends[backend] = end_to_end(options, backend, pool, model_path)
        echo(f"{backend}: {json.dumps(backends[backend])}")

    raw_total = sum(raw)
    # What the children's own work allows, queue and database aside: each crop normalized on one
    # core and classified at the raw rate of one process, on every child at once.
    per_crop_s = 1.0 / norm + options.concurrency / raw_total
    ceiling = options.concurrency / per_crop_s
    for result in backends.values():
        if "crops_per_s" in result:
            result["share_of_raw"] = round(result["crops_per_s"] / raw_total, 3)
            result["share_of_compute_ceiling"] = round(result["crops_per_s"] / ceiling, 3)
    return {
        "chunk_size": chunk,
        "inference_batch": BATCH,
        "seed_predict": {"images": len(pixels[: options.seed_images]), "per_s": round(seed, 1)},
        "raw_inference": {
            "per_s": round(raw_total, 1),
            "per_process": [round(r, 1) for r in raw],
            "processes": options.concurrency,
            "batch": chunk,
        },
        "normalize": {"crops_per_s_one_core": round(norm, 1)},
        "compute_ceiling": {"crops_per_s": round(ceiling, 1), "processes": options.concurrency},
        "end_to_end": backends,
    }


def _argv(options: BenchOptions) -> list[str]:
    defaults = BenchOptions()
    argv = []
    for name in ("crops", "latency_jobs", "seed_images", "compute_seconds", "fields"):
        value = getattr(options, name)
        if value != getattr(defaults, name):
            argv += [f"--{name.replace('_', '-')}", str(value)]
    if options.backends != defaults.backends:
        argv += ["--backends", ",".join(options.backends)]
    if options.fields_only:
        argv.append("--fields-only")
    if options.profile_dir:  # sampling costs the children a little: say so in the record
        argv += ["--profile", str(options.profile_dir)]
    return argv


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--crops", type=int, default=BenchOptions.crops, help="crops in the batch job")
    p.add_argument("--latency-jobs", type=int, default=BenchOptions.latency_jobs)
    p.add_argument("--seed-images", type=int, default=BenchOptions.seed_images)
    p.add_argument("--compute-seconds", type=float, default=BenchOptions.compute_seconds)
    p.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,postgresql")
    p.add_argument("--fields", type=int, default=BenchOptions.fields, help="amount fields; 0 skips")
    p.add_argument("--fields-only", action="store_true", help="the field measurement alone")
    p.add_argument("--data", type=Path, help="MNIST directory (default: $DIGITS_MNIST_DIR)")
    p.add_argument("--postgres-url", help="use this database instead of a throwaway cluster")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="rendered crops")
    p.add_argument("--profile", type=Path, help="py-spy the children into this directory")
    p.add_argument("--json", type=Path, help="also write the JSON report to this file")
    return p


def options_from(args: argparse.Namespace) -> BenchOptions:
    backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
    unknown = set(backends) - set(BACKENDS)
    if unknown or not backends:
        raise SystemExit(f"--backends: choose from {', '.join(BACKENDS)}")
    return BenchOptions(
        crops=args.crops,
        latency_jobs=args.latency_jobs,
        seed_images=args.seed_images,
        compute_seconds=args.compute_seconds,
        backends=backends,
        data_dir=args.data or _env_path("DIGITS_MNIST_DIR"),
        postgres_url=args.postgres_url,
        cache_dir=args.cache_dir,
        profile_dir=args.profile,
        fields=args.fields,
        fields_only=args.fields_only,
    )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    report = run(options_from(args), echo=lambda line: print(line, file=sys.stderr, flush=True))
    print(table(report))
    print(json.dumps(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
