"""The management command's model side, run as a user runs it: evaluate, sample and classify."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from digits.cli.manage import cli
from digits.model.card import SHIPPED_MODEL


@pytest.fixture(scope="module")
def runner():
    if not SHIPPED_MODEL.is_file():
        pytest.fail(f"{SHIPPED_MODEL} is missing: the repository ships a trained model")
    return CliRunner()


def test_help_lists_every_subcommand(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("train", "evaluate", "sample", "classify"):
        assert name in result.output


def test_evaluate_json_scores_the_shipped_cnn_on_all_10000_test_digits(runner, mnist_dir, tmp_path):
    result = runner.invoke(
        cli, ["evaluate", "--data", str(mnist_dir), "--json", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["n"] == 10_000
    assert report["accuracy"] >= 0.994
    assert np.array(report["confusion"]).sum() == 10_000
    assert [row["digit"] for row in report["per_class"]] == list(range(10))
    for name in ("confusion.png", "mistakes.png", "review_curve.png"):
        with Image.open(tmp_path / name) as picture:
            assert picture.width > 300


def test_evaluate_a_labelled_folder_of_single_digits_as_classify_reads_them(
    runner, mnist, tmp_path
):
    """Real digits come as a folder with labels.csv (export-corrections' digit/, or
    devtools.cut_digits' cuts of real fields): scored as `digits classify` reads each file, and
    with no MNIST anywhere."""
    from digits.model.scanlike import scanlike_set
    from tests.labelled import write_labelled

    folder = tmp_path / "digits"
    crops = zip(scanlike_set(mnist.x_test[:40], seed=3), mnist.y_test[:40], strict=True)
    lines = ["file,label", *write_labelled(folder, crops, stem="d", suffix=".png")]
    (folder / "labels.csv").write_text("\n".join([*lines, "d0.png,12"]) + "\n")
    env = {"DIGITS_MNIST_DIR": str(tmp_path / "no-mnist-here")}
    args = ["evaluate", "--labelled", str(folder), "--json", "--out", str(tmp_path / "out")]
    refused = runner.invoke(cli, args, env=env)
    assert refused.exit_code == 1 and "d0.png: label '12' is not one digit" in refused.output
    (folder / "labels.csv").write_text("file,label\n")
    refused = runner.invoke(cli, args, env=env)
    assert refused.exit_code == 1 and "labels.csv lists no scans" in refused.output
    (folder / "labels.csv").write_text("name,digit\nd0.png,7\n")
    refused = runner.invoke(cli, args, env=env)
    assert refused.exit_code == 1 and "must name the columns file,label" in refused.output
    refused = runner.invoke(cli, [*args, "--scanned"], env=env)
    assert refused.exit_code == 2 and "not with --scanned" in refused.output

    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    result = runner.invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["set"] == "labelled digits" and report["n"] == 40
    read = runner.invoke(
        cli, ["classify", "--json", *(str(folder / f"d{i}.png") for i in range(40))]
    )
    guesses = [json.loads(line)["digit"] for line in read.output.splitlines()]
    right = np.mean(np.array(guesses) == mnist.y_test[:40])
    assert report["accuracy"] == pytest.approx(right) and right >= 0.9
    assert np.array(report["confusion"]).sum() == 40 - report["no_guess"]
    for name in ("confusion.png", "mistakes.png", "review_curve.png"):
        assert (tmp_path / "out" / name).is_file()


def test_sample_prints_guess_and_truth_and_draws_the_digit(runner, mnist_dir, mnist, tmp_path):
    out = tmp_path / "sample.png"
    result = runner.invoke(
        cli, ["sample", "--data", str(mnist_dir), "--seed", "5", "--count", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("test #")]
    assert len(lines) == 3
    for line in lines:
        index = int(line.split("#")[1].split(":")[0])
        assert f"truth {mnist.y_test[index]}," in line
        assert line.endswith(("CORRECT", "WRONG"))
    with Image.open(out) as picture:
        grey = np.asarray(picture.convert("L"), dtype=float)
    assert (
        grey.std() > 20
    )  # a drawn picture: black digit panels on a white page, not a blank canvas


def test_classify_json_reads_files_and_names_the_broken_one(runner, mnist, tmp_path):
    digit = tmp_path / "seven.png"
    Image.fromarray(255 - mnist.x_test[0]).resize((60, 60)).save(digit)  # dark ink on white paper
    blank = tmp_path / "blank.png"
    Image.new("L", (40, 40), 235).save(blank)
    broken = tmp_path / "broken.png"
    buffer = io.BytesIO()
    Image.fromarray(mnist.x_test[1]).save(buffer, "PNG")
    broken.write_bytes(buffer.getvalue()[:50])
    result = runner.invoke(cli, ["classify", "--json", str(digit), str(blank), str(broken)])
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert result.exit_code == 1  # some file failed
    assert [r["file"] for r in rows] == [str(digit), str(blank), str(broken)]
    assert rows[0]["status"] == "ok" and rows[0]["digit"] == mnist.y_test[0]
    assert 0 < rows[0]["confidence"] <= 1
    assert rows[1] == {**rows[1], "status": "blank", "digit": None, "confidence": None}
    assert rows[2]["status"] == "error" and rows[2]["digit"] is None
    assert "truncated" in rows[2]["error"]


def test_classify_text_output_has_a_line_per_file_even_for_broken_ones(runner, mnist, tmp_path):
    digit = tmp_path / "digit.png"
    Image.fromarray(255 - mnist.x_test[3]).resize((56, 56)).save(digit)
    broken = tmp_path / "notes.txt"
    broken.write_text("not a scan")
    result = runner.invoke(cli, ["classify", str(digit), str(broken)])
    assert result.exit_code == 1
    first, second = result.output.splitlines()
    assert first.startswith(f"{digit}: {mnist.y_test[3]}  ")
    assert second.startswith(f"{broken}: error: ") and "not an image" in second.lower()


def test_train_help_states_the_default_epochs_the_trainers_use(runner):
    from digits.model import finetune, pieces, train, train_sequence

    out = runner.invoke(cli, ["train", "--help"]).output
    said = " ".join(out.split())  # click wraps the help text
    assert f"{train.DEFAULT_EPOCHS['cnn']} for cnn" in said
    assert f"{train.DEFAULT_EPOCHS['mlp']} for mlp" in said
    assert f"{train_sequence.DEFAULT_EPOCHS} for field;" in said
    assert f"{pieces.EPOCHS} for field-digits and {finetune.DEFAULT_EPOCHS} with --extra" in said


def test_field_digits_never_overwrite_the_model_they_start_from(runner, tmp_path):
    """Fine-tuning into the base model's own file would lose it half-way: refused before any
    work starts."""
    from digits.model.card import SHIPPED_MODEL

    base = tmp_path / "cnn.keras"
    base.write_bytes(SHIPPED_MODEL.read_bytes())
    args = ["train", "--arch", "field-digits", "--model", str(base), "--out", str(base)]
    result = runner.invoke(cli, args)
    assert result.exit_code != 0 and "is the model being fine-tuned" in result.output
