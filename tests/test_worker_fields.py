"""Field jobs (zip codes read whole) through a real prefork Celery worker on real Redis, SQLite and
PostgreSQL, submitted with ``digits enqueue --field zip`` as a user would.

The module-scoped ``celery_worker`` fixture runs one worker per backend. A hundred composed zip
fields with separated digits keep a run short; touching digits and rules are the field reader's
own tests (tests/test_fields.py), not the worker's.
"""

from __future__ import annotations

import csv
import io
import json

import pytest
from click.testing import CliRunner

from digits.cli.manage import cli
from digits.model.card import read_card, version
from digits.model.kinds import check, digits_of
from digits.model.review import DIGIT, FIELD_REVIEW_THRESHOLDS, REVIEW_THRESHOLD
from digits.worker.config import Settings
from digits.worker.queue import messages
from digits.worker.store import db
from digits.worker.store.results import FIELD_RESULT_FIELDS, REVIEW_FIELDS
from digits.worker.submission import jobs
from tests.bad_files import speckled
from tests.services import assert_nothing_lost, job_items

FIELDS = 100
BROKEN = "broken.png"
SPECKLED = "speckled.png"  # a zip field faxed over a bad line: hundreds of specks


def _suffix(blob: bytes) -> str:
    return ".png" if blob.startswith(b"\x89PNG") else ".jpg"


@pytest.fixture(scope="module")
def zip_fields(mnist) -> dict[str, tuple[bytes, str]]:
    """Key to (scan, true text) for 100 five-digit zip fields, digits apart, no rules."""
    from digits.model.fieldgen import field_set

    made = field_set(mnist.x_test, mnist.y_test, FIELDS, kind="zip", seed=11)
    return {f"zip-{i:03d}{_suffix(f.data)}": (f.data, f.text) for i, f in enumerate(made)}


def _cli(env: dict, *args: str):
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def field_job(celery_worker, zip_fields, mnist, tmp_path_factory) -> dict:
    """``digits enqueue --field zip --wait --json`` over a folder of the fields, a broken file
    and a speckled scan.

    Chunks of 25 so that both children read fields; DIGITS_REVIEW_THRESHOLD unset, so the job
    must take the field threshold.
    """
    from digits.model.fieldgen import field_set

    folder = tmp_path_factory.mktemp("fields")
    for key, (blob, _) in zip_fields.items():
        (folder / key).write_bytes(blob)
    (folder / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n this is no image")
    faxed = field_set(mnist.x_test, mnist.y_test, 1, kind="zip", seed=3)[0]  # as test_fields'
    (folder / SPECKLED).write_bytes(speckled(faxed.data))
    env = {**celery_worker.env, "DIGITS_FIELD_CHUNK_SIZE": "25", "DIGITS_REVIEW_THRESHOLD": None}
    output = _cli(env, "enqueue", "--field", "zip", str(folder), "--wait", "--json").stdout
    return json.loads(output)


def test_every_field_one_row_with_its_text_and_digits(celery_worker, zip_fields, field_job):
    url = celery_worker.database_url
    assert field_job["kind"] == "zip" and field_job["chunks"] == 5
    items = assert_nothing_lost(url, field_job["job_id"], [*zip_fields, BROKEN, SPECKLED])
    with db.session_scope(url) as session:
        job = session.get(db.Job, field_job["job_id"])
    assert (job.kind, job.review_threshold) == ("zip", FIELD_REVIEW_THRESHOLDS["zip"])
    assert job.status == "partial"  # as stored; shown "reviewing" while people have work
    assert field_job["status"] == "reviewing"  # the speckled scan at least awaits a person
    broken = items.pop(BROKEN)
    assert broken.status == "error" and broken.error and broken.text is None
    # Read from its largest marks only, in its chunk like any field, and a person's to check.
    noisy = items.pop(SPECKLED)
    assert noisy.status == "needs_review" and "too_many_marks" in noisy.details["reasons"]
    assert {item.status for item in items.values()} <= {"ok", "needs_review"}
    right = sum(item.text == zip_fields[key][1] for key, item in items.items())
    assert right / FIELDS >= 0.90, f"exact zip codes from the database: {right}/{FIELDS}"
    # The segmenter's digits were read by the field digit network, and those written apart by
    # the cnn with it: the rows say so.
    settings = Settings.from_env({})
    field_digits = version(read_card(settings.field_digits_path))
    assert {item.model_version for item in items.values()} == {field_digits}
    cnn = version(read_card(settings.model_path))
    assert {item.details["apart_model"] for item in items.values()} == {cnn}
    for key, item in items.items():
        assert item.digit is None and item.text, key
        details = item.details
        assert details["kind"] == "zip" and details["valid"] == check(item.text, "zip")
        # Both readers' readings are kept; the boxes are the segmenter's.
        readers = details["readers"]
        assert set(readers) == {"segmenter", "sequence"}, key
        assert all(0 <= r["confidence"] <= 1 for r in readers.values()), key
        guesses = details["digits"]
        segmented = digits_of(readers["segmenter"]["text"])
        assert "".join(str(g["digit"]) for g in guesses) == segmented
        agree = bool(segmented) and segmented == digits_of(readers["sequence"]["text"])
        if details["valid"]:
            assert details["value"] == item.text
        for guess in guesses:
            assert guess["top3"][0] == [guess["digit"], guess["confidence"]]
            assert len(guess["top3"]) == 3
            x0, y0, x1, y1 = guess["box"]
            assert 0 <= x0 < x1 and 0 <= y0 < y1
        # Accepted only when the readers agree, the text is a zip code and the pair is sure enough;
        # a line whose best path spelled a count no zip has, read again as one, is a person's.
        fitted = "sequence_count_fitted" in details["reasons"]
        if fitted:
            assert len(digits_of(readers["sequence"]["text"])) in (5, 9), key
        wanted = [] if agree else ["readers_disagree"]
        wanted += ["sequence_count_fitted"] if fitted else []
        wanted += [] if details["valid"] else ["not_zip"]
        wanted += ["low_confidence"] if item.confidence < FIELD_REVIEW_THRESHOLDS["zip"] else []
        assert details["reasons"] == wanted, key
        assert item.status == ("needs_review" if wanted else "ok"), key


def test_results_csv_and_json_show_the_text_as_stored(celery_worker, field_job):
    env, job_id = celery_worker.env, field_job["job_id"]
    items = job_items(celery_worker.database_url, job_id)
    output = _cli(env, "results", job_id, "--format", "csv").stdout
    reader = csv.DictReader(io.StringIO(output))
    assert tuple(reader.fieldnames) == FIELD_RESULT_FIELDS
    rows = list(reader)
    assert len(rows) == len(items) == FIELDS + 2  # the broken file and the speckled scan
    for row, item in zip(rows, items, strict=True):
        assert row["key"] == item.key
        assert row["text"] == (item.text or "")
        assert row["confidence"] == ("" if item.confidence is None else str(item.confidence))
        assert (row["status"], row["error"]) == (item.status, item.error or "")
        assert (json.loads(row["details"]) if row["details"] else None) == item.details
    listed = json.loads(_cli(env, "results", job_id, "--format", "json").stdout)
    assert [(r["key"], r["text"], r["details"]) for r in listed] == [
        (item.key, item.text, item.details) for item in items
    ]


def test_status_shows_the_kind(celery_worker, field_job):
    job_id = field_job["job_id"]
    assert _cli(celery_worker.env, "status", job_id).stdout.rstrip().endswith("; kind zip")
    status = json.loads(_cli(celery_worker.env, "status", job_id, "--json").stdout)
    assert (status["kind"], status["review_threshold"]) == ("zip", FIELD_REVIEW_THRESHOLDS["zip"])


def test_review_lists_the_fields_to_check_with_their_text(
    celery_worker, zip_fields, mnist, tmp_path
):
    """A strict threshold chosen in the environment, and short fields that are no zip code."""
    from digits.model.fieldgen import field_set

    runs = field_set(mnist.x_test, mnist.y_test, 40, kind="digits", seed=7)
    short = [f for f in runs if 2 <= len(f.text) <= 4][:3]
    crops = [jobs.Crop(key, blob) for key, (blob, _) in list(zip_fields.items())[:20]]
    crops += [jobs.Crop(f"short-{i}{_suffix(f.data)}", f.data) for i, f in enumerate(short)]
    env = {**celery_worker.env, "DIGITS_REVIEW_THRESHOLD": "0.97"}
    for crop in crops:
        (tmp_path / crop.key).write_bytes(crop.data)
    summary = json.loads(
        _cli(env, "enqueue", "--field", "zip", str(tmp_path), "--wait", "--json").stdout
    )
    job_id = summary["job_id"]
    items = assert_nothing_lost(celery_worker.database_url, job_id, [c.key for c in crops])
    with db.session_scope(celery_worker.database_url) as session:
        assert session.get(db.Job, job_id).review_threshold == 0.97
    flagged = {k: i.text for k, i in items.items() if i.status == "needs_review"}
    assert flagged and len(flagged) < len(items)
    disagree = {k for k, i in items.items() if "readers_disagree" in i.details["reasons"]}
    unsure = {k for k, i in items.items() if i.confidence < 0.97 or not check(i.text, "zip")}
    assert unsure | disagree == set(flagged)
    assert any("not_zip" in items[k].details["reasons"] for k in flagged if k.startswith("short"))
    output = _cli(env, "review", job_id).stdout
    reader = csv.DictReader(io.StringIO(output))
    assert tuple(reader.fieldnames) == REVIEW_FIELDS
    rows = list(reader)
    assert {row["key"]: row["text"] for row in rows} == flagged
    for row in rows:
        assert row["digit"] == "" and row["reasons"] == " ".join(
            items[row["key"]].details["reasons"]
        )


# --- no worker: the submitter's choices, and a chunk message that does not name its kind --------


def test_a_field_job_takes_the_field_threshold_unless_one_is_chosen():
    crops = [jobs.Crop("a", b"x")]
    assert jobs.plan_job(crops, Settings()).review_threshold == REVIEW_THRESHOLD
    assert (
        jobs.plan_job(crops, Settings(), kind="zip").review_threshold
        == FIELD_REVIEW_THRESHOLDS["zip"]
    )
    strict = Settings(review_threshold=0.93)  # no kind's default: the setting rules
    assert jobs.plan_job(crops, strict, kind="amount").review_threshold == 0.93
    chosen = jobs.plan_job(crops, Settings(), kind="zip", review_threshold=REVIEW_THRESHOLD)
    assert chosen.review_threshold == REVIEW_THRESHOLD
    with pytest.raises(jobs.JobError, match="item kind"):
        jobs.plan_job(crops, Settings(), kind="cheque")


def test_the_kinds_agree_with_the_field_reader():
    """The schema and the command line take their kinds from model.kinds."""
    from digits.cli.job_commands import enqueue
    from digits.model.kinds import NAMES as KINDS

    assert db.FIELD_KINDS == KINDS
    choice = next(p for p in enqueue.params if p.name == "field_kind")
    assert tuple(choice.type.choices) == KINDS


def test_only_field_chunks_name_their_kind():
    """A digit job's message is what workers from before fields expect."""
    crops = [jobs.Crop("a", b"x")]
    digit = jobs.plan_job(crops, Settings())
    assert "kind" not in digit.message(digit.chunks[0])
    field = jobs.plan_job(crops, Settings(), kind="zip")
    assert field.message(field.chunks[0])["kind"] == "zip"


def test_a_chunk_without_its_kind_is_read_by_the_jobs_kind(
    sqlite_url, model_path, zip_fields, monkeypatch
):
    """A message that does not name its kind (a digit job's never does), for a field job: the job
    row's kind decides how it is read, as it decides its threshold (the 0.5 here is ignored)."""
    monkeypatch.setenv("DIGITS_DATABASE_URL", sqlite_url)
    from digits.worker.queue.tasks import classify_chunk

    crops = [jobs.Crop(key, blob) for key, (blob, _) in list(zip_fields.items())[:3]]
    plan = jobs.plan_job(crops, Settings(database_url=sqlite_url), kind="zip")
    with db.session_scope(sqlite_url) as session:
        jobs.create_job(session, plan)
    chunk = plan.chunks[0]
    message = messages.ChunkMessage.of(plan.job_id, chunk.index, chunk.crops, 0.5, kind=DIGIT)
    assert "kind" not in message.kwargs()
    result = classify_chunk.apply(kwargs=message.kwargs())
    assert result.successful(), result.traceback
    items = job_items(sqlite_url, plan.job_id)
    assert [item.text for item in items] == [zip_fields[c.key][1] for c in crops]
    assert all(item.details["digits"] and item.digit is None for item in items)
