"""Files a careless or hostile user drops in an inbox or hands to ``digits enqueue`` (issue 17).

Each builder writes one real file that used to abort a whole run: archives zipfile cannot read in
four different ways, a name that is not UTF-8, a symlink loop, FIFOs and devices. Each returns
what the run must say about it. A :class:`FifoWatch` tells whether anyone ever opened a FIFO for
reading (opening one blocks until a writer comes, so a run that opens it stalls). And
:func:`queue_entry` is what a writer to Redis can push past every submitter. :func:`speckled`
turns a field's scan into a fax over a bad line: hundreds of marks for the field reader.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import io
import json
import os
import stat
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from digits.worker.queue.messages import CLASSIFY_TASK

# A name that is not UTF-8 (Latin-1 "café.png") and the key it gets (worker.submission.names).
LATIN1_NAME = b"caf\xe9.png"
LATIN1_KEY = "caf\\xe9.png"


def png(value: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("L", (28, 28), value).save(out, format="PNG")
    return out.getvalue()


def speckled(scan: bytes, share: float = 0.2, seed: int = 1) -> bytes:
    """The scan as PNG with ``share`` of its pixels turned black: a fax over a bad line, hundreds
    of marks where a field has a few dozen (model.lattice.MAX_PIECES)."""
    gray = np.array(Image.open(io.BytesIO(scan)).convert("L"))
    gray[np.random.default_rng(seed).random(gray.shape) < share] = 0
    out = io.BytesIO()
    Image.fromarray(gray).save(out, "PNG")
    return out.getvalue()


def _archive(members: dict[str, bytes]) -> bytearray:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return bytearray(buffer.getvalue())


def _central(raw: bytearray, index: int) -> int:
    """Offset of the index-th central directory record."""
    offset = -1
    for _ in range(index + 1):
        offset = raw.find(b"PK\x01\x02", offset + 1)
    return offset


def short_member_zip(path: Path, good: bytes) -> None:
    """First member's sizes claim 5 kB that the archive does not hold: EOFError on reading it."""
    raw = _archive({"short.png": png(), "fine.png": good})
    central = _central(raw, 0)
    for offset in (central + 20, central + 24, 18, 22):  # central and local sizes
        raw[offset : offset + 4] = (5_000).to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def bad_utf8_name_zip(path: Path) -> None:
    """A member name flagged UTF-8 (bit 11) whose bytes are not: UnicodeDecodeError on opening."""
    raw = _archive({"ok.png": png(), "xx\u00e9.png": png(5)})
    path.write_bytes(bytes(raw).replace("xx\u00e9".encode(), b"xx\xff\xfe"))


def future_version_zip(path: Path) -> None:
    """The central directory says version 9.9 is needed: NotImplementedError on opening."""
    raw = _archive({"ok.png": png(), "v.png": png(3)})
    raw[_central(raw, 1) + 6] = 99
    path.write_bytes(bytes(raw))


def unknown_compression_zip(path: Path, good: bytes) -> None:
    """One member compressed with method 99 (AES): NotImplementedError on reading that member."""
    raw = _archive({"fine.png": good, "aes.png": png(3)})
    central = _central(raw, 1)
    raw[central + 10 : central + 12] = (99).to_bytes(2, "little")
    local = raw.find(b"PK\x03\x04", 4)
    raw[local + 8 : local + 10] = (99).to_bytes(2, "little")
    path.write_bytes(bytes(raw))


def latin1_named(directory: Path, data: bytes) -> Path:
    path = Path(os.fsdecode(os.path.join(os.fsencode(directory), LATIN1_NAME)))
    path.write_bytes(data)
    return path


def symlink_loop(directory: Path) -> list[str]:
    """Two links pointing at each other and one at itself; their names."""
    os.symlink(directory / "loop-b", directory / "loop-a")
    os.symlink(directory / "loop-a", directory / "loop-b")
    os.symlink("loop-self", directory / "loop-self")
    return ["loop-a", "loop-b", "loop-self"]


def character_device(path: Path) -> bool:
    """A /dev/null twin (needs root or CAP_MKNOD); False where it cannot be made."""
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        return False
    return True


class FifoWatch:
    """Makes a FIFO and watches, until closed, whether a reader ever opened it.

    A non-blocking open of a FIFO's write end succeeds only while a reader holds it open, so the
    watcher polls that; when it succeeds it closes at once, which also hands the blocked reader an
    end of file instead of a hang.
    """

    def __init__(self, path: Path):
        os.mkfifo(path)
        self.path = path
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.02):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno in (errno.ENXIO, errno.EAGAIN):
                    continue  # no reader: the expected case
                return  # the FIFO was moved or removed
            self.opened = True
            os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@contextlib.contextmanager
def fifo(path: Path) -> Iterator[FifoWatch]:
    watch = FifoWatch(path)
    try:
        yield watch
    finally:
        watch.close()


def queue_entry(body: bytes, content_type: str, task: str = CLASSIFY_TASK, encoding="utf-8") -> str:
    """A Celery protocol-2 message as kombu's Redis transport stores it in a queue's list."""
    task_id = str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": encoding,
            "content-type": content_type,
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id}
            | {"retries": 0, "eta": None, "expires": None, "timelimit": [None, None]},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": {"exchange": "batch", "routing_key": "batch"},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )
