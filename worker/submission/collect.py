"""Turning the paths given to ``digits enqueue`` into keyed crops.

A file is keyed by its path relative to what was given (a file given directly by its name, a zip
member as ``archive.zip/member``), so the caller's own ids (envelope or cheque numbers in file
names) come back in the results; a name that is not valid UTF-8 is written in the escape form of
:mod:`digits.worker.submission.names`. Inside directories and archives only images are taken,
judged by extension or by magic bytes. Bad images still become crops (the worker reports each one);
crops the submitter must not or cannot read (oversized, unsafe zip member names, encrypted,
truncated or unsupported members, files that fail to open) become crops with an error: one bad
file never stops the others. FIFOs, devices and sockets are listed as skipped and never opened
(opening a FIFO blocks until someone writes to it). Paths given on the command line that cannot
be read at all are collected separately so the command can refuse them clearly.

Every crop is held in memory until the job is submitted, so the whole collection is bounded too: a
zip bomb of many members, each under the per-crop limit, or a tree of more files than a job may
hold, stops being read at the first crop past ``max_total_bytes`` or ``max_crops`` and the job is
refused with the reason.

With ``defer`` (``digits enqueue``), an image file found in a directory is only listed here (its
key, path and size) and read when its chunk is sent (:func:`read_later`), so the workers start on
the first chunk while later files are still unread. Its name settles that it is an image: a zip
archive named ``.png`` is then read as an image (and reported as not one), not opened as a zip.
"""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from digits.worker.submission.files import FILE_ERRORS, describe, open_regular, special_kind
from digits.worker.submission.jobs import Crop
from digits.worker.submission.names import key_for, shown

# The suffixes of the formats model.normalize decodes: anything else would only become an error.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp"})
# Only signatures that do not occur at the start of ordinary text files.
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*")
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
SNIFF_BYTES = 16


@dataclass
class Collection:
    crops: list[Crop] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why), not crops
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, why): refuse the job
    max_crops: int | None = None
    max_total_bytes: int | None = None
    total_bytes: int = 0
    refused: str | None = None  # why the job as a whole cannot be taken; reading stopped there

    def add(self, crop: Crop) -> None:
        """Keep ``crop`` unless it takes the job past a limit; then record why and keep nothing."""
        self.total_bytes += crop.size if crop.path is not None else len(crop.data or b"")
        if self.max_crops is not None and len(self.crops) >= self.max_crops:
            self.refused = (
                f"more than {self.max_crops} crops: a job holds at most {self.max_crops} "
                "(split it, or raise DIGITS_MAX_ITEMS_PER_JOB)"
            )
        elif self.max_total_bytes is not None and self.total_bytes > self.max_total_bytes:
            self.refused = (
                f"more than {self.max_total_bytes} bytes of crops (a zip bomb?): a job reads at "
                f"most {self.max_total_bytes} (split it, or raise DIGITS_MAX_JOB_BYTES)"
            )
        else:
            self.crops.append(crop)


def collect(
    paths: Iterable[Path],
    max_bytes: int,
    max_crops: int | None = None,
    max_total_bytes: int | None = None,
    defer: bool = False,
) -> Collection:
    """Crops from files, directories (recursively) and zip archives, in a stable order.

    ``max_bytes`` bounds each crop; ``max_crops`` and ``max_total_bytes`` the whole job (see
    ``Collection.refused``); ``defer`` leaves directories' image files to be read when sent.
    """
    found = Collection(max_crops=max_crops, max_total_bytes=max_total_bytes)
    for given in paths:
        if found.refused:
            break
        _collect_path(Path(given), max_bytes, found, defer)
    return found


def looks_like_image(name: str, head: bytes) -> bool:
    if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
        return True
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return True
    return head.startswith(IMAGE_MAGIC)


def unsafe_member_name(name: str) -> bool:
    """Absolute, drive-lettered or ``..``-climbing names: what a hostile archive uses to escape."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        return True
    return ".." in PurePosixPath(normalized).parts


def _collect_path(given: Path, max_bytes: int, found: Collection, defer: bool) -> None:
    try:
        if given.is_dir():
            _collect_directory(given, max_bytes, found, defer)
        elif given.is_file():
            _collect_file(given, key_for(given.name), max_bytes, found, explicit=True)
        elif given.is_symlink() and not given.exists():
            found.unreadable.append((shown(given), "dangling symlink (or a symlink loop)"))
        elif given.exists():
            kind = special_kind(given.stat().st_mode) or "not a regular file or directory"
            found.unreadable.append((shown(given), f"{kind}: not read"))
        else:
            found.unreadable.append((shown(given), "no such file or directory"))
    except (OSError, RuntimeError) as exc:
        found.unreadable.append((shown(given), describe(exc)))


def _collect_directory(given: Path, max_bytes: int, found: Collection, defer: bool) -> None:
    root = given.resolve()
    base = os.path.join(os.fspath(given), "")  # every entry's path starts with it (_walk)
    for entry in _walk(root, given, found):
        if found.refused:
            return
        # Path.relative_to and friends cost more than the rest of listing a file: 20,000 crops
        # were listed in 0.4 s before the first chunk could be sent.
        key = key_for(entry.path[len(base) :].replace(os.sep, "/"))
        if defer and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
            _list_file(entry, key, max_bytes, found)
        else:
            _collect_file(Path(entry.path), key, max_bytes, found, explicit=False)


def _list_file(entry: os.DirEntry, key: str, max_bytes: int, found: Collection) -> None:
    """An image file to read when its chunk is sent (see the module's docstring)."""
    try:
        size = entry.stat().st_size  # a symlink's target: _walk let through only regular files
    except FILE_ERRORS as exc:
        found.add(Crop(key, error=f"unreadable: {describe(exc)}"))
        return
    if size > max_bytes:
        found.add(Crop(key, error=_too_big(size, max_bytes)))
    else:
        found.add(Crop(key, path=entry.path, size=size))  # a str: no pathlib work a file


def _walk(root: Path, directory: Path, found: Collection) -> Iterator[os.DirEntry]:
    """Files under ``directory`` in name order; symlinks followed only to files inside ``root``;
    FIFOs, devices, sockets and symlink loops listed as skipped, never opened."""
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        found.unreadable.append((shown(directory), describe(exc)))
        return
    for entry in entries:
        try:
            if entry.is_symlink():
                why = _symlink_problem(Path(entry.path), root)
                if why is None:
                    yield entry
                else:
                    found.skipped.append((shown(entry.path), why))
            elif entry.is_dir(follow_symlinks=False):
                yield from _walk(root, Path(entry.path), found)
            elif entry.is_file(follow_symlinks=False):
                yield entry
            else:
                kind = special_kind(entry.stat(follow_symlinks=False).st_mode) or "not a file"
                found.skipped.append((shown(entry.path), f"{kind}: not read"))
        except OSError as exc:  # gone, or unreadable, since the directory was listed
            found.skipped.append((shown(entry.path), describe(exc)))


def _symlink_problem(path: Path, root: Path) -> str | None:
    """Why a symlink is not followed, or None when it leads to a regular file inside ``root``."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: Python 3.11's "Symlink loop from ..."
        return "symlink loop: not followed"
    if not target.is_relative_to(root):
        return f"symlink leads outside {shown(root)}: not followed"
    try:
        mode = target.stat().st_mode
    except OSError as exc:
        return "dangling symlink" if not target.exists() else describe(exc)
    if stat.S_ISDIR(mode):
        return "symlink to a directory: not followed"
    if not stat.S_ISREG(mode):
        return f"symlink to {special_kind(mode) or 'not a file'}: not read"
    return None


def _collect_file(path: Path, key: str, max_bytes: int, found: Collection, explicit: bool) -> None:
    """One file's crops. A file given by name that cannot be read refuses the job (the user
    named it); one found in a directory becomes an error crop and the rest are read."""
    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(SNIFF_BYTES)
            if path.suffix.lower() == ".zip" or head.startswith(ZIP_MAGIC):
                handle.seek(0)
                _zip_crops(handle, key, max_bytes, found)
                return
            if not explicit and not looks_like_image(path.name, head):
                found.skipped.append((shown(path), "not an image file"))
                return
            if size > max_bytes:
                found.add(Crop(key, error=_too_big(size, max_bytes)))
                return
            data = head + handle.read(max_bytes + 1 - len(head))
    except FILE_ERRORS as exc:
        if explicit:
            found.unreadable.append((shown(path), describe(exc)))
        else:
            found.add(Crop(key, error=f"unreadable: {describe(exc)}"))
        return
    if len(data) > max_bytes:  # grew since stat
        found.add(Crop(key, error=_too_big(len(data), max_bytes)))
    else:
        found.add(Crop(key, data))


def _zip_crops(handle: BinaryIO, key: str, max_bytes: int, found: Collection) -> None:
    """Members are read in memory, never extracted: a member's name never picks a file to write.

    The archive is read through the handle already checked to be a regular file, never reopened
    by name. An archive whose directory cannot be read is one error crop; a member that cannot be
    read is that member's error crop.
    """
    try:
        archive = zipfile.ZipFile(handle)
    except FILE_ERRORS as exc:
        found.add(Crop(key, error=f"not a readable zip archive: {describe(exc)}"))
        return
    with archive:
        for info in archive.infolist():
            if found.refused:
                return
            if info.is_dir():
                continue
            crop = _zip_member(archive, info, f"{key}/{key_for(info.filename)}", max_bytes, found)
            if crop is not None:
                found.add(crop)


def _zip_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, max_bytes: int, found: Collection
) -> Crop | None:
    if unsafe_member_name(info.filename):
        return Crop(key, error="unsafe member name (absolute or '..'): not read")
    if info.flag_bits & 0x1:
        return Crop(key, error="encrypted zip member: not read")
    try:
        if not looks_like_image(info.filename, _member_head(archive, info)):
            found.skipped.append((key, "not an image file"))
            return None
        if info.file_size > max_bytes:
            return Crop(key, error=_too_big(info.file_size, max_bytes))
        with archive.open(info) as member:
            # The declared size can lie; never inflate more than the limit allows.
            data = member.read(max_bytes + 1)
    except FILE_ERRORS as exc:
        return Crop(key, error=f"unreadable zip member: {describe(exc)}")
    if len(data) > max_bytes:
        return Crop(key, error=_too_big(len(data), max_bytes))
    return Crop(key, data)


def _member_head(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if PurePosixPath(info.filename).suffix.lower() in IMAGE_SUFFIXES:
        return b""  # the name settles it; no need to inflate anything
    with archive.open(info) as member:
        return member.read(SNIFF_BYTES)


def _too_big(size: int, max_bytes: int) -> str:
    return f"crop is {size} bytes, over the {max_bytes} byte limit: not read"
