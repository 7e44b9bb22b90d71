"""A Redis that refuses writes (maxmemory reached under ``noeviction``, a read-only replica after a
failover) neither stops the worker nor loses the chunk it had just taken off the queue.

kombu pops a message off its queue list and then records it in the ``unacked`` hash; when Redis
refuses that second write, the message was in neither place, and Celery stopped the whole worker
("Unrecoverable error: OutOfMemoryError"), leaving the chunk's items pending for ever.
"""

from __future__ import annotations

import time

import redis

from digits.worker.submission.jobs import Crop
from tests.services import assert_nothing_lost, redis_process, running_worker


def test_a_full_redis_neither_stops_the_worker_nor_loses_a_chunk(
    tmp_path, sqlite_url, model_path, scan_crops
):
    crops = [Crop(key, blob) for key, blob, _ in scan_crops]
    with (
        redis_process(tmp_path / "redis") as server,
        running_worker(
            server.url, sqlite_url, tmp_path / "worker.log", env={"DIGITS_CHUNK_SIZE": "25"}
        ) as worker,
    ):
        client = redis.Redis.from_url(worker.settings.broker_url)
        parent = worker.process.process.pid
        plan = worker.submit(crops)  # 80 chunks on the queue, then Redis is full
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", str(max(used // 2, 1024 * 1024)))
        worker.wait_for_log("broker refused")
        time.sleep(3)  # the worker keeps being refused for a while
        client.config_set("maxmemory", "0")

        status = worker.wait(plan.job_id, timeout_s=120)
        assert status.status in ("done", "reviewing"), worker.log()[-4000:]
        assert_nothing_lost(worker.database_url, plan.job_id, [c.key for c in crops])
        assert worker.process.process.poll() is None  # the same worker, still running
        assert worker.process.process.pid == parent
        assert "Unrecoverable error" not in worker.log()
