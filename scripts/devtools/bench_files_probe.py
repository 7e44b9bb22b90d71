"""What ``digits bench --e2e-files`` (:mod:`.bench_files`) reads a run off, all from outside the
processes it times: the worker's log, Redis's queue lengths, and the CPU each role spent.

The log is Celery's default format, ``[2026-01-02 03:04:05,678: INFO/ForkPoolWorker-1] ...``
(local time, to the millisecond): the parent's ``Task ...[job:chunk] received`` lines, each child's
``model ... loaded in process`` line (:mod:`digits.worker.queue.model_cache`) and its one
``chunk done ... seconds= decode= normalize= infer= store=`` line per chunk (:mod:`digits.worker.queue.tasks`).
A chunk's start is its line's time less its ``seconds``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import statistics
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from digits.cli.devtools.bench_probe import children

QUEUE_POLL_S = 0.02
STAGES = ("decode", "normalize", "infer", "read", "store")  # the chunk line's (queue.stages)
SPENT = (*STAGES, "model_load", "other")  # where the children's chunk seconds went


@dataclass
class Roles:
    """Who spends the CPU of a run (for :func:`.bench_probe.cpu_accounting`)."""

    worker_pid: int
    redis_pid: int
    postgres_pid: int | None

    def processes(self) -> dict[str, list[int]]:
        roles = {
            "bench": [os.getpid()],  # this process: the queue sampler and the reads after
            "worker_parent": [self.worker_pid],
            "worker_children": children(self.worker_pid),
            "redis": [self.redis_pid],
        }
        if self.postgres_pid:
            roles["postgres"] = [self.postgres_pid, *children(self.postgres_pid)]
        return roles


class QueueDepth:
    """Chunks waiting in Redis, sampled in a thread: the peak, and the chunk-seconds they sat
    there (the area under the depth), which divided by the chunks is each one's mean wait."""

    def __init__(self, url: str) -> None:
        from kombu.transport.redis import PRIORITY_STEPS, Channel

        from digits.worker.queue.messages import QUEUES

        self.url = url
        # kombu keeps a queue's priorities in lists of their own: name, name + sep + step.
        self.keys = [q + (f"{Channel.sep}{p}" if p else "") for q in QUEUES for p in PRIORITY_STEPS]
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> QueueDepth:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _sample(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url)
        with contextlib.closing(client):
            while not self._stop.is_set():
                pipe = client.pipeline(transaction=False)
                for key in self.keys:
                    pipe.llen(key)
                self.samples.append((time.time(), sum(pipe.execute())))
                self._stop.wait(QUEUE_POLL_S)

    def summary(self, chunks: int, started: float) -> dict:
        pairs = itertools.pairwise(self.samples)
        area = sum(depth * (t1 - t0) for (t0, depth), (t1, _) in pairs)
        first = next((t for t, d in self.samples if d), None)
        return {
            "peak_chunks": max((d for _, d in self.samples), default=0),
            "mean_wait_s": round(area / chunks, 3) if chunks else None,
            "first_seen_s": round(first - started, 3) if first else None,
            "samples": len(self.samples),
        }


LOG_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/([^\]]+)\] (.*)$")
RECEIVED = re.compile(r"^Task \S+\[([0-9a-f-]+):(\S+)\] received$")
LOADED = re.compile(
    r"^model \S+ loaded in process (\d+) \(load \d+ in this process\) in ([\d.]+) s"
)
FIELD = re.compile(r"(\w+)=(\S+)")


def log_events(text: str) -> list[tuple[float, str, str]]:
    """(Unix time, process name, message) per line of Celery's default format; the time is
    the local time Celery writes, to the millisecond."""
    events = []
    for line in text.splitlines():
        if m := LOG_LINE.match(line):
            when = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            events.append((when, m[2], m[3]))
    return events


def where_time_went(events: list[tuple[float, str, str]], job_id: str, started: float) -> dict:
    """The job's timeline (seconds after the enqueue started), per-stage sums and each child's
    first chunk against its median, from the worker's log lines."""
    received: dict[str, float] = {}
    chunks: list[dict] = []
    loads: dict[str, dict] = {}
    for when, process, message in events:
        if (m := RECEIVED.match(message)) and m[1] == job_id:
            received.setdefault(m[2], when)
        elif m := LOADED.match(message):
            loads[process] = {"pid": int(m[1]), "load_s": float(m[2]), "at_s": when - started}
        elif message.startswith("chunk done ") and f"job={job_id} " in message:
            fields = dict(FIELD.findall(message))
            seconds = float(fields["seconds"])
            chunk = {"process": process, "label": fields["chunk"], "seconds": seconds}
            chunk |= {"items": int(fields["items"]), "start": when - seconds, "done": when}
            chunks.append(chunk | {s: float(fields[s]) for s in STAGES if s in fields})
    if not chunks:
        raise RuntimeError(f"no 'chunk done' line for job {job_id} in the worker's log")
    busy = sum(c["seconds"] for c in chunks)
    stages = {s: round(sum(c.get(s, 0.0) for c in chunks), 4) for s in STAGES}
    # A model loaded on a chunk (a cold start) is inside that chunk's seconds, outside its stages.
    first_start = min(c["start"] for c in chunks)
    inside = [load["load_s"] for load in loads.values() if load["at_s"] + started >= first_start]
    stages["model_load"] = round(sum(inside), 2)
    stages["other"] = round(busy - sum(stages.values()), 2)  # leases, messages, Celery
    waits = [c["start"] - received[c["label"]] for c in chunks if c["label"] in received]
    return {
        "timeline": {
            "first_chunk_received_s": _since(min(received.values(), default=None), started),
            "first_chunk_started_s": _since(first_start, started),
            "last_chunk_done_s": _since(max(c["done"] for c in chunks), started),
        },
        "chunks": {
            "count": len(chunks),
            "items": sum(c["items"] for c in chunks),
            "busy_s": round(busy, 2),
            "median_s": round(statistics.median(c["seconds"] for c in chunks), 3),
            "stages_s": stages,
            "in_worker_wait_mean_s": round(statistics.fmean(waits), 3) if waits else None,
        },
        "children": _children(chunks, loads),
    }


def _children(chunks: list[dict], loads: dict[str, dict]) -> list[dict]:
    out = []
    for process in sorted({c["process"] for c in chunks}):
        own = sorted((c for c in chunks if c["process"] == process), key=lambda c: c["start"])
        load = loads.get(process, {})
        out.append(
            {
                "process": process,
                "chunks": len(own),
                "first_chunk_s": round(own[0]["seconds"], 3),
                "median_chunk_s": round(statistics.median(c["seconds"] for c in own), 3),
                "model_load_s": load.get("load_s"),  # None: this child logged no load
                "model_loaded_at_s": round(load["at_s"], 3) if load else None,
            }
        )
    return out


def _since(moment: float | None, started: float) -> float | None:
    return None if moment is None else round(moment - started, 3)
