"""Whole fields read as strings: zip codes and amounts in, text, confidence and review flags out."""

from __future__ import annotations

import io
import json
import math

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from digits.cli.manage import cli
from digits.model import fieldgen, lattice, segment
from digits.model.card import SHIPPED_FIELD_DIGITS
from digits.model.fields import (
    CROWDED,
    FIELD_LIMITS,
    SEGMENTER_THRESHOLD,
    FieldDigits,
    _reading,
    read_decoded,
    read_fields,
)
from digits.model.kinds import check
from digits.model.lattice import (
    KEEP,
    MARK,
    MAX_PIECES,
    SKIP_MARK,
    Edge,
    Guide,
    Plan,
    stray,
)
from digits.model.normalize import decode
from digits.model.segment import Blob, Layout, components
from tests.bad_files import speckled


@pytest.fixture(scope="module")
def networks():
    """The networks the product's segmenter reads fields with: the field digit network, and the
    single-digit cnn beside it for the digits written apart."""
    if not SHIPPED_FIELD_DIGITS.is_file():
        pytest.fail(f"{SHIPPED_FIELD_DIGITS} is missing: the repository ships a trained model")
    return FieldDigits.load(threads=1)


@pytest.fixture(scope="module")
def zips(mnist, networks):
    """40 zip codes with separated digits, 20 with a touching pair, 10 ZIP+4, 10 with rules."""
    x, y = mnist.x_test, mnist.y_test
    composed = (
        fieldgen.field_set(x, y, 40, "zip", seed=11)
        + fieldgen.field_set(x, y, 20, "zip", touching=1.0, seed=12)
        + fieldgen.field_set(x, y, 10, "zip", plus4=1.0, seed=13)
        + fieldgen.field_set(x, y, 10, "zip", lines=1.0, seed=14)
    )
    readings = read_fields(networks, [f.data for f in composed], "zip")
    return composed, readings


def exact(pairs) -> float:
    return float(np.mean([r.text == f.text for f, r in pairs]))


def test_zip_codes_with_separated_digits_read_exactly(zips):
    composed, readings = zips
    assert exact(zip(composed[:40], readings[:40], strict=True)) >= 0.9
    # Digits apart are each read from their own blob, as they lay (the pair weighs them more).
    assert sum(all(d.whole for d in r.digits) for r in readings[:40]) >= 32


def test_a_touching_pair_is_cut_apart(zips):
    composed, readings = zips
    pairs = list(zip(composed[40:60], readings[40:60], strict=True))
    assert all(f.touching for f, _ in pairs)
    assert exact(pairs) >= 0.6
    assert sum(len(r.digits) == 5 for _, r in pairs) >= 18  # the format asks for 5 (or 9)
    assert all(r.needs_review for _, r in pairs if len(r.digits) not in (5, 9))


def test_zip_plus_4_keeps_its_hyphen(zips):
    composed, readings = zips
    pairs = list(zip(composed[60:70], readings[60:70], strict=True))
    assert exact(pairs) >= 0.7
    assert sum(r.text[5:6] == "-" for _, r in pairs) >= 9


def test_an_underline_or_box_is_not_read_as_ink(zips):
    composed, readings = zips
    assert exact(zip(composed[70:], readings[70:], strict=True)) >= 0.8


def test_what_is_not_flagged_is_right_and_the_confidence_says_so(zips):
    composed, readings = zips
    kept = [(f, r) for f, r in zip(composed, readings, strict=True) if not r.needs_review]
    assert len(kept) >= 0.5 * len(readings)
    assert exact(kept) >= 0.97
    for r in readings:
        assert r.status == "ok" and r.valid == check(r.text, "zip")
        assert 0 <= r.confidence <= np.prod([d.confidence for d in r.digits]) + 1e-6
        assert r.needs_review == (r.confidence < SEGMENTER_THRESHOLD or not r.valid)


def test_each_digit_has_its_guesses_and_a_box_in_the_scan(zips):
    composed, readings = zips
    f, r = composed[0], readings[0]
    with Image.open(io.BytesIO(f.data)) as image:
        width, height = image.size
    boxes = [d.box for d in r.digits]
    assert [b[0] for b in boxes] == sorted(b[0] for b in boxes)  # left to right
    for d in r.digits:
        assert d.top3[0] == (d.digit, d.confidence) and len(d.top3) == 3
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    json.dumps(r.as_dict())  # the worker stores it as it is


def test_amounts_keep_their_decimal_point_and_thousands_commas(mnist, networks):
    composed = fieldgen.field_set(mnist.x_test, mnist.y_test, 15, "amount", seed=21)
    readings = read_fields(networks, [f.data for f in composed], "amount")
    assert exact(zip(composed, readings, strict=True)) >= 0.7
    with_marks = [(f, r) for f, r in zip(composed, readings, strict=True) if "." in f.text]
    assert sum(r.text is not None and "." in r.text for _, r in with_marks) >= 0.8 * len(with_marks)


def test_a_zip_code_one_digit_short_is_sent_to_review(networks, mnist):
    rng = np.random.default_rng(0)
    pools = [np.flatnonzero(mnist.y_test == d) for d in range(10)]
    ink = fieldgen.compose("2468", lambda d: mnist.x_test[pools[d][0]], rng)
    [reading] = read_fields(networks, [fieldgen.scan(ink, rng)], "zip")
    assert reading.needs_review


def test_bad_input_becomes_an_error_item_and_the_batch_goes_on(networks, mnist):
    good = fieldgen.field_set(mnist.x_test, mnist.y_test, 1, "zip", seed=3)[0]
    paper = io.BytesIO()
    Image.new("L", (300, 60), 235).save(paper, "PNG")
    sliver = io.BytesIO()
    Image.new("L", (2000, 20), 235).save(sliver, "PNG")
    readings = read_fields(
        networks,
        [
            b"",
            b"%PDF-1.4",
            good.data[: len(good.data) // 3],
            paper.getvalue(),
            sliver.getvalue(),
            good.data,
        ],
        "zip",
    )
    assert [r.status for r in readings] == ["error", "error", "error", "blank", "error", "ok"]
    assert all(r.error for r in readings[:3]) and "aspect" in readings[4].error
    assert readings[3].text is None and not readings[3].needs_review
    assert readings[5].text == good.text
    assert read_fields(networks, [], "zip") == []


def test_a_speckled_scan_is_read_from_some_of_its_marks_and_sent_to_a_person(networks, mnist):
    """Hundreds of specks made the lattice's search take minutes a field; now only MAX_PIECES
    of its marks are read (the largest: the next test), and the field goes to review saying
    why. A fifth of the pixels black leaves little of the digits: a person's to read."""
    good = fieldgen.field_set(mnist.x_test, mnist.y_test, 1, "zip", seed=3)[0]
    noisy = speckled(good.data)
    crowded = lattice.plan(decode(noisy, FIELD_LIMITS))
    assert len(crowded.pieces) == MAX_PIECES and crowded.ignored > 100
    assert crowded.pieces == sorted(crowded.pieces, key=lambda b: b.cx)  # still in reading order
    clean, specks = read_fields(networks, [good.data, noisy], "zip")
    assert clean.ignored == 0 and CROWDED not in clean.reasons
    assert specks.status == "ok" and specks.needs_review and CROWDED in specks.reasons
    assert specks.ignored == crowded.ignored


def test_a_field_over_the_cap_keeps_its_largest_pieces_in_reading_order(mnist, monkeypatch):
    good = fieldgen.field_set(mnist.x_test, mnist.y_test, 1, "zip", seed=3)[0]
    whole = lattice.plan(decode(good.data, FIELD_LIMITS))
    assert len(whole.pieces) == 5 and whole.ignored == 0
    monkeypatch.setattr(lattice, "MAX_PIECES", 3)
    capped = lattice.plan(decode(good.data, FIELD_LIMITS))
    largest = sorted(whole.pieces, key=lambda b: -b.area)[:3]
    assert capped.pieces == sorted(largest, key=lambda b: b.cx) and capped.ignored == 2
    assert len(capped.edges) == 3  # the lattice is built over the pieces kept


def test_a_dot_under_a_digits_span_is_part_of_it_and_one_beside_it_a_separator():
    lay = Layout(20.0, 2.0, 0.0, 0.0, 20.0)  # digits 20 px high, a 2 px pen, a level baseline
    one = Blob(1, 0, 0, 10, 20, 120)
    under, beside = Blob(2, 3, 17, 6, 20, 9), Blob(3, 12, 17, 15, 20, 9)
    digits = segment.tall_spans([one, under, beside], lay)
    assert digits.tolist() == [[0, 10]]  # only the digit is tall enough to claim a mark
    assert segment.mark(under, lay, digits) == []
    assert segment.mark(beside, lay, digits) == [(".", 1.0)]
    assert segment.mark(beside, lay, segment.tall_spans([], lay)) == [(".", 1.0)]


def test_the_lattice_keeps_the_best_paths_of_every_digit_count():
    """paths() against every path through a small random lattice: the KEEP best of each count."""
    rng = np.random.default_rng(0)
    n, crops = 7, 20
    edges = []
    for i in range(n):
        out = [Edge(i + 1, (int(rng.integers(crops)),), float(rng.normal()))]
        out += [Edge(i + 1, (), float(rng.normal()), ".")]  # a mark: no digit
        if i + 2 <= n:
            out.append(Edge(i + 2, tuple(rng.integers(crops, size=2).tolist()), rng.normal()))
        edges.append(out)
    grid = Plan(1.0, [None] * n, edges)  # type: ignore[list-item]  # only their number counts
    logp = np.log(rng.uniform(0.05, 1.0, crops)).astype(np.float32)

    def every(i: int) -> list[tuple[float, list[Edge]]]:
        if i == n:
            return [(0.0, [])]
        return [
            (e.prior + float(sum(logp[c] for c in e.crops)) + score, [e, *rest])
            for e in edges[i]
            for score, rest in every(e.end)
        ]

    by_count: dict[int, list[float]] = {}
    for score, path in every(0):
        by_count.setdefault(sum(len(e.crops) for e in path), []).append(score)
    found: dict[int, list[tuple[float, list[Edge]]]] = {}
    for score, path in lattice.paths(grid, logp):
        found.setdefault(sum(len(e.crops) for e in path), []).append((score, path))
    assert sorted(found) == sorted(by_count)
    for count, scores in by_count.items():
        best = sorted(scores, reverse=True)[:KEEP]
        assert [s for s, _ in found[count]] == pytest.approx(best)
        for score, path in found[count]:  # each path is whole, in order, and scores as said
            assert [e.end for e in path] == sorted(e.end for e in path) and path[-1].end == n
            assert score == pytest.approx(
                sum(e.prior + float(sum(logp[c] for c in e.crops)) for e in path)
            )


def test_unknown_kind_is_refused(networks):
    with pytest.raises(ValueError, match="unknown field kind"):
        read_fields(networks, [], "iban")


@pytest.mark.parametrize(
    ("text", "kind", "ok"),
    [
        ("12345", "zip", True),
        ("12345-6789", "zip", True),
        ("1234", "zip", False),
        ("123456", "zip", False),
        ("12345-678", "zip", False),
        ("1,234.56", "amount", True),
        ("12.50", "amount", True),
        ("1234", "amount", True),
        ("1.234,56", "amount", True),
        ("1,23.45", "amount", False),
        ("12.5", "amount", False),
        ("1.2.3", "amount", False),
        ("0042", "digits", True),
        ("4-2", "digits", True),
    ],
)
def test_field_checks(text, kind, ok):
    assert check(text, kind) is ok


def test_components_are_8_connected():
    mask = np.zeros((6, 8), bool)
    mask[1, 1] = mask[2, 2] = True  # diagonal neighbours: one blob
    mask[1:5, 5] = True  # a bar of its own
    labels, blobs = components(mask)
    assert sorted((b.x0, b.y0, b.w, b.h, b.area) for b in blobs) == [
        (1, 1, 2, 2, 2),
        (5, 1, 1, 4, 4),
    ]
    assert labels[1, 1] == labels[2, 2] != labels[1, 5]


def test_stray_ink_beside_a_digit_counts_against_it():
    """A faint stroke the threshold lost (a 9's loop beside its stem) is loose ink by that digit;
    the same ink far off, or the digit's own anti-aliased rim, is not."""
    ink = np.zeros((40, 80), np.float32)
    ink[5:35, 20:24] = 1.0  # the stem: 120 px of full ink
    labels, blobs = components(ink > 0.5)
    ink[4:36, 19:25] = np.maximum(ink[4:36, 19:25], 0.3)  # its rim
    lay = Layout(height=30.0, stroke=4.0, slope=0.0, top=5.0, base=35.0)
    loose = np.zeros_like(ink)
    assert stray(ink, labels, loose, blobs, lay) == 0.0
    loose[8:16, 11:18] = 0.3  # a faint loop left of the stem: 56 px at 0.3
    assert stray(ink, labels, loose, blobs, lay) == pytest.approx(56 * 0.3 / 120)
    far = np.zeros_like(ink)
    far[8:16, 60:67] = 0.3  # two digit widths away: another digit's business
    assert stray(ink, labels, far, blobs, lay) == 0.0


def test_a_reading_that_fails_the_check_is_no_rival_to_one_that_passes():
    """A dash-like speck after five sure digits: "12345-" is no zip code, so however the lattice
    weighs the speck, the field reads 12345 with full confidence instead of going to review."""
    plan = Plan(1.0, [Blob(i + 1, 10 * i, 0, 10 * i + 8, 20, 100) for i in range(6)])
    plan.boxes = [(10 * i, 0, 10 * i + 8, 20) for i in range(5)]
    plan.crops = [np.zeros((28, 28), np.float32)] * 5  # every box has its crop
    plan.edges = [[Edge(i + 1, (i,), 0.0)] for i in range(5)]
    plan.edges.append([Edge(6, (), SKIP_MARK), Edge(6, (), MARK, "-")])
    probs = np.full((5, 10), 1e-6, np.float32)
    probs[np.arange(5), [1, 2, 3, 4, 5]] = 1.0
    reading = _reading(plan, probs, "zip", SEGMENTER_THRESHOLD)
    assert reading.text == "12345"
    assert reading.confidence == pytest.approx(1.0, abs=1e-4)
    assert not reading.needs_review


def test_each_digit_says_how_many_loops_its_crop_closes():
    """What the pair checks an agreed 8 by (consensus.OPEN_EIGHT): a zero closes one loop, a one
    none, counted on the very crop the digit network read."""
    zero, one = np.zeros((28, 28), np.uint8), np.zeros((28, 28), np.uint8)
    cv2.ellipse(zero, (14, 14), (6, 9), 0, 0, 360, 255, 2)
    cv2.line(one, (14, 4), (14, 24), 255, 2)
    plan = Plan(1.0, [Blob(1, 0, 0, 8, 20, 100), Blob(2, 10, 0, 18, 20, 100)])
    plan.boxes = [(0, 0, 8, 20), (10, 0, 18, 20)]
    plan.crops = [zero.astype(np.float32) / 255, one.astype(np.float32) / 255]
    plan.edges = [[Edge(1, (0,), 0.0)], [Edge(2, (1,), 0.0)]]
    probs = np.full((2, 10), 1e-6, np.float32)
    probs[[0, 1], [0, 1]] = 1.0
    reading = _reading(plan, probs, "digits", SEGMENTER_THRESHOLD)
    assert reading.text == "01" and [d.loops for d in reading.digits] == [1, 0]


def test_classify_field_from_the_command_line(mnist, tmp_path):
    composed = fieldgen.field_set(mnist.x_test, mnist.y_test, 2, "zip", seed=5)
    paths = []
    for i, f in enumerate(composed):
        paths.append(tmp_path / f"field{i}.img")
        paths[-1].write_bytes(f.data)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    paths.append(tmp_path / "junk.png")
    result = CliRunner().invoke(cli, ["classify", "--field", "zip", "--json", *map(str, paths)])
    assert result.exit_code == 1  # one file failed
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [row["file"] for row in rows] == [str(p) for p in paths]
    assert [row["status"] for row in rows] == ["ok", "ok", "error"]
    assert rows[0]["text"] == composed[0].text
    assert rows[2]["text"] is None and rows[2]["error"]
    for row in rows:
        assert {
            "text",
            "value",
            "confidence",
            "needs_review",
            "reasons",
            "readers",
            "digits",
            "status",
            "error",
        } <= row.keys()
    for row in rows[:2]:  # both readers' readings, and the segmenter's boxes
        assert set(row["readers"]) == {"segmenter", "sequence"}
        assert row["digits"] and all(len(d["box"]) == 4 for d in row["digits"])


def test_classify_field_names_a_missing_field_digit_network(mnist, tmp_path):
    scan = tmp_path / "field.png"
    scan.write_bytes(fieldgen.field_set(mnist.x_test, mnist.y_test, 1, "zip", seed=5)[0].data)
    absent = tmp_path / "absent.keras"
    args = ["classify", "--field", "zip", "--field-digits", str(absent), str(scan)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and f"{absent}: no model file" in result.output


def test_classify_field_names_a_missing_cnn_for_the_digits_written_apart(mnist, tmp_path):
    """--model is the single-digit network, which also reads a field's digits written apart
    (fields.FieldDigits): a field is not read without it."""
    scan = tmp_path / "field.png"
    scan.write_bytes(fieldgen.field_set(mnist.x_test, mnist.y_test, 1, "zip", seed=5)[0].data)
    absent = tmp_path / "absent.keras"
    args = ["classify", "--field", "zip", "--model", str(absent), str(scan)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and f"{absent}: no model file" in result.output


def test_evaluate_fields_from_the_command_line(mnist_dir, tmp_path):
    """Held-out synthetic amounts and composed zips, every reader scored the way a bank reads."""
    args = [
        "evaluate",
        "--fields",
        "--data",
        str(mnist_dir),
        "--count",
        "12",
        "--kind",
        "amount",
        "--touching",
        "0.5",
        "--glyphs",
        "plain",
        "--glyphs",
        "filled",
        "--out",
        str(tmp_path),
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["set"] == "fields"
    # The segmenter read with the field digit network, not the single-digit cnn.
    assert report["model"].startswith("field-digits-")
    titles = [r["title"] for r in report["reports"]]
    assert titles == ["amount heldout", "composed zip", "composed zip filled"]
    # Each composed set says how its digits were captured.
    assert "glyphs=plain" in report["reports"][1]["families"]
    assert "glyphs=filled" in report["reports"][2]["families"]
    for part in report["reports"]:
        assert set(part["readers"]) == {"segmenter", "guided", "sequence", "pair"}
        for row in part["readers"].values():
            assert row["n"] == 12 and 0 <= row["accepted"] <= 1 and 0 <= row["exact"] <= 1
            assert row["read_rate_01pct"] <= row["read_rate_1pct"] <= 1
        assert (tmp_path / part["curve"].split("/")[-1]).is_file()
    families = report["reports"][1]["families"]
    assert (
        families["touching=separated"]["pair"]["n"] + families["touching=touching"]["pair"]["n"]
        == 12
    )


def test_evaluate_a_labelled_folder_of_scans(mnist, mnist_dir, tmp_path):
    from digits.model import docgen
    from tests.labelled import write_labelled

    docs = docgen.documents(mnist.x_test, mnist.y_test, 6, seed=2, kind="amount")
    write_labelled(tmp_path, ((d.encoded(), d.label) for d in docs))
    args = [
        "evaluate",
        "--fields",
        "--labelled",
        str(tmp_path),
        "--kind",
        "amount",
        "--data",
        str(mnist_dir),
        "--out",
        str(tmp_path / "out"),
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    (part,) = json.loads(result.output)["reports"]
    assert part["readers"]["pair"]["n"] == 6 and part["kind"] == "amount"


def tied_zeros_plan() -> tuple[Plan, np.ndarray]:
    """ "3" and a blob of two tied zeros that reads as one sure "0" whole and as "0" "0" cut."""
    plan = Plan(1.0, [Blob(1, 0, 0, 10, 20, 100), Blob(2, 12, 0, 40, 20, 200)])
    plan.boxes = [(0, 0, 10, 20), (12, 0, 40, 20), (12, 0, 25, 20), (26, 0, 40, 20)]
    plan.crops = [np.zeros((28, 28), np.float32)] * 4
    plan.edges = [[Edge(1, (0,), 0.0)], [Edge(2, (1,), 0.0), Edge(2, (2, 3), -1.0)]]
    probs = np.full((4, 10), 1e-4, np.float32)
    probs[np.arange(4), [3, 0, 0, 0]] = [0.99, 0.99, 0.9, 0.9]
    return plan, probs


def test_told_how_many_digits_the_segmenter_reads_that_many_where_it_can():
    """Tied zeros: alone the segmenter prefers the whole blob ("30"); told the field has three
    digits (the sequence reader's count) it reads the cut ("300"), sure as far as the other
    three-digit readings allow, and each digit is still the network's own reading."""
    plan, probs = tied_zeros_plan()
    assert _reading(plan, probs, "amount", SEGMENTER_THRESHOLD).text == "30"
    told = _reading(plan, probs, "amount", SEGMENTER_THRESHOLD, expected=3)
    assert told.text == "300"
    assert told.confidence == pytest.approx(0.99 * 0.9 * 0.9, abs=1e-4)  # the only 3-digit path
    assert [d.digit for d in told.digits] == [3, 0, 0]
    # A count the lattice cannot spell leaves the reading free (the readers then disagree).
    assert _reading(plan, probs, "amount", SEGMENTER_THRESHOLD, expected=5).text == "30"


def test_one_guide_per_field(networks):
    with pytest.raises(ValueError, match="2 guides for 1 fields"):
        read_decoded(networks, [np.zeros((30, 60), np.uint8)], "amount", guides=[None, None])


def test_the_other_readers_boundaries_cut_a_chain_of_zeros(networks):
    """ "3000" with its zeros drawn as one chain: alone the segmenter misses a zero, and told only
    the count it still cuts the chain wrong; told where the sequence reader put the boundaries
    between digits, it cuts there and reads every zero."""
    img = np.full((60, 170), 235, np.uint8)
    cv2.putText(img, "3", (8, 48), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 20, 3, cv2.LINE_AA)
    for cx in (72, 104, 136):
        cv2.ellipse(img, (cx, 32), (17, 16), 0, 0, 360, 20, 3, cv2.LINE_AA)
    gray = decode(cv2.imencode(".png", img)[1].tobytes())
    centres = (22 / 170, 72 / 170, 104 / 170, 136 / 170)
    alone, counted, guided = read_decoded(
        networks, [gray] * 3, "amount", guides=[None, Guide(4), Guide(4, centres)]
    )
    assert alone.text != "3000" and counted.text != "3000"
    assert guided.text == "3000"
    assert [d.digit for d in guided.digits] == [3, 0, 0, 0]
    # The 3 stands apart and is read as it lay; the zeros were cut out of their chain.
    assert [d.whole for d in guided.digits] == [True, False, False, False]


def test_a_blob_where_the_other_reader_saw_no_digit_may_be_dropped(networks):
    """ "$35": alone the segmenter reads the dollar sign as a 5; told that the sequence reader saw
    two digits, at the 3 and the 5, it drops the sign, which no digit of the guide is in."""
    img = np.full((60, 150), 235, np.uint8)
    cv2.putText(img, "$35", (8, 48), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 20, 3, cv2.LINE_AA)
    gray = decode(cv2.imencode(".png", img)[1].tobytes())
    alone, counted, guided = read_decoded(
        networks, [gray] * 3, "amount", guides=[None, Guide(2), Guide(2, (49 / 150, 77 / 150))]
    )
    assert alone.text == counted.text == "535"  # without places, no blob may be dropped
    assert guided.text == "35" and guided.confidence > 0.99


def test_a_blob_the_guide_cuts_keeps_only_its_cheapest_free_splits(networks):
    """Where the sequence reader put boundaries inside a blob, the splits through them carry the
    cut; of the blob's own candidate splits only the FREE_SPLITS_GUIDED cheapest are read beside
    them (six, CUTS, for a blob no boundary falls in): a field is then a fifth cheaper to read."""
    from digits.model import cuts, fields
    from digits.model.lattice import add_cuts, plan

    img = np.full((60, 170), 235, np.uint8)
    cv2.putText(img, "3", (8, 48), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 20, 3, cv2.LINE_AA)
    for cx in (72, 104, 136):
        cv2.ellipse(img, (cx, 32), (17, 16), 0, 0, 360, 20, 3, cv2.LINE_AA)
    gray = decode(cv2.imencode(".png", img)[1].tobytes())

    def two_way_splits(guide: Guide | None) -> int:
        planned = plan(gray)
        first = fields.probabilities(networks.cuts, np.stack(planned.crops))
        add_cuts(planned, first, "amount", guide)
        return sum(len(e.crops) == 2 for edges in planned.edges for e in edges)

    free = two_way_splits(Guide(4))  # a count and no places: the chain is cut freely
    guided = two_way_splits(Guide(4, (22 / 170, 72 / 170, 104 / 170, 136 / 170)))
    assert free > cuts.FREE_SPLITS_GUIDED and 0 < guided <= cuts.FREE_SPLITS_GUIDED


def test_a_digit_written_apart_is_read_by_both_networks_a_cut_by_the_field_network(networks, mnist):
    """A piece of ink read alone is a digit as the cnn learned them: there the two networks
    agree by their geometric mean (a class must suit both); a cut, which the cnn never
    learned, stays the field digit network's alone."""
    from digits.model import fields

    pixels = mnist.x_test[:8].astype(np.float32) / 255.0
    alone = np.array([True, False] * 4)
    read = networks.read(pixels, alone)
    cuts = fields.probabilities(networks.cuts, pixels)
    both = np.sqrt(cuts * fields.probabilities(networks.apart, pixels))
    both /= both.sum(1, keepdims=True)
    np.testing.assert_allclose(read[~alone], cuts[~alone], rtol=1e-6)
    np.testing.assert_allclose(read[alone], both[alone], rtol=1e-4, atol=1e-6)
    assert (read.argmax(1) == mnist.y_test[:8]).all()


def test_the_crops_both_networks_read_are_the_pieces_read_alone(networks, monkeypatch):
    """ "37", the seven's bar written apart from its stem, read in one batch with "3000", its
    zeros one chain: each piece read alone goes to both networks; the bar and stem read together
    as one digit, and every cut of the chain, to the field digit network only."""
    from digits.model.lattice import plan

    seven = np.full((60, 150), 235, np.uint8)
    cv2.putText(seven, "3", (20, 48), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 20, 3, cv2.LINE_AA)
    cv2.line(seven, (62, 14), (86, 14), 20, 3, cv2.LINE_AA)
    cv2.line(seven, (84, 20), (70, 48), 20, 3, cv2.LINE_AA)
    chain = np.full((60, 170), 235, np.uint8)
    cv2.putText(chain, "3", (8, 48), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 20, 3, cv2.LINE_AA)
    for cx in (72, 104, 136):
        cv2.ellipse(chain, (cx, 32), (17, 16), 0, 0, 360, 20, 3, cv2.LINE_AA)
    grays = [decode(cv2.imencode(".png", img)[1].tobytes()) for img in (seven, chain)]
    masks: list[list[bool]] = []
    read = FieldDigits.read
    monkeypatch.setattr(
        FieldDigits,
        "read",
        lambda self, x, alone: (masks.append(alone.tolist()), read(self, x, alone))[1],
    )
    readings = read_decoded(networks, grays, "amount")
    planned = [plan(gray) for gray in grays]
    alone = [[c in p.whole.values() for c in range(len(p.crops))] for p in planned]
    assert masks[0] == alone[0] + alone[1]  # the first look: both fields' crops, in order
    assert alone[0].count(True) == 3 and alone[0].count(False) == 1  # bar and stem together
    assert len(masks) == 2 and masks[1] and not any(masks[1])  # the chain's cuts
    assert readings[0].text == "37" and [d.whole for d in readings[0].digits] == [True, False]


def test_a_field_whose_blobs_read_whole_spell_the_other_readers_digits_is_not_cut(
    networks, monkeypatch
):
    """ "35" written apart: each blob read whole is a digit of the sequence reader's "35", so no
    cut could find a digit more and none is tried (cuts are most of a field's crops). Told other
    digits, or none, the segmenter cuts as before, and still reads its own digits."""
    from digits.model import fields

    img = np.full((60, 150), 235, np.uint8)
    cv2.putText(img, "35", (30, 48), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 20, 3, cv2.LINE_AA)
    gray = decode(cv2.imencode(".png", img)[1].tobytes())
    cut: list[str] = []
    add_cuts = fields.add_cuts
    monkeypatch.setattr(
        fields,
        "add_cuts",
        lambda p, probs, kind, guide: (cut.append(guide.digits), add_cuts(p, probs, kind, guide)),
    )
    places = (49 / 150, 77 / 150)
    spelled, other, untold = read_decoded(
        networks,
        [gray] * 3,
        "amount",
        guides=[Guide(2, places, "35"), Guide(2, places, "36"), Guide(2, places)],
    )
    assert cut == ["36", ""]  # the field read as "35" whole was not cut
    assert spelled.text == other.text == untold.text == "35"
    assert [d.digit for d in spelled.digits] == [3, 5] and spelled.confidence > 0.9
    assert all(d.whole for d in spelled.digits)  # each read from its own blob


def test_a_blob_read_whole_as_the_digit_the_other_reader_placed_in_it_is_not_cut(networks):
    """ "35": the boundary half-way between the sequence reader's two places falls inside the 5
    (columns 60-84), which is cut there, as a blob with a boundary in it is. Told the digits too,
    the 5 read whole is the one digit placed in it and no cut is tried; told a 6 there, it is cut
    as before."""
    from digits.model import fields
    from digits.model.lattice import add_cuts, plan

    img = np.full((60, 150), 235, np.uint8)
    cv2.putText(img, "35", (30, 48), cv2.FONT_HERSHEY_SIMPLEX, 1.5, 20, 3, cv2.LINE_AA)
    gray = decode(cv2.imencode(".png", img)[1].tobytes())
    places = (49 / 150, 77 / 150)

    def cut_edges(guide: Guide) -> list[int]:
        planned = plan(gray)
        first = fields.probabilities(networks.cuts, np.stack(planned.crops))
        add_cuts(planned, first, "amount", guide)
        return [sum(len(e.crops) > 1 for e in edges) for edges in planned.edges]

    untold = cut_edges(Guide(2, places))
    assert untold[0] == 0 and untold[1] > 0
    assert cut_edges(Guide(2, places, "35")) == [0, 0]
    assert cut_edges(Guide(2, places, "36")) == untold
    # A line fitted to its kind by adding a digit keeps its digits and no places: counted only.
    assert cut_edges(Guide(2, (), "35")) == cut_edges(Guide(2))


def test_a_reading_its_own_priors_rule_out_is_never_chosen():
    """A path through an edge of prior -inf (a double cut at a fallback line has no ink value to
    price it by) is no reading, even when it alone has the count the guide asked for: the
    field is read as if the guide had not said, and its confidence is a number (it was 0/0, and
    a NaN confidence was accepted)."""
    from digits.model.fields import _reading
    from digits.model.lattice import Edge, Plan

    blank = np.zeros((28, 28), np.float32)
    blobs = Plan(
        scale=1.0,
        pieces=[None, None],  # type: ignore[list-item]  # only their number matters here
        edges=[
            [Edge(1, (0,), 0.0), Edge(2, (1, 2, 3), -math.inf)],
            [Edge(2, (1,), 0.0)],
        ],
        crops=[blank] * 4,
        boxes=[(0, 0, 10, 20), (10, 0, 20, 20), (10, 0, 15, 20), (15, 0, 20, 20)],
    )
    probs = np.full((4, 10), 0.01, np.float32)
    probs[[0, 1, 2, 3], [4, 7, 1, 1]] = 0.91
    reading = _reading(blobs, probs, "digits", 0.5, expected=3)
    assert reading.text == "47" and math.isfinite(reading.confidence)
