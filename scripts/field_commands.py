"""The field readers' side of ``train``, ``evaluate`` and ``classify``: whole fields read by the
segmenter and the sequence reader, scored per reader and for the pair that must agree."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from digits.model.data import Mnist
    from digits.model.fields import FieldDigits
    from digits.model.sequence import SequenceReader


# fieldgen.GLYPH_STYLES' names, written out so that the command starts without numpy and
# OpenCV (tests/test_fieldgen.py holds the two together).
GLYPH_CHOICES = ["plain", "low_res", "filled"]


def _share(flag: str, what: str):
    """A share of the composed zips (0 to 1, default none) that have a trait."""
    return click.option(
        flag,
        type=click.FloatRange(0, 1),
        default=0.0,
        show_default=True,
        help=f"With --fields: share {what}.",
    )


def composed_options(command):
    """``evaluate --fields``' options for the composed zips: touching pairs, ZIP+4, printed rules,
    and how their digits were captured."""
    options = [
        _share("--touching", "of fields where two digits touch"),
        _share("--plus4", "written as ZIP+4 (nine digits and a hyphen)"),
        _share("--lines", "with a printed underline or box"),
        click.option(
            "--glyphs",
            type=click.Choice(GLYPH_CHOICES),
            multiple=True,
            help="With --fields: how the composed zips' digits were captured (repeatable; "
            "default plain): as MNIST drew them, at a low resolution (10-18 px), or also "
            "stretched to fill their box. One composed set each.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def train_field(
    epochs: int | None, steps: int, data_dir: Path | None, out: Path | None, seed: int
) -> None:
    """``train --arch field``: the sequence reader, saved with its card (shipped by default)."""
    from digits.model.card import SHIPPED_FIELD_MODEL
    from digits.model.data import DataError
    from digits.model.train_sequence import train_field as run

    out = out or SHIPPED_FIELD_MODEL
    try:
        card = run(epochs, steps, data_dir, out, seed)
    except DataError as exc:
        raise click.ClickException(str(exc)) from exc
    exact = ", ".join(f"{k} {v:.4f}" for k, v in card["heldout_exact"].items())
    click.echo(
        f"field: held-out exact {exact} after {card['epochs']} epochs "
        f"in {card['training_seconds']:.0f} s; saved {out}"
    )


def refuse_overwriting(base: Path, out: Path) -> None:
    """A fine-tune (``--extra``, ``--arch field-digits``) must not write over the model it
    starts from: a run that fails half-way would lose it."""
    if Path(out).resolve() == Path(base).resolve():
        raise click.ClickException(f"--out {out} is the model being fine-tuned: choose another")


def train_field_digits(
    base: Path, epochs: int | None, data_dir: Path | None, out: Path | None, seed: int
) -> None:
    """``train --arch field-digits``: the segmenter's digit network, fine-tuned from ``base``."""
    from digits.model import pieces
    from digits.model.card import SHIPPED_FIELD_DIGITS
    from digits.model.data import DataError

    out = out or SHIPPED_FIELD_DIGITS
    refuse_overwriting(base, out)
    try:
        card = pieces.train_field_digits(
            Path(base),
            Path(out),
            str(data_dir) if data_dir else None,
            epochs=epochs or pieces.EPOCHS,
            seed=seed,
        )
    except (DataError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    seen = card["pieces"]
    click.echo(
        f"field-digits: {seen['crops']} digits cut from {seen['documents']} documents; on "
        f"{seen['validation_crops']} validation cuts {seen['validation_accuracy_before']:.2%} -> "
        f"{seen['validation_accuracy']:.2%}; MNIST test {card['test_accuracy']:.4f}; "
        f"{card['training_seconds']:.0f} s; saved {out}"
    )


def evaluate_fields(
    networks: FieldDigits, mnist: Mnist | None, options: dict, out_dir: Path, as_json: bool
) -> None:
    """``evaluate --fields``: synthetic documents per kind, composed zip fields, or a labelled
    folder of real scans, through the segmenter, the sequence reader and the pair."""
    from digits.model import field_eval as fe

    if options["labelled"] and len(options["kinds"]) != 1:
        raise click.UsageError("--labelled reads one kind of field: give exactly one --kind")
    reader = _load_field_reader(options["field_model"])
    count, seed = options["count"], options["seed"]
    if options["labelled"]:
        sets = [
            (
                f"labelled {options['labelled'].name}",
                options["kinds"][0],
                fe.labelled_samples(options["labelled"]),
            )
        ]
    else:
        assert mnist is not None  # only a labelled folder is read without it
        sets = [
            (
                f"{kind} {options['split']}",
                kind,
                fe.document_samples(
                    mnist.x_test, mnist.y_test, kind, count, seed, options["split"]
                ),
            )
            for kind in options["kinds"]
        ]
        sets += [
            (
                "composed zip" if glyphs == "plain" else f"composed zip {glyphs}",
                "zip",
                fe.composed_samples(
                    mnist.x_test,
                    mnist.y_test,
                    count,
                    seed,
                    options["touching"],
                    options["lines"],
                    options["plus4"],
                    glyphs,
                ),
            )
            for glyphs in options["glyphs"]
        ]
    reports = [
        fe.evaluate_samples(networks, reader, samples, kind, title, out_dir)
        for title, kind, samples in sets
    ]
    result = {
        "model": networks.version,
        "apart_model": networks.apart.version,
        "field_model": reader.version,
        "set": "fields",
        "seed": seed,
        "reports": reports,
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    models = f"{networks.version} + {networks.apart.version} + {reader.version}"
    click.echo(f"models {models}; seed {seed}")
    for report in reports:
        click.echo(f"\n{report['title']} ({report['readers']['pair']['n']} fields)")
        click.echo(_figures_header())
        for name, row in report["readers"].items():
            click.echo(_figures_line(name, row))
        click.echo("  per family (pair):")
        for family, rows in report["families"].items():
            click.echo(_figures_line("  " + family, rows["pair"]))
        for item in report["accepted_mistakes"]:
            click.echo(
                f"  ACCEPTED WRONG: {item['truth']} read {item['text']} "
                f"({item['confidence']}) {item['readers']}"
            )
        if "curve" in report:
            click.echo(f"  curve: {report['curve']}")


def _figures_header() -> str:
    return (
        f"  {'reader':<28} {'exact':>7} {'accepted':>9} {'err/acc':>8} "
        f"{'read@1%':>8} {'read@0.1%':>9}"
    )


def _figures_line(name: str, row: dict) -> str:
    if not row.get("n"):
        return f"  {name:<28} (none)"
    error = row["error_accepted"]
    return (
        f"  {name:<28} {row['exact']:>7.2%} {row['accepted']:>9.2%} "
        f"{'-' if error is None else f'{error:.2%}':>8} {row['read_rate_1pct']:>8.2%} "
        f"{row['read_rate_01pct']:>9.2%}"
    )


def _load_field_reader(path: Path | None) -> SequenceReader:
    from digits.model.sequence import SequenceReader

    try:
        return SequenceReader.load(path)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"cannot load the field model: {exc}") from exc


def classify_fields(
    networks: FieldDigits,
    files: Sequence[Path],
    crops: list[bytes],
    unreadable: dict[int, str],
    options: dict,
) -> int:
    """``classify --field``: both readers on every file, one answer each; exit 1 if any failed."""
    from digits.model.consensus import read_pairs
    from digits.model.review import threshold_for

    reader = _load_field_reader(options["field_model"])
    threshold = threshold_for(options["kind"], options["threshold"])
    answers = read_pairs(networks, reader, crops, options["kind"], threshold)
    failed = False
    for i, (path, a) in enumerate(zip(files, answers, strict=True)):
        error = unreadable.get(i, a.error)
        status = "error" if error else a.status
        failed |= status == "error"
        if options["as_json"]:
            click.echo(
                json.dumps({"file": str(path), **a.as_dict(), "status": status, "error": error})
            )
            continue
        if status == "ok":
            review = f"  REVIEW ({', '.join(a.reasons)})" if a.needs_review else ""
            seen = "  ".join(f"{k}: {r.text}" for k, r in a.readers.items())
            click.echo(f"{path}: {a.text}  {a.confidence:.4f}{review}  [{seen}]")
        else:
            click.echo(f"{path}: " + ("blank" if status == "blank" else f"error: {error}"))
    return 1 if failed else 0
