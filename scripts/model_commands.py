"""Model subcommands: train, evaluate, sample, classify."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

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
    help="A .keras model [env DIGITS_MODEL; default: the shipped cnn].",
)


def _quiet_tensorflow() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _load_mnist(data_dir: Path | None):
    from digits.model import data

    try:
        return data.load(data_dir)
    except data.DataError as exc:
        raise click.ClickException(str(exc)) from exc


def _load_classifier(model_path: Path | None):
    _quiet_tensorflow()
    from digits.model.inference import Classifier

    try:
        return Classifier.load(model_path)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.option(
    "--arch",
    type=click.Choice(["cnn", "mlp", "field"]),
    default="cnn",
    show_default=True,
    help="cnn/mlp read one digit; field is the sequence reader of whole fields (CTC).",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), help="Default: 15 for cnn, 5 for mlp, 24 for field."
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=400,
    show_default=True,
    help="With --arch field: batches of generated documents per epoch.",
)
@data_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to save the .keras model (its JSON card goes beside it). "
    "Default: model/shipped/<arch>.keras for cnn and field, out/<arch>.keras otherwise.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--limit", type=click.IntRange(min=100), help="Train on the first N digits only.")
def train(arch, epochs, steps, data_dir, out, seed, limit) -> None:
    """Train a network on MNIST (or on documents written with it) and save it with its card."""
    _quiet_tensorflow()
    from digits.model.data import DataError
    from digits.model.inference import SHIPPED_MODEL

    if arch == "field":
        _train_field(epochs, steps, data_dir, out, seed)
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


def _train_field(epochs, steps, data_dir, out, seed) -> None:
    from digits.model.data import DataError
    from digits.model.sequence import SHIPPED_FIELD_MODEL
    from digits.model.train_sequence import train_field

    out = out or SHIPPED_FIELD_MODEL
    try:
        card = train_field(epochs, steps, data_dir, out, seed)
    except DataError as exc:
        raise click.ClickException(str(exc)) from exc
    exact = ", ".join(f"{k} {v:.4f}" for k, v in card["heldout_exact"].items())
    click.echo(
        f"field: held-out exact {exact} after {card['epochs']} epochs "
        f"in {card['training_seconds']:.0f} s; saved {out}"
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
    "--fields",
    "fields",
    is_flag=True,
    help="Instead: compose 5-digit zip fields from the test set and read them whole.",
)
@click.option(
    "--touching",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="With --fields: share of fields where two digits touch.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="With --fields: how many fields.",
)
@click.option(
    "--plus4",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="With --fields: share written as ZIP+4 (nine digits and a hyphen).",
)
@click.option(
    "--lines",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="With --fields: share with a printed underline or box.",
)
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(["amount", "zip", "digits"]),
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
    help="With --fields: read this folder of scans with labels.csv (file,label) instead.",
)
@click.option(
    "--field-model",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DIGITS_FIELD_MODEL",
    help="The sequence reader [env DIGITS_FIELD_MODEL; default: the shipped field model].",
)
def evaluate(
    model_path,
    data_dir,
    scanned,
    seed,
    out_dir,
    as_json,
    fields,
    touching,
    count,
    plus4,
    lines,
    kinds,
    split,
    labelled,
    field_model,
) -> None:
    """Score a model on the full MNIST test set (10,000 digits), or read whole fields."""
    from digits.model import evaluate as ev

    mnist = _load_mnist(data_dir)
    classifier = _load_classifier(model_path)
    if fields:
        options = {
            "count": count,
            "seed": seed,
            "touching": touching,
            "lines": lines,
            "plus4": plus4,
            "kinds": kinds or ("amount", "zip"),
            "split": split,
            "labelled": labelled,
            "field_model": field_model,
        }
        _evaluate_fields(classifier, mnist, options, out_dir, as_json)
        return
    report = (
        ev.evaluate_scanned(classifier, mnist, seed)
        if scanned
        else ev.evaluate_clean(classifier, mnist)
    )
    pictures = ev.write_pictures(report, mnist.x_test, mnist.y_test, out_dir)
    result = {
        "model": classifier.version,
        "set": "scanned" if scanned else "clean",
        **report.as_dict(),
        "pictures": [str(p) for p in pictures],
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"model {classifier.version}, {result['set']} MNIST test set")
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


def _evaluate_fields(classifier, mnist, options: dict, out_dir: Path, as_json: bool) -> None:
    """``evaluate --fields``: synthetic documents per kind, composed zip fields, or a labelled
    folder of real scans, through the segmenter, the sequence reader and the pair."""
    from digits.model import field_eval as fe

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
        sets.append(
            (
                "composed zip",
                "zip",
                fe.composed_samples(
                    mnist.x_test,
                    mnist.y_test,
                    count,
                    seed,
                    options["touching"],
                    options["lines"],
                    options["plus4"],
                ),
            )
        )
    reports = [
        fe.evaluate_samples(classifier, reader, samples, kind, title, out_dir)
        for title, kind, samples in sets
    ]
    result = {
        "model": classifier.version,
        "field_model": reader.version,
        "set": "fields",
        "seed": seed,
        "reports": reports,
    }
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"models {classifier.version} + {reader.version}; seed {seed}")
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
    return (
        f"  {name:<28} {row['exact']:>7.2%} {row['accepted']:>9.2%} "
        f"{row['error_accepted']:>8.2%} {row['read_rate_1pct']:>8.2%} "
        f"{row['read_rate_01pct']:>9.2%}"
    )


def _load_field_reader(path: Path | None):
    _quiet_tensorflow()
    from digits.model.sequence import SequenceReader

    try:
        return SequenceReader.load(path)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(f"cannot load the field model: {exc}") from exc


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
    type=click.Choice(["zip", "amount", "digits"]),
    help="Read each file as a whole field of this kind, not as one digit.",
)
@click.option(
    "--field-model",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="DIGITS_FIELD_MODEL",
    help="With --field: the sequence reader [env DIGITS_FIELD_MODEL; default: the shipped one].",
)
def classify(model_path, files, as_json, threshold, field_kind, field_model) -> None:
    """Classify image files directly, without the queue."""
    from digits.model.inference import REVIEW_THRESHOLD

    classifier = _load_classifier(model_path)
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
        sys.exit(_classify_fields(classifier, files, crops, unreadable, options))
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
            "top3": p.top3,
            "error": error,
        }
        if as_json:
            click.echo(json.dumps(row))
        else:
            click.echo(f"{path}: {_digit_line(p, status, error)}")
    sys.exit(1 if failed else 0)


def _classify_fields(classifier, files, crops, unreadable, options) -> int:
    """``classify --field``: both readers on every file, one answer each; exit 1 if any failed."""
    from digits.model.consensus import read_pairs
    from digits.model.review import FIELD_REVIEW_THRESHOLD

    reader = _load_field_reader(options["field_model"])
    threshold = options["threshold"]
    answers = read_pairs(
        classifier,
        reader,
        crops,
        options["kind"],
        threshold if threshold is not None else FIELD_REVIEW_THRESHOLD,
    )
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


def _digit_line(p, status: str, error: str | None) -> str:
    if status == "error":
        return f"error: {error}"
    if status == "blank":
        return "blank"
    flags = ("  REVIEW" if p.needs_review else "") + (
        "  MULTIPLE BLOBS" if p.multiple_blobs else ""
    )
    return f"{p.digit}  {p.confidence:.4f}{flags}"


COMMANDS = [train, evaluate, sample, classify]
