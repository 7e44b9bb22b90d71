"""``digits``: the one management command, with a subcommand per job.

Subcommands live in modules named for what they do and are registered here; each imports TensorFlow
and friends only when it runs, so ``digits --help`` answers at once.
"""

from __future__ import annotations

import atexit
import importlib
import os
import sys
import threading
from pathlib import Path
from typing import NoReturn

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


# Commands whose work is over when they return (rows committed, messages sent, their answer
# printed) and that leave no file of their own to close: their process ends at once instead of
# tearing down every module it imported. That took 0.15 s of each `digits enqueue` (SQLAlchemy,
# Celery, Kombu: 2% of 20,000 crops' wall time to rows) and 0.75 s of each `digits classify`
# (TensorFlow: a fifth of reading one file).
QUICK_EXIT = frozenset({"enqueue", "status", "classify"})


def main() -> None:
    from digits.model import quiet

    quiet.install()  # before any command imports TensorFlow
    try:
        cli(prog_name="digits")
    except SystemExit as done:
        if len(sys.argv) > 1 and sys.argv[1] in QUICK_EXIT:
            exit_now(done.code)
        raise


def exit_now(code: object) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, less the interpreter's teardown: the exit
    handlers run first (logging's flush, the database pools' close: ``db.dispose_all``), then
    stdout and stderr are flushed. With a thread of its own still running, the process exits
    the usual way, which waits for it; and so it does under a profiler or a coverage tracer,
    which write what they saw as it ends."""
    if threading.active_count() > 1 or sys.getprofile() or sys.gettrace():
        raise SystemExit(code)
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()  # what the interpreter runs first at exit
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: started with that descriptor closed
                stream.flush()
        except (OSError, ValueError):  # a closed pipe: Python's own exit is 120 then
            status = 120
    os._exit(status)


if __name__ == "__main__":
    main()
