"""Operators of the review station: their accounts, argon2 password hashes, and the rate limit on
wrong passwords.

Passwords are hashed with argon2id (argon2-cffi's defaults, the parameters stored in each hash, so
a stronger default later rehashes on the next login). Wrong passwords are counted per operator
name and per client address in the database, not in one process's memory, so several station
processes share the limit: past ``DIGITS_LOGIN_MAX_FAILURES`` within ``DIGITS_LOGIN_WINDOW_S``
for a name (or :data:`ADDRESS_FACTOR` times that from one address) every attempt for that name or
from that address is refused, the right password too, until the window has passed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from digits.worker.store import db

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# An address (an office behind one NAT) may fail this many times more often than one name, so a
# colleague's typos do not lock a whole room out, while a guesser trying many names still stops.
ADDRESS_FACTOR = 5
MIN_PASSWORD_LENGTH = 10
_hasher = PasswordHasher()
# Verified against when the name is unknown, so a wrong name costs the time a wrong password does.
_DUMMY_HASH = _hasher.hash("not a password of anyone's")


class OperatorError(ValueError):
    """A name or a password that cannot make an account; the message says which rule."""


class TooManyFailures(Exception):
    """Wrong passwords past the limit for this name or address; ``retry_s`` until it lifts."""

    def __init__(self, retry_s: int):
        super().__init__(f"too many wrong passwords: try again in {retry_s} s")
        self.retry_s = retry_s


@dataclass(frozen=True)
class Account:
    id: int
    name: str
    active: bool


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise OperatorError(
            f"operator name {name[:80]!r}: 1 to 64 letters, digits, dots, dashes or underscores, "
            "starting with a letter or digit"
        )
    return name


def add(session: Session, name: str, password: str) -> Account:
    check_name(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperatorError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if session.scalar(select(db.Operator.id).where(db.Operator.name == name)) is not None:
        raise OperatorError(f"operator {name!r} exists already (digits operator password NAME)")
    operator = db.Operator(name=name, password_hash=_hasher.hash(password), active=True)
    session.add(operator)
    session.flush()
    return Account(operator.id, operator.name, True)


def set_password(session: Session, name: str, password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperatorError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    _named(session, name).password_hash = _hasher.hash(password)


def set_active(session: Session, name: str, active: bool) -> None:
    operator = _named(session, name)
    operator.active = active
    if not active:  # what they held goes back to the queue at once
        session.execute(delete(db.ItemLock).where(db.ItemLock.operator_id == operator.id))


def _named(session: Session, name: str) -> db.Operator:
    operator = session.scalar(select(db.Operator).where(db.Operator.name == name))
    if operator is None:
        raise OperatorError(f"no operator {name!r}")
    return operator


def accounts(session: Session) -> list[Account]:
    rows = session.scalars(select(db.Operator).order_by(db.Operator.name))
    return [Account(o.id, o.name, o.active) for o in rows]


def active_account(session: Session, operator_id: int) -> Account | None:
    """The account a session names, when it still exists and may work."""
    operator = session.get(db.Operator, operator_id)
    if operator is None or not operator.active:
        return None
    return Account(operator.id, operator.name, True)


def log_in(
    session: Session,
    name: str,
    password: str,
    address: str,
    max_failures: int,
    window_s: int,
    now: datetime | None = None,
) -> Account | None:
    """The account when the name and password match an active operator, else None (and the
    failure counted); :class:`TooManyFailures` before any check while either limit holds."""
    now = now or db.utcnow()
    keys = [f"name:{name[:150]}", f"addr:{address[:150]}"]
    _refuse_if_limited(session, keys, max_failures, window_s, now)
    operator = session.scalar(select(db.Operator).where(db.Operator.name == name))
    if operator is None or not operator.active:
        _verify(_DUMMY_HASH, password)
        _count_failure(session, keys, window_s, now)
        return None
    if not _verify(operator.password_hash, password):
        _count_failure(session, keys, window_s, now)
        return None
    if _hasher.check_needs_rehash(operator.password_hash):
        operator.password_hash = _hasher.hash(password)
    session.execute(delete(db.LoginFailure).where(db.LoginFailure.key == keys[0]))
    return Account(operator.id, operator.name, True)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def _refuse_if_limited(
    session: Session, keys: list[str], max_failures: int, window_s: int, now: datetime
) -> None:
    rows = session.scalars(select(db.LoginFailure).where(db.LoginFailure.key.in_(keys)))
    for row in rows:
        ends = db.as_utc(row.first) + timedelta(seconds=window_s)
        limit = max_failures * (ADDRESS_FACTOR if row.key.startswith("addr:") else 1)
        if row.failures >= limit and ends > now:
            raise TooManyFailures(max(1, int((ends - now).total_seconds()) + 1))


def _count_failure(session: Session, keys: list[str], window_s: int, now: datetime) -> None:
    """One more failure for each key; a count whose window has passed starts again at one."""
    for key in keys:
        row = session.get(db.LoginFailure, key)
        if row is None:
            session.add(db.LoginFailure(key=key, failures=1, first=now))
        elif db.as_utc(row.first) + timedelta(seconds=window_s) <= now:
            row.failures, row.first = 1, now
        else:
            row.failures += 1
    session.flush()
