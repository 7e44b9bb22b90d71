"""Reading one file safely: only regular files are opened, and every failure is a reason in words.

Both ways of taking files use this: :mod:`.collect` reads a directory's files when they are listed
(or only lists them, for ``digits enqueue``), and :mod:`.jobs` reads a listed file when its chunk
is sent (:func:`read_later`); :mod:`.inbox` and :mod:`.ingest` look at files with it too.
"""

from __future__ import annotations

import lzma
import os
import stat
import zipfile
import zlib
from typing import BinaryIO

# What reading one file or one archive member can raise: each becomes that file's (or member's)
# error, never the run's. Found by mutating real archives (tests/test_enqueue.py): zipfile lets
# through EOFError (a member shorter than its header says), UnicodeDecodeError (a UTF-8-flagged
# name with bad bytes), NotImplementedError (a version or compression it does not support),
# ValueError (a negative seek from a corrupt offset), zlib/lzma errors and OSError (bz2's corrupt
# streams) besides its own BadZipFile; RuntimeError also stands for an encrypted member and for
# Path.resolve's symlink loop.
FILE_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    EOFError,
    ValueError,  # UnicodeError among them
    RuntimeError,  # NotImplementedError among them
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    lzma.LZMAError,
)

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(OSError):
    """A FIFO, device or socket met where a file was expected: listed, never read."""


def special_kind(mode: int) -> str | None:
    """What a FIFO, device or socket is, in words; None for files, directories and links."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return None


def open_regular(path: os.PathLike[str] | str) -> BinaryIO:
    """``path`` opened for reading, only if it is a regular file (symlinks followed).

    The type is checked before opening, so a FIFO or a device is never opened (a FIFO would block,
    a tape device might rewind), and again on the open descriptor, which O_NONBLOCK keeps from
    blocking if a FIFO took the file's place in between.
    """
    return os.fdopen(_regular_descriptor(path), "rb")


def _regular_descriptor(path: os.PathLike[str] | str) -> int:
    """:func:`open_regular`'s checks, and the open descriptor."""
    kind = special_kind(os.stat(path).st_mode)
    if kind:
        raise NotRegularFile(f"{kind}: not read")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(f"{special_kind(mode) or 'not a regular file'}: not read")
        return fd
    except BaseException:
        os.close(fd)
        raise


def describe(exc: BaseException) -> str:
    """One file's failure in words, whatever family it is from."""
    if isinstance(exc, NotRegularFile):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, EOFError):
        return "truncated: it ends before its header says"
    if isinstance(exc, UnicodeDecodeError):
        return f"a name marked UTF-8 is not valid UTF-8 ({exc})"
    if isinstance(exc, NotImplementedError):
        return f"unsupported: {exc}"
    if isinstance(exc, zlib.error | lzma.LZMAError):
        return f"corrupt compressed data: {exc}"
    text = str(exc)
    if isinstance(exc, zipfile.BadZipFile | RuntimeError) and text:
        return text  # zipfile's own words ("Bad CRC-32 for file ...", "... is encrypted ...")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_later(path: os.PathLike[str] | str, max_bytes: int) -> tuple[bytes, str | None]:
    """A deferred crop's bytes, or why it has none now (gone, unreadable, grown past the limit):
    the same checks and the same reasons as a crop read at once (:func:`open_regular`), read
    off the descriptor itself: a file object a crop cost more than its reading did."""
    try:
        fd = _regular_descriptor(path)
        try:
            parts, wanted = [], max_bytes + 1
            while wanted > 0 and (part := os.read(fd, wanted)):
                parts.append(part)
                wanted -= len(part)
        finally:
            os.close(fd)
    except FILE_ERRORS as exc:
        return b"", f"unreadable: {describe(exc)}"
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(data) > max_bytes:  # grew since it was listed
        return b"", f"crop grew past the {max_bytes} byte limit since it was listed: not read"
    return data, None
