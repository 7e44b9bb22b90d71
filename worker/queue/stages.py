"""Where a chunk's time went, for its log line: the stages a worker child passes a chunk through."""

from __future__ import annotations

import time


class StageClock:
    """Seconds a chunk spent in each stage, for its log line: ``decode`` (base64 and the image
    codecs), ``normalize`` (``normalize_many`` books these two a group at a time), ``infer`` (the
    digit network), ``read`` (a field chunk's base64, then both field readers, which decode,
    normalize and read in one call) and ``store`` (the database). Each :meth:`lap` books the time
    since the last one."""

    def __init__(self) -> None:
        self._mark = time.monotonic()
        self.seconds: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._mark
        self._mark = now

    def line(self) -> str:
        """Tenths of a millisecond: a small chunk's decode takes well under a millisecond, which
        three decimals would log as zero."""
        return " ".join(f"{stage}={spent:.4f}" for stage, spent in self.seconds.items())
