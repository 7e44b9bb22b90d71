"""Submitting jobs: validation, routing to queues, JSON messages, and reading files into crops.

Messages go to a real Redis with no worker attached, so the tests can read what a worker would get.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import redis
from PIL import Image
from sqlalchemy import select, text

from digits.worker.config import ConfigError, Settings
from digits.worker.queue.celery_app import create_app
from digits.worker.queue.messages import BATCH_QUEUE, CLASSIFY_TASK, INTERACTIVE_QUEUE
from digits.worker.store import db
from digits.worker.submission import jobs
from digits.worker.submission.collect import collect, unsafe_member_name
from tests import bad_files
from tests.services import task_body


def png(value: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("L", (28, 28), value).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def broker(redis_server):
    """A clean Redis database for this test's messages."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield redis_server.url, client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(broker, sqlite_url) -> Settings:
    return Settings(broker_url=broker[0], database_url=sqlite_url, chunk_size=4)


def _messages(client: redis.Redis, queue: str) -> list[dict]:
    """A queue's waiting messages, oldest first, from each of kombu's per-priority lists."""
    keys = [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in (3, 6, 9)]
    return [json.loads(raw) for key in keys for raw in reversed(client.lrange(key, 0, -1))]


# kombu's Redis transport keeps a queue's priority steps in lists named queue + this + step.
PRIORITY_SEP = "\x06\x16"


def _items(url: str, job_id: str) -> list[db.Item]:
    with db.session_scope(url) as session:
        return list(session.scalars(select(db.Item).where(db.Item.job_id == job_id)))


def test_single_chunk_job_goes_to_interactive_queue(settings, broker):
    plan = jobs.submit([jobs.Crop("only", png())], settings, app=create_app(settings))
    (message,) = _messages(broker[1], INTERACTIVE_QUEUE)
    assert _messages(broker[1], BATCH_QUEUE) == []
    assert plan.queue == INTERACTIVE_QUEUE
    # The highest priority: the next free worker child takes it before any batch chunk.
    assert broker[1].llen(INTERACTIVE_QUEUE) == 1
    # JSON on the wire, never pickle; the crop travels as base64 inside it, and the body as it
    # is, without kombu's second layer of base64 around it.
    assert message["content-type"] == "application/json"
    assert message["headers"]["task"] == CLASSIFY_TASK
    assert message["properties"]["body_encoding"] is None
    _, kwargs, _ = json.loads(message["body"])
    assert kwargs["job_id"] == plan.job_id
    assert kwargs["crops"] == [["only", base64.b64encode(png()).decode()]]


def test_a_one_chunk_job_is_recorded_and_kept_in_one_commit_before_it_is_sent(settings, broker):
    from sqlalchemy import event

    engine = db.engine_for(settings.database_url)
    db.upgrade(settings.database_url)
    commits: list[int] = []

    def counted(connection) -> None:
        commits.append(broker[1].llen(INTERACTIVE_QUEUE))  # messages waiting at each commit

    event.listen(engine, "commit", counted)
    try:
        plan = jobs.submit([jobs.Crop("only", png())], settings, app=create_app(settings))
    finally:
        event.remove(engine, "commit", counted)
    # A single crop's latency is a handful of commits: the job's rows and the chunk's copy (which
    # the sweeper sends again if Redis loses the message) are one, made before the message.
    assert commits == [0]
    with db.session_scope(settings.database_url) as session:
        assert session.get(db.Job, plan.job_id) is not None
        (copy,) = session.scalars(select(db.SentChunk).where(db.SentChunk.job_id == plan.job_id))
    assert copy.chunk == "0" and broker[1].llen(INTERACTIVE_QUEUE) == 1


def test_large_job_is_split_into_chunks_on_batch_queue(settings, broker):
    crops = [jobs.Crop(f"env/{i:03d}.png", png(i)) for i in range(10)]
    plan = jobs.submit(crops, settings, app=create_app(settings))
    messages = _messages(broker[1], BATCH_QUEUE)
    assert _messages(broker[1], INTERACTIVE_QUEUE) == []
    assert len(messages) == len(plan.chunks) == 3
    # The lowest priority, so that interactive chunks overtake them.
    assert broker[1].llen(f"{BATCH_QUEUE}{PRIORITY_SEP}9") == 3
    keys = [key for message in messages for key, _ in task_body(message)[1]["crops"]]
    assert keys == [crop.key for crop in crops]
    assert [item.status for item in _items(settings.database_url, plan.job_id)] == ["pending"] * 10


def test_chunks_also_respect_a_byte_budget(settings):
    crops = [jobs.Crop(f"k{i}", b"x" * 1000) for i in range(4)]
    plan = jobs.plan_job(crops, dataclasses.replace(settings, max_chunk_bytes=2500))
    assert [len(chunk.crops) for chunk in plan.chunks] == [2, 2]


def test_a_field_job_is_chunked_by_the_field_chunk_size(settings):
    """A field costs a worker child far more than a crop: field jobs have a chunk size of their
    own (DIGITS_FIELD_CHUNK_SIZE), and digit jobs keep DIGITS_CHUNK_SIZE."""
    crops = [jobs.Crop(f"k{i}", png(i)) for i in range(10)]
    sizes = dataclasses.replace(settings, chunk_size=4, field_chunk_size=3)
    fields = jobs.plan_job(crops, sizes, kind="amount")
    assert [len(chunk.crops) for chunk in fields.chunks] == [3, 3, 3, 1]
    digits = jobs.plan_job(crops, sizes)
    assert [len(chunk.crops) for chunk in digits.chunks] == [4, 4, 2]
    assert Settings.from_env({"DIGITS_FIELD_CHUNK_SIZE": "7"}).field_chunk_size == 7
    assert Settings().field_chunk_size == 32
    with pytest.raises(ConfigError, match="DIGITS_FIELD_CHUNK_SIZE=5000: at most 2000"):
        Settings.from_env({"DIGITS_FIELD_CHUNK_SIZE": "5000"})


def test_duplicate_key_is_rejected_naming_it(settings):
    crops = [jobs.Crop("a.png", png()), jobs.Crop("b.png", png()), jobs.Crop("a.png", png())]
    with pytest.raises(jobs.JobError, match="duplicate key 'a.png'"):
        jobs.submit(crops, settings, app=create_app(settings))
    with db.session_scope(settings.database_url) as session:
        assert session.scalars(select(db.Job)).all() == []


@pytest.mark.parametrize(
    ("crops", "message"),
    [
        ([], "at least one crop"),
        ([jobs.Crop("", b"x")], "non-empty"),
        ([jobs.Crop("x" * 600, b"x")], "longer than 512"),
        ([jobs.Crop(f"k{i}", b"x") for i in range(6)], "at most 5"),
    ],
)
def test_unacceptable_jobs_are_refused(settings, crops, message):
    with pytest.raises(jobs.JobError, match=message):
        jobs.plan_job(crops, dataclasses.replace(settings, max_items_per_job=5))


def test_crops_known_bad_at_submission_are_error_items_at_once(settings, broker):
    small = dataclasses.replace(settings, max_item_bytes=1000)
    crops = [
        jobs.Crop("fine.png", png()),
        jobs.Crop("huge.png", b"\x89PNG" + b"\0" * 5000),
        jobs.Crop("zip/../escape.png", error="unsafe member name"),
    ]
    plan = jobs.submit(crops, small, app=create_app(small))
    items = {item.key: item for item in _items(settings.database_url, plan.job_id)}
    assert set(items) == {"fine.png", "huge.png", "zip/../escape.png"}
    assert items["fine.png"].status == "pending"
    assert items["huge.png"].status == "error" and "byte limit" in items["huge.png"].error
    assert items["zip/../escape.png"].error == "unsafe member name"
    # Only the good crop travels.
    (message,) = _messages(broker[1], INTERACTIVE_QUEUE)
    assert [k for k, _ in task_body(message)[1]["crops"]] == ["fine.png"]


def test_a_new_jobs_counts_are_what_its_items_say(settings):
    """The job row is written with its counts from the plan (no recount in the submitting
    transaction): the same as counting its items, for a job of good crops, one with crops
    rejected at submission and one whose every crop was, which is final at once."""
    from digits.worker.store.writes import refresh_job

    small = dataclasses.replace(settings, max_item_bytes=1000)
    huge = b"\x89PNG" + b"\0" * 5000
    mixed = [jobs.Crop("fine.png", png()), jobs.Crop("huge.png", huge)]
    rejected = [jobs.Crop("a.png", huge), jobs.Crop("b", error="unsafe member name")]
    for crops, expected in (
        ([jobs.Crop("only.png", png())], ("queued", 1, 0, 0, False)),
        (mixed, ("running", 2, 1, 1, False)),
        (rejected, ("failed", 2, 2, 2, True)),
    ):
        plan = jobs.submit(crops, small, app=create_app(small))
        with db.session_scope(settings.database_url) as session:
            job = session.get(db.Job, plan.job_id)
            stored = (job.status, job.total, job.processed, job.error, job.finished is not None)
            assert stored == expected
            recount = refresh_job(session, plan.job_id)
            assert (recount.status, recount.total, recount.processed, recount.error) == stored[:4]


def test_unreachable_broker_marks_the_unsent_items_error(sqlite_url):
    from digits.cli.devtools.local import free_port

    dead = Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", database_url=sqlite_url)
    crops = [jobs.Crop(f"k{i}", png()) for i in range(3)]
    with pytest.raises(jobs.EnqueueError, match="could not queue chunk 0"):
        jobs.submit(crops, dead, app=create_app(dead))
    with db.session_scope(sqlite_url) as session:
        job = session.scalars(select(db.Job)).one()
        assert (job.status, job.error, job.total) == ("failed", 3, 3)
        # The chunk's copy was kept just before the send failed; no sweeper may send it again.
        assert session.scalars(select(db.SentChunk)).all() == []
    assert all("could not be queued" in item.error for item in _items(sqlite_url, job.id))


def test_a_database_that_refuses_a_chunks_copy_mid_job_fails_the_rest_clearly(settings, broker):
    """Each chunk's copy is kept just before it is sent (the sweeper's only way to send it again):
    when the database refuses one half-way (here a trigger, as a full disk would), that chunk and
    the later ones are not sent and their items are errors with the reason; the sent ones stay."""
    with db.session_scope(settings.database_url) as session:
        session.execute(
            text(
                "CREATE TRIGGER refuse_copy BEFORE INSERT ON sent_chunks WHEN NEW.chunk = '2' "
                "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
            )
        )
    crops = [jobs.Crop(f"k{i:02d}", png(i)) for i in range(16)]  # chunks of 4: 0-3
    with pytest.raises(jobs.EnqueueError, match="refused the copy of chunk 2 of 4"):
        jobs.submit(crops, settings, app=create_app(settings))
    assert len(_messages(broker[1], BATCH_QUEUE)) == 2
    items = {item.key: item for item in _items(settings.database_url, _only_job(settings))}
    assert {items[f"k{i:02d}"].status for i in range(8)} == {"pending"}
    assert all("disk is full" in items[f"k{i:02d}"].error for i in range(8, 16))


def _only_job(settings: Settings) -> str:
    with db.session_scope(settings.database_url) as session:
        return session.scalars(select(db.Job.id)).one()


# --- reading paths into crops -------------------------------------------------------------------


def _tree(root: Path) -> Path:
    (root / "scans" / "box1").mkdir(parents=True)
    (root / "scans" / "box1" / "env-001.png").write_bytes(png())
    (root / "scans" / "box1" / "notes.txt").write_text("not a scan")
    (root / "scans" / "no-extension").write_bytes(png())  # an image by its magic bytes
    (root / "scans" / "broken.jpg").write_bytes(b"\xff\xd8\xff truncated")
    (root / "outside.png").write_bytes(png())
    os.symlink(root / "outside.png", root / "scans" / "link-out.png")
    os.symlink(root / "scans" / "box1" / "env-001.png", root / "scans" / "link-in.png")
    return root / "scans"


def test_directories_are_read_recursively_keyed_by_relative_path(tmp_path):
    found = collect([_tree(tmp_path)], max_bytes=10_000)
    keys = [crop.key for crop in found.crops]
    assert keys == ["box1/env-001.png", "broken.jpg", "link-in.png", "no-extension"]
    assert all(crop.error is None for crop in found.crops)  # the broken jpg is the worker's call
    skipped = dict(found.skipped)
    assert "outside" in skipped[str(tmp_path / "scans" / "link-out.png")]
    assert skipped[str(tmp_path / "scans" / "box1" / "notes.txt")] == "not an image file"
    assert found.unreadable == []


def test_enqueue_lists_a_folder_and_reads_each_file_as_its_chunk_is_sent(
    settings, broker, tmp_path
):
    """digits enqueue's way (defer): the rows are made from the listing, then each chunk's files
    are read, kept (a copy per chunk) and sent; a file gone since the listing is its item's
    error, and the other crops of its chunk still go."""
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(10):
        (folder / f"{i:02d}.png").write_bytes(png(i))
    found = collect([folder], max_bytes=10_000, defer=True)
    assert [crop.data for crop in found.crops] == [None] * 10  # listed, not read
    assert found.total_bytes == sum(len(png(i)) for i in range(10))
    (folder / "05.png").unlink()
    plan = jobs.submit(found.crops, settings, app=create_app(settings))
    sent = {
        key: base64.b64decode(data)
        for message in _messages(broker[1], BATCH_QUEUE)
        for key, data in task_body(message)[1]["crops"]
    }
    assert sent == {f"{i:02d}.png": png(i) for i in range(10) if i != 5}
    items = {item.key: item for item in _items(settings.database_url, plan.job_id)}
    assert items["05.png"].status == "error" and "No such file" in items["05.png"].error
    assert {item.status for key, item in items.items() if key != "05.png"} == {"pending"}
    with db.session_scope(settings.database_url) as session:
        kept = session.scalars(select(db.SentChunk.chunk).where(db.SentChunk.job_id == plan.job_id))
        assert sorted(kept) == ["0", "1", "2"]  # chunk_size 4: a copy of each until written


def test_a_file_given_directly_is_taken_whatever_it_is(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    (crop,) = collect([path], max_bytes=10_000).crops
    assert (crop.key, crop.data) == ("notes.txt", b"hello")


def test_zip_members_are_read_without_extraction(tmp_path):
    archive = tmp_path / "batch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/env-1.png", png())
        zf.writestr("readme.txt", "skip me")
        zf.writestr("../../evil.png", png())
        zf.writestr("/abs.png", png())
        zf.writestr("big.png", b"\x89PNG" + b"\0" * 20_000)
    found = collect([archive], max_bytes=10_000)
    crops = {crop.key: crop for crop in found.crops}
    assert list(crops) == [
        "batch.zip/a/env-1.png",
        "batch.zip/../../evil.png",
        "batch.zip//abs.png",
        "batch.zip/big.png",
    ]
    assert crops["batch.zip/a/env-1.png"].data == png()
    assert "unsafe member name" in crops["batch.zip/../../evil.png"].error
    assert "unsafe member name" in crops["batch.zip//abs.png"].error
    assert "byte limit" in crops["batch.zip/big.png"].error
    assert ("batch.zip/readme.txt", "not an image file") in found.skipped
    assert not (tmp_path / "evil.png").exists() and not (tmp_path.parent / "evil.png").exists()


def test_a_member_that_inflates_past_its_declared_size_is_cut_off(tmp_path):
    archive = tmp_path / "liar.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.png", b"\x89PNG" + b"\0" * 200_000)
    raw = bytearray(archive.read_bytes())
    # Rewrite the central directory's uncompressed size (offset 24 in its record) to a small lie.
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (100).to_bytes(4, "little")
    archive.write_bytes(bytes(raw))
    (crop,) = collect([archive], max_bytes=10_000).crops
    assert crop.data is None and crop.error


def test_unreadable_paths_are_reported_not_queued(tmp_path):
    found = collect([tmp_path / "missing.png"], max_bytes=10_000)
    assert found.crops == []
    assert found.unreadable == [(str(tmp_path / "missing.png"), "no such file or directory")]


@pytest.mark.parametrize(
    ("name", "unsafe"),
    [("a/b.png", False), ("../a.png", True), ("a/../../b.png", True), ("/a.png", True)]
    + [("C:\\x.png", True), ("a\\..\\b.png", True), ("..a.png", False)],
)
def test_unsafe_member_names(name, unsafe):
    assert unsafe_member_name(name) is unsafe


# --- issue 17: one bad file never stops the others ------------------------------------------


def test_every_bad_file_in_a_folder_fails_alone_and_the_rest_are_read(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "good.png").write_bytes(png(1))
    bad_files.short_member_zip(folder / "short.zip", png(2))
    bad_files.bad_utf8_name_zip(folder / "badname.zip")
    bad_files.future_version_zip(folder / "version.zip")
    bad_files.unknown_compression_zip(folder / "method.zip", png(4))
    bad_files.latin1_named(folder, png(5))
    loops = bad_files.symlink_loop(folder)
    device = bad_files.character_device(folder / "device.png")
    with bad_files.fifo(folder / "pipe.png") as watch:
        os.symlink(folder / "pipe.png", folder / "to-pipe.png")
        found = collect([folder], max_bytes=10_000)
    assert not watch.opened, "a FIFO was opened"
    assert found.unreadable == [] and found.refused is None
    crops = {crop.key: crop for crop in found.crops}
    assert {key: crop.data for key, crop in crops.items() if crop.error is None} == {
        "good.png": png(1),
        "short.zip/fine.png": png(2),
        "method.zip/fine.png": png(4),
        bad_files.LATIN1_KEY: png(5),
    }
    errors = {key: crop.error for key, crop in crops.items() if crop.error}
    assert errors == {
        "short.zip/short.png": "unreadable zip member: truncated: it ends before its header says",
        "badname.zip": "not a readable zip archive: a name marked UTF-8 is not valid UTF-8 "
        "('utf-8' codec can't decode byte 0xff in position 2: invalid start byte)",
        "version.zip": "not a readable zip archive: unsupported: zip file version 9.9",
        "method.zip/aes.png": "unreadable zip member: unsupported: That compression method is "
        "not supported",
    }
    skipped = {Path(path).name: why for path, why in found.skipped}
    assert skipped == {
        **dict.fromkeys(loops, "symlink loop: not followed"),
        "pipe.png": "a FIFO (named pipe): not read",
        "to-pipe.png": "symlink to a FIFO (named pipe): not read",
        **({"device.png": "a character device: not read"} if device else {}),
    }


def test_a_fifo_given_by_name_is_refused_never_opened(tmp_path):
    with bad_files.fifo(tmp_path / "pipe.png") as watch:
        found = collect([tmp_path / "pipe.png"], max_bytes=10_000)
    assert not watch.opened
    assert found.unreadable == [(str(tmp_path / "pipe.png"), "a FIFO (named pipe): not read")]


def test_mutated_archives_never_stop_a_run(tmp_path):
    """Bytes changed or cut at random in archives of every compression zipfile reads: whatever
    zipfile raises (ValueError, EOFError, lzma, zlib and bz2 errors, ...) stays with its file."""
    import random

    rng = random.Random(17)
    bases = []
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=method) as archive:
            archive.writestr("a.png", png(1))
            archive.writestr("notes/b.txt", "hello " * 50)
            archive.writestr("c", png(2))
        bases.append(buffer.getvalue())
    folder = tmp_path / "fuzzed"
    folder.mkdir()
    for index in range(400):
        raw = bytearray(bases[index % len(bases)])
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(raw))
            if rng.random() < 0.2:
                del raw[at : at + rng.randint(1, 50)]
            else:
                raw[at] = rng.randrange(256)
        (folder / f"m{index:03d}.zip").write_bytes(bytes(raw))
    (folder / "zz-good.png").write_bytes(png(3))

    found = collect([folder], max_bytes=10_000)

    assert found.unreadable == [] and found.refused is None
    crops = {crop.key: crop for crop in found.crops}
    assert crops["zz-good.png"].data == png(3)
    assert sum(crop.error is not None for crop in found.crops) > 100


def test_names_that_are_not_utf8_become_reversible_printable_keys():
    import random

    from digits.worker.submission.names import key_for, name_of

    assert key_for(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert key_for("C:\\scans\\a.png") == "C:\\scans\\a.png"  # valid names stay as they are
    assert key_for("envelope 0042 \u00e9t\u00e9.png") == "envelope 0042 \u00e9t\u00e9.png"
    assert key_for("a\\x41.png") == "a\\\\x41.png"  # a literal escape-lookalike is set apart
    assert key_for(os.fsdecode(b"\\\xff")) == "\\\\\\xff"
    rng = random.Random(0)
    pieces = [b"\\", b"x", b"4", b"f", b"a", b"\xe9", b"\xff", b"\xc3\xa9", b"\xc3", b"/", b"."]
    for _ in range(20_000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        key = key_for(os.fsdecode(raw))
        key.encode("utf-8")  # storable and printable as it is
        assert os.fsencode(name_of(key)) == raw, (raw, key)


def test_waiting_on_a_job_polls_faster_only_as_it_nears_its_end():
    """`enqueue --wait`'s poll: half again each time up to its ceiling; once the rate seen says
    the job ends sooner than that, half of the time left, never under the floor; and once that
    end is overdue (a stall), slower again."""
    from digits.worker.store.results import _Pace

    pace = _Pace(0.2, 0.005)
    waits = [pace.next(0, 20_000, 10.0 + i) for i in range(12)]  # nothing read yet
    assert waits[:3] == pytest.approx([0.005, 0.0075, 0.01125]) and waits[-1] == 0.2
    assert pace.next(256, 20_000, 30.0) == 0.2  # one change: no rate yet
    # 2,560 crops/s since the first chunk: 16,672 left is 6.5 s away
    assert pace.next(3_328, 20_000, 31.2) == 0.2
    # 256 left at that rate: ends 0.1 s after that last change; wait half of what is left
    assert pace.next(19_744, 20_000, 37.6) == pytest.approx(0.05, abs=1e-3)
    assert pace.next(19_744, 20_000, 37.69) == 0.005  # 7 ms left: the floor
    # the end is overdue: the last crops stall (a chunk lost until the sweeper sends it again)
    stalled = [pace.next(19_990, 20_000, 38.0 + i) for i in range(12)]
    assert stalled[0] < 0.005 * 1.5**2 and stalled[-1] == 0.2
    assert all(b >= a for a, b in zip(stalled[1:], stalled[2:], strict=False))
