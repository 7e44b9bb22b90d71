"""A field's lattice: its ink pieces in reading order, the ways to read each run of them (a digit,
two or three touching digits, a separator, nothing), the crops those readings need, and the search
for the best paths through it.

Cutting a field by geometry alone fails exactly where fields are hard (a broken stroke looks like
two digits, two touching digits like one), so every plausible grouping becomes an edge with a log
prior from its shape, and the network's confidence on its crops decides. The field reader
(:mod:`digits.model.fields`) builds plans for a whole batch, classifies their crops together, and
scores the paths against the field's format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeAlias

import cv2
import numpy as np

from digits.model import cuts, kinds
from digits.model.normalize import normalize_ink
from digits.model.segment import (
    Blob,
    Layout,
    components,
    dilate,
    ink_map,
    ink_threshold,
    is_speck,
    layout,
    mark,
    remove_rules,
    tall_spans,
    with_labels,
)

# Larger scans are shrunk first: digits stay well above 28 px and the time per field stays flat.
MAX_PIXELS = 400_000
FAINT = 0.5  # loose ink counts down to this share of the ink threshold
STRAY_REACH = 0.3  # and this far round a digit's box, in digit heights
SKIP = math.log(0.5)  # dropping a small blob that no digit claims
SKIP_MARK = math.log(0.05)  # dropping one shaped and placed like a separator
# Dropping a full-height blob where the guide (the sequence reader) saw no digit: a "$", a box
# edge, a flourish. Only with a guide that placed its digits, and within this reach (in digit
# heights) of a digit's centre a blob is that digit's.
SKIP_UNCLAIMED = math.log(0.2)
UNCLAIMED_REACH = 0.1
MARK = math.log(0.9)  # a blob shaped and placed like a separator usually is one
SIDE_BY_SIDE = math.log(0.2)  # two full-height blobs read as one digit
AS_DIGIT = math.log(0.1)  # ...so it is seldom a digit or a piece of the digit beside it
INVALID = math.log(0.02)  # a reading that fails its field's check (a zip of 6 digits)
KEEP = 8  # readings kept per lattice node and digit count
# A field has a few dozen pieces of ink at most: 12 on the real cheques, up to 25 on the
# generator's training families and 65 on its held-out ones (300 fields of each kind; busy
# security paper). A speckled fax or a photograph sent as a field has hundreds or thousands, and
# the search through the lattice grows with the pieces times the digit counts they allow: a
# 400x60 scan of 8% specks took 120 s, a 200x50 photograph 23 s (`python -m
# digits.cli.devtools.hostile_fields`), enough to run a worker's chunk past its time limit.
# Only the MAX_PIECES largest pieces (by their area of ink) are read (``Plan.ignored`` counts
# the others, whose ink is then loose ink by the digits), and such a field always goes to a
# person (fields.CROWDED). At this cap the worst scan tried (noise on 390,000 pixels; a field
# is read at 400,000 at most) takes about 2 s.
MAX_PIECES = 96
WIDE, NARROW = 1.0, 0.5  # blob widths, in digit heights, always and never tried as two digits
SURE = 0.99  # a blob read alone with less confidence than this is also tried as two digits
# Lattice scores are sharpened by this before they are weighed against each other (see
# fields._reading). Chosen on composed zips (separated seeds 0-4, touching 0-2), checked on
# separated seeds 5-14: 1.8 points fewer fields flagged, the same share right among the rest.
SHARE_TEMPERATURE = 0.5


@dataclass(frozen=True)
class Guide:
    """What the other reader of a field says (``consensus.read_pairs``): how many digits it holds
    and where it saw each, as shares of the scan's width (the sequence reader's, from where its
    best path placed each digit; empty when it placed none), and which digits it read, in order
    (empty when it does not say; a place for each when there are places). Where its digits match
    what the blobs read whole, the segmenter does not cut: a whole field
    (``fields._spelled_whole``) or a blob (:func:`add_cuts`)."""

    count: int
    centres: tuple[float, ...] = ()
    digits: str = ""

    @property
    def bounds(self) -> tuple[float, ...]:
        """Half-way between neighbouring digits: where one ends and the next begins."""
        xs = self.centres
        return tuple((a + b) / 2 for a, b in zip(xs, xs[1:], strict=False))


@dataclass(frozen=True)
class Edge:
    """A lattice step: pieces ``start..end-1`` read as ``crops`` (one digit each) or as a mark."""

    end: int
    crops: tuple[int, ...]
    prior: float
    mark: str = ""
    stray: float = 0.0  # loose ink near it over its own (see stray)


# A path as :func:`paths` builds it: its last edge and the path before it (None: no edge yet).
Chain: TypeAlias = "tuple[Edge, Chain] | None"


@dataclass(eq=False)
class Plan:
    """One field's lattice: its pieces, the edges out of each, and the crops the edges read."""

    scale: float  # scan pixels per working pixel
    pieces: list[Blob] = field(default_factory=list)
    edges: list[list[Edge]] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    whole: dict[int, int] = field(default_factory=dict)  # piece -> crop of it read alone
    ignored: int = 0  # pieces left unread: the field had more than MAX_PIECES
    work: tuple | None = None  # ink, labels, layout, loose ink: kept until the cuts are planned


def plan(gray: np.ndarray) -> Plan:
    """The lattice of one decoded field scan, with a crop for every piece and group of pieces;
    the cuts of touching digits come later (:func:`add_cuts`), once a first look says where."""
    gray, scale = shrink(gray)
    ink = ink_map(gray)
    out = Plan(scale)
    if not ink.any():
        return out
    threshold = ink_threshold(ink)
    mask = ink > threshold
    kept = remove_rules(mask)
    labels, blobs = components(kept)
    lay = layout(blobs, kept)
    if lay is None:
        return out
    digits = tall_spans(blobs, lay)
    marks = {b.label: mark(b, lay, digits) for b in blobs}
    pieces = [b for b in blobs if marks[b.label] or not is_speck(b, lay)]
    if len(pieces) > MAX_PIECES:
        out.ignored = len(pieces) - MAX_PIECES
        pieces = sorted(pieces, key=lambda b: -b.area)[:MAX_PIECES]
    out.pieces = sorted(pieces, key=lambda b: b.cx)
    loose = _loose_ink(out, ink, labels, lay, marks, threshold, mask & ~kept)
    for i, piece in enumerate(out.pieces):
        edges = _digit_edges(out, ink, labels, lay, i, marks, loose)
        edges += [Edge(i + 1, (), MARK + math.log(p), c) for c, p in marks[piece.label]]
        out.edges.append(edges)
    out.work = (ink, labels, lay, loose)
    return out


def shrink(gray: np.ndarray) -> tuple[np.ndarray, float]:
    """A scan over ``MAX_PIXELS`` resampled by area down to that, and the factor it shrank by."""
    if gray.size <= MAX_PIXELS:
        return gray, 1.0
    f = math.sqrt(MAX_PIXELS / gray.size)
    size = (max(1, round(gray.shape[1] * f)), max(1, round(gray.shape[0] * f)))
    small = cv2.resize(np.asarray(gray, np.float32), size, interpolation=cv2.INTER_AREA)
    return small, gray.shape[1] / size[0]


def _loose_ink(
    plan: Plan,
    ink: np.ndarray,
    labels: np.ndarray,
    lay: Layout,
    marks: dict,
    threshold: float,
    rules: np.ndarray,
) -> np.ndarray:
    """Ink that no digit-sized piece or separator accounts for: specks, small pieces, and strokes
    too faint to pass the threshold (down to ``FAINT`` of it), off the rules and their rims."""
    solid = [b.label for b in plan.pieces if b.h >= 0.5 * lay.height or marks[b.label]]
    claimed = dilate(with_labels(labels, solid) | rules, 2)
    return np.where((ink > FAINT * threshold) & ~claimed, ink, 0.0)


def stray(
    ink: np.ndarray, labels: np.ndarray, loose: np.ndarray, group: list[Blob], lay: Layout
) -> float:
    """Loose ink near a candidate digit, as a share of the digit's own ink.

    A reading that leaves ink around a digit unexplained may have lost part of it: a 9 whose faint
    loop fell under the threshold is a clean 1, a 7 whose bar broke off is a clean 1. The network
    cannot know what it was not shown, so the field's confidence has to.
    """
    m = round(STRAY_REACH * lay.height)
    x0, y0 = max(min(b.x0 for b in group) - m, 0), max(min(b.y0 for b in group) - m, 0)
    x1, y1 = max(b.x1 for b in group) + m, max(b.y1 for b in group) + m
    own = with_labels(labels[y0:y1, x0:x1], [b.label for b in group])
    near = dilate(own, 2)
    return float(loose[y0:y1, x0:x1][~near].sum() / max(float(ink[y0:y1, x0:x1][own].sum()), 1e-6))


def add_cuts(plan: Plan, probs: np.ndarray, kind: str, guide: Guide | None = None) -> None:
    """Add split edges for the blobs that may hold touching digits.

    Which ones is decided after a first look: wide blobs always; narrower ones (a "1" touching
    its neighbour is barely wider than one digit) when read alone they look unsure, or when the
    field has fewer full-height blobs than it should have digits: than a kind with a fixed digit
    count (a zip code) allows, or than the ``guide`` says. A blob the guide puts a digit boundary
    in is also cut there (:func:`cuts.at`), and one it saw no digit in may be dropped. Cutting
    every blob would multiply the crops for little gain.

    A blob the guide placed exactly one digit in, which read whole is that digit, is not cut
    (:func:`_read_as_placed`): both readers already see one digit there, the same one, and a cut
    could only offer rivals. On the validation documents it accepted no wrong field more (two
    reviewed zips were offered a worse text) and took a fifth off a field's time (docs/fields.md,
    session 20).
    """
    if plan.work is None:
        return
    ink, labels, lay, loose = plan.work
    plan.work = None
    height = lay.height
    full = [i for i, b in enumerate(plan.pieces) if b.h >= 0.5 * height]
    counts = kinds.kind(kind).digit_counts
    # A guide that placed its digits says where to cut; only one that did not says "cut more".
    wanted = guide.count if guide and not guide.centres else 0
    short = (bool(counts) and len(full) not in counts) or len(full) < wanted
    bounds = [b * ink.shape[1] for b in guide.bounds] if guide else []
    centres = [c * ink.shape[1] for c in guide.centres] if guide else []
    # Each of the guide's places with the digit it read there, when it says both.
    placed: list[tuple[float, str]] = []
    if guide and len(guide.digits) == len(centres):
        placed = list(zip(centres, guide.digits, strict=True))
    reach = UNCLAIMED_REACH * height
    for i in full:
        piece, crop = plan.pieces[i], plan.whole.get(i)
        if crop is not None and _read_as_placed(piece, int(probs[crop].argmax()), placed):
            continue  # also claimed: a digit of the guide's is in it
        unsure = crop is None or probs[crop].max() < SURE or short
        inside = [x - piece.x0 for x in bounds if piece.x0 < x < piece.x1]
        if piece.w >= WIDE * height or (piece.w >= NARROW * height and unsure) or inside:
            loose_near = stray(ink, labels, loose, [piece], lay)
            plan.edges[i].extend(_cut_edges(plan, ink, labels, piece, lay, i, loose_near, inside))
        if centres and not any(piece.x0 - reach <= c <= piece.x1 + reach for c in centres):
            plan.edges[i].append(Edge(i + 1, (), SKIP_UNCLAIMED))


def _read_as_placed(piece: Blob, digit: int, placed: list[tuple[float, str]]) -> bool:
    """Did the other reader place exactly one digit in ``piece`` (``placed``: its places, in
    working columns, with the digit read at each), the ``digit`` the blob reads whole?"""
    inside = [said for x, said in placed if piece.x0 <= x < piece.x1]
    return len(inside) == 1 and inside[0] == str(digit)


def _digit_edges(
    plan: Plan,
    ink: np.ndarray,
    labels: np.ndarray,
    lay: Layout,
    i: int,
    marks: dict,
    loose: np.ndarray,
) -> list[Edge]:
    """From piece ``i``: skip it, or read it with up to two more as one digit."""
    pieces, height = plan.pieces, lay.height
    piece = pieces[i]
    skip = SKIP_MARK if marks[piece.label] else SKIP
    edges = [Edge(i + 1, (), skip)] if piece.h < 0.5 * height else []
    for j in range(i + 1, min(i + 3, len(pieces)) + 1):
        group = pieces[i:j]
        if j - i > 1 and max(b.x1 for b in group) - min(b.x0 for b in group) > 1.5 * height:
            break
        crop = add_crop(plan, ink, labels, [b.label for b in group])
        if crop is not None:
            prior = _shape_prior(plan.boxes[crop], lay) + _join_prior(group, lay)
            prior += AS_DIGIT * sum(bool(marks[b.label]) for b in group)
            edges.append(Edge(j, (crop,), prior, stray=stray(ink, labels, loose, group, lay)))
            if j == i + 1:
                plan.whole[i] = crop
    return edges


def _shape_prior(box: tuple[int, int, int, int], lay: Layout) -> float:
    """Log prior that a box of this size is one digit: not a fragment, not two digits wide."""
    w, h = (box[2] - box[0]) / lay.height, (box[3] - box[1]) / lay.height
    return 12 * min(0.0, h - 0.6) + 4 * min(0.0, 1.5 - h) + 6 * min(0.0, 1.1 - w)


def _join_prior(group: list[Blob], lay: Layout) -> float:
    """Pieces of one digit overlap or nearly touch; a clear gap between them argues for two.

    Two full-height blobs side by side are two digits far more often than one broken digit.
    """
    ordered = sorted(group, key=lambda b: b.x0)
    reach, gap, tall = ordered[0].x1, 0, 0
    for left, b in zip(ordered, ordered[1:], strict=False):
        gap, reach = max(gap, b.x0 - reach), max(reach, b.x1)
        apart = b.x0 >= left.x1 - 0.3 * min(left.w, b.w)  # a slant may overlap a little
        tall += min(left.h, b.h) >= 0.6 * lay.height and apart
    return -max(0.0, gap - 0.5 * lay.stroke) / lay.stroke + SIDE_BY_SIDE * tall


def _cut_edges(
    plan: Plan,
    ink: np.ndarray,
    labels: np.ndarray,
    piece: Blob,
    lay: Layout,
    i: int,
    loose_near: float,
    bounds: list[float] | None = None,
) -> list[Edge]:
    """Touching digits: the blob split in two (or three, when very wide) at its thinnest joins,
    and at the guide's ``bounds`` (columns of the blob) where it has any."""
    mine = labels[piece.y0 : piece.y1, piece.x0 : piece.x1] == piece.label
    edges = []
    guided = cuts.at(mine, bounds or [], lay)
    most = cuts.FREE_SPLITS_GUIDED if guided else cuts.CUTS
    for parts, prior in cuts.options(mine, lay, most) + guided:
        made = [
            add_crop(plan, ink, labels, [piece.label], (piece.x0, piece.y0, part)) for part in parts
        ]
        crops = [c for c in made if c is not None]
        if len(crops) == len(made):  # every part still holds a digit's worth of ink
            shapes = sum(_shape_prior(plan.boxes[c], lay) for c in crops)
            edges.append(Edge(i + 1, tuple(crops), prior + shapes, stray=loose_near))
    return edges


def add_crop(
    plan: Plan, ink: np.ndarray, labels: np.ndarray, ids: list[int], part=None
) -> int | None:
    """Normalize the ink of blobs ``ids`` (or of ``part``, a mask at an origin) like a single crop.

    Returns the crop's index, or None when nothing is left. Anti-aliased edge pixels come along,
    but never ink that belongs to another blob or to the other side of a cut.
    """
    if part is None:
        blobs = [b for b in plan.pieces if b.label in ids]
        x0, y0 = min(b.x0 for b in blobs), min(b.y0 for b in blobs)
        x1, y1 = max(b.x1 for b in blobs), max(b.y1 for b in blobs)
        inside = with_labels(labels[y0:y1, x0:x1], ids)
    else:
        x0, y0, inside = part
        y1, x1 = y0 + inside.shape[0], x0 + inside.shape[1]
    rows, cols = np.nonzero(inside)
    if len(rows) < 2:
        return None
    # One pixel of slack for the anti-aliased rim, taken from the field where it exists.
    top, left = min(y0, 1), min(x0, 1)
    bottom, right = min(ink.shape[0] - y1, 1), min(ink.shape[1] - x1, 1)
    y0, x0, y1, x1 = y0 - top, x0 - left, y1 + bottom, x1 + right
    padded = np.zeros((y1 - y0, x1 - x0), bool)  # np.pad costs more than the rest of this
    padded[top : top + inside.shape[0], left : left + inside.shape[1]] = inside
    inside = padded
    grown = dilate(inside) & ~((labels[y0:y1, x0:x1] > 0) & ~inside)
    # Paper all round, as on the pieces the field digit network trained on: normalization reads
    # the paper level from it, and the crop's size sets its working resolution.
    margin = max(y1 - y0, x1 - x0) // 2 + 2
    pixels = np.zeros((y1 - y0 + 2 * margin, x1 - x0 + 2 * margin), np.float32)
    pixels[margin:-margin, margin:-margin] = np.where(grown, ink[y0:y1, x0:x1], 0.0)
    crop = normalize_ink(pixels)  # already ink against paper; the margin is all the edge it has
    if crop.blank:
        return None
    plan.crops.append(crop.pixels)
    rows, cols = rows + top, cols + left
    plan.boxes.append(
        (
            x0 + int(cols.min()),
            y0 + int(rows.min()),
            x0 + int(cols.max()) + 1,
            y0 + int(rows.max()) + 1,
        )
    )
    return len(plan.crops) - 1


def paths(plan: Plan, logp: np.ndarray) -> list[tuple[float, list[Edge]]]:
    """The ``KEEP`` best paths for every digit count: the field check picks among them later.

    A path under construction is a chain of (edge, the path before it) pairs, so extending one
    costs the same however long it is: copying each path as a list at every extension made a
    field of a few hundred specks (a speckled fax, a photograph sent as a field) take minutes.
    """
    n = len(plan.pieces)
    best: list[dict[int, list[tuple[float, Chain]]]] = [{} for _ in range(n + 1)]
    best[0][0] = [(0.0, None)]
    for i in range(n):
        steps = [(e, e.prior + float(sum(logp[c] for c in e.crops))) for e in plan.edges[i]]
        for count, found in best[i].items():
            for e, step in steps:
                kept = best[e.end].setdefault(count + len(e.crops), [])
                kept.extend((score + step, (e, chain)) for score, chain in found)
                kept.sort(key=lambda sp: -sp[0])
                del kept[KEEP:]
    return [(score, _unchained(chain)) for found in best[n].values() for score, chain in found]


def _unchained(chain: Chain) -> list[Edge]:
    """A path's chain of (edge, the path before it) as its edges in reading order."""
    edges = []
    while chain is not None:
        edge, chain = chain
        edges.append(edge)
    return edges[::-1]
