"""The review station's store on SQLite and PostgreSQL: kept crops, the queue and its locks,
single and double keying, the audit trail, the job's status for the business, purge, exports."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from digits.cli.manage import cli
from digits.worker.store import crops, db, operators, reviews
from digits.worker.store.results import job_items, job_status, review_items
from tests.review_jobs import digit_png, flagged_job, item_ids

LOCK_S = 300


def _operators(url: str, *names: str) -> list[int]:
    with db.session_scope(url) as session:
        return [operators.add(session, name, "a long password").id for name in names]


def _claim(url: str, operator: int, now=None, want: int = reviews.HELD) -> list[int]:
    with db.session_scope(url) as session:
        return reviews.claim(session, operator, LOCK_S, want=want, now=now)


def _key(url: str, operator: int, item: int, value: str | None, unreadable: bool = False):
    with db.session_scope(url) as session:
        return reviews.key(session, operator, item, value, unreadable)


def test_the_crops_a_person_needs_are_kept_once_with_their_items(database_url):
    same = digit_png(7)
    keys = ["ok.png", "flag-a.png", "flag-b.png", "broken.png", "blank.png"]
    statuses = {"ok.png": "ok", "broken.png": "error", "blank.png": "blank"}
    data = {"flag-a.png": same, "flag-b.png": same, "broken.png": b"<html>not a png"}
    job_id = flagged_job(database_url, keys, statuses=statuses, data=data)
    with db.session_scope(database_url) as session:
        items = {item.key: item for item in job_items(session, job_id)}
        stored = session.scalars(select(db.Crop)).all()
    kept = {key for key, item in items.items() if item.crop_sha256}
    assert kept == {"flag-a.png", "flag-b.png", "broken.png"}  # needs review and error
    assert items["flag-a.png"].crop_sha256 == items["flag-b.png"].crop_sha256
    assert sorted(bytes(c.data) for c in stored) == sorted([same, b"<html>not a png"])
    # The model's own answers are final at once; a flagged item waits for a person.
    assert (items["ok.png"].final, items["ok.png"].source) == ("3", "model")
    assert (items["blank.png"].final, items["blank.png"].source) == (None, "model")
    assert (items["flag-a.png"].final, items["flag-a.png"].source) == (None, None)


@pytest.mark.parametrize("policy", ["all", "none"])
def test_keep_crops_all_or_none(database_url, policy):
    job_id = flagged_job(database_url, ["a", "b"], statuses={"a": "ok"}, policy=policy)
    with db.session_scope(database_url) as session:
        kept = [item.crop_sha256 is not None for item in job_items(session, job_id)]
    assert kept == ([True, True] if policy == "all" else [False, False])


def test_a_write_that_fails_keeps_no_crop(database_url):
    """Crops go in the items' transaction: a refused write leaves nothing behind."""
    from digits.worker.config import Settings
    from digits.worker.store import writes
    from digits.worker.submission.jobs import Crop, create_job, plan_job

    plan = plan_job([Crop("a", b"\x89PNG")], Settings(database_url=database_url))
    with db.session_scope(database_url) as session:
        create_job(session, plan)
    job_id = plan.job_id
    blob = b"\x89PNG forged"
    forged = writes.ItemResult("not-an-item", "error", crop_sha256="f" * 64)
    with pytest.raises(writes.ForeignKeysError), db.session_scope(database_url) as session:
        writes.write_chunk(session, job_id, [forged], None, {"f" * 64: blob})
    with db.session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(db.Crop)) == 0


def test_a_bad_keep_setting_is_a_configuration_error():
    from digits.worker.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="DIGITS_KEEP_CROPS='some'"):
        Settings.from_env({"DIGITS_KEEP_CROPS": "some"})


def test_an_item_is_held_by_one_operator_until_its_lock_expires(database_url):
    batch = flagged_job(database_url, [f"b{i}" for i in range(6)])
    alice, bob = _operators(database_url, "alice", "bob")
    first = _claim(database_url, alice)
    second = _claim(database_url, bob)
    assert len(first) == len(second) == 2 and not set(first) & set(second)
    assert _claim(database_url, alice) == first  # asking again renews, takes nothing new
    later = db.utcnow() + timedelta(seconds=LOCK_S + 1)  # everybody's locks have lapsed
    assert set(_claim(database_url, bob, now=later, want=4)) == set(first) | set(second)
    with db.session_scope(database_url) as session:
        assert reviews.held(session, alice, later) == []
    ids = item_ids(database_url, batch)
    assert sorted(first) == [ids["b0"], ids["b1"]]  # oldest first


def test_interactive_jobs_come_before_batch_ones(database_url):
    older = flagged_job(database_url, ["old"])
    with db.session_scope(database_url) as session:
        session.get(db.Job, older).queue = "batch"
    urgent = flagged_job(database_url, ["urgent"])
    (alice,) = _operators(database_url, "alice")
    assert _claim(database_url, alice) == [
        item_ids(database_url, urgent)["urgent"],
        item_ids(database_url, older)["old"],
    ]


def test_stations_asking_at_once_never_share_an_item(database_url):
    flagged_job(database_url, [f"k{i}" for i in range(12)])
    people = _operators(database_url, *(f"op{i}" for i in range(4)))
    held: dict[int, list[int]] = {}
    barrier = threading.Barrier(len(people))

    def ask(operator: int) -> None:
        barrier.wait()
        held[operator] = _claim(database_url, operator, want=3)

    threads = [threading.Thread(target=ask, args=(p,)) for p in people]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [item for items in held.values() for item in items]
    assert len(every) == len(set(every)) == 12


def test_single_keying_settles_at_once_and_checks_the_form(database_url):
    job_id = flagged_job(database_url, ["a", "b"])
    zip_job = flagged_job(database_url, ["z"], kind="zip")
    (alice,) = _operators(database_url, "alice")
    ids = {**item_ids(database_url, job_id), **item_ids(database_url, zip_job)}
    for value in ("", "12", "x"):
        with pytest.raises(reviews.KeyingRefused) as refused:
            _key(database_url, alice, ids["a"], value)
        assert refused.value.status == 422
    with pytest.raises(reviews.KeyingRefused, match="not of the form of a zip"):
        _key(database_url, alice, ids["z"], "1234")
    assert _key(database_url, alice, ids["z"], "12345-6789").outcome == reviews.FINAL
    assert _key(database_url, alice, ids["a"], " 8 ") == reviews.Keyed(ids["a"], "final", "8")
    assert _key(database_url, alice, ids["b"], None, unreadable=True).outcome == reviews.FINAL
    with pytest.raises(reviews.KeyingRefused, match="final already"):
        _key(database_url, alice, ids["a"], "9")
    with db.session_scope(database_url) as session:
        items = {i.key: (i.final, i.source) for i in job_items(session, job_id)}
        assert items == {"a": ("8", "operator"), "b": (None, "operator")}
        assert job_status(session, job_id).status == "done"


def test_double_keying_needs_two_operators_who_agree(database_url):
    job_id = flagged_job(database_url, ["same", "differ", "dark"], double_key=True)
    alice, bob, carol = _operators(database_url, "alice", "bob", "carol")
    ids = item_ids(database_url, job_id)
    assert _key(database_url, alice, ids["same"], "4").outcome == reviews.SECOND_KEY
    with pytest.raises(reviews.KeyingRefused, match="keyed item .* already"):
        _key(database_url, alice, ids["same"], "4")
    assert ids["same"] not in _claim(database_url, alice, want=3)  # never shown to her again
    assert _key(database_url, bob, ids["same"], "4") == reviews.Keyed(ids["same"], "final", "4")
    assert _key(database_url, alice, ids["differ"], "1").outcome == reviews.SECOND_KEY
    assert _key(database_url, bob, ids["differ"], "7").outcome == reviews.THIRD_KEY
    assert _claim(database_url, alice) == [ids["dark"]]  # she has held it since she asked
    assert _claim(database_url, bob) == []  # "differ" he keyed, "dark" is alice's
    assert ids["differ"] in _claim(database_url, carol)  # the disagreement goes to a third
    assert _key(database_url, carol, ids["differ"], "7").final == "7"
    _key(database_url, alice, ids["dark"], None, unreadable=True)
    assert _key(database_url, carol, ids["dark"], None, unreadable=True).outcome == "final"
    with db.session_scope(database_url) as session:
        final = {i.key: (i.final, i.source) for i in job_items(session, job_id)}
        trail = session.execute(
            select(db.Operator.name, db.Keying.value)
            .join(db.Operator)
            .where(db.Keying.item_id == ids["differ"])
            .order_by(db.Keying.id)
        ).all()
    assert final == {
        "same": ("4", "operator"),
        "differ": ("7", "operator"),
        "dark": (None, "operator"),
    }
    assert [tuple(row) for row in trail] == [("alice", "1"), ("bob", "7"), ("carol", "7")]


def test_the_audit_trail_cannot_be_edited(database_url):
    job_id = flagged_job(database_url, ["a"])
    (alice,) = _operators(database_url, "alice")
    _key(database_url, alice, item_ids(database_url, job_id)["a"], "5")
    for statement in ("UPDATE keyings SET value = '6'", "DELETE FROM keyings"):
        with pytest.raises(Exception, match="audit trail"), db.session_scope(database_url) as s:
            s.execute(text(statement))
    with db.session_scope(database_url) as session:
        assert session.scalars(select(db.Keying.value)).all() == ["5"]


def test_a_job_is_reviewing_until_no_item_awaits_a_person(database_url):
    job_id = flagged_job(database_url, ["a", "b", "c"], statuses={"c": "ok"})
    (alice,) = _operators(database_url, "alice")
    ids = item_ids(database_url, job_id)
    with db.session_scope(database_url) as session:
        state = job_status(session, job_id)
        assert (state.status, state.awaiting_review, state.needs_review) == ("reviewing", 2, 2)
        assert state.finished_processing
        assert [i.key for i in review_items(session, job_id)] == ["a", "b"]
    _key(database_url, alice, ids["a"], "3")
    with db.session_scope(database_url) as session:
        assert [i.key for i in review_items(session, job_id)] == ["b"]
    _key(database_url, alice, ids["b"], "2")
    with db.session_scope(database_url) as session:
        state = job_status(session, job_id)
    assert (state.status, state.awaiting_review, state.needs_review) == ("done", 0, 2)


def test_purge_lets_go_of_old_settled_crops_and_keeps_what_a_person_needs(database_url):
    job_id = flagged_job(database_url, ["keyed", "waiting"], data={"keyed": b"\x89PNG one"})
    (alice,) = _operators(database_url, "alice")
    _key(database_url, alice, item_ids(database_url, job_id)["keyed"], "1")
    with db.session_scope(database_url) as session:
        crops.store(session, {"0" * 64: b"orphan"})  # a redelivered chunk's, refused
        kept = crops.purge(session, days=30)
    assert (kept.crops_deleted, kept.items_released, kept.awaiting_kept) == (1, 0, 0)
    later = db.utcnow() + timedelta(days=31)
    with db.session_scope(database_url) as session:
        done = crops.purge(session, days=30, now=later)
        left = crops.footprint(session)
        waiting = session.scalars(select(db.Item).where(db.Item.key == "waiting")).one()
    assert (done.crops_deleted, done.items_released, done.awaiting_kept) == (1, 1, 1)
    assert done.bytes_deleted == len(b"\x89PNG one")
    assert left["crops"] == 1 and waiting.crop_sha256 is not None


def test_wrong_passwords_are_limited_per_name_and_address(database_url):
    _operators(database_url, "alice")

    def attempt(password: str, address: str = "10.0.0.1", now=None):
        with db.session_scope(database_url) as session:
            return operators.log_in(session, "alice", password, address, 3, 60, now=now)

    assert attempt("a long password").name == "alice"
    for _ in range(3):
        assert attempt("wrong") is None
    with pytest.raises(operators.TooManyFailures) as limited:
        attempt("a long password", address="10.0.0.2")  # the name is limited from anywhere
    assert 0 < limited.value.retry_s <= 61
    later = db.utcnow() + timedelta(seconds=61)
    assert attempt("a long password", now=later).name == "alice"
    # One address trying many names stops too, at ADDRESS_FACTOR times the limit of one name.
    for n in range(3 * operators.ADDRESS_FACTOR):
        with db.session_scope(database_url) as session:
            operators.log_in(session, f"guess{n}", "x", "10.0.0.9", 3, 60)
    with pytest.raises(operators.TooManyFailures):
        attempt("a long password", address="10.0.0.9")


def test_results_stats_and_export_show_what_people_keyed(database_url, tmp_path):
    job_id = flagged_job(
        database_url, ["same.png", "changed.png", "dark.png", "ok.png"], statuses={"ok.png": "ok"}
    )
    (alice,) = _operators(database_url, "alice")
    ids = item_ids(database_url, job_id)
    _key(database_url, alice, ids["same.png"], "3")  # the model read 3 as well
    _key(database_url, alice, ids["changed.png"], "5")
    _key(database_url, alice, ids["dark.png"], None, unreadable=True)
    env = {"DIGITS_DATABASE_URL": database_url}
    run = CliRunner().invoke
    rows = json.loads(run(cli, ["results", job_id, "--format", "json"], env=env).output)
    assert [(r["key"], r["final"], r["source"]) for r in rows] == [
        ("same.png", "3", "operator"),
        ("changed.png", "5", "operator"),
        ("dark.png", None, "operator"),
        ("ok.png", "3", "model"),
    ]
    status = json.loads(run(cli, ["status", job_id, "--json"], env=env).output)
    assert (status["status"], status["awaiting_review"]) == ("done", 0)
    report = json.loads(run(cli, ["stats", "--json"], env=env).output)
    model = report["models"][0]
    assert (model["keyed"], model["changed"], model["change_rate"]) == (3, 2, round(2 / 3, 4))
    out = tmp_path / "corrections"
    result = run(cli, ["export-corrections", str(out)], env=env)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["written"] == {"digit": 2} and manifest["left_out"] == {"unreadable": 1}
    labels = (out / "digit" / "labels.csv").read_text().splitlines()
    assert labels[0] == "file,label,text,job_id,key,model_reading,model_version"
    assert [line.split(",")[1] for line in labels[1:]] == ["3", "5"]
    assert (out / "digit" / labels[2].split(",")[0]).read_bytes() == digit_png(1)
    again = run(cli, ["export-corrections", str(out)], env=env)
    assert again.exit_code == 1 and "not an empty folder" in again.output


def test_the_station_is_shown_what_a_reviewer_needs(database_url):
    """A digit's alternatives; a field's two readings and each digit's box and guesses."""
    from digits.worker.store import writes

    digit_job = flagged_job(database_url, ["d.png"], source="<b>batch</b>")
    field_job = flagged_job(database_url, ["z.png"], kind="zip")
    details = {
        "reasons": ["readers_disagree"],
        "readers": {"segmenter": ["12345", 0.91], "sequence": {"text": "12346", "confidence": 0.8}},
        "digits": [{"digit": 1, "confidence": 0.99, "top3": [[1, 0.99]], "box": [2, 3, 10, 30]}],
    }
    with db.session_scope(database_url) as session:  # the row as a field chunk writes it
        item = session.scalars(select(db.Item).where(db.Item.job_id == field_job)).one()
        item.details = details
        ids = [item_ids(database_url, digit_job)["d.png"], item.id]
        digit, field = reviews.shown(session, ids)
    assert digit["alternatives"] == [["3", 0.6], ["8", 0.3]] and digit["reading"] == "3"
    assert (digit["job_source"], digit["pattern"], digit["crop"]) == (
        "<b>batch</b>",
        "[0-9]",
        f"/crops/{ids[0]}",
    )
    assert field["readers"] == [
        {"reader": "segmenter", "text": "12345", "confidence": 0.91},
        {"reader": "sequence", "text": "12346", "confidence": 0.8},
    ]
    assert field["digits"][0]["box"] == [2, 3, 10, 30]
    assert field["reasons"] == ["readers_disagree"] and field["kind"] == "zip"
    assert writes.ItemResult("k", "ok", text="12345").final == "12345"  # a field's final: its text


def test_purge_command_reports_what_it_let_go(database_url):
    flagged_job(database_url, ["a"])
    with db.session_scope(database_url) as session:
        crops.store(session, {"1" * 64: b"orphan"})
    env = {"DIGITS_DATABASE_URL": database_url}
    result = CliRunner().invoke(cli, ["purge", "--days", "30", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["crops_deleted"], report["bytes_deleted"], report["left"]["crops"]) == (1, 6, 1)
    text_report = CliRunner().invoke(cli, ["purge"], env=env).output
    assert text_report.startswith("crops older than 90 days: 0 deleted")
