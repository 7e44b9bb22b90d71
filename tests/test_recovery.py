"""No stalled jobs (issue 14): leases, the sweeper, ``digits status``'s ``stalled`` and
``digits requeue``.

The scenarios run against the real parts at the default settings (no shortened visibility
timeout: the sweeper, not Redis's hour, must bring the chunks back): a whole worker SIGKILLed
mid-job and a new one started, Redis flushed mid-job, a chunk slower than a lease while the
sweeper runs, and a crop that kills its child every time.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from digits.worker.store import db, leases
from digits.worker.submission import jobs


def _job(database_url: str, crops: int = 3) -> jobs.JobPlan:
    from digits.worker.config import Settings

    settings = Settings.from_env({"DIGITS_DATABASE_URL": database_url})
    plan = jobs.plan_job([jobs.Crop(f"k{i}", b"x") for i in range(crops)], settings)
    with db.session_scope(database_url) as session:
        jobs.create_job(session, plan)
    return plan


def _lease(database_url: str, job_id: str, chunk: str) -> db.ChunkLease | None:
    with db.session_scope(database_url) as session:
        return session.get(db.ChunkLease, (job_id, chunk))


# --- leases -----------------------------------------------------------------------------------


def test_a_lease_is_taken_renewed_and_dropped_and_never_comes_back(database_url):
    plan = _job(database_url)
    me = leases.Holder.here("worker@test")
    leases.take(database_url, plan.job_id, "0", me)
    first = _lease(database_url, plan.job_id, "0")
    assert first is not None and (first.hostname, first.pid) == ("worker@test", me.pid)
    until = db.as_utc(first.until)
    assert until is not None
    assert timedelta(seconds=29) < until - db.utcnow() <= timedelta(seconds=leases.LEASE_S)
    assert leases.renew(database_url, plan.job_id, "0", me, seconds=300)
    # Renewing for less never shortens it: a retry's extension stands.
    assert leases.renew(database_url, plan.job_id, "0", me)
    kept = db.as_utc(_lease(database_url, plan.job_id, "0").until)  # type: ignore[union-attr]
    assert kept is not None and kept - db.utcnow() > timedelta(seconds=250)
    # Another holder's renewal changes nothing; after the drop, nothing renews it back.
    assert not leases.renew(database_url, plan.job_id, "0", leases.Holder("other", 1))
    with db.session_scope(database_url) as session:
        assert [lease.chunk for lease in leases.live(session, plan.job_id)] == ["0"]
        leases.drop(session, plan.job_id, "0")
    assert not leases.renew(database_url, plan.job_id, "0", me)
    assert _lease(database_url, plan.job_id, "0") is None


def test_a_held_lease_is_renewed_by_its_thread_and_kept_for_a_retry(
    sqlite_url, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(leases, "RENEW_S", 0.05)
    plan = _job(sqlite_url)
    with leases.held(sqlite_url, plan.job_id, "0", "w@test"):
        taken = _lease(sqlite_url, plan.job_id, "0")
        assert taken is not None
        time.sleep(0.5)
        renewed = _lease(sqlite_url, plan.job_id, "0")
        assert renewed is not None and renewed.renewed > taken.renewed
    # Ending normally means the chunk was written, and the write drops the lease itself.
    with pytest.raises(RuntimeError), leases.held(sqlite_url, plan.job_id, "1", "w@test"):
        raise RuntimeError("not a retry")
    assert _lease(sqlite_url, plan.job_id, "1") is None
    with (
        pytest.raises(RuntimeError),
        leases.held(sqlite_url, plan.job_id, "2", "w@test") as lease,
    ):
        lease.keep(120)
        raise RuntimeError("a retry in 120 s")
    kept = _lease(sqlite_url, plan.job_id, "2")
    assert kept is not None
    assert db.as_utc(kept.until) - db.utcnow() > timedelta(seconds=140)  # type: ignore[operator]


def test_a_written_chunk_leaves_no_lease(sqlite_url, model_path, monkeypatch):
    from tests.test_worker import _task_on

    task = _task_on(sqlite_url, monkeypatch)
    plan = _job(sqlite_url)
    result = task.apply(kwargs=plan.message(plan.chunks[0]))
    assert result.successful(), result.traceback
    with db.session_scope(sqlite_url) as session:
        assert session.scalars(select(db.ChunkLease)).all() == []
