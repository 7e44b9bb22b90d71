"""What the benchmark (:mod:`.bench`) measures a run with: CPU time per role, resident memory,
latency percentiles and py-spy profiles of the worker's children.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np


def children(pid: int) -> list[int]:
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
def cpu_accounting(svc) -> Iterator[dict]:
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


def timed_job(svc, crops: Sequence, source: str, kind: str, wait_done) -> dict:
    """One job of ``crops``, from the call that submits it to its last row committed, with the
    CPU each role spent meanwhile and how its items ended."""
    from digits.worker.store import db
    from digits.worker.store.results import job_status
    from digits.worker.submission import jobs

    with cpu_accounting(svc) as cpu:
        started = time.perf_counter()
        plan = jobs.submit(crops, svc.settings, source=source, app=svc.app, kind=kind)
        submitted = time.perf_counter()
        wait_done(svc, plan.job_id, poll_s=0.02)
        seconds = time.perf_counter() - started
    with db.session_scope(svc.settings.database_url) as session:
        final = job_status(session, plan.job_id)
    return {
        "chunks": len(plan.chunks),
        "seconds": round(seconds, 3),
        "submit_seconds": round(submitted - started, 3),
        "per_s": len(crops) / seconds,
        "status": final.status,
        "ok": final.ok,
        "needs_review": final.needs_review,
        "blank": final.blank,
        "error": final.error,
        "cpu": cpu,
    }
