"""Interactive chunks overtake waiting batch chunks: the order a worker takes them in, not timing.

Both jobs are queued before the worker starts, and the worker has a single child, so the order in
which their items are written is exactly the order the broker handed the chunks out. Without the
priority the worker alternates between the two queues and a batch chunk comes between the two
interactive jobs.
"""

from __future__ import annotations

import io

from PIL import Image
from sqlalchemy import select

from digits.cli.devtools.local import start_worker
from digits.worker.config import Settings
from digits.worker.queue.celery_app import create_app
from digits.worker.store import db
from digits.worker.store.results import wait_for_job
from digits.worker.submission import jobs
from tests import services


def png(value: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (28, 28), value).save(out, format="PNG")
    return out.getvalue()


def test_interactive_jobs_are_served_before_queued_batch_chunks(
    redis_server, sqlite_url, model_path, tmp_path
):
    broker_url = f"{redis_server.url.rsplit('/', 1)[0]}/{next(services._redis_databases)}"
    settings = Settings(broker_url=broker_url, database_url=sqlite_url, chunk_size=2)
    app = create_app(settings)
    try:
        batch = jobs.submit([jobs.Crop(f"b{i}", png(i)) for i in range(6)], settings, app=app)
        singles = [jobs.submit([jobs.Crop(f"s{i}", png(i))], settings, app=app) for i in range(2)]
        assert batch.queue == "batch" and {s.queue for s in singles} == {"interactive"}
        env = {"DIGITS_BROKER_URL": broker_url, "DIGITS_DATABASE_URL": sqlite_url}
        worker = start_worker(env, tmp_path / "worker.log", concurrency=1)
        try:
            worker.wait_ready(app, timeout_s=90)
            for plan in [batch, *singles]:
                wait_for_job(sqlite_url, plan.job_id, poll_s=0.1, timeout_s=120)
        finally:
            worker.stop()
    finally:
        app.close()
    with db.session_scope(sqlite_url) as session:
        rows = session.execute(select(db.Item.job_id, db.Item.processed)).all()
    order = [job_id for job_id, processed in sorted(rows, key=lambda row: row.processed)]
    first_batch = order.index(batch.job_id)
    assert {s.job_id for s in singles} <= set(order[:first_batch]), order
