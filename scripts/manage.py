"""``digits``: the one management command, with a subcommand per job.

Subcommands live in modules named for what they do and are registered here; each imports TensorFlow
and friends only when it runs, so ``digits --help`` answers at once.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

if __package__ in (None, ""):  # `python scripts/manage.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COMMAND_MODULES = (
    "digits.cli.model_commands",
    "digits.cli.job_commands",
    "digits.cli.ops_commands",
    "digits.cli.recovery_commands",
    "digits.cli.bench_commands",
    "digits.cli.review_commands",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Read handwritten digits off scanned documents."""


for _name in COMMAND_MODULES:
    for _command in importlib.import_module(_name).COMMANDS:
        cli.add_command(_command)


def main() -> None:
    from digits.model import quiet

    quiet.install()  # before any command imports TensorFlow
    cli(prog_name="digits")


if __name__ == "__main__":
    main()
