"""Throughput and latency of the whole path, each measured against its own ceiling, in one run.

    python scripts/bench.py [--crops 50000] [--latency-jobs 500] [--json PATH]
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
6. the resident memory (now and peak) of the worker's parent and of each child.

Crops are scan-like MNIST test digits (:mod:`model.scanlike`: JPEG or PNG, 28 to 128 px, noise,
blur, colour). Rendering costs about 3 ms each, so the distinct crops (at most 10,000) are cached
under ``var/bench``; a larger job repeats them under distinct keys, which costs the worker the same.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/bench.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "var" / "bench"
POOL_LIMIT = 10_000  # distinct crops: the MNIST test set
LATENCY_POLL_S = 0.001
BACKENDS = ("sqlite", "postgresql")

# The targets on this machine (2 cores, CPU, the cnn model).
TARGET_THROUGHPUT = 2500.0  # crops/s end to end
TARGET_SHARE_OF_RAW = 0.40
TARGET_IDLE_P50_MS = 30.0
TARGET_IDLE_P99_MS = 150.0
TARGET_LOADED_P99_MS = 500.0
TARGET_RSS_MB = 800.0


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


# ------------------------------------------------------------------------------------------ crops


def crop_pool(count: int, seed: int, data_dir: Path | None, cache_dir: Path) -> list[bytes]:
    """``count`` distinct scan-like crops, rendered once and cached by count, seed and renderer."""
    from digits.model import scanlike

    renderer = hashlib.sha256(Path(scanlike.__file__).read_bytes()).hexdigest()[:12]
    path = cache_dir / f"scanlike-{count}-{seed}-{renderer}.npz"
    if path.is_file():
        with np.load(path) as stored:
            blob, offsets = stored["blob"].tobytes(), stored["offsets"]
        return [blob[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    from digits.model import data

    images = data.load(data_dir).x_test[:count]
    crops = scanlike.scanlike_set(images, seed=seed)
    cache_dir.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0] + [len(crop) for crop in crops])
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, blob=np.frombuffer(b"".join(crops), np.uint8), offsets=offsets)
    temporary.replace(path)
    return crops


def normalized_pixels(crops: Sequence[bytes]) -> np.ndarray:
    """The network's input for every crop with ink: (n, 28, 28) float32."""
    from digits.model.normalize import Crop, normalize_many

    found = [c.pixels for c in normalize_many(crops) if isinstance(c, Crop) and not c.blank]
    return np.stack(found)


def _job_crops(pool: Sequence[bytes], count: int, prefix: str) -> list:
    from digits.worker.jobs import Crop

    return [Crop(f"{prefix}/{i:06d}", pool[i % len(pool)]) for i in range(count)]


# ------------------------------------------------------------------------- compute, in children
# Each runs in a fresh spawned process so its TensorFlow and BLAS thread settings are its own.


@contextlib.contextmanager
def _single_threaded_env() -> Iterator[None]:
    """BLAS pools of one thread for processes started inside; the environment is restored after,
    so the worker started later runs with whatever its operator's environment says."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_CPP_MIN_LOG_LEVEL")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names[:3]})
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _seed_child(model_path: str, pixels: np.ndarray, out) -> None:
    """The seed's loop: ``predict`` per image, with TensorFlow's default threads (all cores)."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    model.predict(pixels[:1, ..., None], verbose=0)  # builds the predict function once
    started = time.perf_counter()
    for image in pixels:
        model.predict(image[None, ..., None], verbose=0)
    out.put(len(pixels) / (time.perf_counter() - started))


def _raw_child(model_path: str, pixels: np.ndarray, batch: int, seconds: float, barrier, out):
    """The worker child's forward pass on ready input; all children start together."""
    from digits.model.inference import Classifier

    classifier = Classifier.load(model_path, threads=1)
    classifier.probabilities(pixels[:batch])  # traces the compiled function
    barrier.wait()
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = (done // batch * batch) % max(1, len(pixels) - batch)
        classifier.probabilities(pixels[start : start + batch])
        done += batch
    out.put(done / (time.perf_counter() - started))


def _normalize_child(crops: list[bytes], batch: int, seconds: float, out) -> None:
    """What a worker child does before the network sees anything: decode and normalize."""
    from digits.model.normalize import normalize_many

    normalize_many(crops[:batch])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        start = done % max(1, len(crops) - batch)
        normalize_many(crops[start : start + batch])
        done += batch
    out.put(done / (time.perf_counter() - started))


def _in_children(target: Callable, args: Sequence[tuple], barrier: bool = False) -> list[float]:
    """Run ``target(*a, [barrier,] queue)`` for each ``a`` in its own spawned process at once."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    together = context.Barrier(len(args)) if barrier else None
    processes = [
        context.Process(target=target, args=(*a, *([together] if barrier else []), out))
        for a in args
    ]
    with _single_threaded_env():
        for process in processes:
            process.start()
    try:
        return [out.get(timeout=600) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)


def seed_rate(model_path: Path, pixels: np.ndarray) -> float:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_seed_child, args=(str(model_path), pixels, out))
    process.start()
    try:
        return out.get(timeout=600)
    finally:
        process.join(timeout=30)


# --------------------------------------------------------------------------------- end to end


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
            "worker_children": _children(parent),
            "redis": [self.redis_pid],
        }
        if self.postgres_pid:
            roles["postgres"] = [self.postgres_pid, *_children(self.postgres_pid)]
        return roles


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process so far (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_busy_seconds() -> float:
    """CPU time every process on the machine spent so far, all cores together."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle and iowait
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_accounting(svc: Services) -> Iterator[dict]:
    """CPU seconds each role spent inside the block, and what the rest of the machine spent.

    On a shared machine ``others`` is what colleagues' work took from this run: the figure that
    says whether a slow run was slow or merely crowded.
    """
    roles = svc.processes()
    before = {pid: _cpu_seconds(pid) for pids in roles.values() for pid in pids}
    busy, started = _machine_busy_seconds(), time.perf_counter()
    out: dict = {}
    yield out
    wall = time.perf_counter() - started
    spent = {
        role: round(sum(_cpu_seconds(pid) - before.get(pid, 0.0) for pid in pids), 2)
        for role, pids in {**roles, **svc.processes()}.items()
    }
    total = _machine_busy_seconds() - busy
    out.update(
        wall_s=round(wall, 2),
        cpu_s=spent,
        others_cpu_s=round(max(0.0, total - sum(spent.values())), 2),
        machine_cpu_s=round(total, 2),
        cores=os.cpu_count(),
    )


@contextlib.contextmanager
def services(options: BenchOptions, backend: str, workdir: Path, model_path: Path) -> Iterator:
    from digits.worker import db
    from digits.worker.celery_app import create_app
    from digits.worker.config import Settings
    from digits.worker.local import local_postgres, local_redis, start_worker

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
    from digits.worker import jobs

    return jobs.submit(crops, svc.settings, source=source, app=svc.app)


def job_state(svc: Services, job_id: str) -> str:
    """One light query on the job's row: what a polling client pays per poll."""
    from sqlalchemy import select

    from digits.worker import db

    with svc.engine.connect() as connection:
        return connection.execute(select(db.Job.status).where(db.Job.id == job_id)).scalar_one()


def wait_done(svc: Services, job_id: str, poll_s: float, timeout_s: float = 3600) -> None:
    from digits.worker.db import FINAL_JOB_STATUSES

    deadline = time.monotonic() + timeout_s
    while job_state(svc, job_id) not in FINAL_JOB_STATUSES:
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} unfinished after {timeout_s} s")
        time.sleep(poll_s)


def warm_up(svc: Services, pool: Sequence[bytes], concurrency: int) -> None:
    """Until every child has loaded its model: a model load is a start-up cost, not throughput."""
    from digits.worker.model_cache import LOADED_MESSAGE

    marker = LOADED_MESSAGE.split("%s", 1)[1].split("%d", 1)[0]  # " loaded in process "
    for attempt in range(10):
        chunk = svc.settings.chunk_size
        crops = _job_crops(pool, chunk * concurrency * 2, f"warm{attempt}")
        wait_done(svc, submit(svc, crops, "bench warm-up").job_id, poll_s=0.05)
        if svc.worker.log().count(marker) >= concurrency:
            return
    raise RuntimeError("the worker's children did not all load the model")


def throughput(svc: Services, pool: Sequence[bytes], count: int) -> dict:
    """One job of ``count`` crops, from the call that submits it to its last row committed."""
    from digits.worker import db
    from digits.worker.results import job_status

    crops = _job_crops(pool, count, "batch")
    with cpu_accounting(svc) as cpu:
        started = time.perf_counter()
        plan = submit(svc, crops, "bench throughput")
        submitted = time.perf_counter()
        wait_done(svc, plan.job_id, poll_s=0.02)
        seconds = time.perf_counter() - started
    with db.session_scope(svc.settings.database_url) as session:
        final = job_status(session, plan.job_id)
    return {
        "crops": count,
        "chunks": len(plan.chunks),
        "seconds": round(seconds, 3),
        "submit_seconds": round(submitted - started, 3),
        "crops_per_s": round(count / seconds, 1),
        "status": final.status,
        "ok": final.ok,
        "needs_review": final.needs_review,
        "blank": final.blank,
        "error": final.error,
        "cpu": cpu,
    }


def latency_ms(svc: Services, crop) -> float:
    started = time.perf_counter()
    plan = submit(svc, [crop], "bench latency")
    wait_done(svc, plan.job_id, poll_s=LATENCY_POLL_S, timeout_s=120)
    return (time.perf_counter() - started) * 1000.0


def idle_latency(svc: Services, pool: Sequence[bytes], jobs: int) -> dict:
    from digits.worker.jobs import Crop

    samples = [latency_ms(svc, Crop(f"idle/{i}", pool[i % len(pool)])) for i in range(jobs)]
    return percentiles(samples)


def loaded_latency(svc: Services, pool: Sequence[bytes], jobs: int, batch: int) -> dict:
    """Single-crop jobs one after another while a batch job keeps the batch queue full.

    A sample counts only if the batch was still running when its result arrived; when the batch
    ends another is submitted, so every sample met a busy worker.
    """
    from digits.worker.db import FINAL_JOB_STATUSES
    from digits.worker.jobs import Crop

    samples: list[float] = []
    batches, batch_crops, attempts = 0, 0, 0
    current = None
    while len(samples) < jobs and attempts < jobs * 3:
        if current is None or job_state(svc, current) in FINAL_JOB_STATUSES:
            current = submit(svc, _job_crops(pool, batch, f"load{batches}"), "bench load").job_id
            batches, batch_crops = batches + 1, batch_crops + batch
        attempts += 1
        sample = latency_ms(svc, Crop(f"loaded/{attempts}", pool[attempts % len(pool)]))
        if job_state(svc, current) not in FINAL_JOB_STATUSES:
            samples.append(sample)
    wait_done(svc, current, poll_s=0.05)
    return {**percentiles(samples), "batches": batches, "batch_crops": batch_crops}


def percentiles(samples: Sequence[float]) -> dict:
    if not samples:
        return {"jobs": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p50, p95, p99 = np.percentile(samples, [50, 95, 99])
    return {
        "jobs": len(samples),
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(max(samples)), 1),
    }


def memory(pid: int) -> dict:
    """Resident and peak resident memory of the worker's parent and each of its children, in MB."""

    def status(p: int) -> dict:
        fields = {}
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = round(int(value.split()[0]) / 1024, 1)
        return {
            "pid": p,
            "rss_mb": fields.get("VmRSS"),
            "peak_rss_mb": fields.get("VmHWM"),
            "pss_mb": _pss_mb(p),
        }

    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return {"parent": status(pid), "children": [status(int(child)) for child in children]}


def _pss_mb(pid: int) -> float | None:
    """Proportional set size: shared pages (TensorFlow's libraries) split among their users."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


@contextlib.contextmanager
def profiled(pids: Sequence[int], directory: Path | None) -> Iterator[dict]:
    """py-spy on each worker child for the length of the block, summarized by where time went.

    A development tool, not a dependency: without ``directory`` or without py-spy on PATH (or
    beside this Python) nothing is sampled and the summary stays empty.
    """
    summary: dict = {}
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if directory is None or not Path(spy).exists():
        yield summary
        return
    directory.mkdir(parents=True, exist_ok=True)
    outputs = [directory / f"child-{pid}.txt" for pid in pids]
    argv = [spy, "record", "--rate", "100", "--format", "raw", "--nonblocking"]
    spies = [
        subprocess.Popen(
            [*argv, "--pid", str(pid), "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid, out in zip(pids, outputs, strict=True)
    ]
    try:
        yield summary
    finally:
        for spy_process in spies:
            spy_process.send_signal(signal.SIGINT)  # py-spy writes its samples and exits
        for spy_process in spies:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy_process.wait(timeout=60)
        summary.update(time_shares([out for out in outputs if out.exists()]))
        summary["files"] = [str(out) for out in outputs if out.exists()]


# Where a sample's time goes: the innermost frame from one of these files names it.
PROFILE_PARTS = (
    ("decode and normalize", ("model/normalize.py",)),
    ("inference", ("model/inference.py", "tensorflow/", "keras/")),
    ("database write", ("worker/store.py", "sqlalchemy/", "psycopg/", "sqlite3/")),
)


def time_shares(paths: Sequence[Path]) -> dict:
    """Share of the children's samples per part of the work, from py-spy's raw stacks."""
    counts: dict[str, int] = {}
    total = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, number = line.rpartition(" ")
            if not stack or not number.isdigit():
                continue
            total += int(number)
            part = _part(stack.split(";"))
            counts[part] = counts.get(part, 0) + int(number)
    if not total:
        return {}
    shares = {part: round(n / total, 3) for part, n in sorted(counts.items(), key=lambda i: -i[1])}
    return {"samples": total, "shares": shares}


def _part(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, markers in PROFILE_PARTS:
            if any(marker in frame for marker in markers):
                return part
    return "messages, Celery and the rest"


def end_to_end(options: BenchOptions, backend: str, pool: list[bytes], model_path: Path) -> dict:
    with (
        tempfile.TemporaryDirectory(prefix=f"digits-bench-{backend}-") as workdir,
        services(options, backend, Path(workdir), model_path) as svc,
    ):
        warm_up(svc, pool, options.concurrency)
        idle = idle_latency(svc, pool, options.latency_jobs)
        directory = options.profile_dir / backend if options.profile_dir else None
        with profiled(_children(svc.worker.process.pid), directory) as profile:
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
    from digits.model.inference import BATCH, default_model_path
    from digits.worker.config import Settings
    from digits.worker.local import postgres_bindir

    machine = Machine.now()
    model_path = Path(options.model_path or default_model_path())
    chunk = Settings.from_env().chunk_size
    pool = crop_pool(
        min(options.crops, POOL_LIMIT), options.seed, options.data_dir, options.cache_dir
    )
    pixels = normalized_pixels(pool[: max(options.seed_images, chunk * 4)])
    echo(f"{len(pool)} distinct scan-like crops; {machine.nproc} cores, load {machine.load_before}")

    seed = seed_rate(model_path, pixels[: options.seed_images])
    echo(f"seed predict per image: {seed:.1f} images/s")
    raw = _in_children(
        _raw_child,
        [(str(model_path), pixels, chunk, options.compute_seconds)] * options.concurrency,
        barrier=True,
    )
    echo(f"raw inference: {sum(raw):.0f} images/s ({options.concurrency} x 1 thread)")
    norm = _in_children(
        _normalize_child, [(pool[:2000], chunk, options.compute_seconds)], barrier=False
    )[0]
    echo(f"normalization: {norm:.0f} crops/s on one core")

    backends: dict[str, dict] = {}
    for backend in options.backends:
        if backend == "postgresql" and not options.postgres_url and postgres_bindir() is None:
            backends[backend] = {"skipped": "PostgreSQL binaries not installed"}
            continue
        backends[backend] = end_to_end(options, backend, pool, model_path)
        echo(f"{backend}: {json.dumps(backends[backend])}")

    machine.load_after = os.getloadavg()
    raw_total = sum(raw)
    # What the children's own work allows, queue and database aside: each crop normalized on one
    # core and classified at the raw rate of one process, on every child at once.
    per_crop_s = 1.0 / norm + options.concurrency / raw_total
    ceiling = options.concurrency / per_crop_s
    for result in backends.values():
        if "crops_per_s" in result:
            result["share_of_raw"] = round(result["crops_per_s"] / raw_total, 3)
            result["share_of_compute_ceiling"] = round(result["crops_per_s"] / ceiling, 3)
    report = {
        "command": " ".join(["python scripts/bench.py", *_argv(options)]),
        "machine": dataclasses.asdict(machine),
        "model": str(model_path),
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
    report["targets"] = targets(report)
    return report


def targets(report: dict) -> list[dict]:
    """Each target with the measured value and whether it is met, per backend."""
    out = []

    def check(name: str, value: float | None, limit: float, at_least: bool) -> None:
        met = value is not None and (value >= limit if at_least else value <= limit)
        out.append({"target": name, "limit": limit, "value": value, "met": met})

    for backend, result in report["end_to_end"].items():
        if "crops_per_s" not in result:
            continue
        check(f"{backend} end to end crops/s", result["crops_per_s"], TARGET_THROUGHPUT, True)
        check(
            f"{backend} share of raw inference", result["share_of_raw"], TARGET_SHARE_OF_RAW, True
        )
        idle, loaded = result["latency_idle"], result["latency_loaded"]
        check(f"{backend} idle p50 ms", idle["p50_ms"], TARGET_IDLE_P50_MS, False)
        check(f"{backend} idle p99 ms", idle["p99_ms"], TARGET_IDLE_P99_MS, False)
        check(f"{backend} p99 ms under batch", loaded["p99_ms"], TARGET_LOADED_P99_MS, False)
        peaks = [result["memory"]["parent"]] + result["memory"]["children"]
        largest = max(p["peak_rss_mb"] or 0.0 for p in peaks)
        check(f"{backend} peak RSS MB per process", largest, TARGET_RSS_MB, False)
    return out


def table(report: dict) -> str:
    """The report as a Markdown table, the form docs/performance.md keeps."""
    m = report["machine"]
    lines = [
        f"Machine: {m['nproc']} cores, {m['cpu_model']}; load average "
        f"{_load(m['load_before'])} before, {_load(m['load_after'])} after.",
        f"Command: `{report['command']}`",
        "",
        "| measurement | value |",
        "| --- | --- |",
        f"| seed: `model.predict` per image | {report['seed_predict']['per_s']:.1f} images/s |",
        f"| raw inference, {report['raw_inference']['processes']} processes x 1 thread, "
        f"batches of {report['raw_inference']['batch']} | "
        f"{report['raw_inference']['per_s']:.0f} images/s |",
        f"| normalization (decode included), one core | "
        f"{report['normalize']['crops_per_s_one_core']:.0f} crops/s |",
        f"| compute ceiling: normalize + classify on {report['compute_ceiling']['processes']} "
        f"cores, no queue or database | {report['compute_ceiling']['crops_per_s']:.0f} crops/s |",
    ]
    for backend, r in report["end_to_end"].items():
        if "skipped" in r:
            lines.append(f"| {backend} | skipped: {r['skipped']} |")
            continue
        idle, loaded = r["latency_idle"], r["latency_loaded"]
        peak = max(p["peak_rss_mb"] or 0 for p in [r["memory"]["parent"], *r["memory"]["children"]])
        children = ", ".join(f"{c['peak_rss_mb']:.0f}" for c in r["memory"]["children"])
        pss = ", ".join(f"{c['pss_mb'] or 0:.0f}" for c in r["memory"]["children"])
        lines += [
            f"| {backend}: end to end, {r['crops']} crops | {r['crops_per_s']:.0f} crops/s "
            f"({r['share_of_raw']:.0%} of raw, {r['share_of_compute_ceiling']:.0%} of the "
            f"compute ceiling; submit {r['submit_seconds']:.1f} s of {r['seconds']:.1f} s; "
            f"{r['status']}) |",
            f"| {backend}: single-crop latency, idle queue ({idle['jobs']} jobs) | "
            f"p50 {idle['p50_ms']} ms, p95 {idle['p95_ms']} ms, p99 {idle['p99_ms']} ms |",
            f"| {backend}: single-crop latency, batch running ({loaded['jobs']} jobs) | "
            f"p50 {loaded['p50_ms']} ms, p95 {loaded['p95_ms']} ms, p99 {loaded['p99_ms']} ms |",
            f"| {backend}: worker peak RSS | parent {r['memory']['parent']['peak_rss_mb']:.0f} MB,"
            f" children {children} MB (largest {peak:.0f} MB; proportional share {pss} MB) |",
            f"| {backend}: CPU seconds during the end-to-end run | {_cpu_line(r['cpu'])} |",
        ]
        if r.get("profile", {}).get("shares"):
            shares = ", ".join(f"{k} {v:.0%}" for k, v in r["profile"]["shares"].items())
            lines.append(f"| {backend}: worker children's time (py-spy) | {shares} |")
    lines += ["", "| target | limit | measured | met |", "| --- | --- | --- | --- |"]
    for t in report["targets"]:
        lines.append(
            f"| {t['target']} | {t['limit']:g} | {t['value']} | {'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(lines)


def _cpu_line(cpu: dict) -> str:
    """Where the machine's CPU went during the run, so a slow run shows what it was slow on."""
    parts = [f"{role.replace('_', ' ')} {seconds:.1f}" for role, seconds in cpu["cpu_s"].items()]
    parts.append(f"other processes {cpu['others_cpu_s']:.1f}")
    capacity = cpu["wall_s"] * cpu["cores"]
    return f"{', '.join(parts)} (of {capacity:.1f} core-seconds in {cpu['wall_s']:.1f} s)"


def _load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _argv(options: BenchOptions) -> list[str]:
    defaults = BenchOptions()
    argv = []
    for name in ("crops", "latency_jobs", "seed_images", "compute_seconds"):
        value = getattr(options, name)
        if value != getattr(defaults, name):
            argv += [f"--{name.replace('_', '-')}", str(value)]
    if options.backends != defaults.backends:
        argv += ["--backends", ",".join(options.backends)]
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
