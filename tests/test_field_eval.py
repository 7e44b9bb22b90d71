"""How field readers are scored: what a bank would accept, and how often that would be wrong."""

from __future__ import annotations

import numpy as np
import pytest

from digits.model.consensus import decide
from digits.model.field_eval import Scored, figures, read_rate, score
from digits.model.fields import FieldReading
from digits.model.sequence import LineReading


def test_read_rate_takes_the_most_confident_first_and_stops_where_errors_pass_the_bound():
    right = np.array([True] * 99 + [False] + [True] * 100)
    confidence = np.linspace(1.0, 0.0, 200)  # the one mistake is the 100th most confident
    assert read_rate(right, confidence, 0.01) == 1.0  # 1 wrong in 200 is within 1%
    assert read_rate(right, confidence, 0.001) == 0.495  # stop just before the mistake


def test_fields_of_equal_confidence_go_in_together():
    right = np.array([True, True, False, True])
    confidence = np.array([0.9, 0.8, 0.8, 0.1])
    assert read_rate(right, confidence, 0.0) == 0.25  # 0.8 takes the mistake with it


def test_no_field_accepted_is_no_error_figure_not_a_perfect_one():
    row = figures([Scored(right=True, accepted=False, confidence=0.2)])
    assert row["accepted"] == 0.0 and row["error_accepted"] is None


def field(seg: str, line: str, conf: float = 0.99):
    return decide("amount", FieldReading("ok", "amount", seg, conf), LineReading(line, conf), 0.5)


def test_a_reader_alone_accepts_only_readings_in_the_kinds_form():
    answers = [field("1480", "1480"), field("14,8,0", "1,4,80")]
    scored = score(answers, ["1480", "1480"], "amount", 0.9, 0.9)
    assert [s.accepted for s in scored["segmenter"]] == [True, False]
    assert [s.accepted for s in scored["guided"]] == [True, False]  # no unguided readings given
    assert [s.accepted for s in scored["sequence"]] == [True, False]
    assert [s.accepted for s in scored["pair"]] == [True, False]
    assert scored["pair"][1].confidence == 0.0  # ill-formed: never read at any threshold


def test_the_segmenter_alone_and_guided_are_scored_apart():
    """Alone it dropped a tied zero; guided by the sequence reader's count it read all three."""
    answers = [field("300", "300")]
    alone = [FieldReading("ok", "amount", "30", 0.99)]
    scored = score(answers, ["300"], "amount", 0.9, 0.9, alone)
    assert scored["segmenter"][0].right is False and scored["guided"][0].right is True


def test_the_pair_is_right_only_when_its_text_has_the_true_digits():
    scored = score([field("2021", "12027")], ["12027"], "amount", 0.9, 0.9)
    assert scored["segmenter"][0].right is False and scored["sequence"][0].right is True
    assert scored["pair"][0].accepted is False and scored["pair"][0].confidence == 0.0
    assert figures(scored["pair"])["exact"] == 1.0  # the sequence reader's text is kept


def test_the_pair_rules_are_chosen_on_a_validation_set_of_their_own(mnist_dir):
    """The devtool that chose FIELD_REVIEW_THRESHOLDS, SURER and the mixes' weights runs on both
    shipped readers and prints the whole tables it chose from (run as a developer runs it, in its own process)."""
    import subprocess
    import sys

    from digits.cli.devtools import field_rules

    command = [sys.executable, "-m", "digits.cli.devtools.field_rules", "--count", "3"]
    done = subprocess.run(
        [*command, "--data", str(mnist_dir)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    # three documents of each kind, three composed zips in each glyph style
    assert "18 validation fields" in out
    for threshold in field_rules.THRESHOLDS:
        assert f"\n{threshold:>9}  " in out
    for kind in ("amount", "zip", "digits"):
        assert f"{kind}: lowest threshold with at most 0.5% wrong among accepted:" in out
    lines = out.splitlines()
    table = [line for line in lines if line.endswith("%") and ") " in line]
    assert len(table) == 3 * len(field_rules.THRESHOLDS)  # accepted, wrong (k of n), bound
    rules = [line for line in lines if line.endswith("%") and " of " not in line]
    mixes = len(field_rules.JOINT_WEIGHTS) * len(field_rules.UNLISTEDS)
    wholes = len(field_rules.WHOLE_WEIGHTS)
    assert len(rules) == len(field_rules.SURERS) + mixes + wholes  # chosen text right, per rule
    assert [line.split()[0] for line in rules[: len(field_rules.SURERS)]] == [
        str(surer) for surer in field_rules.SURERS
    ]
    assert [float(line.split()[0]) for line in rules[-wholes:]] == pytest.approx(
        field_rules.WHOLE_WEIGHTS, abs=1e-3
    )


def test_the_error_bound_is_what_so_few_mistakes_can_promise():
    from digits.cli.devtools.field_rules import error_bound

    assert error_bound(0, 300) == pytest.approx(0.00994, abs=1e-4)  # the rule of three: 3 / n
    assert error_bound(1, 357) > 0.01 > 1 / 357  # one wrong in 357 does not show 1% at 95%
    assert error_bound(10, 10_000) < 0.0017
    assert error_bound(0, 0) == 1.0


def test_digits_cut_from_a_labelled_folder_of_fields_score_the_digit_network(mnist, tmp_path):
    """devtools.cut_digits: each field whose segmenter read its label gives its digits, cut at
    the segmenter's boxes, as a labelled folder `digits evaluate --labelled` reads; those read
    as pieces of their own also go to whole/."""
    import csv

    from digits.cli.devtools import cut_digits
    from digits.model import docgen
    from digits.model.evaluate import evaluate_labelled
    from digits.model.inference import Classifier
    from tests.labelled import write_labelled

    fields = tmp_path / "fields"
    docs = docgen.documents(mnist.x_test, mnist.y_test, 12, seed=4, kind="zip")
    write_labelled(fields, ((doc.encoded(), doc.label) for doc in docs), stem="f")

    counts = cut_digits.cut(fields, tmp_path / "cut", "zip")
    assert counts["fields"] == 12 and counts["used"] >= 4
    with (tmp_path / "cut" / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == counts["digits"] >= 5 * counts["used"]
    by_field: dict[str, str] = {}
    for row in rows:  # f3_0.png, f3_1.png...: the field's digits in order, each a file
        assert (tmp_path / "cut" / row["file"]).is_file() and len(row["label"]) == 1
        name, k = row["file"][:-4].rsplit("_", 1)
        by_field[name] = by_field.get(name, "") + row["label"]
        assert int(k) == len(by_field[name]) - 1
    assert all(by_field[f"f{i}"] == docs[i].label for i in range(12) if f"f{i}" in by_field)
    whole = (tmp_path / "cut" / "whole" / "labels.csv").read_text().splitlines()[1:]
    assert len(whole) == counts["whole"] and set(whole) <= {
        f"{r['file']},{r['label']}" for r in rows
    }

    report, seen = evaluate_labelled(Classifier.load(), tmp_path / "cut")
    assert report.n == counts["digits"] and seen.shape == (report.n, 28, 28)
    assert report.accuracy > 0.8  # MNIST test digits, cut where the segmenter read them right
