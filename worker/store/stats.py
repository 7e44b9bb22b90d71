"""Operating statistics from the job database: counts, rates and throughput per model version.

Every item records the model that produced it, so a rollout shows up as a second row here and the
two models' review and error rates can be compared on real traffic. Throughput is items per second
of *busy* time: the union of the intervals from a job's submission to its end (the moment it
finished, or its last write while still running), so a night of idle hours between batches does
not dilute it and two jobs running side by side are not counted twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import String, case, cast, func, or_, select
from sqlalchemy.orm import Session

from digits.model.review import ItemStatus
from digits.worker.store import db

# Upper edges of the confidence bins; the last bin is [0.99, 1.0].
CONFIDENCE_EDGES = (0.5, 0.8, 0.9, 0.95, 0.99)
RESULT_STATUSES = tuple(s for s in ItemStatus if s != ItemStatus.PENDING)
_RELATIVE = re.compile(r"^\s*(\d+)\s*([mhdw])\s*$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def confidence_distribution(values: Sequence[float]) -> dict:
    """How sure the model was: a few quantiles and counts per bin, the low bins being the news."""
    ordered = sorted(values)
    count = len(ordered)
    labels = _bin_labels()
    bins = dict.fromkeys(labels, 0)
    for value in ordered:
        bins[labels[sum(value >= edge for edge in CONFIDENCE_EDGES)]] += 1
    return {
        "count": count,
        "mean": round(sum(ordered) / count, 4) if count else None,
        "p05": _quantile(ordered, 0.05),
        "p50": _quantile(ordered, 0.5),
        "bins": bins,
    }


def _bin_labels() -> list[str]:
    edges = (0.0, *CONFIDENCE_EDGES, 1.0)
    return [f"{low:.2f}-{high:.2f}" for low, high in zip(edges, edges[1:], strict=False)]


def _quantile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank quantile: a value that was actually seen."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``2026-11-24``, ``2026-11-24T02:00+01:00`` (naive means UTC) or ``12h``/``7d``/``2w`` ago."""
    now = now or datetime.now(UTC)
    relative = _RELATIVE.match(text)
    if relative:
        amount, unit = relative.groups()
        return now - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r}: not a date (YYYY-MM-DD[THH:MM]) or an age (12h, 7d)") from None
    return db.as_utc(moment).astimezone(UTC)


@dataclass
class Counts:
    """Results of one model (or of all): ``items`` are the items with a result, pending excluded."""

    model_version: str | None = None
    items: int = 0
    ok: int = 0
    needs_review: int = 0
    blank: int = 0
    error: int = 0
    first: datetime | None = None
    last: datetime | None = None
    busy_s: float = 0.0
    jobs: set[str] = field(default_factory=set)
    # Flagged items a person settled at the review station, and those where the person's answer
    # was not the model's reading (another value, or unreadable).
    keyed: int = 0
    changed: int = 0

    def add(self, status: str, count: int, first: datetime, last: datetime) -> None:
        self.items += count
        if status in RESULT_STATUSES:
            setattr(self, status, getattr(self, status) + count)
        self.first = min(filter(None, (self.first, first)), default=None)
        self.last = max(filter(None, (self.last, last)), default=None)

    def as_json(self) -> dict:
        data = asdict(self)
        del data["jobs"]
        data["jobs"] = len(self.jobs)
        data["first"] = self.first.isoformat() if self.first else None
        data["last"] = self.last.isoformat() if self.last else None
        data["busy_s"] = round(self.busy_s, 3)
        data["review_rate"] = rate(self.needs_review, self.items)
        data["error_rate"] = rate(self.error, self.items)
        data["change_rate"] = rate(self.changed, self.keyed)
        data["items_per_s"] = round(self.items / self.busy_s, 3) if self.busy_s > 0 else None
        return data


def statistics(session: Session, since: datetime | None = None) -> dict:
    """Counts per model version and in total for items written at or after ``since``."""
    now = datetime.now(UTC)
    models: dict[str | None, Counts] = {}
    total = Counts()
    for version, status, count, first, last in _item_counts(session, since):
        first, last = db.as_utc(first), db.as_utc(last)
        models.setdefault(version, Counts(model_version=version)).add(status, count, first, last)
        total.add(status, count, first, last)
    for version, keyed, changed in _operator_counts(session, since):
        counts = models.setdefault(version, Counts(model_version=version))
        counts.keyed, counts.changed = int(keyed), int(changed or 0)
        total.keyed += int(keyed)
        total.changed += int(changed or 0)
    intervals = _job_intervals(session, since)
    every: list[tuple[datetime, datetime]] = []
    for version, job_id, start, end in intervals:
        if version in models:
            models[version].jobs.add(job_id)
        every.append((start, end))
    for counts in models.values():
        spans = [(s, e) for v, j, s, e in intervals if v == counts.model_version]
        counts.busy_s = busy_seconds(spans)
    total.busy_s = busy_seconds(set(every))
    total.jobs = {job_id for _, job_id, _, _ in intervals}
    return {
        "since": since.isoformat() if since else None,
        "until": now.isoformat(),
        "jobs": _job_counts(session, since),
        "pending_items": _pending(session, since),
        "total": total.as_json(),
        "models": [models[key].as_json() for key in sorted(models, key=lambda v: (v is None, v))],
    }


def busy_seconds(intervals: Iterable[tuple[datetime, datetime]]) -> float:
    """The length of the union of the intervals: overlapping jobs count once."""
    busy = 0.0
    current: tuple[datetime, datetime] | None = None  # the union's interval being grown
    for start, end in sorted(intervals):
        if current is None or start > current[1]:
            if current is not None:
                busy += (current[1] - current[0]).total_seconds()
            current = (start, end)
        else:
            current = (current[0], max(current[1], end))
    if current is not None:
        busy += (current[1] - current[0]).total_seconds()
    return busy


def _item_counts(session: Session, since: datetime | None):
    statement = (
        select(
            db.Item.model_version,
            db.Item.status,
            func.count(),
            func.min(db.Item.processed),
            func.max(db.Item.processed),
        )
        .where(db.Item.status != ItemStatus.PENDING, db.Item.processed.is_not(None))
        .group_by(db.Item.model_version, db.Item.status)
    )
    if since is not None:
        statement = statement.where(db.Item.processed >= since)
    return session.execute(statement).all()


def _operator_counts(session: Session, since: datetime | None):
    """(model version, items settled by a person, how many of them differ from the model's
    reading): how often operators changed the model's answer."""
    reading = func.coalesce(db.Item.text, cast(db.Item.digit, String))
    changed = case(
        (or_(db.Item.final.is_(None), reading.is_(None), db.Item.final != reading), 1), else_=0
    )
    statement = (
        select(db.Item.model_version, func.count(), func.sum(changed))
        .where(db.Item.source == db.SOURCE_OPERATOR)
        .group_by(db.Item.model_version)
    )
    if since is not None:
        statement = statement.where(db.Item.processed >= since)
    return session.execute(statement).all()


def _job_intervals(
    session: Session, since: datetime | None
) -> list[tuple[str | None, str, datetime, datetime]]:
    """(model version, job, start, end) for each job that model wrote to, clipped at ``since``."""
    end = func.coalesce(db.Job.finished, db.Job.updated)
    statement = (
        select(db.Item.model_version, db.Job.id, db.Job.created, end)
        .join(db.Job, db.Item.job_id == db.Job.id)
        .where(db.Item.status != ItemStatus.PENDING, db.Item.processed.is_not(None))
        .group_by(db.Item.model_version, db.Job.id, db.Job.created, end)
    )
    if since is not None:
        statement = statement.where(db.Item.processed >= since)
    rows = []
    for version, job_id, start, stop in session.execute(statement):
        start, stop = db.as_utc(start), db.as_utc(stop)
        if since is not None:
            start = max(start, since)
        rows.append((version, job_id, start, max(start, stop)))
    return rows


def _job_counts(session: Session, since: datetime | None) -> dict:
    statement = select(db.Job.status, func.count()).group_by(db.Job.status)
    if since is not None:
        statement = statement.where(db.Job.created >= since)
    by_status = {status: count for status, count in session.execute(statement)}
    return {"total": sum(by_status.values()), "by_status": by_status}


def _pending(session: Session, since: datetime | None) -> int:
    """Items still waiting for a worker, in jobs submitted since ``since``."""
    statement = (
        select(func.count())
        .select_from(db.Item)
        .join(db.Job, db.Item.job_id == db.Job.id)
        .where(db.Item.status == ItemStatus.PENDING)
    )
    if since is not None:
        statement = statement.where(db.Job.created >= since)
    return session.scalar(statement) or 0
