"""Corrections feed the model: what operators keyed at the station, exported as a labelled set
(``digits export-corrections``), fine-tunes the digit network (``digits train --extra``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from digits.cli.manage import cli
from digits.worker.store import db, operators, reviews
from tests.review_jobs import flagged_job, item_ids

CORRECTIONS = 40


def test_keyed_scans_export_and_fine_tune_the_digit_network(
    sqlite_url, mnist, mnist_dir, model_path, tmp_path
):
    from digits.model.card import read_card
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
    # What people keyed scores any digit network, read as classify reads each crop.
    args = ["evaluate", "--labelled", str(exported / "digit"), "--model", str(model_path)]
    scored = CliRunner().invoke(cli, [*args, "--json", "--out", str(tmp_path / "scored")])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["n"] == CORRECTIONS

    # Its own process, as a user runs it: training sets TensorFlow's process-wide state (op
    # determinism, thread pools) that the tests reading crops in this process must not inherit.
    out = tmp_path / "cnn-corrected.keras"
    args = ["train", "--extra", str(exported), "--epochs", "1", "--limit", "300"]
    args += ["--model", str(model_path), "--out", str(out), "--data", str(mnist_dir)]
    done = subprocess.run(
        [sys.executable, "-m", "digits.cli.manage", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"on {CORRECTIONS} corrections" in done.stdout
    card = json.loads(out.with_suffix(".json").read_text())
    base_card = read_card(model_path)
    assert card["fine_tuned_from"] == f"{base_card['arch']}-{base_card['model_sha256'][:12]}"
    assert card["corrections"]["digits"] == CORRECTIONS and card["replay_digits"] == 300
    assert card["test_accuracy"] > 0.95  # a few steps at a low rate keep what it knew
    assert card["model_sha256"] != base_card["model_sha256"]
    assert card["corrections"]["accuracy_after"] >= 0.9  # read back by the tuned model itself


def test_train_extra_refuses_a_folder_without_corrections(tmp_path, model_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    result = CliRunner().invoke(cli, ["train", "--extra", str(empty), "--model", str(model_path)])
    assert result.exit_code == 1 and "no digit/labels.csv" in result.output
