"""Soak: many crops through one worker, its resident memory per quarter, and nothing lost.

    .venv/bin/python scripts/devtools/soak.py                  # 200,000 crops (docs/reliability.md)
    .venv/bin/python scripts/devtools/soak.py --crops 10000    # the form CI runs (tests/test_faults.py)

Starts its own redis-server and one worker (prefork, two children) on a temporary SQLite database
(or ``--database URL``), feeds it jobs of ``--job-size`` scan-like crops, at most two jobs queued
at a time, and samples the resident memory of the worker's whole process tree (parent and
children) twice a second. Prints the peak and mean of each quarter of the run, by crops written.
Exits 1 when the last quarter's peak is 10% or more above the first's, or when any crop is lost.
2,000 distinct crops are made once and cycled under new keys: a leak grows with crops processed,
not with distinct ones.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/devtools/soak.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MAX_GROWTH = 0.10
POOL = 2000
IN_FLIGHT = 2  # jobs queued at once: the worker never waits, Redis never holds the whole run


@dataclass
class Quarter:
    peak_mb: float = 0.0
    total_mb: float = 0.0
    samples: int = 0

    def add(self, rss_mb: float) -> None:
        self.peak_mb = max(self.peak_mb, rss_mb)
        self.total_mb += rss_mb
        self.samples += 1

    @property
    def mean_mb(self) -> float:
        return self.total_mb / self.samples if self.samples else 0.0


@dataclass
class Soak:
    crops: int
    quarters: list[Quarter] = field(default_factory=lambda: [Quarter() for _ in range(4)])
    written: int = 0
    lost: int = 0
    seconds: float = 0.0

    @property
    def growth(self) -> float:
        """Last quarter's peak over the first's, minus one."""
        first, last = self.quarters[0].peak_mb, self.quarters[-1].peak_mb
        return last / first - 1.0 if first else float("inf")

    def report(self) -> str:
        lines = [f"{self.crops} crops in {self.seconds:.0f} s ({self.crops / self.seconds:.0f}/s)"]
        for number, quarter in enumerate(self.quarters, 1):
            lines.append(
                f"quarter {number}: RSS peak {quarter.peak_mb:.0f} MB, mean {quarter.mean_mb:.0f} "
                f"MB ({quarter.samples} samples)"
            )
        lines.append(f"growth, first to last quarter peak: {self.growth:+.1%}; lost: {self.lost}")
        return "\n".join(lines)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, from /proc (Linux)."""
    total_kb, pending = 0, [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            pending.extend(int(child) for child in children)
    return total_kb / 1024


def scan_pool(count: int = POOL) -> list[bytes]:
    """Distinct scan-like crops of the first MNIST test digits."""
    from digits.model import data
    from digits.model.scanlike import scanlike_set

    root = Path(__file__).resolve().parents[2]
    default = root.parent / "shared" / "datasets" / "mnist"
    directory = os.environ.get("DIGITS_MNIST_DIR") or (default if default.is_dir() else None)
    return list(scanlike_set(data.load(directory).x_test[:count], seed=0))


def run(
    settings,
    app,
    worker_pid: int,
    pool: Sequence[bytes],
    total: int,
    job_size: int = 5000,
    sample_s: float = 0.5,
    stall_s: float = 300.0,
    say: Callable[[str], None] = print,
) -> Soak:
    """Feed ``total`` crops to a running worker and watch its memory; see the module's docstring.

    Crops not written when nothing has moved for ``stall_s`` seconds count as lost.
    """
    from digits.worker.store import db
    from digits.worker.submission import jobs

    soak = Soak(total)
    started = last_move = time.monotonic()
    in_flight: list[jobs.JobPlan] = []
    submitted = done = written = 0
    while (submitted < total or in_flight) and time.monotonic() - last_move < stall_s:
        while len(in_flight) < IN_FLIGHT and submitted < total:
            size = min(job_size, total - submitted)
            crops = [
                jobs.Crop(f"soak/{submitted + i:07d}", pool[(submitted + i) % len(pool)])
                for i in range(size)
            ]
            in_flight.append(jobs.submit(crops, settings, source="soak", app=app))
            submitted += size
        with db.session_scope(settings.database_url) as session:
            states = [session.get(db.Job, plan.job_id) for plan in in_flight]
            progress = [
                (plan, job.processed, job.status)
                for plan, job in zip(in_flight, states, strict=True)
            ]
        now_written = done + sum(processed for _, processed, _ in progress)
        if now_written != written:
            written, last_move = now_written, time.monotonic()
        soak.quarters[min(3, written * 4 // total)].add(tree_rss_mb(worker_pid))
        for plan, processed, status in progress:
            if status in db.FINAL_JOB_STATUSES:
                in_flight.remove(plan)
                done += processed
                say(f"{done}/{total} crops written, RSS {tree_rss_mb(worker_pid):.0f} MB")
        time.sleep(sample_s)
    soak.written, soak.seconds = written, time.monotonic() - started
    soak.lost = total - written
    return soak


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crops", type=int, default=200_000)
    parser.add_argument("--job-size", type=int, default=5000)
    parser.add_argument("--database", help="SQLAlchemy URL (default: a temporary SQLite file)")
    args = parser.parse_args(argv)

    from digits.cli.devtools.local import local_redis, start_worker
    from digits.worker.config import Settings
    from digits.worker.queue.celery_app import create_app
    from digits.worker.store import db

    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="digits-soak-")))
        redis = stack.enter_context(local_redis(workdir / "redis"))
        url = args.database or f"sqlite:///{workdir / 'soak.sqlite3'}"
        env = {"DIGITS_BROKER_URL": redis.url, "DIGITS_DATABASE_URL": url}
        settings = Settings.from_env({**os.environ, **env})
        db.upgrade(url)
        app = create_app(settings)
        stack.callback(app.close)
        worker = start_worker(env, workdir / "worker.log")
        stack.callback(worker.stop)
        worker.wait_ready(app)
        print("making the crop pool...", flush=True)
        soak = run(settings, app, worker.process.pid, scan_pool(), args.crops, args.job_size)
    print(soak.report())
    return 0 if soak.growth < MAX_GROWTH and soak.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
