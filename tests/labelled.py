"""A labelled folder as `digits evaluate --labelled` and `devtools.cut_digits` read one: the scans
and a labels.csv of file,label rows."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def write_labelled(
    folder: Path, scans: Iterable[tuple[bytes, object]], stem: str = "s", suffix: str = ".jpg"
) -> list[str]:
    """Write each (bytes, label) as ``<stem><i><suffix>`` and the labels.csv; return the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (data, label) in enumerate(scans):
        (folder / f"{stem}{i}{suffix}").write_bytes(data)
        rows.append(f"{stem}{i}{suffix},{label}")
    (folder / "labels.csv").write_text("\n".join(["file,label", *rows]) + "\n")
    return rows
