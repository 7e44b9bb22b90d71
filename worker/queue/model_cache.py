"""One Classifier per worker child, loaded on the child's first chunk.

Not in the parent: TensorFlow state built before ``fork`` hangs in the children. Not in
``worker_process_init``: Celery kills a child whose init handler takes more than ~4 s, and loading
TensorFlow and the model takes about that. Not per task: that would cost seconds per chunk. So the
first chunk a child runs loads the model, every later chunk reuses it, and the load is logged with
the process id so an operator (and the tests) can see it happened once per child.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from digits.model.inference import Classifier
from digits.model.sequence import SequenceReader

log = logging.getLogger("digits.worker")
LOADED_MESSAGE = "model %s loaded in process %d (load %d in this process) in %.1f s"

_classifier: Classifier | None = None
_loaded_in: int | None = None
_loads = 0
_forbidden_in: int | None = None
_reader: SequenceReader | None = None
_reader_in: int | None = None


class ModelInParentError(RuntimeError):
    """Something tried to build the model in the worker's parent, which would hang its children."""


def forbid_in_this_process() -> None:
    """Called in the worker's parent before it forks: a load here is a bug, so make it loud."""
    global _forbidden_in
    _forbidden_in = os.getpid()


def classifier(model_path: Path) -> Classifier:
    """This process's Classifier, loaded on first use with one TensorFlow thread per pool.

    Two prefork children on two cores would otherwise each start a thread per core and fight.
    """
    global _classifier, _loaded_in, _loads
    pid = os.getpid()
    if pid == _forbidden_in:
        raise ModelInParentError("the model must be loaded in a worker child, never the parent")
    if _classifier is None or _loaded_in != pid:
        if _loaded_in != pid:
            _loads = 0
        started = time.monotonic()
        _classifier = Classifier.load(model_path, threads=1)
        _loaded_in, _loads = pid, _loads + 1
        log.info(LOADED_MESSAGE, _classifier.version, pid, _loads, time.monotonic() - started)
    return _classifier


def field_reader(model_path: Path) -> SequenceReader:
    """This process's sequence reader for whole fields, loaded on the first field chunk.

    Digit-only workers never pay for it; a field worker pays once per child, like the classifier.
    """
    global _reader, _reader_in
    pid = os.getpid()
    if pid == _forbidden_in:
        raise ModelInParentError("the model must be loaded in a worker child, never the parent")
    if _reader is None or _reader_in != pid:
        started = time.monotonic()
        _reader, _reader_in = SequenceReader.load(model_path), pid
        log.info(LOADED_MESSAGE, _reader.version, pid, 1, time.monotonic() - started)
    return _reader
