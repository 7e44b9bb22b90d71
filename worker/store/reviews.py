"""The review queue: which flagged item an operator is shown next, who holds it, and when what
people keyed becomes the item's final value.

An item awaits a person while it needs review and nobody has settled it (``source`` NULL). The
queue runs across jobs, interactive jobs before batch ones and then the oldest first. An item shown
to an operator is locked to them (:class:`db.ItemLock`) for ``DIGITS_REVIEW_LOCK_S``, renewed with
every request they make, so two stations never show the same item; a lock is taken by one
conditional upsert, which the database serializes, so two operators asking at once cannot both
win it. Every value keyed is recorded (:class:`db.Keying`, never changed); :func:`settle` is the
one rule that turns keyings into a final value: one keying for a job keyed once, two different
operators typing the same thing for a job keyed twice (a disagreement waits for a third).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, exists, func, or_, select, text, update
from sqlalchemy.orm import Session

from digits.model import kinds
from digits.model.review import DIGIT, ItemStatus
from digits.worker.store import db

# The predicate of items awaiting a person, spelled as the partial index ix_items_awaiting is, so
# both databases use the index for the queue.
AWAITING_SQL = "items.status = 'needs_review' AND items.source IS NULL"
MAX_VALUE_LENGTH = 64
# Items an operator holds at once: the one shown and the next, loaded ahead.
HELD = 2
# Keyings needed per job: a value is final once this many different operators typed it.
KEYINGS_NEEDED = {False: 1, True: 2}
DIGIT_PATTERN = "[0-9]"
# How the outcome of a keying is reported to the station.
FINAL, SECOND_KEY, THIRD_KEY = "final", "second_key", "third_key"


def awaiting():
    return text(AWAITING_SQL)


class KeyingRefused(Exception):
    """The keying was not taken; ``status`` is the HTTP status the station answers with."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


def value_problem(kind: str, value: str) -> str | None:
    """Why ``value`` cannot be keyed for an item of ``kind``, or None: the kind's own format
    check (model.kinds), so a person is held to the form the readers are."""
    if not value:
        return "type the value, or mark the item unreadable"
    if len(value) > MAX_VALUE_LENGTH:
        return f"longer than {MAX_VALUE_LENGTH} characters"
    if kind == DIGIT:
        return None if len(value) == 1 and value in kinds.DIGITS else "one digit, 0 to 9"
    spec = kinds.kind(kind)
    return None if spec.check(value) else f"{value!r} is not of the form of a {kind} field"


def pattern_for(kind: str) -> str:
    """The format check as a regular expression the station's page checks as you type (the
    server checks again: :func:`value_problem`)."""
    return DIGIT_PATTERN if kind == DIGIT else kinds.kind(kind).pattern.pattern


@dataclass(frozen=True)
class Answer:
    operator_id: int
    value: str | None
    unreadable: bool


def settle(answers: Sequence[Answer], needed: int) -> Answer | None:
    """The final answer once ``needed`` different operators gave the same one, else None."""
    by_answer: dict[tuple[bool, str | None], set[int]] = {}
    for answer in answers:
        operators = by_answer.setdefault((answer.unreadable, answer.value), set())
        operators.add(answer.operator_id)
        if len(operators) >= needed:
            return answer
    return None


def awaiting_count(session: Session, job_id: str | None = None) -> int:
    statement = select(func.count()).select_from(db.Item).where(awaiting())
    if job_id is not None:
        statement = statement.where(db.Item.job_id == job_id)
    return session.scalar(statement) or 0


def queue_counts(session: Session) -> dict:
    """What the station's header shows: items awaiting, and those it cannot show (no crop)."""
    without = (
        select(func.count()).select_from(db.Item).where(awaiting(), db.Item.crop_sha256.is_(None))
    )
    return {"awaiting": awaiting_count(session), "without_crop": session.scalar(without) or 0}


def held(session: Session, operator_id: int, now: datetime) -> list[int]:
    """The items this operator holds (shown first, then the one loaded next), still awaiting."""
    statement = (
        select(db.ItemLock.item_id)
        .join(db.Item, db.Item.id == db.ItemLock.item_id)
        .where(db.ItemLock.operator_id == operator_id, db.ItemLock.until > now, awaiting())
        .order_by(db.ItemLock.since, db.ItemLock.item_id)
    )
    return list(session.scalars(statement))


def claim(
    session: Session, operator_id: int, lock_s: int, want: int = HELD, now: datetime | None = None
) -> list[int]:
    """The items this operator holds, topped up to ``want`` from the queue, every lock renewed.

    Candidates are read without locking; each is then taken by :func:`_take`, which fails when
    another operator took it meanwhile, and the next candidate is tried.
    """
    now = now or db.utcnow()
    until = now + timedelta(seconds=lock_s)
    # A write first: it renews this operator's locks, and on SQLite takes the write lock before
    # anything is read (a read-then-write transaction would fail, not wait, beside another).
    session.execute(
        update(db.ItemLock)
        .where(db.ItemLock.operator_id == operator_id, db.ItemLock.until > now)
        .values(until=until)
    )
    mine = held(session, operator_id, now)
    for _ in range(5):  # each round sees the locks others took in the last one
        if len(mine) >= want:
            break
        candidates = session.scalars(_candidates(operator_id, now, mine).limit(4 * want)).all()
        if not candidates:
            break
        for item_id in candidates:
            if _take(session, item_id, operator_id, now, until):
                mine.append(item_id)
                if len(mine) >= want:
                    break
    return mine[:want] if len(mine) > want else mine


def _candidates(operator_id: int, now: datetime, exclude: Iterable[int]):
    keyed_by_me = exists().where(
        db.Keying.item_id == db.Item.id, db.Keying.operator_id == operator_id
    )
    interactive_first = case((db.Job.queue == "interactive", 0), else_=1)
    statement = (
        select(db.Item.id)
        .join(db.Job, db.Job.id == db.Item.job_id)
        .outerjoin(db.ItemLock, db.ItemLock.item_id == db.Item.id)
        .where(awaiting(), db.Item.crop_sha256.is_not(None))
        .where(or_(db.ItemLock.item_id.is_(None), db.ItemLock.until <= now))
        .where(~keyed_by_me)
        .order_by(interactive_first, db.Job.created, db.Item.id)
    )
    exclude = list(exclude)
    return statement.where(db.Item.id.not_in(exclude)) if exclude else statement


def _take(session: Session, item_id: int, operator_id: int, now: datetime, until: datetime) -> bool:
    """Lock the item to the operator unless someone else holds it now: one statement, so the
    database decides between two stations asking at once."""
    insert = db.insert_for(session)
    statement = insert(db.ItemLock).values(
        item_id=item_id, operator_id=operator_id, since=now, until=until
    )
    statement = statement.on_conflict_do_update(
        index_elements=[db.ItemLock.item_id],
        set_={"operator_id": operator_id, "since": now, "until": until},
        where=or_(db.ItemLock.until <= now, db.ItemLock.operator_id == operator_id),
    )
    taken = session.connection().execute(statement.returning(db.ItemLock.item_id))
    return taken.first() is not None


def release(session: Session, operator_id: int) -> None:
    """Give back everything this operator holds (logging out)."""
    session.execute(delete(db.ItemLock).where(db.ItemLock.operator_id == operator_id))


@dataclass(frozen=True)
class Keyed:
    item_id: int
    outcome: str  # FINAL, SECOND_KEY (waits for another operator), THIRD_KEY (they disagreed)
    final: str | None = None


def key(
    session: Session,
    operator_id: int,
    item_id: int,
    value: str | None,
    unreadable: bool = False,
    now: datetime | None = None,
) -> Keyed:
    """Record one operator's value (or "unreadable") for an item, and settle it when that makes
    it final; :class:`KeyingRefused` with the reason otherwise, and nothing is recorded."""
    now = now or db.utcnow()
    # The item's row first (PostgreSQL's row lock, SQLite's write lock): two keyings of one item
    # are decided one after the other.
    session.execute(update(db.Item).where(db.Item.id == item_id).values(source=db.Item.source))
    item = session.get(db.Item, item_id, populate_existing=True)
    if item is None:
        raise KeyingRefused(f"no item {item_id}", 404)
    job = session.get(db.Job, item.job_id)
    assert job is not None
    if item.status != ItemStatus.NEEDS_REVIEW:
        raise KeyingRefused(f"item {item_id} is not flagged for review ({item.status})")
    if item.source is not None:
        raise KeyingRefused(f"item {item_id} is final already")
    lock = session.get(db.ItemLock, item_id, populate_existing=True)
    if lock is not None and lock.operator_id != operator_id and db.as_utc(lock.until) > now:
        raise KeyingRefused(f"item {item_id} is shown to another operator")
    answers = _answers(session, item_id)
    if any(answer.operator_id == operator_id for answer in answers):
        raise KeyingRefused(f"you keyed item {item_id} already")
    cleaned = None if unreadable else (value or "").strip()
    if not unreadable:
        problem = value_problem(job.kind, cleaned or "")
        if problem:
            raise KeyingRefused(problem, 422)
    session.add(
        db.Keying(
            item_id=item_id,
            job_id=item.job_id,
            operator_id=operator_id,
            value=cleaned,
            unreadable=unreadable,
            keyed=now,
        )
    )
    answers.append(Answer(operator_id, cleaned, unreadable))
    final = settle(answers, KEYINGS_NEEDED[bool(job.double_key)])
    if final is None:
        # Someone else keys it next: this operator may not, and holds it no longer.
        session.execute(delete(db.ItemLock).where(db.ItemLock.item_id == item_id))
        return Keyed(item_id, SECOND_KEY if len(answers) == 1 else THIRD_KEY)
    item.final = final.value
    item.source = db.SOURCE_OPERATOR
    session.execute(delete(db.ItemLock).where(db.ItemLock.item_id == item_id))
    session.flush()
    return Keyed(item_id, FINAL, final.value)


def _answers(session: Session, item_id: int) -> list[Answer]:
    statement = (
        select(db.Keying.operator_id, db.Keying.value, db.Keying.unreadable)
        .where(db.Keying.item_id == item_id)
        .order_by(db.Keying.id)
    )
    return [Answer(o, v, bool(u)) for o, v, u in session.execute(statement)]


def shown(session: Session, item_ids: Sequence[int]) -> list[dict]:
    """What the station shows of each item, in the order given: the key, the job, the model's
    reading with its alternatives and, for fields, each digit's box and guesses."""
    if not item_ids:
        return []
    rows = session.execute(
        select(db.Item, db.Job)
        .join(db.Job, db.Job.id == db.Item.job_id)
        .where(db.Item.id.in_(item_ids))
    ).all()
    counts: dict[int, int] = dict(
        session.execute(
            select(db.Keying.item_id, func.count())
            .where(db.Keying.item_id.in_(item_ids))
            .group_by(db.Keying.item_id)
        ).all()
    )
    by_id = {item.id: _shown(item, job, counts.get(item.id, 0)) for item, job in rows}
    return [by_id[i] for i in item_ids if i in by_id]


def _shown(item: db.Item, job: db.Job, keyed_before: int) -> dict:
    details = item.details or {}
    reading = item.text if job.kind != DIGIT else (None if item.digit is None else str(item.digit))
    return {
        "id": item.id,
        "job_id": job.id,
        "key": item.key,
        "job_source": job.source,
        "kind": job.kind,
        "queue": job.queue,
        "reading": reading,
        "confidence": item.confidence,
        "alternatives": [[str(d), p] for d, p in (item.top3 or [])],
        "readers": _readers(details.get("readers")),
        "digits": [
            {
                "digit": d.get("digit"),
                "confidence": d.get("confidence"),
                "top3": d.get("top3") or [],
                "box": d.get("box"),
            }
            for d in details.get("digits") or []
        ],
        "reasons": details.get("reasons") or [],
        "double_key": bool(job.double_key),
        "keyed_before": keyed_before,
        "pattern": pattern_for(job.kind),
        "crop": f"/crops/{item.id}",
    }


def _readers(readers) -> list[dict]:
    """Both field readers' readings (stored as {name: [text, confidence]} or as objects)."""
    out = []
    for name, reading in (readers or {}).items():
        if isinstance(reading, dict):
            text_, confidence = reading.get("text"), reading.get("confidence")
        else:
            text_, confidence = (list(reading) + [None, None])[:2]
        out.append({"reader": name, "text": text_, "confidence": confidence})
    return out
