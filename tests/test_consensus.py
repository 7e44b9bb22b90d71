"""Two readers, one answer: only a reading both readers agree on, in the kind's form and with
enough confidence, is accepted; anything else goes to review with both readings and the reason."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from digits.model.consensus import (
    SEGMENTER_WEIGHT,
    WHATEVER_CONFIDENCE,
    decide,
    joint_text,
    pair_confidence,
)
from digits.model.fields import DigitGuess, FieldReading
from digits.model.lattice import Guide
from digits.model.sequence import LineReading


def segmented(text: str | None, confidence: float = 0.97, status: str = "ok") -> FieldReading:
    return FieldReading(status, "amount", text=text, confidence=confidence if text else None)


def test_agreement_in_the_kinds_form_is_accepted_with_the_lines_separators():
    answer = decide("amount", segmented("1480"), LineReading("1.480-", 0.98), 0.5)
    assert answer.status == "ok" and not answer.needs_review and answer.reasons == []
    assert answer.text == "1.480-" and answer.value == "1480"
    assert answer.readers["segmenter"].text == "1480"
    assert answer.readers["sequence"].text == "1.480-"
    assert answer.confidence >= 0.97


def test_a_dropped_digit_at_a_touching_pair_is_a_disagreement_not_an_accepted_reading():
    answer = decide("amount", segmented("2021", 0.99), LineReading("12027", 0.99), 0.5)
    assert answer.needs_review and "readers_disagree" in answer.reasons
    assert {r.text for r in answer.readers.values()} == {"2021", "12027"}


def test_a_baseline_read_as_a_one_by_one_reader_is_caught_by_the_other():
    answer = decide("amount", segmented("12550", 0.987), LineReading("2550.", 0.96), 0.5)
    assert answer.needs_review and answer.reasons == ["readers_disagree"]


def test_agreed_digits_that_fail_the_kinds_format_go_to_review():
    answer = decide("zip", segmented("1234"), LineReading("1234", 0.99), 0.5)
    assert answer.needs_review and answer.reasons == ["not_zip"] and answer.value is None


def test_agreement_under_the_threshold_goes_to_review():
    answer = decide("digits", segmented("77", 0.3), LineReading("77", 0.2), 0.5)
    assert answer.needs_review and answer.reasons == ["low_confidence"]


def test_errors_and_blanks_pass_through():
    bad = FieldReading("error", "zip", error="not an image")
    assert decide("zip", bad, None, 0.5).status == "error"
    blank = FieldReading("blank", "zip")
    assert decide("zip", blank, LineReading("", 0.99), 0.5).status == "blank"
    # A line the segmenter thought blank is still worth a person's look.
    answer = decide("zip", blank, LineReading("12345", 0.99), 0.5)
    assert answer.status == "ok" and answer.needs_review


def test_a_field_read_from_only_its_largest_marks_goes_to_a_person_however_sure():
    """A speckled scan (lattice.MAX_PIECES): whatever both readers agree on, a person looks."""
    crowded = dataclasses.replace(segmented("1480", 0.999), ignored=250)
    answer = decide("amount", crowded, LineReading("1480", 0.999), 0.5)
    assert answer.needs_review and answer.reasons == ["too_many_marks"]
    assert answer.text == "1480"  # still read: the reviewer starts from it
    assert "too_many_marks" in WHATEVER_CONFIDENCE  # no threshold overrides it (field_eval)
    # Nothing read of it is not a blank field to pass over: a person still looks.
    nothing = FieldReading("blank", "amount", ignored=250)
    answer = decide("amount", nothing, LineReading("", 0.99), 0.5)
    assert answer.status == "blank" and answer.needs_review and answer.reasons == ["too_many_marks"]
    assert not decide("amount", FieldReading("blank", "amount"), None, 0.5).needs_review


def test_neither_readers_doubt_is_outvoted_by_the_others_certainty():
    assert pair_confidence(0.01, 1.0) < 0.2
    assert pair_confidence(0.6, 0.9) >= 0.6 and pair_confidence(0.99, 0.99) == pytest.approx(0.99)
    sure = decide("zip", segmented("14805", 1.0), LineReading("14805", 0.02), 0.5)
    assert sure.needs_review and sure.reasons == ["low_confidence"]
    doubtful = decide("zip", segmented("14805", 0.01), LineReading("14805", 1.0), 0.5)
    assert doubtful.needs_review and doubtful.confidence == pytest.approx(0.1)


def test_an_agreed_amount_is_as_sure_as_the_sequence_reader_is_of_its_digits():
    """The readers agreed on the digits; whether the line holds a dot ("3.296" or "3296") says
    nothing of them, so an amount is as sure as the line's digits, whatever marks stand between.
    A zip stays as sure as the pair's geometric mean of the whole strings."""
    unsure_of_the_dot = LineReading("3.296", 0.64, digits_confidence=0.999)
    amount = decide("amount", segmented("3296", 0.5), unsure_of_the_dot, 0.98)
    assert amount.confidence == pytest.approx(0.999) and not amount.needs_review
    zip_code = decide(
        "zip", segmented("32961", 1.0), LineReading("32961", 0.64, (), None, 0.999), 0.9
    )
    assert zip_code.confidence == pytest.approx(0.8) and zip_code.needs_review


def test_an_agreed_amount_is_as_sure_as_the_sequence_readers_string_probability():
    """The segmenter has its say on an amount by spelling the same digits (and closing its
    eights); how sure the pair is, is the line's probability (here a reading made by hand, whose
    digits are as sure as its string)."""
    doubtful_cuts = decide("amount", segmented("1480", 0.2), LineReading("1.480-", 0.99), 0.98)
    assert doubtful_cuts.confidence == pytest.approx(0.99) and not doubtful_cuts.needs_review
    doubtful_line = decide("amount", segmented("1480", 1.0), LineReading("1480", 0.5), 0.98)
    assert doubtful_line.confidence == pytest.approx(0.5) and doubtful_line.needs_review
    # Readers that disagree are as sure as the less sure of them, whatever the kind.
    apart = decide("amount", segmented("1481", 0.99), LineReading("1480", 0.97), 0.5)
    assert apart.confidence == pytest.approx(0.97) and apart.needs_review


def test_same_digits_but_a_different_amount_is_not_accepted():
    answer = decide("amount", segmented("1.480"), LineReading("14.80", 0.99), 0.5)
    assert answer.needs_review and answer.reasons == ["readers_disagree_value"]
    # A closing mark or a missing thousands dot is no difference in value.
    assert not decide("amount", segmented("1480"), LineReading("1.480-", 0.99), 0.5).needs_review


def test_a_scan_the_sequence_reader_could_not_read_says_so():
    answer = decide("zip", segmented("12345"), None, 0.5)
    assert answer.needs_review and answer.reasons == ["sequence_unread", "low_confidence"]
    assert answer.text == "12345" and answer.readers["sequence"].text is None


def test_on_disagreement_the_text_is_the_sequence_readers_unless_the_segmenter_is_much_surer():
    line = LineReading("12346", 0.6)
    assert decide("zip", segmented("12345", 0.7), line, 0.5).text == "12346"
    assert decide("zip", segmented("12345", 0.95), line, 0.5).text == "12345"
    # A reading without the kind's form never wins over one with it.
    assert decide("zip", segmented("1234", 0.99), line, 0.5).text == "12346"


def test_every_kind_has_a_threshold_and_a_threshold_of_one_sends_every_field_to_a_person():
    from digits.model import kinds, review

    assert set(review.FIELD_REVIEW_THRESHOLDS) == set(kinds.NAMES)
    assert all(0.5 <= t <= 1.0 for t in review.FIELD_REVIEW_THRESHOLDS.values())
    sure = decide("digits", segmented("4417", 1.0), LineReading("4417", 1.0), 1.0)
    assert (sure.confidence, sure.needs_review) == (1.0, True)  # 1.0 accepts nothing
    assert review.LOW_CONFIDENCE in sure.reasons
    amount = decide("amount", segmented("4417", 1.0), LineReading("4417", 1.0), 0.98)
    assert not amount.needs_review


def test_the_sequence_reader_guides_the_segmenter_only_with_a_count_its_kind_can_have():
    from digits.model.consensus import _guide

    places = (0.1, 0.3, 0.5, 0.7, 0.9)
    assert _guide(LineReading("12345", 0.9, places), "zip") == Guide(5, places, "12345")
    assert _guide(LineReading("1234", 0.9, places[:4]), "zip") is None  # no zip has four
    assert _guide(LineReading("1.234", 0.9, places), "amount") == Guide(
        4, (0.1, 0.5, 0.7, 0.9), "1234"
    )
    assert _guide(LineReading("", 0.9), "amount") is None
    assert _guide(None, "amount") is None


def line_with_logits(text: str, doubts: dict[int, tuple[str, float]] | None = None) -> LineReading:
    """A line that reads ``text`` one character a step, blanks between; ``doubts`` maps a position
    to a rival character and the share of the step's probability the rival takes."""
    from digits.model.sequence import ALPHABET

    doubts = doubts or {}
    steps = []
    for i, char in enumerate(text):
        step = np.full(len(ALPHABET) + 1, -20.0)
        step[ALPHABET.index(char) + 1] = 0.0
        if i in doubts:
            rival, share = doubts[i]
            step[ALPHABET.index(char) + 1] = np.log(1 - share)
            step[ALPHABET.index(rival) + 1] = np.log(share)
        blank = np.full(len(ALPHABET) + 1, -20.0)
        blank[0] = 0.0
        steps += [step, blank]
    logits = np.array(steps)[None]  # one view
    reading = LineReading(text, 1.0, logits=logits)
    return dataclasses.replace(reading, confidence=float(reading.probability([text])[0]))


def segmented_with_digits(
    text: str,
    top3s: list[list[tuple[int, float]]],
    whole: bool | list[bool] = False,
    kind: str = "zip",
) -> FieldReading:
    wholes = whole if isinstance(whole, list) else [whole] * len(top3s)
    guesses = [
        DigitGuess(t[0][0], t[0][1], t, (0, 0, 1, 1), whole=w)
        for t, w in zip(top3s, wholes, strict=True)
    ]
    confidence = float(np.prod([t[0][1] for t in top3s]))
    return FieldReading("ok", kind, text=text, confidence=confidence, digits=guesses)


def test_a_line_weighs_any_text_as_it_weighed_its_own():
    line = line_with_logits("12346", {4: ("5", 0.4)})
    sure, rival, other = line.probability(["12346", "12345", "12347"])
    assert sure == pytest.approx(0.6, abs=1e-3) and rival == pytest.approx(0.4, abs=1e-3)
    assert other < 1e-6
    with pytest.raises(ValueError, match="no logits"):
        LineReading("12346", 0.6).probability(["12346"])


def test_readers_that_differ_in_a_digit_settle_it_by_their_joint_probability():
    sure = [(1, 0.99), (7, 0.005), (4, 0.003)]
    # The line doubts its last digit (6, or 5 at 0.4); the segmenter is sure of a 5.
    line = line_with_logits("12346", {4: ("5", 0.4)})
    seg = segmented_with_digits("12345", [sure] * 4 + [[(5, 0.97), (6, 0.02), (3, 0.01)]])
    assert joint_text(seg, line) == "12345"
    answer = decide("zip", seg, line, 0.5)
    assert answer.text == "12345" and "readers_disagree" in answer.reasons  # still a person's
    # The segmenter doubts its 5 as much: the line's surer 6 stands.
    unsure = segmented_with_digits("12345", [sure] * 4 + [[(5, 0.5), (6, 0.45), (3, 0.05)]])
    assert joint_text(unsure, line) == "12346"
    # A digit neither reader doubts keeps the line's: the mix is digit by digit, separators kept.
    amount = line_with_logits("3.14", {0: ("8", 0.3)})
    seg = segmented_with_digits("814", [[(8, 0.9), (3, 0.05), (0, 0.05)], sure, sure])
    assert joint_text(seg, amount) == "8.14"


def test_a_digit_read_from_a_blob_alone_weighs_more_than_a_cut():
    """Where digits stand apart (an envelope), the segmenter reads each as a single digit, and
    its word on a digit the line doubts counts for more than on a digit it had to cut out."""
    sure = [(1, 0.99), (7, 0.005), (4, 0.003)]
    line = line_with_logits("12346", {4: ("5", 0.2)})  # a 6, or a 5 at 0.2
    five = [(5, 0.9), (6, 0.05), (3, 0.05)]
    cut = segmented_with_digits("12345", [sure] * 4 + [five])
    apart = segmented_with_digits("12345", [sure] * 4 + [five], whole=True)
    assert joint_text(cut, line) == "12346"
    assert joint_text(apart, line) == "12345"
    assert joint_text(apart, line, whole_weight=SEGMENTER_WEIGHT) == "12346"
    # Digit by digit: only the doubted digit's own kind of reading counts.
    last_cut = segmented_with_digits("12345", [sure] * 4 + [five], whole=[True] * 4 + [False])
    assert joint_text(last_cut, line) == "12346"
    # A digit run is written as handwriting is: there a blob alone weighs as a cut does.
    run = segmented_with_digits("12345", [sure] * 4 + [five], whole=True, kind="digits")
    assert joint_text(run, line) == "12346"


def test_readers_of_different_counts_are_not_mixed():
    line = line_with_logits("12346")
    sure = [(1, 0.99), (7, 0.005), (4, 0.003)]
    assert joint_text(segmented_with_digits("1234", [sure] * 4), line) is None
    assert joint_text(segmented_with_digits("12345", [sure] * 5), LineReading("12346", 0.9)) is None


def segmented_eight(text: str, loops: int, kind: str = "amount") -> FieldReading:
    """A segmenter's reading whose every 8 closes ``loops`` loops (the other digits their own)."""
    guesses = [
        DigitGuess(int(d), 0.99, [(int(d), 0.99)], (0, 0, 1, 1), loops if d == "8" else 1)
        for d in text
    ]
    return FieldReading("ok", kind, text=text, confidence=0.99, digits=guesses)


def test_an_agreed_eight_with_one_loop_goes_to_a_person_however_sure_the_pair_is():
    """A Chilean nine (a loop crossed over a stem) is an 8 to both readers: the one wrong reading
    agreement cannot catch, so an amount whose agreed 8 does not close two loops is reviewed."""
    nine = decide("amount", segmented_eight("9557", 1), LineReading("9557", 0.999), 0.5)
    assert not nine.needs_review  # no 8 agreed on: nothing to doubt
    open_eight = decide("amount", segmented_eight("8557", 1), LineReading("8557", 0.999), 0.5)
    assert open_eight.needs_review and open_eight.reasons == ["open_eight"]
    closed = decide("amount", segmented_eight("8557", 2), LineReading("8557", 0.999), 0.5)
    assert not closed.needs_review and closed.reasons == []


def test_an_open_eight_is_only_doubted_where_writers_cross_their_nines():
    """Zip codes are written with plain nines; a quickly written 8 there is just an 8."""
    answer = decide("zip", segmented_eight("12845", 1, "zip"), LineReading("12845", 0.999), 0.5)
    assert not answer.needs_review


def test_readers_that_disagree_are_not_also_blamed_for_an_open_eight():
    answer = decide("amount", segmented_eight("8557", 1), LineReading("9557", 0.999), 0.5)
    assert answer.reasons == ["readers_disagree"]


def test_an_open_eight_is_no_evidence_where_nines_are_crossed():
    """Readers that differ at one digit, the segmenter's cut an 8 and the line's a 9: a closed 8
    weighs for the 8, an open one (a crossed nine to every reader here) for nothing."""
    line = line_with_logits("9557", {0: ("8", 0.3)})

    def segmenter(loops: int) -> FieldReading:
        eight = DigitGuess(8, 0.95, [(8, 0.95), (9, 0.04), (3, 0.01)], (0, 0, 1, 1), loops)
        five = [(5, 0.99), (6, 0.005), (3, 0.005)]
        rest = [
            DigitGuess(d, 0.99, five if d == 5 else [(7, 0.99)], (0, 0, 1, 1)) for d in (5, 5, 7)
        ]
        return FieldReading("ok", "amount", text="8557", confidence=0.9, digits=[eight, *rest])

    assert joint_text(segmenter(loops=2), line) == "8557"
    assert joint_text(segmenter(loops=1), line) == "9557"


def test_a_zero_the_segmenter_cut_with_its_neighbours_stroke_is_a_near_agreement():
    """On real cheques the guided segmenter often cuts a zero of "000" with a stroke of the next
    and reads a 6 while still listing 0; a line near certain of "3.200" and that listing agree
    (consensus.near_agreement), and the amount is accepted with the line's text."""
    sure = [(3, 0.99), (8, 0.005), (5, 0.005)]
    zero = [(0, 0.99), (6, 0.005), (8, 0.005)]
    cut_with_a_stroke = [(6, 0.8), (0, 0.17), (5, 0.03)]
    seg = dataclasses.replace(
        segmented_with_digits("3260", [sure, [(2, 0.99)], cut_with_a_stroke, zero]), kind="amount"
    )
    line = LineReading("3.200", 0.9998)
    answer = decide("amount", seg, line, 0.94)
    assert not answer.needs_review and answer.reasons == []
    assert answer.text == "3.200" and answer.value == "3200"
    assert answer.confidence == pytest.approx(0.9998)
    assert answer.readers["segmenter"].text == "3260"  # a reviewer still sees both readings

    def reasons(line: LineReading, *top3s: list[tuple[int, float]], kind: str = "amount"):
        found = segmented_with_digits("3260", [sure, [(2, 0.99)], *top3s, zero])
        return decide(kind, dataclasses.replace(found, kind=kind), line, 0.5).reasons

    # A line less sure than NEAR_SURE, a 0 the segmenter does not list or lists under
    # NEAR_LISTED, two digits apart, or a kind ranked by both readers: a disagreement as before.
    assert reasons(LineReading("3.200", 0.93), cut_with_a_stroke) == ["readers_disagree"]
    assert reasons(line, [(6, 0.8), (5, 0.15), (8, 0.05)]) == ["readers_disagree"]
    assert reasons(line, [(6, 0.96), (0, 0.03), (5, 0.01)]) == ["readers_disagree"]
    assert reasons(LineReading("3.100", 0.9998), cut_with_a_stroke) == ["readers_disagree"]
    zip_line = LineReading("32001", 0.9998)
    zip_seg = segmented_with_digits("32601", [sure, [(2, 0.99)], cut_with_a_stroke, zero, sure])
    assert decide("zip", zip_seg, zip_line, 0.5).reasons == ["readers_disagree"]


def test_a_near_agreement_on_an_open_eight_still_goes_to_a_person():
    """The cut where the readers differ is an 8 closing one loop, the line's 9 listed beside it:
    near agreement makes the pair agree, and an agreed open 8 is a crossed nine's risk."""
    eight = DigitGuess(8, 0.8, [(8, 0.8), (9, 0.15), (3, 0.05)], (0, 0, 1, 1), 1)
    rest = [DigitGuess(d, 0.99, [(d, 0.99)], (0, 0, 1, 1), 1) for d in (5, 5, 7)]
    seg = FieldReading("ok", "amount", text="8557", confidence=0.8, digits=[eight, *rest])
    answer = decide("amount", seg, LineReading("9557", 0.999), 0.5)
    assert answer.needs_review and answer.reasons == ["open_eight"]
    assert answer.text == "9557"


def test_a_near_agreement_never_makes_an_open_cut_an_eight():
    """The line reads 8 where the segmenter reads 9 and lists 8 beside it, at a cut that closes
    one loop: a crossed nine, the digit both readers mistake. Near agreement does not take the
    line's 8 there; the field stays a disagreement, for a person. A cut that closes both loops
    is an 8 the segmenter merely doubted, and is let in."""
    rest = [DigitGuess(d, 0.99, [(d, 0.99)], (0, 0, 1, 1), 1) for d in (5, 5, 7)]

    def reasons(loops: int) -> list[str]:
        nine = DigitGuess(9, 0.8, [(9, 0.8), (8, 0.15), (3, 0.05)], (0, 0, 1, 1), loops)
        seg = FieldReading("ok", "amount", text="9557", confidence=0.8, digits=[nine, *rest])
        return decide("amount", seg, LineReading("8557", 0.999), 0.5).reasons

    assert reasons(loops=1) == ["readers_disagree"]
    assert reasons(loops=2) == []


def line_of_steps(steps: list[dict[str, float]], centres: tuple[float, ...] = ()) -> LineReading:
    """A line from its steps' probabilities ("" is CTC's blank, -20 in the logits elsewhere),
    reading its best path, as the reader would."""
    from digits.model.sequence import ALPHABET, decode_label, greedy

    logits = np.full((len(steps), len(ALPHABET) + 1), -20.0)
    for t, step in enumerate(steps):
        for char, share in step.items():
            logits[t, ALPHABET.index(char) + 1 if char else 0] = np.log(share)
    text = decode_label(greedy(logits[None])[0])
    reading = LineReading(text, 1.0, centres, logits[None])
    return dataclasses.replace(reading, confidence=float(reading.probability([text])[0]))


def spelled(text: str, doubts: dict[int, dict[str, float]] | None = None) -> list[dict[str, float]]:
    """Steps that spell ``text`` a character a step, blanks between; ``doubts`` replaces the
    step of a character (even indices) or of the blank after it (odd ones)."""
    steps = [step for char in text for step in ({char: 1.0}, {"": 1.0})]
    for at, step in (doubts or {}).items():
        steps[at] = step
    return steps


def test_a_zip_read_a_digit_too_long_is_read_as_the_likeliest_nine_digits():
    """A cursive join read as one more digit: ten digits, a count no zip has. The line's
    likeliest nine-digit text replaces it, with its own (lower) probability, and guides the
    segmenter by its nine digits where they sit on the line."""
    from digits.model.consensus import _guide, kind_reading

    # The best path spells "8903681217"; the extra 1 at character 6 is a join, 0.4 blank.
    line = line_of_steps(spelled("8903681217", {12: {"1": 0.6, "": 0.4}}), centres=tuple(range(10)))
    assert line.text == "8903681217" and _guide(line, "zip") is None
    fitted = kind_reading(line, "zip")
    assert fitted.text == "890368217"
    assert fitted.confidence == pytest.approx(0.4, abs=1e-3)
    assert fitted.digits_sure == pytest.approx(0.4, abs=1e-3)
    assert _guide(fitted, "zip") == Guide(9, (0, 1, 2, 3, 4, 5, 7, 8, 9), "890368217")
    assert fitted.fitted_from == "8903681217"
    # Both readers then agree, but on a text the line did not first spell: a person looks, told
    # why, however sure the pair would be.
    seg = segmented_with_digits("890368217", [[(int(d), 0.99)] for d in "890368217"])
    answer = decide("zip", seg, fitted, 0.5)
    assert answer.text == "890368217" and answer.reasons == ["sequence_count_fitted"]
    assert decide("zip", seg, dataclasses.replace(fitted, fitted_from=""), 0.5).reasons == []


def test_a_zip_read_a_digit_short_is_read_with_the_likeliest_digit_added():
    # A 6 the line saw faintly in the blank after the 4: "1234" with 0.3 of a "12346".
    line = line_of_steps(spelled("1234", {7: {"": 0.7, "6": 0.3}}))
    assert line.text == "1234"
    from digits.model.consensus import kind_reading

    fitted = kind_reading(line, "zip")
    assert fitted.text == "12346" and fitted.confidence == pytest.approx(0.3, abs=1e-3)
    assert fitted.centres == ()  # an added digit has no place on the line: it guides by count
    # A ZIP+4 whose first group lost its last digit: the digit goes in before the dash.
    plus4 = line_of_steps(spelled("1234-5678", {7: {"": 0.7, "9": 0.3}}))
    assert kind_reading(plus4, "zip").text == "12349-5678"


def test_a_line_that_gives_no_text_of_the_kinds_count_a_chance_is_left_as_read():
    """Under FIT_FLOOR every text of a count the kind has would be a digit made up from
    nothing: the line stays as it spelled itself, and reaches a person as before."""
    from digits.model.consensus import FIT_FLOOR, kind_reading

    line = line_of_steps(spelled("1234"))  # not a trace of a fifth digit anywhere
    assert kind_reading(line, "zip") is line
    faint = line_of_steps(spelled("1234", {7: {"": 1 - FIT_FLOOR / 2, "6": FIT_FLOOR / 2}}))
    assert kind_reading(faint, "zip") is faint


def test_only_a_count_its_kind_never_has_is_read_again():
    from digits.model.consensus import kind_reading

    for text, kind in (("12345", "zip"), ("123456789", "zip"), ("1234567", "zip")):
        line = line_of_steps(spelled(text))
        assert kind_reading(line, kind) is line  # five, nine, or two from both: left as read
    amount = line_of_steps(spelled("1.4800"))
    assert kind_reading(amount, "amount") is amount  # an amount has any count
    assert kind_reading(LineReading("1234", 0.9), "zip").text == "1234"  # no logits to weigh


def test_the_pairs_path_reads_a_zip_line_of_a_wrong_count_again(mnist):
    """Through ``read_pairs``, the one path of the worker and ``classify``: where the shipped
    sequence reader spells a zip document with a count no zip has (document 12 of these: the
    ZIP+4 006789201 read "00678-920"), the answer carries the refitted text as the sequence
    reader's, and the field goes to a person with the reason."""
    from digits.model import docgen
    from digits.model.card import SHIPPED_FIELD_MODEL
    from digits.model.consensus import kind_reading, read_pairs
    from digits.model.fields import FieldDigits, decode_all
    from digits.model.kinds import digits_of
    from digits.model.sequence import SequenceReader

    networks = FieldDigits.load(threads=1)
    reader = SequenceReader.load(SHIPPED_FIELD_MODEL)
    docs = [docgen.generate(mnist.x_test, mnist.y_test, i, 0, "zip", "train") for i in range(16)]
    scans = [doc.encoded(".png") for doc in docs]
    lines = reader.read(decode_all(scans))
    odd = [i for i, line in enumerate(lines) if len(line.digits) not in (5, 9)]
    fitted = {i: kind_reading(lines[i], "zip") for i in odd}
    assert any(fitted[i] is not lines[i] for i in odd)  # at least one line is read again
    answers = read_pairs(networks, reader, scans, "zip")
    for i in odd:
        assert answers[i].readers["sequence"].text == fitted[i].text
        if fitted[i] is not lines[i]:
            assert answers[i].needs_review and "sequence_count_fitted" in answers[i].reasons
    assert any(digits_of(answers[i].text) == docs[i].label for i in odd)
