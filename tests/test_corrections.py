"""Corrections feed the model: what operators keyed at the station, exported as a labelled set
(``digits export-corrections``), fine-tunes the digit network (``digits train --extra``)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from digits.cli.manage import cli
from digits.worker.store import db, operators, reviews
from tests.review_jobs import flagged_job, item_ids

CORRECTIONS = 40


def test_keyed_scans_export_and_fine_tune_the_digit_network(
    sqlite_url, mnist, mnist_dir, model_path, tmp_path
):
    from digits.model.inference import Classifier
    from digits.model.scanlike import scanlike_set

    blobs = scanlike_set(mnist.x_test[:CORRECTIONS], seed=3)
    keys = [f"scan-{i:02d}.png" for i in range(CORRECTIONS)]
    job_id = flagged_job(sqlite_url, keys, data=dict(zip(keys, blobs, strict=True)))
    with db.session_scope(sqlite_url) as session:
        alice = operators.add(session, "alice", "a long password").id
    ids = item_ids(sqlite_url, job_id)
    for key, label in zip(keys, mnist.y_test[:CORRECTIONS], strict=True):
        with db.session_scope(sqlite_url) as session:
            reviews.key(session, alice, ids[key], str(int(label)))
    env = {"DIGITS_DATABASE_URL": sqlite_url}
    exported = tmp_path / "corrections"
    result = CliRunner().invoke(cli, ["export-corrections", str(exported), "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["written"] == {"digit": CORRECTIONS}

    out = tmp_path / "cnn-corrected.keras"
    args = ["train", "--extra", str(exported), "--epochs", "1", "--limit", "300"]
    args += ["--model", str(model_path), "--out", str(out), "--data", str(mnist_dir)]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert f"on {CORRECTIONS} corrections" in result.output
    card = json.loads(out.with_suffix(".json").read_text())
    base = Classifier.load(model_path)
    assert card["fine_tuned_from"] == base.version
    assert card["corrections"]["digits"] == CORRECTIONS and card["replay_digits"] == 300
    assert card["test_accuracy"] > 0.95  # a few steps at a low rate keep what it knew
    tuned = Classifier.load(out)
    assert tuned.version != base.version
    read = [p.digit for p in tuned.classify(blobs)]
    right = sum(d == int(y) for d, y in zip(read, mnist.y_test[:CORRECTIONS], strict=True))
    assert right >= 0.9 * CORRECTIONS


def test_train_extra_refuses_a_folder_without_corrections(tmp_path, model_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["train", "--extra", str(empty), "--model", str(model_path)])
    assert result.exit_code == 1 and "no digit/labels.csv" in result.output
