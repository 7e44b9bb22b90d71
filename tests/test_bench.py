"""`digits bench` runs end to end in a tiny configuration and reports every figure.

Only the shape of the report is checked, never a speed: timings on a shared machine prove nothing,
and a test that depended on them would fail for reasons that are not bugs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.services import unavailable

ROOT = Path(__file__).resolve().parent.parent
LATENCY = ("jobs", "p50_ms", "p95_ms", "p99_ms", "max_ms")


def test_tiny_benchmark_reports_every_field(mnist_dir: Path, model_path: Path, tmp_path: Path):
    from digits.cli.devtools.local import postgres_bindir

    if postgres_bindir() is None:
        unavailable("PostgreSQL binaries not installed: the benchmark measures both databases")
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "scripts" / "manage.py"), "bench", "--crops", "300"]
    argv += ["--latency-jobs", "20", "--seed-images", "10", "--compute-seconds", "0.5"]
    argv += ["--fields", "0"]  # the field measurement has a test of its own, below
    argv += ["--data", str(mnist_dir), "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    env = {**os.environ, "DIGITS_MODEL": str(model_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]

    report = json.loads(out.read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == report  # the JSON line printed
    assert "| target | limit | measured | met |" in done.stdout  # and the table before it
    assert {"nproc", "cpu_model", "load_before", "load_after"} <= set(report["machine"])
    assert report["seed_predict"]["per_s"] > 0
    assert report["raw_inference"]["per_s"] > 0
    assert len(report["raw_inference"]["per_process"]) == 2
    assert report["normalize"]["crops_per_s_one_core"] > 0
    assert report["compute_ceiling"]["crops_per_s"] > 0
    assert set(report["end_to_end"]) == {"sqlite", "postgresql"}
    for backend, result in report["end_to_end"].items():
        assert result["crops"] == 300, backend
        assert result["status"] in ("done", "reviewing"), backend  # flagged items await people
        assert result["ok"] + result["needs_review"] + result["blank"] == 300, backend
        for name in ("crops_per_s", "seconds", "share_of_raw", "share_of_compute_ceiling"):
            assert result[name] > 0, (backend, name)
        assert result["latency_idle"]["jobs"] == 20
        assert set(LATENCY) <= set(result["latency_idle"])
        assert set(LATENCY) <= set(result["latency_loaded"])
        memory = result["memory"]
        assert memory["parent"]["rss_mb"] > 0 and len(memory["children"]) == 2
        assert all(child["peak_rss_mb"] > 0 for child in memory["children"])
        roles = {"client", "worker_parent", "worker_children", "redis"}
        assert roles <= set(result["cpu"]["cpu_s"])
    assert "postgres" in report["end_to_end"]["postgresql"]["cpu"]["cpu_s"]
    targets = {target["target"] for target in report["targets"]}
    assert len(targets) == 12 and all("met" in target for target in report["targets"])


def test_tiny_field_benchmark_reports_both_readers(
    mnist_dir: Path, model_path: Path, tmp_path: Path
):
    from digits.worker.config import Settings

    if not Settings.from_env().field_model_path.is_file():
        unavailable("no field model: the field measurement reads with the sequence reader")
    out = tmp_path / "bench.json"
    argv = [sys.executable, str(ROOT / "scripts" / "manage.py"), "bench", "--fields-only"]
    argv += ["--fields", "6", "--compute-seconds", "0.2", "--data", str(mnist_dir)]
    argv += ["--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    env = {**os.environ, "DIGITS_MODEL": str(model_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]

    report = json.loads(out.read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == report
    assert "| fields: end to end through the worker (sqlite), 6 amount fields |" in done.stdout
    assert "end_to_end" not in report and "seed_predict" not in report  # fields only
    fields = report["fields"]
    assert fields["kind"] == "amount" and fields["distinct"] == 6
    for name in ("segmenter_per_s_one_core", "sequence_per_s_one_core", "decode_per_s_one_core"):
        assert fields[name] > 0, name
    assert fields["compute_ceiling"]["fields_per_s"] > 0
    result = fields["end_to_end"]
    assert result["fields"] == 6 and result["chunks"] == 1
    assert result["status"] in ("done", "reviewing")
    assert result["ok"] + result["needs_review"] + result["blank"] == 6
    for name in ("fields_per_s", "seconds", "share_of_compute_ceiling"):
        assert result[name] > 0, name
    assert {"client", "worker_parent", "worker_children", "redis"} <= set(result["cpu"]["cpu_s"])
    assert len(result["memory"]["children"]) == 2
    [target] = report["targets"]
    assert target["target"] == "fields end to end fields/s (sqlite)" and target["limit"] == 150
    assert target["value"] == result["fields_per_s"] and "met" in target
