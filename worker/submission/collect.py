"""Turning the paths given to ``digits enqueue`` into keyed crops.

A file is keyed by its path relative to what was given (a file given directly by its name, a zip
member as ``archive.zip/member``), so the caller's own ids (envelope or cheque numbers in file
names) come back in the results. Inside directories and archives only images are taken, judged by
extension or by magic bytes. Bad images still become crops (the worker reports each one); crops the
submitter must not read (oversized, unsafe zip member names, encrypted members) become crops with an
error. Paths that cannot be read at all are collected separately so the command can refuse them
clearly.

Every crop is held in memory until the job is submitted, so the whole collection is bounded too: a
zip bomb of many members, each under the per-crop limit, or a tree of more files than a job may
hold, stops being read at the first crop past ``max_total_bytes`` or ``max_crops`` and the job is
refused with the reason.
"""

from __future__ import annotations

import os
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from digits.worker.submission.jobs import Crop

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
        self.total_bytes += len(crop.data or b"")
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
) -> Collection:
    """Crops from files, directories (recursively) and zip archives, in a stable order.

    ``max_bytes`` bounds each crop; ``max_crops`` and ``max_total_bytes`` the whole job (see
    ``Collection.refused``).
    """
    found = Collection(max_crops=max_crops, max_total_bytes=max_total_bytes)
    for given in paths:
        if found.refused:
            break
        _collect_path(Path(given), max_bytes, found)
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


def _collect_path(given: Path, max_bytes: int, found: Collection) -> None:
    try:
        if given.is_dir():
            _collect_directory(given, max_bytes, found)
        elif given.is_file():
            _collect_file(given, given.name, max_bytes, found, explicit=True)
        elif given.exists() or given.is_symlink():
            found.unreadable.append((str(given), "not a regular file or directory"))
        else:
            found.unreadable.append((str(given), "no such file or directory"))
    except OSError as exc:
        found.unreadable.append((str(given), exc.strerror or str(exc)))


def _collect_directory(given: Path, max_bytes: int, found: Collection) -> None:
    root = given.resolve()
    for path in _walk(root, given, found):
        if found.refused:
            return
        key = path.relative_to(given).as_posix()
        _collect_file(path, key, max_bytes, found, explicit=False)


def _walk(root: Path, directory: Path, found: Collection) -> Iterator[Path]:
    """Files under ``directory`` in name order; symlinks followed only to files inside ``root``."""
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as exc:
        found.unreadable.append((str(directory), exc.strerror or str(exc)))
        return
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink():
            target = path.resolve()
            if not target.is_relative_to(root):
                found.skipped.append((str(path), f"symlink leads outside {root}: not followed"))
            elif target.is_dir():
                found.skipped.append((str(path), "symlink to a directory: not followed"))
            elif target.is_file():
                yield path
            else:
                found.skipped.append((str(path), "dangling symlink"))
        elif entry.is_dir(follow_symlinks=False):
            yield from _walk(root, path, found)
        elif entry.is_file(follow_symlinks=False):
            yield path


def _collect_file(path: Path, key: str, max_bytes: int, found: Collection, explicit: bool) -> None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
            if path.suffix.lower() == ".zip" or head.startswith(ZIP_MAGIC):
                _zip_crops(path, key, max_bytes, found)
                return
            if not explicit and not looks_like_image(path.name, head):
                found.skipped.append((str(path), "not an image file"))
                return
            if size > max_bytes:
                found.add(Crop(key, error=_too_big(size, max_bytes)))
                return
            data = head + handle.read(max_bytes + 1 - len(head))
    except OSError as exc:
        found.unreadable.append((str(path), exc.strerror or str(exc)))
        return
    if len(data) > max_bytes:  # grew since stat
        found.add(Crop(key, error=_too_big(len(data), max_bytes)))
    else:
        found.add(Crop(key, data))


def _zip_crops(path: Path, key: str, max_bytes: int, found: Collection) -> None:
    """Members are read in memory, never extracted: a member's name never picks a file to write."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
        found.add(Crop(key, error=f"not a readable zip archive: {exc}"))
        return
    with archive:
        for info in archive.infolist():
            if found.refused:
                return
            if info.is_dir():
                continue
            crop = _zip_member(archive, info, f"{key}/{info.filename}", max_bytes, found)
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
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, OSError) as exc:
        return Crop(key, error=f"unreadable zip member: {exc}")
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
