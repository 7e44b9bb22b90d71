"""TensorFlow's start-up noise kept off the CLI and the worker log, its real warnings kept.

TensorFlow 2.18+ writes its start-up lines from C++ straight to file descriptor 2, before its own
logging is set up, so ``TF_CPP_MIN_LOG_LEVEL`` does not reach them: the absl preamble, the oneDNN
notice, "Could not find cuda drivers" and, on a machine without a GPU, the *error* "failed call to
cuInit". So :func:`install` does two things, once per process, and both the ``digits`` command
(:func:`digits.cli.manage.main`) and the Celery app (:mod:`digits.worker.queue.celery_app`) call it
before anything imports TensorFlow:

* ``TF_CPP_MIN_LOG_LEVEL=2`` unless set: C++ INFO and WARNING lines after start-up stay quiet,
  errors still show;
* an import hook: the first ``import tensorflow`` (wherever it happens: keras, the classifier,
  training) and its first look for devices run with descriptor 2 captured; afterwards every
  captured line is written back except the known start-up notices (:data:`NOISE`). A Python
  warning, a traceback or any unknown line during the import still shows.

Set ``DIGITS_TF_NOISE=1`` to see everything (debugging a real GPU set-up).

The same hook keeps matplotlib out of that import. Keras imports ``matplotlib.pyplot`` when it
loads, for plotting helpers (``keras.visualization``) that nothing here calls: 28 MB of resident
memory and about 0.46 s of start-up in every process that reads digits, each worker child
included. So while TensorFlow and Keras load, matplotlib is not importable (Keras then leaves
those helpers without it, as on a machine without matplotlib); once they are loaded it is
importable again, and the commands that draw pictures (``digits evaluate``, ``digits train``)
import it as before.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator

NOISE = re.compile(
    r"All log messages before absl::InitializeLog\(\) is called"
    r"|oneDNN custom operations are on"
    r"|Could not find cuda drivers"
    r"|failed call to cuInit"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|TF-TRT Warning: Could not find TensorRT"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|rebuild TensorFlow with the appropriate compiler flags"
    r"|cuda_diagnostics|kernel driver does not appear to be running"
    r"|Skipping registering GPU devices"
)
VERBOSE_ENV = "DIGITS_TF_NOISE"


# Imported by Keras as it loads and never used by this product's readers (see the docstring).
NOT_WHILE_LOADING = ("matplotlib", "matplotlib.pyplot")


def install() -> None:
    """Quiet TensorFlow's start-up in this process (and the processes it forks), and keep
    matplotlib out of it; idempotent."""
    if not os.environ.get(VERBOSE_ENV):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())


@contextlib.contextmanager
def without_plotting() -> Iterator[None]:
    """matplotlib unimportable inside (an import of it raises ImportError), importable after.

    A ``None`` in ``sys.modules`` is Python's own way to make an import fail; only modules not
    loaded yet are hidden, and only the entries made here are removed, so nesting is harmless
    and a process that loaded matplotlib before keeps it.
    """
    hidden = [name for name in NOT_WHILE_LOADING if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


@contextlib.contextmanager
def filtered_stderr(noise: re.Pattern[str] = NOISE) -> Iterator[None]:
    """Capture descriptor 2 (C++ writes included) and write back to it the lines ``noise`` misses."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().splitlines(keepends=True)
                if not noise.search(line.decode(errors="replace"))
            ]
            # Back where they were going (the terminal, the worker's log file), not to whatever
            # sys.stderr is now (a test runner's capture, Celery's logging proxy).
            if kept:
                os.write(2, b"".join(kept))


class _Finder(importlib.abc.MetaPathFinder):
    """Finds ``keras`` and ``tensorflow``, whichever comes first, and wraps their loading: both
    in :func:`without_plotting`, TensorFlow's also in :func:`filtered_stderr`. Keras imports
    TensorFlow as it loads and TensorFlow imports Keras, so either one's import holds the other's."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in ("tensorflow", "keras"):
            return None
        if fullname == "tensorflow":
            sys.meta_path.remove(self)  # loaded once: never in the way again
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader, tensorflow=fullname == "tensorflow")
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader, tensorflow: bool):
        self.loader = loader
        self.tensorflow = tensorflow

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with without_plotting():
            if not self.tensorflow:
                self.loader.exec_module(module)
                return
            with filtered_stderr() if not os.environ.get(VERBOSE_ENV) else contextlib.nullcontext():
                self.loader.exec_module(module)
                # The first look for devices is where "failed call to cuInit" comes from.
                module.config.list_physical_devices()

    def __getattr__(self, name):  # is_package, get_resource_reader...: the real loader's
        return getattr(self.loader, name)
