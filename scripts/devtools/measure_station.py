"""The review station's figures for docs/review.md: what 1,000 kept crops cost the database, and
how fast the test's scripted operator keys (items per minute, next item on screen, p50 and p95).

    python scripts/devtools/measure_station.py [--count 1000] [--skip-browser]

Storage: a job of ``--count`` scan-like crops (the MNIST sample shipped with digits, PNG and JPEG
as the scan-like renderer makes them), every one flagged, written as the worker writes a chunk,
once keeping the crops and once not, on SQLite (the file's growth after a checkpoint) and on
PostgreSQL (the ``crops`` table with its TOAST and index, ``pg_total_relation_size``). The
difference is the crops' cost. Keying: tests/test_station_browser.py on SQLite, run under pytest
with DIGITS_STATION_MEASURE, which writes what the scripted operator measured (a real worker,
a real ``digits review-server``, headless Chromium; keystrokes as fast as WebDriver sends them, so
the figure is the station's ceiling, not a person's pace).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python scripts/devtools/measure_station.py` from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ROOT = Path(__file__).resolve().parents[2]


def _crops(count: int) -> list[tuple[str, bytes]]:
    from digits.model import data
    from digits.model.scanlike import scanlike_set

    images, _ = data.sample()
    while len(images) < count:
        images = [*images, *images]
    blobs = scanlike_set(images[:count], seed=7)
    return [(f"scan/{i:05d}", blob) for i, blob in enumerate(blobs)]


def _write_job(url: str, crops: list[tuple[str, bytes]], policy: str) -> None:
    from digits.worker.config import Settings
    from digits.worker.store import crops as kept_crops
    from digits.worker.store import db, writes
    from digits.worker.submission.jobs import Crop, create_job, plan_job

    settings = Settings(database_url=url)
    plan = plan_job([Crop(key, blob) for key, blob in crops], settings, source="measure")
    with db.session_scope(url) as session:
        create_job(session, plan)
    results = [
        writes.ItemResult(key, "needs_review", 3, 0.6, [[3, 0.6], [8, 0.3]]) for key, _ in crops
    ]
    encoded = [[key, base64.b64encode(blob).decode()] for key, blob in crops]
    results, kept = kept_crops.chosen(results, encoded, policy, settings.max_item_bytes)
    with db.session_scope(url) as session:
        writes.write_chunk(session, plan.job_id, results, None, kept)


def _sqlite_size(url: str) -> int:
    from sqlalchemy import text

    from digits.worker.store import db

    with db.engine_for(url).connect() as connection:
        connection.execute(text("PRAGMA wal_checkpoint(TRUNCATE)"))
    db.dispose_all()
    return Path(url.removeprefix("sqlite:///")).stat().st_size


def storage(count: int) -> dict:
    from digits.cli.devtools.local import local_postgres, postgres_bindir
    from digits.worker.store import db

    crops = _crops(count)
    raw = sum(len(blob) for _, blob in crops)
    out: dict = {"crops": count, "crop_bytes": raw, "mean_crop_bytes": round(raw / count)}
    with tempfile.TemporaryDirectory() as directory:
        sizes = {}
        for policy in ("none", "review"):
            url = f"sqlite:///{directory}/{policy}.sqlite3"
            db.upgrade(url)
            _write_job(url, crops, policy)
            sizes[policy] = _sqlite_size(url)
        out["sqlite_bytes_per_1000"] = round((sizes["review"] - sizes["none"]) * 1000 / count)
    if postgres_bindir() is not None:
        from sqlalchemy import text

        with local_postgres(durable=False) as server:
            url = server.create_database()
            db.upgrade(url)
            _write_job(url, crops, "review")
            engine = db.engine_for(url).execution_options(isolation_level="AUTOCOMMIT")
            with engine.connect() as connection:
                connection.execute(text("VACUUM ANALYZE crops"))
                size = connection.execute(
                    text("SELECT pg_total_relation_size('crops')")
                ).scalar_one()
            db.dispose_all()
        out["postgresql_bytes_per_1000"] = round(size * 1000 / count)
    return out


def keying() -> list[dict]:
    with tempfile.TemporaryDirectory() as directory:
        target = Path(directory) / "station.json"
        env = {**os.environ, "DIGITS_STATION_MEASURE": str(target)}
        command = [sys.executable, "-m", "pytest", "tests/test_station_browser.py", "-q", "-k"]
        command += ["sqlite and operators"]
        subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(target.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--skip-browser", action="store_true")
    args = parser.parse_args()
    report = {"storage": storage(args.count)}
    if not args.skip_browser:
        report["keying"] = keying()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
