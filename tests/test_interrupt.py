"""Ctrl-C in the middle of ``digits enqueue``: no item is left pending without a message to read it.

Before, the interrupt went past ``send_chunks`` (which caught ``Exception`` only): the job's rows
were recorded, half its chunks never sent, and the rest stayed ``pending`` for ever while the user
saw "Aborted!" and no job id.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
from PIL import Image
from sqlalchemy import select

from digits.worker.store import db
from digits.worker.submission.jobs import INTERRUPTED
from tests.services import task_body

DIGITS = str(Path(sys.executable).with_name("digits"))


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (28, 28), 255).save(out, format="PNG")
    return out.getvalue()


def _queued_keys(client: redis.Redis) -> set[str]:
    """Keys of every crop waiting in any queue (kombu keeps one list per priority step)."""
    keys: set[str] = set()
    for name in client.keys("*"):
        if client.type(name) != b"list":
            continue
        for raw in client.lrange(name, 0, -1):
            _, kwargs, _ = task_body(raw)
            keys.update(key for key, _ in kwargs["crops"])
    return keys


def _ctrl_c_as_at_a_terminal() -> None:
    """In the child before it runs: Ctrl-C's default disposition. A test runner started in the
    background (``nohup``, ``&``) ignores SIGINT, and its children would inherit that, so the
    enqueue would never see the Ctrl-C this test sends."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _queued_messages(client: redis.Redis) -> int:
    return sum(client.llen(n) for n in client.keys("*") if client.type(n) == b"list")


def test_ctrl_c_while_chunks_are_sent_marks_the_unsent_and_names_the_job(
    redis_server, sqlite_url, tmp_path
):
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    folder = tmp_path / "scans"
    folder.mkdir()
    blob = _png()
    for i in range(3000):
        (folder / f"s{i:04d}.png").write_bytes(blob)
    env = {
        **os.environ,
        "DIGITS_BROKER_URL": redis_server.url,
        "DIGITS_DATABASE_URL": sqlite_url,
        "DIGITS_CHUNK_SIZE": "1",  # 3,000 messages: the interrupt lands while they are sent
    }
    process = subprocess.Popen(
        [DIGITS, "enqueue", str(folder)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_at_a_terminal,
    )
    deadline = time.monotonic() + 120
    while _queued_messages(client) < 5:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no chunk was ever queued"
        time.sleep(0.002)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)

    assert process.returncode == 130, (out, err)
    found = re.search(r"Interrupted: job ([0-9a-f-]{36}): interrupted after queuing (\d+)", err)
    assert found, err
    job_id, sent = found.group(1), int(found.group(2))
    assert 0 < sent < 3000
    with db.session_scope(sqlite_url) as session:
        items = session.scalars(select(db.Item).where(db.Item.job_id == job_id)).all()
        pending = {i.key for i in items if i.status == "pending"}
        stopped = {i.key for i in items if i.status == "error"}
        assert len(items) == 3000 and pending | stopped == {i.key for i in items}
        assert all(i.error == INTERRUPTED for i in items if i.status == "error")
        job = session.get(db.Job, job_id)
        assert job is not None and job.error == len(stopped)
    queued = _queued_keys(client)
    # Every pending item has its message on the queue: nothing waits for a chunk never sent.
    assert pending <= queued
    assert len(pending) == sent
    # At most the chunk in flight when Ctrl-C came is both queued and marked (the broker may have
    # taken it before the interrupt surfaced); a worker will not overwrite its error.
    assert len(queued - pending) <= 1
