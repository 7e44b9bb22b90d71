"""``digits bench``: the end-to-end benchmark of :mod:`scripts.bench` as a subcommand.

The module only parses options; everything heavy is imported when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.option(
    "--e2e-files",
    type=click.IntRange(min=1),
    help="Only the user's path: N crop files on disk, an idle worker, `digits enqueue DIR --wait` "
    "timed per run on each backend, beside the raw model rate (scripts/devtools/bench_files.py).",
)
@click.option(
    "--runs",
    type=click.IntRange(min=1),
    help="With --e2e-files: runs per backend, each on a fresh database and worker [default: 3].",
)
@click.option("--crops", type=click.IntRange(min=1), default=50_000, show_default=True)
@click.option(
    "--latency-jobs",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Single-crop jobs timed on an idle queue, and again while a batch runs.",
)
@click.option(
    "--seed-images",
    type=click.IntRange(min=1),
    default=300,
    show_default=True,
    help="Images for the seed's one-predict-per-image loop (about 18 a second).",
)
@click.option(
    "--compute-seconds",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Length of each timed compute phase (raw inference, normalization).",
)
@click.option("--backends", default="sqlite,postgresql", show_default=True)
@click.option(
    "--fields",
    type=click.IntRange(min=0),
    default=1_000,
    show_default=True,
    help="Synthetic amount fields in the field job through the worker (SQLite); 0 skips.",
)
@click.option(
    "--fields-only",
    is_flag=True,
    help="Only the field measurement: each reader on one core, then the field job end to end.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="DIGITS_MNIST_DIR",
    help="Directory with the MNIST IDX files [env DIGITS_MNIST_DIR].",
)
@click.option("--postgres-url", help="Use this database instead of a throwaway cluster.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where rendered crops are kept between runs [default: var/bench].",
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Sample the worker children with py-spy during the throughput run (needs py-spy).",
)
@click.option(
    "--json", "json_path", type=click.Path(path_type=Path), help="Also write the JSON here."
)
def bench(
    e2e_files: int | None,
    runs: int | None,
    crops: int,
    latency_jobs: int,
    seed_images: int,
    compute_seconds: float,
    backends: str,
    fields: int,
    fields_only: bool,
    data_dir: Path | None,
    postgres_url: str | None,
    cache_dir: Path | None,
    profile_dir: Path | None,
    json_path: Path | None,
) -> None:
    """Throughput, latency and memory end to end, against the raw model and the seed's way.

    Starts its own Redis, PostgreSQL cluster and worker (prefork, concurrency 2); prints a table
    and one JSON object. Takes 5 to 7 minutes with the defaults on two cores, plus the field
    measurement (each reader on one core, one job of amount fields through a SQLite worker).
    With --e2e-files N, only the user's path instead: N crop files, an idle worker, then
    `digits enqueue DIR --wait`, --runs times per backend, each run's stages read off the log.
    """
    from digits.cli.devtools import bench as benchmark

    names = tuple(name.strip() for name in backends.split(",") if name.strip())
    unknown = set(names) - set(benchmark.BACKENDS)
    if fields_only and not fields:
        raise click.BadParameter("--fields-only needs --fields above 0", param_hint="--fields")
    if unknown or not names:
        raise click.BadParameter(
            f"choose from {', '.join(benchmark.BACKENDS)}", param_hint="--backends"
        )
    if runs is not None and e2e_files is None:
        raise click.BadParameter("--runs counts --e2e-files runs", param_hint="--runs")
    if e2e_files is not None:
        _files_bench(e2e_files, runs or 3, names, compute_seconds, data_dir, cache_dir, json_path)
        return
    options = benchmark.BenchOptions(
        crops=crops,
        latency_jobs=latency_jobs,
        seed_images=seed_images,
        compute_seconds=compute_seconds,
        backends=names,
        data_dir=data_dir,
        postgres_url=postgres_url,
        cache_dir=cache_dir or benchmark.DEFAULT_CACHE,
        profile_dir=profile_dir,
        fields=fields,
        fields_only=fields_only,
    )
    report = benchmark.run(options, echo=lambda line: click.echo(line, err=True))
    _print(report, benchmark.table(report), json_path)


def _files_bench(
    files: int,
    runs: int,
    backends: tuple[str, ...],
    compute_seconds: float,
    data_dir: Path | None,
    cache_dir: Path | None,
    json_path: Path | None,
) -> None:
    """``--e2e-files``: this measurement alone, printed as a table and one JSON object."""
    from digits.cli.devtools import bench_files, bench_files_report

    options = bench_files.FilesOptions(
        files=files,
        runs=runs,
        backends=backends,
        compute_seconds=compute_seconds,
        data_dir=data_dir,
        cache_dir=cache_dir or bench_files.DEFAULT_CACHE,
    )
    report = bench_files.run(options, echo=lambda line: click.echo(line, err=True))
    _print(report, bench_files_report.table(report), json_path)


def _print(report: dict, table: str, json_path: Path | None) -> None:
    """A report as its Markdown table and one JSON line on stdout, and the JSON in ``json_path``."""
    click.echo(table)
    click.echo(json.dumps(report))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")


COMMANDS = [bench]
