"""Model subcommands: train, evaluate, sample, classify."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from digits.cli.field_commands import (
    classify_fields,
    composed_options,
    evaluate_fields,
    refuse_overwriting,
    train_field,
    train_field_digits,
)
from digits.model import kinds

data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DIGITS_MNIST_DIR",
    help="Directory with the MNIST IDX files or mnist.npz [env DIGITS_MNIST_DIR; else download].",
)
model_option = click.option(
    "--model",
    "model_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DIGITS_MODEL",
    help="A .keras model of single digits [env DIGITS_MODEL; default: the shipped cnn]; fields "
    "read with --field-digits, and with this for the digits written apart.",
)


def _load_mnist(data_dir: Path | None):
    from digits.model import data

    try:
        return data.load(data_dir)
    except data.DataError as exc:
        raise click.ClickException(str(exc)) from exc


field_digits_option = click.option(
    "--field-digits",
    "field_digits",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DIGITS_FIELD_DIGITS",
    help="With fields: the segmenter's digit network [env DIGITS_FIELD_DIGITS; default: the "
    "shipped field-digits model]; --model reads the digits written apart with it.",
)


def _load_field_digits(path: Path | None, model_path: Path | None):
    """The segmenter's networks: the field digit network with the cnn (``fields.FieldDigits``)."""
    from digits.model.fields import FieldDigits

    return _loaded(FieldDigits.load, path, model_path)


def _load_classifier(model_path: Path | None):
    from digits.model.inference import Classifier

    return _loaded(Classifier.load, model_path)


def _loaded(load, *paths: Path | None):
    """``load(*paths)``, a missing or unreadable model file one line of error, not a traceback."""
    try:
        return load(*paths)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.option(
    "--arch",
    type=click.Choice(["cnn", "mlp", "field", "field-digits"]),
    default="cnn",
    show_default=True,
    help="cnn/mlp read one digit; field is the sequence reader of whole fields (CTC); "
    "field-digits fine-tunes the cnn (--model) on digits cut out of generated documents, for "
    "the segmenter of fields.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    help="Default: 20 for cnn, 5 for mlp, 22 for field; 3 for field-digits and 3 with --extra.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    help="With --arch field: batches of generated documents per epoch. Default: 400.",
)
@data_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to save the .keras model (its JSON card goes beside it). "
    "Default: model/shipped/<arch>.keras for cnn, field and field-digits, out/<arch>.keras "
    "otherwise.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--limit",
    type=click.IntRange(min=100),
    help="Train on the first N digits only (with --extra: mix in N MNIST digits).",
)
@click.option(
    "--extra",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Fine-tune the current model (--model) on the corrections exported here by "
    "`digits export-corrections` instead of training afresh. Default --out: "
    "out/<arch>-corrected.keras; default --epochs: 3.",
)
@model_option
def train(arch, epochs, steps, data_dir, out, seed, limit, extra, model_path) -> None:
    """Train a network on MNIST (or on documents written with it) and save it with its card."""
    from digits.model.card import SHIPPED_MODEL
    from digits.model.data import DataError

    if extra is not None:
        _fine_tune(extra, model_path or SHIPPED_MODEL, data_dir, out, epochs, seed, limit)
        return

    if arch == "field":
        train_field(epochs, steps, data_dir, out, seed)
        return
    if arch == "field-digits":
        train_field_digits(model_path or SHIPPED_MODEL, epochs, data_dir, out, seed)
        return
    from digits.model.train import train as run

    out = out or (SHIPPED_MODEL if arch == "cnn" else Path("out") / f"{arch}.keras")
    try:
        card = run(arch, epochs, data_dir, out, seed, limit)
    except DataError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"{arch}: test accuracy {card['test_accuracy']:.4f} after {card['epochs']} epochs "
        f"in {card['training_seconds']:.0f} s; saved {out}"
    )


def _fine_tune(extra, base, data_dir, out, epochs, seed, replay) -> None:
    from digits.model.data import DataError
    from digits.model.finetune import DEFAULT_EPOCHS, fine_tune

    out = out or Path("out") / "cnn-corrected.keras"
    refuse_overwriting(base, out)
    try:
        card = fine_tune(
            Path(base), extra, Path(out), data_dir, epochs or DEFAULT_EPOCHS, seed, replay
        )
    except (DataError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    seen = card["corrections"]
    click.echo(
        f"fine-tuned {card['fine_tuned_from']} on {seen['digits']} corrections "
        f"(their accuracy {seen['accuracy_before']:.2%} -> {seen['accuracy_after']:.2%}); "
        f"test accuracy {card['test_accuracy']:.4f}; saved {out}"
    )


@click.command()
@model_option
@data_option
@click.option("--scanned", is_flag=True, help="Render the test set scan-like and read it back.")
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the scan-like set (or of the composed fields).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("out/evaluate"),
    show_default=True,
    help="Where the PNG pictures go.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@click.option(
    "--robustness",
    is_flag=True,
    help="Instead: the test set through each distortion real scans and writers show (elastic, "
    "stretched, binary, low resolution, pen width, slant, gaps, specks, bitmap layouts), one row "
    "each: accuracy and read rate at 1% and 0.1% error, as a table and a PNG.",
)
@click.option(
    "--before",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="With --robustness: an earlier run's --json output, shown beside each figure.",
)
@click.option(
    "--fields",
    "fields",
    is_flag=True,
    help="Instead: read whole fields (synthetic documents, composed zips, or --labelled scans) "
    "with both field readers and score each reader and the pair.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="With --fields: how many fields (default 1000); with --robustness: how many test "
    "digits (default all 10,000).",
)
@composed_options
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(kinds.NAMES),
    multiple=True,
    help="With --fields: the kinds of synthetic documents (repeatable; default amount and zip).",
)
@click.option(
    "--split",
    type=click.Choice(["heldout", "train"]),
    default="heldout",
    show_default=True,
    help="With --fields: the generator's held-out trait families, or its training ones.",
)
@click.option(
    "--labelled",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Read this folder of scans with labels.csv (file,label) instead of MNIST: single "
    "digits, or with --fields whole fields of one --kind.",
)
@click.option(
    "--field-model",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DIGITS_FIELD_MODEL",
    help="The sequence reader [env DIGITS_FIELD_MODEL; default: the shipped field model].",
)
@field_digits_option
def evaluate(
    model_path,
    data_dir,
    scanned,
    seed,
    out_dir,
    as_json,
    robustness,
    before,
    fields,
    touching,
    count,
    plus4,
    lines,
    glyphs,
    kinds,
    split,
    labelled,
    field_model,
    field_digits,
) -> None:
    """Score a model on the full MNIST test set (10,000 digits), on a labelled folder of real
    digits, or read whole fields."""
    from digits.model import evaluate as ev

    fields = fields and not robustness  # --robustness scores the single-digit network
    if labelled and not fields and (scanned or robustness):
        raise click.UsageError("--labelled reads its own scans: not with --scanned or --robustness")
    # A folder of labelled real scans needs no MNIST: a machine without it can still score them.
    mnist = None if labelled and not robustness else _load_mnist(data_dir)
    classifier = (
        _load_field_digits(field_digits, model_path) if fields else _load_classifier(model_path)
    )
    if robustness:
        assert mnist is not None
        evaluate_robustness(classifier, mnist, count, seed, out_dir, as_json, before)
        return
    if fields:
        options = {
            "count": count or 1000,
            "seed": seed,
            "touching": touching,
            "lines": lines,
            "plus4": plus4,
            "glyphs": glyphs or ("plain",),
            "kinds": kinds or ("amount", "zip"),
            "split": split,
            "labelled": labelled,
            "field_model": field_model,
        }
        evaluate_fields(classifier, mnist, options, out_dir, as_json)
        return
    if labelled:
        try:
            report, seen = ev.evaluate_labelled(classifier, labelled)
        except (OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        pictures = ev.write_pictures(report, seen, report.truth, out_dir)
        name = f"labelled {labelled.name}"
    else:
        assert mnist is not None
        report = (
            ev.evaluate_scanned(classifier, mnist, seed)
            if scanned
            else ev.evaluate_clean(classifier, mnist)
        )
        pictures = ev.write_pictures(report, mnist.x_test, mnist.y_test, out_dir)
        name = "scanned" if scanned else "clean"
    result = {
        "model": classifier.version,
        "set": name,
        **report.as_dict(),
        "pictures": [str(p) for p in pictures],
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    shown = f"{labelled} ({report.n} digits)" if labelled else f"{name} MNIST test set"
    click.echo(f"model {classifier.version}, {shown}")
    click.echo(
        f"accuracy {report.accuracy:.4f} on {report.n} digits ({report.rejected} without a guess)"
    )
    click.echo("digit  precision  recall  support")
    for row in report.per_class:
        click.echo(
            f"{row['digit']:>5}  {row['precision']:>9.4f}  {row['recall']:>6.4f}  {row['support']:>7}"
        )
    click.echo("confusion (rows truth, columns guess):")
    for digit, row in enumerate(report.confusion):
        click.echo(f"  {digit}: " + " ".join(f"{v:>5}" for v in row))
    click.echo("review threshold -> flagged, accuracy of the rest:")
    for item in result["review_curve"]:
        click.echo(
            f"  {item['threshold']:<6} {item['flagged']:>7.2%}  {item['accuracy_unflagged']:.4%}"
        )
    click.echo("pictures: " + ", ".join(result["pictures"]))


@click.command()
@model_option
@data_option
@click.option("--count", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option("--seed", type=int, help="Pick the same digits again.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("out/sample.png"),
    show_default=True,
)
@click.option("--show", is_flag=True, help="Also open a window, where a display exists.")
def sample(model_path, data_dir, count, seed, out, show) -> None:
    """The random-sample check: random test digits, the model's guess and the truth, as a picture."""
    import numpy as np

    from digits.model.evaluate import sample_png
    from digits.model.normalize import Crop

    mnist = _load_mnist(data_dir)
    classifier = _load_classifier(model_path)
    picks = np.random.default_rng(seed).choice(len(mnist.x_test), size=count, replace=False)
    images, truth = mnist.x_test[picks], mnist.y_test[picks]
    crops = [Crop(pixels=image.astype(np.float32) / 255.0, blobs=1) for image in images]
    predictions = classifier.classify_crops(crops)
    for index, label, p in zip(picks, truth, predictions, strict=True):
        verdict = "CORRECT" if p.digit == label else "WRONG"
        click.echo(
            f"test #{index}: truth {label}, guess {p.digit}, confidence {p.confidence:.4f}  {verdict}"
        )
    click.echo(f"picture: {sample_png(images, truth, predictions, out)}")
    if show:
        _show(out)


def _show(path: Path) -> None:
    import os

    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        click.echo("no display here: open the picture file instead", err=True)
        return
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    plt.imshow(mpimg.imread(path))
    plt.axis("off")
    plt.show()


@click.command()
@model_option
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    envvar="DIGITS_REVIEW_THRESHOLD",
    help="Confidence under which an item needs review.",
)
@click.option(
    "--field",
    "field_kind",
    type=click.Choice(kinds.NAMES),
    help="Read each file as a whole field of this kind, not as one digit.",
)
@click.option(
    "--field-model",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DIGITS_FIELD_MODEL",
    help="With --field: the sequence reader [env DIGITS_FIELD_MODEL; default: the shipped one].",
)
@field_digits_option
def classify(model_path, files, as_json, threshold, field_kind, field_model, field_digits) -> None:
    """Classify image files directly, without the queue."""
    from digits.model.review import REVIEW_THRESHOLD

    classifier = (
        _load_field_digits(field_digits, model_path) if field_kind else _load_classifier(model_path)
    )
    crops, unreadable = [], {}
    for i, path in enumerate(files):
        try:
            crops.append(path.read_bytes())
        except OSError as exc:
            crops.append(b"")
            unreadable[i] = f"cannot read file: {exc.strerror or exc}"
    if field_kind:
        options = {
            "kind": field_kind,
            "threshold": threshold,
            "as_json": as_json,
            "field_model": field_model,
        }
        sys.exit(classify_fields(classifier, files, crops, unreadable, options))
    predictions = classifier.classify(
        crops, threshold if threshold is not None else REVIEW_THRESHOLD
    )
    failed = False
    for i, (path, p) in enumerate(zip(files, predictions, strict=True)):
        error = unreadable.get(i, p.error)
        status = "error" if error else p.status
        failed |= status == "error"
        row = {
            "file": str(path),
            "digit": p.digit,
            "confidence": p.confidence,
            "status": status,
            "needs_review": p.needs_review,
            "multiple_blobs": p.multiple_blobs,
            "faint": p.faint,
            "two_digits": p.two_digits,
            "framed": p.framed,
            "top3": p.top3,
            "error": error,
        }
        if as_json:
            click.echo(json.dumps(row))
        else:
            click.echo(f"{path}: {_digit_line(p, status, error)}")
    sys.exit(1 if failed else 0)


def _digit_line(p, status: str, error: str | None) -> str:
    if status == "error":
        return f"error: {error}"
    if status == "blank":
        return "blank"
    flags = ("  REVIEW" if p.needs_review else "") + ("  FAINT" if p.faint else "")
    flags += "  MULTIPLE BLOBS" if p.multiple_blobs else ""
    flags += "  TWO DIGITS" if p.two_digits else ""
    flags += "  FRAMED" if p.framed else ""
    return f"{p.digit}  {p.confidence:.4f}{flags}"


COMMANDS = [train, evaluate, sample, classify]


def evaluate_robustness(
    classifier, mnist, count: int | None, seed: int, out_dir: Path, as_json: bool, before
) -> None:
    """``evaluate --robustness``: one row per distortion, through the whole crop path."""
    from digits.model import robustness

    earlier = robustness.load_rows(before) if before else None
    images, labels = mnist.x_test[:count], mnist.y_test[:count]
    rows = robustness.evaluate(classifier, images, labels, seed)
    picture = robustness.picture(rows, out_dir / "robustness.png", earlier)
    if as_json:
        click.echo(json.dumps({"model": classifier.version, "rows": rows, "picture": str(picture)}))
        return
    click.echo(f"model {classifier.version}, MNIST test set through each distortion")
    click.echo(robustness.table(rows, earlier))
    click.echo(f"picture: {picture}")
