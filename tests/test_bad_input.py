"""Hostile input through the real stack: each bad crop is its own item's error, never its job's.

Three doors: crops in a job (every format oddity and broken file below, in one job with good
digits), ``digits enqueue`` (zip bombs, climbing member names, symlinks out of the directory, too
many crops) and the queue itself (malformed messages and a pickle pushed straight into Redis).
One worker on SQLite serves the module.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import random
import re
import stat
import struct
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from PIL import Image
from sqlalchemy import func, select

from digits.cli.manage import cli
from digits.worker.queue import signing
from digits.worker.store import db
from digits.worker.submission import jobs
from tests.bad_files import queue_entry
from tests.services import assert_nothing_lost, job_items, running_worker

GOOD = 20  # good scan-like digits sharing the job with the bad crops
MAX_ITEM_BYTES = 1_000_000


@pytest.fixture(scope="module")
def worker(redis_server, model_path, tmp_path_factory):
    directory = tmp_path_factory.mktemp("bad-input-worker")
    url = f"sqlite:///{directory / 'digits.sqlite3'}"
    env = {"DIGITS_MAX_ITEM_BYTES": str(MAX_ITEM_BYTES)}
    with running_worker(redis_server.url, url, directory / "worker.log", env=env) as running:
        yield running


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png_bomb(side: int) -> bytes:
    """A valid 1-bit PNG of side x side white pixels, streamed through zlib: ~110 kB for 30,000."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte, then the packed row
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(tag: bytes, payload: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(tag + payload))
        return struct.pack(">I", len(payload)) + tag + payload + crc

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def ink(mnist) -> tuple[np.ndarray, int]:
    """MNIST test digit 0 as a scan would have it: dark ink on white paper, twice the size."""
    digit = np.kron(mnist.x_test[0], np.ones((2, 2), np.uint8))
    return 255 - digit, int(mnist.y_test[0])


def odd_but_readable(ink: np.ndarray) -> dict[str, bytes]:
    """Real images of a real digit in formats a scanner or a hand-made crop may produce."""
    gray = Image.fromarray(ink)
    palette = Image.fromarray((ink < 128).astype(np.uint8), mode="P")
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    blank_frame = Image.new("P", gray.size, 0)
    return {
        "animated.gif": _encode(
            gray.convert("P"), "GIF", save_all=True, append_images=[blank_frame], loop=0
        ),
        "sixteen-bit.png": _encode(Image.fromarray(ink.astype(np.uint16) * 257), "PNG"),
        "cmyk.jpg": _encode(gray.convert("CMYK"), "JPEG", quality=95),
        "palette-transparent.png": _encode(palette, "PNG", transparency=0),
    }


def broken(ink: np.ndarray) -> dict[str, tuple[bytes, str]]:
    """Crops that cannot be read, each with a phrase its item's error must contain."""
    gray = Image.fromarray(ink)
    return {
        "zero-bytes.png": (b"", "empty input: zero bytes"),
        "random.bin": (random.Random(0).randbytes(600), "not an image"),
        "notes.txt": (b"Envelope 4711\nno image here\n", "not an image"),
        "letter.pdf": (b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n", "not an image"),
        "truncated.png": (_encode(gray, "PNG")[:300], "truncated"),
        "truncated.jpg": (_encode(gray, "JPEG", quality=90)[:400], "truncated"),
        "bomb-30000.png": (png_bomb(30_000), "30000x30000 = 900000000 pixels is over"),
        "big-6000.png": (png_bomb(6_000), "36000000 pixels is over the limit of 25000000"),
        "sliver-1x5000.png": (_encode(Image.new("L", (5000, 1), 0), "PNG"), "aspect ratio"),
        "over-limit.png": (b"\x89PNG" + bytes(MAX_ITEM_BYTES), "byte limit"),
    }


def test_each_bad_crop_is_an_item_error_and_the_rest_of_its_job_is_read(worker, scan_crops, ink):
    pixels, label = ink
    bad = broken(pixels)
    odd = odd_but_readable(pixels)
    blanks = {
        "all-white.png": _encode(Image.new("L", (40, 40), 255), "PNG"),
        "all-black.png": _encode(Image.new("L", (40, 40), 0), "PNG"),
    }
    crops = [jobs.Crop(key, blob) for key, blob, _ in scan_crops[:GOOD]]
    crops += [jobs.Crop(key, blob) for key, (blob, _) in bad.items()]
    crops += [jobs.Crop(key, blob) for key, blob in {**odd, **blanks}.items()]
    plan = worker.submit(crops)
    final = worker.wait(plan.job_id)
    items = assert_nothing_lost(worker.database_url, plan.job_id, plan.keys)
    # Some errors; flagged items still awaiting a person read "reviewing" until they are keyed.
    assert final.status == ("reviewing" if final.awaiting_review else "partial")
    for key, (_, phrase) in bad.items():
        assert items[key].status == "error", key
        assert phrase in items[key].error, (key, items[key].error)
    for key in odd:
        assert (items[key].status, items[key].digit) in {("ok", label), ("needs_review", label)}, (
            key
        )
    assert {items[key].status for key in blanks} == {"blank"}
    truth = {key: digit for key, _, digit in scan_crops[:GOOD]}
    assert all(items[key].digit == digit for key, digit in truth.items())


# --- digits enqueue: archives, links and sizes it must not be fooled by -------------------------


def _enqueue(worker, *args: str, **env: str):
    return CliRunner().invoke(cli, ["enqueue", *args], env={**worker.env, **env})


def _jobs_in(worker) -> int:
    with db.session_scope(worker.database_url) as session:
        return session.scalar(select(func.count()).select_from(db.Job))


def test_a_zip_bomb_of_small_members_is_refused_before_it_fills_memory(worker, tmp_path):
    """Each member is under the crop limit; together they inflate far past the job's budget."""
    archive = tmp_path / "bomb.zip"
    member = bytes(MAX_ITEM_BYTES - 1)  # zeros: ~1 kB deflated
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(40):
            zf.writestr(f"envelope-{i:03d}.png", member)
    assert archive.stat().st_size < 100_000
    before = _jobs_in(worker)
    result = _enqueue(worker, str(archive), DIGITS_MAX_JOB_BYTES="5000000")
    assert result.exit_code != 0
    assert "more than 5000000 bytes of crops (a zip bomb?)" in result.output
    assert "nothing was queued" in result.output
    assert _jobs_in(worker) == before


def test_a_member_that_inflates_past_the_crop_limit_is_an_item_error(worker, tmp_path, scan_crops):
    archive = tmp_path / "box.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("huge.png", bytes(50 * MAX_ITEM_BYTES))  # 50 MB of zeros, ~50 kB deflated
        zf.writestr("cheque.png", scan_crops[0][1])
    summary = _enqueue_and_wait(worker, str(archive))
    items = assert_nothing_lost(
        worker.database_url, summary["job_id"], ["box.zip/huge.png", "box.zip/cheque.png"]
    )
    assert items["box.zip/huge.png"].status == "error"
    assert "over the 1000000 byte limit: not read" in items["box.zip/huge.png"].error
    assert items["box.zip/cheque.png"].digit == scan_crops[0][2]


def _enqueue_and_wait(worker, *args: str, **env: str) -> dict:
    result = _enqueue(worker, *args, "--wait", "--json", **env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_zip_members_named_to_climb_out_are_errors_and_nothing_is_written(
    worker, tmp_path, scan_crops
):
    archive = tmp_path / "inbox" / "box.zip"
    archive.parent.mkdir()
    climbing = [
        "../../evil.png",
        "/etc/cron.d/evil.png",
        "C:\\Windows\\evil.png",
        "a/../../evil.png",
    ]
    link = zipfile.ZipInfo("link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16  # a symlink member: never followed
    with zipfile.ZipFile(archive, "w") as zf:
        for name in climbing:
            zf.writestr(name, scan_crops[1][1])
        zf.writestr(link, "/etc/passwd")
        zf.writestr("fine.png", scan_crops[2][1])
    summary = _enqueue_and_wait(worker, str(archive))
    keys = [f"box.zip/{name}" for name in [*climbing, "link.png", "fine.png"]]
    items = assert_nothing_lost(worker.database_url, summary["job_id"], keys)
    for name in climbing:
        assert "unsafe member name" in items[f"box.zip/{name}"].error
    # The link member is its own bytes ("/etc/passwd"), never the file it names.
    assert items["box.zip/link.png"].status == "error"
    assert "not an image" in items["box.zip/link.png"].error
    assert items["box.zip/fine.png"].digit == scan_crops[2][2]
    assert not list(tmp_path.rglob("evil.png"))


def test_symlinks_out_of_the_directory_are_not_followed(worker, tmp_path, scan_crops):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(scan_crops[3][1])
    root = tmp_path / "scans"
    (root / "box").mkdir(parents=True)
    (root / "box" / "env-1.png").write_bytes(scan_crops[4][1])
    os.symlink(outside / "secret.png", root / "to-file.png")
    os.symlink(outside, root / "to-dir")
    os.symlink("/etc/passwd", root / "passwd.png")
    os.symlink(root / "hop.png", root / "chain.png")  # in -> in -> out
    os.symlink(outside / "secret.png", root / "hop.png")
    os.symlink(root / "box" / "env-1.png", root / "inside.png")
    result = _enqueue(worker, str(root), "--wait", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    items = assert_nothing_lost(
        worker.database_url, summary["job_id"], ["box/env-1.png", "inside.png"]
    )
    assert items["inside.png"].digit == items["box/env-1.png"].digit == scan_crops[4][2]
    for name in ("to-file.png", "to-dir", "passwd.png", "chain.png", "hop.png"):
        assert f"skipped {root / name}" in result.stderr, name


def test_a_job_over_the_item_limit_is_refused_without_reading_it_all(worker, tmp_path, scan_crops):
    folder = tmp_path / "many"
    folder.mkdir()
    for key, blob, _ in scan_crops[:8]:
        (folder / key.split("/")[1]).write_bytes(blob)
    before = _jobs_in(worker)
    result = _enqueue(worker, str(folder), DIGITS_MAX_ITEMS_PER_JOB="5")
    assert result.exit_code != 0
    assert "more than 5 crops: a job holds at most 5" in result.output
    assert _jobs_in(worker) == before


# --- the queue: messages pushed straight into Redis, past every submitter --------------------


def _task_body(**kwargs) -> bytes:
    return json.dumps([[], kwargs, {"callbacks": None, "errbacks": None, "chain": None}]).encode()


def _signed(**kwargs) -> dict:
    """A chunk's arguments signed with the key the worker shares with this process (the default
    key file): what only a holder of the key can make."""
    signature = signing.sign(
        signing.message_key(), kwargs["job_id"], kwargs["chunk"], kwargs["crops"], None
    )
    return kwargs | {"signature": signature}


class _Touch:
    """Unpickling this creates ``path``: the proof a pickle ran is a file on disk."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_malformed_and_pickled_messages_are_refused_logged_and_never_run(
    worker, scan_crops, tmp_path
):
    real = worker.submit([jobs.Crop(key, blob) for key, blob, _ in scan_crops[:4]])
    worker.wait(real.job_id)
    marker = tmp_path / "pickle-ran"
    control = tmp_path / "pickle-would-run"
    pickle.loads(pickle.dumps(_Touch(control)))  # the payload is live: loading it makes a file
    assert control.exists()
    crop = base64.b64encode(scan_crops[5][1]).decode()
    hostile = {
        "not JSON at all": "\x00\x01 garbage, not an envelope",
        "JSON, not a message": "[1, 2, 3]",
        "a message without its parts": json.dumps({"body": 5, "properties": "none"}),
        "no delivery info": json.dumps({"properties": {"delivery_tag": "x"}}),
        "delivery info without its exchange": json.dumps(
            {"properties": {"delivery_tag": "y", "delivery_info": {"routing_key": "batch"}}}
        ),
        "body not JSON": queue_entry(b"{not json", "application/json"),
        "pickle": queue_entry(
            pickle.dumps(([], {"x": _Touch(marker)}, {})),
            "application/x-python-serialize",
            encoding="binary",
        ),
        "unknown task": queue_entry(_task_body(), "application/json", task="os.system"),
        "missing arguments": queue_entry(_task_body(job_id=real.job_id), "application/json"),
        "wrong shapes": queue_entry(
            _task_body(job_id=real.job_id, chunk=0, crops="x", threshold=0.5), "application/json"
        ),
        "unknown job": queue_entry(
            _task_body(**_signed(job_id=str(uuid.uuid4()), chunk=0, crops=[["a", crop]])),
            "application/json",
        ),
        "keys not in the job": queue_entry(
            _task_body(**_signed(job_id=real.job_id, chunk=0, crops=[["forged", crop]])),
            "application/json",
        ),
        "unsigned": queue_entry(
            _task_body(job_id=real.job_id, chunk=7, crops=[["unsigned", crop]], threshold=0.5),
            "application/json",
        ),
    }
    client = redis.Redis.from_url(worker.env["DIGITS_BROKER_URL"])
    try:
        for message in hostile.values():
            client.lpush("batch", message)
    finally:
        client.close()
    after = worker.submit([jobs.Crop(key, blob) for key, blob, _ in scan_crops[6:10]])
    worker.wait(after.job_id)  # the worker survived all of it and still works
    for line in (
        "Refusing to deserialize untrusted content of type pickle",
        "Received unregistered task of type 'os.system'",
        "crops: not a list of 1 to 2000 [key, base64] pairs",
        "does not exist in this database in",
        "Can't decode message body",
        f"1 of the message's 1 crop keys are not items of job {real.job_id}",
        f"job {real.job_id} chunk 7: message",  # ... dropped, neither read nor written: unsigned
    ):
        worker.wait_for_log(line)  # two children take the entries side by side: in any order
    log = worker.log()
    assert not marker.exists(), "the pickle was unpickled in the worker"
    assert log.count("dropped a queue entry that is not a message") == 5
    assert re.search(
        r"chunk 0: job \S+ does not exist in this database in \S+; message dropped", log
    )
    assert [item.key for item in job_items(worker.database_url, real.job_id)] == real.keys
    assert_nothing_lost(worker.database_url, after.job_id, after.keys)
