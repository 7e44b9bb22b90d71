"""Two readers, one answer: a field is accepted only when both readers spell the same digits.

The segmenter (``fields.read_fields``) cuts the field into digits and reads each with the digit
network; the sequence reader (``sequence.SequenceReader``) reads the whole line with CTC and never
cuts. They fail differently: the segmenter at touching pairs and at baselines merged into strokes,
the sequence reader at shapes its generator never drew. A wrong reading that both produce is much
rarer than either's alone (not impossible: both learned digit shapes from MNIST and share its
blind spots, docs/fields.md), so agreement is what lets a bank accept a field without a person;
production cheque readers are built the same way. Every field that is not accepted goes to review with both readings and the
reasons, which is what the reviewer needs to key it quickly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import cast

import numpy as np

from digits.model import review
from digits.model.fields import (
    CROWDED,
    FIELD_LIMITS,
    DigitGuess,
    FieldDigits,
    FieldReading,
    decode_all,
    read_decoded,
)
from digits.model.kinds import DIGITS, digits_of
from digits.model.kinds import kind as field_kind
from digits.model.lattice import Guide
from digits.model.normalize import Limits
from digits.model.review import ItemStatus
from digits.model.sequence import LineReading, SequenceReader, digits_probability

# Review reasons of a field, beside review.LOW_CONFIDENCE and "not_<kind>":
DISAGREE = "readers_disagree"  # the two readers spell different digits
DISAGREE_VALUE = "readers_disagree_value"  # same digits, different amounts ("1.480" and "14.80")
UNREAD = "sequence_unread"  # the sequence reader could not read the scan the segmenter read
# The sequence reader's best path spelled a count the kind never has, and its reading is the
# likeliest text of a count it has (kind_reading): whatever the readers then agree on, a person
# looks, with this reason to say why the line's text is not the one it first spelled.
FITTED = "sequence_count_fitted"
# An agreed 8 whose crop closes fewer than two loops, in a kind whose writers cross their nines
# (kinds.FieldKind.open_eights_reviewed): on the real cheques both readers read such nines as
# eights and agree, the one wrong reading agreement cannot catch. Of the real samples' 99 agreed
# amounts of the amount form, 8 have an open 8 and 4 of those are such nines (4 of the 7 wrong
# agreements); on the validation documents (seed 100, 1,000 amounts) 63 of 649 have one and 2 are
# wrong. Alone it left the amount threshold at 0.97; it is what lets an amount be ranked by the
# sequence reader's confidence (agreed_confidence), which put two such nines at 0.977 and 0.979.
OPEN_EIGHT = "open_eight"
# The reasons no threshold overrides: a field with any of them goes to a person however sure.
WHATEVER_CONFIDENCE = frozenset({DISAGREE, DISAGREE_VALUE, UNREAD, OPEN_EIGHT, FITTED, CROWDED})
# How much surer the segmenter must be for its text to stand when the readers disagree. Chosen on
# the validation set (seed 100: training families and composed zips, MNIST test digits, 4,000
# fields) from 0 to 1 by `python -m digits.cli.devtools.field_rules`: 0.3 to 1 read it alike
# (88.7-88.8% right with field-b6f155feef01 and the guided segmenter), 0.2 88.7%, 0 87.6%.
SURER = 0.3
# Where the readers spell as many digits differently (``joint_text``): the segmenter's digit
# log-probabilities count SEGMENTER_WEIGHT of the line's (its test-time variants make it sure of
# its digits far more often than it is right), a digit it did not list among its top three counts
# as UNLISTED, and readers that differ in more digits than MOST_DIFFERENT are too far apart to mix.
# Chosen on the validation set of `field_rules --count 600` (seed 100): chosen text right on its
# 2,400 fields 88.96% by SURER alone, 89.29% with these (1/2: 89.17%, 1/5: 89.29%, 1: 88.71%;
# UNLISTED 0.01: 89.21%, 0.001: 89.08%); composed zips 569 -> 572 of 600, amount documents
# 560 -> 558, zip documents 494 -> 495.
SEGMENTER_WEIGHT = 1 / 3
# In a kind whose digits are often written apart (``FieldKind.digits_apart``: zip codes), a digit
# the segmenter read from a blob alone (``DigitGuess.whole``: a piece of ink read by itself, not a
# cut and not pieces read together) counts WHOLE_WEIGHT instead: there the segmenter reads as its
# network reads single digits. Chosen on validation seeds 100 and 101 (500 each of composed zips
# as drawn, captured small and stretched to fill, and of zip documents): chosen text right on
# 3,609 of the 4,000 at 1/3, 3,619 at 1/2, 3,632 at 2/3, 3,636 at 1 and 3,634 at 1.5. The gain
# is all the composed zips' (the synthetic envelopes and forms): the zip documents alone read 860
# at 1/3 and 855 at 1, and amounts and digit runs read worse at every weight (amounts 926 and 924
# of 1,000 at 1/3 and 2/3), so they keep SEGMENTER_WEIGHT for every digit (docs/fields.md,
# session 21; session 18 measured the same idea on plain composed zips only and left it).
WHOLE_WEIGHT = 1.0
UNLISTED = 0.03
MOST_DIFFERENT = 4
# Near agreement (``near_agreement``): in a kind ranked by the line, readers that spell as many
# digits and differ in one agree when the line is NEAR_SURE of its digits and the segmenter lists
# the line's digit there at NEAR_LISTED or more among its top three. Chosen on the validation
# set of `field_rules --count 1000` (seed 100) and two more seeds of the same training families
# (101, 102, 500 each: 2,000 amounts), with the guided segmenter as it cuts now
# (cuts.FREE_SPLITS_GUIDED), as the rule that adds the most amounts with none of them wrong:
# 102 (5.1% of the amounts), against 112 with 1 wrong at 0.95 and 0.01, and 97 with none at
# 0.97 and 0.05 (docs/fields.md, session 17).
NEAR_SURE = 0.95
NEAR_LISTED = 0.05
# kind_reading keeps a line as it read it unless the line gives the likeliest text of a count its
# kind has at least this probability: below it no text of that count has a real chance, and one
# made up from nothing would guide the segmenter and face a reviewer. On the validation zips
# (seed 100: 1,000 documents, 1,000 composed) 6 lines fitted under 1% and none of those texts
# was right; 32 of the 45 fitted at 1% or more were.
FIT_FLOOR = 0.01


@dataclass(frozen=True)
class Reader:
    """One reader's view of a field, kept beside the answer so that a reviewer sees both."""

    text: str | None
    confidence: float | None


@dataclass(frozen=True)
class FieldAnswer:
    """The field's answer: ``status`` ``ok``, ``blank`` or ``error``; ``value`` is the kind's
    normalized form of ``text`` (an amount "1.480-" is worth "1480")."""

    status: str
    kind: str
    text: str | None = None
    value: str | None = None
    confidence: float | None = None
    needs_review: bool = False
    valid: bool | None = None
    reasons: list[str] = field(default_factory=list)
    readers: dict[str, Reader] = field(default_factory=dict)
    segmented: FieldReading | None = None  # the segmenter's reading: per-digit boxes, top 3
    error: str | None = None

    def as_dict(self) -> dict:
        """JSON-able, with the segmenter's per-digit guesses and boxes as ``digits``."""
        out = asdict(self)
        segmented = out.pop("segmented")
        out["digits"] = segmented["digits"] if segmented else []
        return out


def decide(
    kind: str,
    segmented: FieldReading,
    line: LineReading | None,
    threshold: float,
    near: tuple[float, float] = (NEAR_SURE, NEAR_LISTED),
) -> FieldAnswer:
    """The one rule that accepts a field: both readers agree on the digits (exactly, or nearly:
    ``near_agreement`` with ``near``'s sure and listed; and, where both texts have the kind's
    form, on the value), the chosen text has the kind's form, and the pair's confidence reaches
    ``threshold`` (judged by ``review.decide``). Anything else is reviewed."""
    spec = field_kind(kind)
    readers = {
        "segmenter": Reader(segmented.text, segmented.confidence),
        "sequence": Reader(line.text, line.confidence) if line else Reader(None, None),
    }
    if segmented.status == "error":
        return FieldAnswer("error", kind, readers=readers, error=segmented.error)
    if segmented.status == "blank" and (line is None or not line.digits):
        # Blank, unless it was a crowded scan read only in part: then a person looks (CROWDED).
        crowded = [CROWDED] if segmented.ignored else []
        return FieldAnswer(
            "blank",
            kind,
            needs_review=bool(crowded),
            reasons=crowded,
            readers=readers,
            segmented=segmented,
        )
    problems = []
    seg_text = segmented.text or ""
    line_text = line.text if line else ""
    agree = agreed(seg_text, line_text)
    if not agree and near_agreement(kind, segmented, line, *near):
        # the segmenter's text as it would be spelled with the line's one other digit
        seg_text = _written(seg_text, [int(d) for d in digits_of(line_text)])
        agree = True
    if line is None:
        problems.append(UNREAD)
    elif not agree:
        problems.append(DISAGREE)
    if line is not None and line.fitted_from:
        problems.append(FITTED)
    seg_ok, line_ok = spec.check(seg_text), spec.check(line_text)
    if agree and seg_ok and line_ok and spec.normalize(seg_text) != spec.normalize(line_text):
        problems.append(DISAGREE_VALUE)
    if agree and any(open_eight(kind, d) for d in segmented.digits):
        problems.append(OPEN_EIGHT)
    if segmented.ignored:
        problems.append(CROWDED)
    text = chosen_text(segmented, line, agree, seg_ok, line_ok)
    valid = spec.check(text)
    if not valid:
        problems.append(f"not_{kind}")
    seg_conf = segmented.confidence or 0.0
    if agree and line is not None:
        confidence = round(agreed_confidence(kind, seg_conf, line), 6)
    else:
        confidence = round(min(seg_conf, line.confidence if line else 0.0), 6)
    verdict = review.decide(ItemStatus.OK, confidence, threshold, problems)
    return FieldAnswer(
        "ok",
        kind,
        text=text,
        value=spec.normalize(text) if valid else None,
        confidence=confidence,
        needs_review=verdict.status == ItemStatus.NEEDS_REVIEW,
        valid=valid,
        reasons=verdict.reasons,
        readers=readers,
        segmented=segmented,
    )


def near_agreement(
    kind: str,
    segmented: FieldReading,
    line: LineReading | None,
    sure: float = NEAR_SURE,
    listed: float = NEAR_LISTED,
) -> bool:
    """Do readers that spell one digit differently still agree (``sure``: NEAR_SURE, ``listed``:
    NEAR_LISTED; ``field_rules`` tries others)?

    Only in a kind ranked by the line (``FieldKind.ranked_by_line``: amounts), where how sure
    the pair is does not use the segmenter's confidence in a text it did not choose; only with
    as many digits on both sides and the line's text in the kind's form. On real cheques this is
    the zero of a run of zeros that the guided segmenter cuts with a stroke of its neighbour and
    reads as a 6, 5 or 8 while still listing 0 ("3260" for "3200", the line 0.9998 sure). Of
    the 102 validation amounts it let in none was wrong, nor of the 49 it let in on the
    held-out families (seeds 0 and 5, 500 amounts each). Where nines are crossed, an open eight
    still goes to a person: a cut the segmenter reads as one sends the agreed field there
    (OPEN_EIGHT, in ``decide``), and a line's 8 at a cut that closes fewer than two loops is no
    near agreement.
    """
    spec = field_kind(kind)
    if line is None or not spec.ranked_by_line:
        return False
    digits, guesses = digits_of(line.text), segmented.digits
    if not digits or len(digits) != len(guesses) or len(digits_of(segmented.text)) != len(digits):
        return False
    if line.digits_sure < sure or not spec.check(line.text):
        return False
    differ = [(int(d), g) for d, g in zip(digits, guesses, strict=True) if int(d) != g.digit]
    if len(differ) != 1:
        return False
    digit, guess = differ[0]
    # The line's 8 at a cut that closes fewer than two loops, where nines are crossed: the one
    # digit every reader here mistakes (OPEN_EIGHT), which a near agreement must not make.
    if digit == 8 and open_eight(kind, replace(guess, digit=8)):
        return False
    return dict(guess.top3).get(digit, 0.0) >= listed


def open_eight(kind: str, guess: DigitGuess) -> bool:
    """Is this cut of the segmenter an 8 that closes fewer than two loops, in a kind whose writers
    cross their nines (OPEN_EIGHT): the crossed nine every reader here takes for an 8."""
    return field_kind(kind).open_eights_reviewed and guess.digit == 8 and guess.loops < 2


def agreed(seg_text: str | None, line_text: str | None) -> bool:
    """The readers agree: the segmenter read some digits and the sequence reader the same ones."""
    return bool(digits_of(seg_text)) and digits_of(seg_text) == digits_of(line_text)


def chosen_text(
    segmented: FieldReading,
    line: LineReading | None,
    agree: bool,
    seg_ok: bool,
    line_ok: bool,
    surer: float = SURER,
    weight: float | None = SEGMENTER_WEIGHT,
    unlisted: float = UNLISTED,
    whole_weight: float = WHOLE_WEIGHT,
) -> str:
    """The text a field's answer carries, accepted or not (a reviewer starts from it).

    When the readers agree, the sequence reader's: it sees separators and trailing marks in
    place, where the segmenter guesses them from geometry. When they disagree on some digits of
    the same count, the likeliest mix of the two (``joint_text``). When they found different
    counts, the sequence reader's (it reads 80-92% of the validation documents, the segmenter
    30%), unless only the segmenter's has the kind's form or the segmenter is surer by more than
    SURER (plain paper, where the segmenter reads best: 95.0% of composed zips instead of 92.5%).
    ``weight`` None leaves the mixes out (``field_rules`` measures the rules with and without).
    """
    seg_text = segmented.text or ""
    if line is None:
        return seg_text
    if agree:
        return line.text if line_ok or not seg_ok else seg_text
    joint = None if weight is None else joint_text(segmented, line, weight, unlisted, whole_weight)
    if joint is not None and (line_ok or not seg_ok):
        return joint
    surer_by = (segmented.confidence or 0.0) - line.confidence > surer
    return seg_text if seg_ok and (not line_ok or surer_by) else line.text


def joint_text(
    segmented: FieldReading,
    line: LineReading,
    weight: float = SEGMENTER_WEIGHT,
    unlisted: float = UNLISTED,
    whole_weight: float = WHOLE_WEIGHT,
) -> str | None:
    """Where the readers found as many digits but spell some differently, the text both find
    likeliest together; None when they found different counts (nothing to align digit by digit),
    differ in more than MOST_DIFFERENT digits, or the line kept no logits.

    In a kind whose writers cross their nines (``FieldKind.open_eights_reviewed``), a cut the
    segmenter reads as an 8 that closes fewer than two loops says nothing for or against any
    digit there (the crossed nine, OPEN_EIGHT): the line decides that digit alone.

    Each differing digit is either reader's; every mix is written with the sequence reader's
    separators and scored by the two readers' probabilities: the line's for the whole string
    (``LineReading.probability``) times the segmenter's for each digit of its cuts, the latter
    raised to ``weight`` (a digit outside its top three counts as ``unlisted``), or to
    ``whole_weight`` for a digit read from a blob alone in a kind whose digits are written apart
    (``FieldKind.digits_apart``: there the segmenter reads best). Each reader's
    doubt about one digit is then weighed against the other's, instead of one reader's text
    winning whole: a pair that disagrees still goes to review, but with the text a reviewer most
    likely confirms.
    """
    digits = line.digits
    guesses = segmented.digits
    if line.logits is None or not digits or len(digits) != len(guesses):
        return None
    options = [sorted({int(d), g.digit}) for d, g in zip(digits, guesses, strict=True)]
    if sum(len(o) > 1 for o in options) > MOST_DIFFERENT:
        return None
    mixes = list(itertools.product(*options))
    texts = [_written(line.text, mix) for mix in mixes]
    seen = line.probability(texts)
    # None where the segmenter's cut is no evidence: an open 8 where nines are crossed.
    listed = [None if open_eight(segmented.kind, g) else dict(g.top3) for g in guesses]
    apart = field_kind(segmented.kind).digits_apart
    weights = [whole_weight if g.whole and apart else weight for g in guesses]
    scores = [
        math.log(max(float(p), 1e-300))
        + sum(
            w * math.log(max(top.get(d, 0.0), unlisted))
            for d, top, w in zip(mix, listed, weights, strict=True)
            if top is not None
        )
        for p, mix in zip(seen, mixes, strict=True)
    ]
    return texts[max(range(len(texts)), key=scores.__getitem__)]


def _written(template: str, digits: Sequence[int]) -> str:
    """``template`` with its digits replaced, in order, by ``digits``: its separators kept."""
    it = iter(digits)
    return "".join(str(next(it)) if c.isdigit() else c for c in template)


def kind_reading(line: LineReading, kind: str) -> LineReading:
    """The sequence reader's likeliest reading with a digit count its kind can have, where its
    best path spelled one digit too many or too few (a zip of ten digits or of four).

    CTC's best path reads each step on its own, and a cursive join or a pen lifted mid-stroke
    gives it one digit more ("8903681217" for the ZIP+4 890368217) or one less. Such a reading
    could not guide the segmenter (``_guide``), which then read the field alone, and its own
    five or nine digits stood in the answer however wrong. Every text one digit shorter or
    longer that has the kind's form (a digit added anywhere, beside a dash too) is weighed as
    the line weighs its own (``LineReading.probability``: its string probability over the
    views), and the likeliest is the reading, with that probability as its confidence (at most
    one minus the rejected text's), when it reaches FIT_FLOOR; ``fitted_from`` keeps the text
    the line first spelled, and the field goes to a person whatever the readers then agree on
    (FITTED). A digit dropped keeps every other's place on the line; one added has none, and
    guides by count.
    """
    spec = field_kind(kind)
    counts = spec.digit_counts
    n = len(line.digits)
    if not counts or not n or n in counts or line.logits is None:
        return line
    at = [i for i, c in enumerate(line.text) if c.isdigit()]
    placed = len(line.centres) == len(line.text)
    options: dict[str, tuple[float, ...]] = {}
    if n - 1 in counts:
        for i in at:
            centres = line.centres[:i] + line.centres[i + 1 :] if placed else ()
            options.setdefault(line.text[:i] + line.text[i + 1 :], centres)
    if n + 1 in counts:
        for i in range(len(line.text) + 1):  # before any character, a separator's too, or after
            for digit in DIGITS:
                options.setdefault(line.text[:i] + digit + line.text[i:], ())
    texts = [text for text in options if spec.check(text)]
    if not texts:
        return line
    chances = line.probability(texts)
    best = int(np.argmax(chances))
    if chances[best] < FIT_FLOOR:
        return line
    text = texts[best]
    sure = digits_probability(line.logits, [digits_of(text)] * len(line.logits)).mean()
    chance, sure = min(1.0, float(chances[best])), min(1.0, float(sure))
    return LineReading(text, chance, options[text], line.logits, sure, fitted_from=line.text)


def _guide(line: LineReading | None, kind: str) -> Guide | None:
    """The sequence reader's count, where it saw each digit and which, for the segmenter; none
    when it read no digits or a count its kind never has (a zip of four digits): the segmenter
    then reads alone, and its reading can still stand against the sequence reader's
    (``chosen_text``)."""
    counts = field_kind(kind).digit_counts
    if line is None or not line.digits or (counts and len(line.digits) not in counts):
        return None
    return Guide(len(line.digits), line.digit_centres(), line.digits)


def agreed_confidence(kind: str, segmenter: float, line: LineReading) -> float:
    """How sure the pair is of a field both readers spelled alike, by its kind's rule.

    An amount (``FieldKind.ranked_by_line``) is as sure as the sequence reader is of its digits,
    whatever separators it would write between them (``LineReading.digits_confidence``): the
    readers agreed on the digits, the value is checked apart (DISAGREE_VALUE), and on real
    cheques the reader's doubt is mostly whether a dot is there at all. The segmenter has had
    its say by spelling the same digits and by closing its eights' loops (OPEN_EIGHT). Its own
    confidence, a product over the digits of a long amount under its test-time variants times
    the share of its lattice, is low on most right amounts and sent them to a person. Chosen by
    `field_rules --count 1000` (seed 100): docs/fields.md has the table. Zips and digit runs
    keep the geometric mean (:func:`pair_confidence`), which ranks them best there.
    """
    if field_kind(kind).ranked_by_line:
        return max(line.digits_sure, 0.0)
    return pair_confidence(segmenter, line.confidence)


def pair_confidence(a: float, b: float) -> float:
    """How sure the pair is when both readers spelled the same digits: the geometric mean of
    their confidences, so that neither reader's doubt is outvoted by the other's certainty (a
    reading one reader gives 1% stays far under any threshold however sure the other is).
    """
    return math.sqrt(max(a, 0.0) * max(b, 0.0))


def read_pairs(
    networks: FieldDigits,
    reader: SequenceReader,
    images: Sequence[bytes],
    kind: str = "digits",
    threshold: float | None = None,
    limits: Limits = FIELD_LIMITS,
) -> list[FieldAnswer]:
    """Read a batch of field scans with both readers: the worker's and ``classify``'s one path.

    ``threshold`` defaults to the kind's (``review.threshold_for``). A scan that cannot be decoded
    is an ``error`` answer, never a failed batch.

    The sequence reader reads first, and guides the segmenter (``fields.read_decoded``): the
    segmenter also cuts where the sequence reader placed the boundaries between digits, and reads
    each field as as many digits as the sequence reader found when its lattice has such a
    reading. Cutting tied and touching digits is where the segmenter fails alone; the digits are
    what the pair checks, and each is still the digit network's own reading.
    """
    field_kind(kind)  # an unknown kind fails the call, not each field
    threshold = review.threshold_for(kind, threshold)
    decoded = decode_all(images, limits)  # once, for both readers
    lines = read_lines(reader, decoded, kind)
    guides = [_guide(lines.get(i), kind) for i in range(len(decoded))]
    segmented = read_decoded(networks, decoded, kind, threshold=0.0, guides=guides)
    # A field the segmenter could not read (undecodable, or no plan) is an error answer whatever
    # the sequence reader says.
    return [decide(kind, seg, lines.get(i), threshold) for i, seg in enumerate(segmented)]


def read_lines(
    reader: SequenceReader, decoded: Sequence[np.ndarray | Exception], kind: str
) -> dict[int, LineReading]:
    """The sequence reader's readings of decoded scans by their index (a scan that did not
    decode has none), each of a count its kind can have (``kind_reading``): what ``read_pairs``
    guides the segmenter with and judges the field by."""
    where = [i for i, gray in enumerate(decoded) if not isinstance(gray, Exception)]
    read = reader.read([cast(np.ndarray, decoded[i]) for i in where])
    return {i: kind_reading(line, kind) for i, line in zip(where, read, strict=True)}
