"""One Classifier (and, for field jobs, the field reader and the field digit network) per worker
child, loaded as the child starts.

Not in the parent: TensorFlow state built before ``fork`` hangs in the children. Not per task:
that would cost seconds per chunk. Each child loads in ``worker_process_init`` (:func:`preload`,
called by :mod:`.warmup`, which also keeps the worker from saying it is ready before), every chunk
reuses what it loaded, and a load is logged with the process id so an operator (and the tests) can
see it happened once per child. A child whose start-up load failed tries again on its first chunk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

from digits.model import variants
from digits.model.fields import FieldDigits
from digits.model.inference import BATCH as INFERENCE_BATCH
from digits.model.inference import Classifier
from digits.model.normalize import ASPECT_VIEWS
from digits.model.sequence import SequenceReader
from digits.worker.config import Settings

log = logging.getLogger("digits.worker")
LOADED_MESSAGE = "model %s loaded in process %d (load %d in this process) in %.1f s"

_classifier: Classifier | None = None
_loaded_in: int | None = None
_loads = 0
_forbidden_in: int | None = None
# The field models by role ("reader", "digits"), each with the process it was loaded in.
_Model = TypeVar("_Model", FieldDigits, SequenceReader)
_field_models: dict[str, tuple[int, FieldDigits | SequenceReader]] = {}


class ModelInParentError(RuntimeError):
    """Something tried to build the model in the worker's parent, which would hang its children."""


def forbid_in_this_process() -> None:
    """Called in the worker's parent before it forks: a load here is a bug, so make it loud."""
    global _forbidden_in
    _forbidden_in = os.getpid()


def preload(settings: Settings) -> None:
    """Everything this child's chunks will need, loaded and run once now: the first job pays no
    start-up (a first call traces TensorFlow's graphs, which costs as much as a chunk)."""
    loaded = classifier(settings.model_path)
    # oneDNN prepares its kernels per batch size: a crop, a bitmap with its aspect views, each
    # again as an unsure crop's second look (three variants, inference.SECOND_LOOK), a chunk.
    for batch in (1, 3, 1 + len(ASPECT_VIEWS), 3 * (1 + len(ASPECT_VIEWS)), settings.chunk_size):
        loaded.probabilities(np.zeros((batch, 28, 28), np.float32))
    variants.rotated(variants.thicker(np.zeros((1, 28, 28), np.float32)), 8.0)  # OpenCV's too
    if settings.preload_field_reader:
        field_reader(settings.field_model_path).read([np.ones((48, 160), np.float32)])
        digits = field_digits(settings.field_digits_path, settings.model_path)
        # A field chunk's crops, three looks each, in the networks' full batches: every crop
        # by the field digit network, the pieces read alone by the cnn too.
        for batch in (1, INFERENCE_BATCH):
            digits.read(np.zeros((batch, 28, 28), np.float32), np.ones(batch, bool))


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


def field_digits(model_path: Path, apart_path: Path) -> FieldDigits:
    """This process's digit networks for the segmenter of fields: the field digit network
    (``model.pieces``), loaded like the field reader (at start where DIGITS_PRELOAD_FIELD_READER
    is on, else on the first field chunk), with this process's cnn at ``apart_path`` for the
    pieces read alone (``fields.FieldDigits``). A digit job never loads the field network."""
    return _field_model(
        "digits",
        lambda: FieldDigits(Classifier.load(model_path, threads=1), classifier(apart_path)),
    )


def field_reader(model_path: Path) -> SequenceReader:
    """This process's sequence reader for whole fields, loaded at start (:func:`preload`) or,
    where DIGITS_PRELOAD_FIELD_READER is off, on the child's first field chunk."""
    return _field_model("reader", lambda: SequenceReader.load(model_path))


def _field_model(role: str, load: Callable[[], _Model]) -> _Model:
    """The field model of ``role`` this process holds, loaded (and logged) on first use; one
    copied from the parent by a fork is loaded again, and the parent never loads one."""
    pid = os.getpid()
    if pid == _forbidden_in:
        raise ModelInParentError("the model must be loaded in a worker child, never the parent")
    held = _field_models.get(role)
    if held is None or held[0] != pid:
        started = time.monotonic()
        model = load()
        _field_models[role] = held = (pid, model)
        log.info(LOADED_MESSAGE, model.version, pid, 1, time.monotonic() - started)
    return held[1]
