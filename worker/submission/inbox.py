"""What an inbox holds: the files ``digits ingest`` may read, each with its sha256, and the rest.

Walked in name order. Names starting with a dot (uploads in progress), the done directory and
symbolic links are left out; FIFOs, devices and sockets are listed as skipped and never opened (a
FIFO would block the run until someone writes to it); files that are neither images nor zip
archives are skipped; a file or directory that cannot be read is listed as failed and the walk
goes on. A name that is not valid UTF-8 is written in the escape form of
:mod:`digits.worker.submission.names`, both as the prefix of its crops' keys and wherever the run
lists it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from digits.worker.submission.collect import SNIFF_BYTES, ZIP_MAGIC, looks_like_image
from digits.worker.submission.files import FILE_ERRORS, describe, open_regular, special_kind
from digits.worker.submission.names import key_for

Problems = list[tuple[str, str]]  # (name, why)


@dataclass(frozen=True)
class InboxFile:
    path: Path
    name: str  # relative to the inbox, forward slashes, escaped: the prefix of its crops' keys
    sha256: str
    size: int


def scan(
    inbox: Path, done: Path | None, skipped: Problems, failed: Problems
) -> Iterator[InboxFile]:
    """Image files and zip archives under ``inbox`` with their sha256; anything else is noted."""
    for path in _walk(inbox, inbox, done, skipped, failed):
        name = key_for(path.relative_to(inbox).as_posix())
        try:
            with open_regular(path) as handle:
                head = handle.read(SNIFF_BYTES)
                if not (is_zip(name, head) or looks_like_image(name, head)):
                    skipped.append((name, "not an image or zip archive"))
                    continue
                handle.seek(0)
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
                size = os.fstat(handle.fileno()).st_size
        except FILE_ERRORS as exc:
            failed.append((name, f"unreadable: {describe(exc)}"))
            continue
        yield InboxFile(path, name, digest, size)


def is_zip(name: str, head: bytes) -> bool:
    return PurePosixPath(name).suffix.lower() == ".zip" or head.startswith(ZIP_MAGIC)


def _walk(
    inbox: Path, directory: Path, done: Path | None, skipped: Problems, failed: Problems
) -> Iterator[Path]:
    """Files in name order; dot-names (uploads in progress), the done directory, links left out."""
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        name = key_for(directory.relative_to(inbox).as_posix())
        failed.append((name, f"unreadable directory: {describe(exc)}"))
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(".") or path == done:
            continue
        name = key_for(path.relative_to(inbox).as_posix())
        try:
            if entry.is_symlink():
                skipped.append((name, "symbolic link: not followed"))
            elif entry.is_dir(follow_symlinks=False):
                yield from _walk(inbox, path, done, skipped, failed)
            elif entry.is_file(follow_symlinks=False):
                yield path
            else:
                kind = special_kind(entry.stat(follow_symlinks=False).st_mode) or "not a file"
                skipped.append((name, f"{kind}: not read"))
        except OSError as exc:  # gone since the directory was listed
            failed.append((name, f"unreadable: {describe(exc)}"))
