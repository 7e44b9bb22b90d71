"""Chunk messages are signed, so that write access to Redis is not write access to the results.

Anyone who can push an entry into a queue (a leaked Redis password, a shared Redis, a compromised
host on its network) could otherwise name a job, its keys and images of their choosing, and the
worker would read them and store the answers as the bank's. Every chunk message carries an
HMAC-SHA256 of its canonical body (job id, chunk label, crops, kind) under a secret key that only
submitters and workers hold; a worker drops a message whose signature is missing or wrong before
it touches the database or the model (:mod:`.tasks`).

The key: ``DIGITS_MESSAGE_KEY`` (at least 32 characters), the same for every submitter and worker
(docker-compose passes it to all of them). Unset, a random key is made once in
``DIGITS_MESSAGE_KEY_FILE`` (``var/message.key`` beside the default SQLite database, mode 0600)
and read from there: signing stays on, and a submitter and the workers of one machine agree
without any setting. Workers on other machines need the variable (or the file copied).

The signature covers what decides what is written: which job, which items, which images, which
reader. The message's ``threshold`` is not covered: workers take the threshold from the job row.
A signed message can still be replayed (a redelivery is one, legitimately); results for items
that are already final are refused when written (:mod:`digits.worker.store.writes`), so a replay
changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import itertools
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from digits.worker.config import MIN_MESSAGE_KEY_LENGTH, ConfigError, Settings

SIGNATURE_FIELD = "signature"
# Bumped if the canonical form ever changes: a message signed the old way then fails to verify.
_DOMAIN = b"digits.chunk.v1"
_keys: dict[tuple[str | None, Path], bytes] = {}


def message_key(settings: Settings | None = None) -> bytes:
    """The signing key ``settings`` name (the environment's by default), read once per process.

    ``DIGITS_MESSAGE_KEY`` when set; else the key file, made with a random key when missing.
    """
    settings = settings or Settings.from_env()
    cache = (settings.message_key, settings.message_key_file)
    if cache not in _keys:
        if settings.message_key is not None:
            _keys[cache] = settings.message_key.encode("utf-8")
        else:
            _keys[cache] = read_or_create(settings.message_key_file)
    return _keys[cache]


def sign(key: bytes, job_id: str, chunk: int | str, crops: Sequence[Sequence[str]], kind) -> str:
    """The hex HMAC-SHA256 of the message's canonical body.

    Canonical: every field length-prefixed, in a fixed order, so no two different bodies (a key
    moved into an image, a crop split in two) give the same bytes; the chunk by its label ("7"),
    since the integer and the string name the same chunk.
    """
    mac = hmac.new(key, _DOMAIN, hashlib.sha256)
    head = (job_id, str(chunk), "" if kind is None else f"={kind}", str(len(crops)))
    # One update a framed part: the digest is over the bytes however they are fed, and a part's
    # length and bytes fed together cost half the calls (the whole body joined first would hold
    # a second copy of a chunk's crops).
    for part in itertools.chain(head, itertools.chain.from_iterable(crops)):
        mac.update(_framed(part))
    return mac.hexdigest()


def problem(
    key: bytes, job_id: str, chunk: int | str, crops: Sequence[Sequence[str]], kind, signature
) -> str | None:
    """Why the message's signature does not hold, or None when it does (a constant-time check)."""
    if signature is None:
        return "unsigned"
    if not isinstance(signature, str):
        return "the signature is not a string"
    expected = sign(key, job_id, chunk, crops, kind).encode("ascii")
    if not hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass")):
        return "wrong signature (another key, or a changed body)"
    return None


def _framed(part: object) -> bytes:
    data = str(part).encode("utf-8", "surrogatepass")  # a JSON string may hold a lone surrogate
    return len(data).to_bytes(8, "big") + data


def read_or_create(
    path: Path, variable: str = "DIGITS_MESSAGE_KEY", what: str = "message key"
) -> bytes:
    """The key in ``path``; made first when missing, atomically, so that two processes starting at
    once (a submitter and a worker child) cannot end up with two keys. ``variable`` names the
    setting that replaces the file (the review station's secret is kept the same way)."""
    try:
        return _read(path, variable, what)
    except FileNotFoundError:
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            # Fails if another process made the key first: theirs is the one every process reads.
            with contextlib.suppress(FileExistsError):
                os.link(draft, path)
        finally:
            draft.unlink(missing_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"no {what}: {variable} is unset and {path} cannot be made ({exc}); "
            f"set {variable} (openssl rand -hex 32), the same for every process that shares it"
        ) from None
    return _read(path, variable, what)


def _read(path: Path, variable: str, what: str) -> bytes:
    """The key in ``path``; FileNotFoundError when there is none yet."""
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{what} file {path}: unreadable ({exc}); set {variable}, or "
            f"{variable}_FILE to a file this process can read"
        ) from None
    if len(text) < MIN_MESSAGE_KEY_LENGTH:
        raise ConfigError(
            f"{what} file {path}: {len(text)} characters, at least "
            f"{MIN_MESSAGE_KEY_LENGTH} needed (delete it to have a new one made)"
        )
    return text.encode("utf-8")
