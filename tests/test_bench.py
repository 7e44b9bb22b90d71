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
    one_core = ("segmenter", "sequence", "pair", "decode")
    for name in (f"{reader}_per_s_one_core" for reader in one_core):
        assert fields[name] > 0, name
    assert fields["compute_ceiling"]["fields_per_s"] > 0
    assert fields["field_chunk_size"] == 32  # what a worker child reads a field chunk as
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


def test_e2e_files_benchmark_times_the_users_enqueue(
    mnist_dir: Path, model_path: Path, tmp_path: Path
):
    """`digits bench --e2e-files N`: N crop files on disk, an idle worker, then the installed
    `digits enqueue DIR --wait`, timed from outside, with where the time went."""
    from digits.cli.devtools.bench_files_probe import SPENT

    out = tmp_path / "e2e.json"
    argv = [sys.executable, str(ROOT / "scripts" / "manage.py"), "bench", "--e2e-files", "60"]
    argv += ["--runs", "1", "--backends", "sqlite", "--compute-seconds", "0.5"]
    argv += ["--data", str(mnist_dir), "--cache-dir", str(tmp_path / "cache"), "--json", str(out)]
    env = {**os.environ, "DIGITS_MODEL": str(model_path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["DIGITS_CHUNK_SIZE"] = "16"  # the worker and the enqueue both: 60 files, four chunks
    done = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]

    report = json.loads(out.read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == report  # the JSON line printed
    assert "| sqlite | 1 |" in done.stdout and "| sqlite | median |" in done.stdout  # the table
    assert report["command"] == "digits bench --e2e-files 60 --runs 1 --backends sqlite"
    assert report["chunk_size"] == 16 and report["concurrency"] == 2
    files = report["files"]
    assert files["count"] == 60 and files["formats"]["png"] + files["formats"]["jpeg"] == 60
    assert files["formats"]["png"] > 0 and files["formats"]["jpeg"] > 0
    assert 20 <= files["longer_side_px"][0] <= files["longer_side_px"][1] <= 300
    assert len(list(Path(files["directory"]).iterdir())) == 60
    assert report["raw_inference"]["per_s"] > 0
    assert len(report["raw_inference"]["per_process"]) == 2
    assert set(report["backends"]) == {"sqlite"}

    sqlite = report["backends"]["sqlite"]
    [run] = sqlite["runs"]
    assert sqlite["median_crops_per_s"] == run["crops_per_s"] > 0
    assert sqlite["share_of_raw"] > 0
    assert run["items"] == 60 and run["error"] == 0
    # Read by the workers; "reviewing" while flagged items await a person (store.reviews).
    assert run["status"] == ("reviewing" if run["needs_review"] else "done")
    assert run["ok"] + run["needs_review"] + run["blank"] == 60
    enqueue = run["enqueue"]
    assert enqueue["wall_s"] > 0 and enqueue["cpu_s"] > 0 and enqueue["max_rss_mb"] > 0
    assert enqueue["cpu_s"] == round(enqueue["user_s"] + enqueue["sys_s"], 2)
    assert run["worker_ready_s"] > 0 and run["worker_idle_s"] >= 3.0
    assert 0 < run["first_crop_ms"] < 120_000  # one crop, the first job after the worker started
    # The log's times and this clock agree: each moment falls inside the enqueue's run.
    t = run["timeline"]
    assert 0 < t["first_chunk_received_s"] <= t["first_chunk_started_s"] + 0.01
    assert t["first_chunk_started_s"] < t["last_chunk_done_s"] <= enqueue["wall_s"]
    chunks = run["chunks"]
    assert chunks["count"] == 4 and chunks["items"] == 60
    assert chunks["busy_s"] > 0 and chunks["median_s"] > 0 and chunks["in_worker_wait_mean_s"] >= 0
    assert list(chunks["stages_s"]) == list(SPENT)
    assert chunks["stages_s"]["decode"] > 0 and chunks["stages_s"]["normalize"] > 0
    assert chunks["stages_s"]["infer"] > 0
    assert chunks["stages_s"]["store"] > 0 and chunks["stages_s"]["read"] == 0  # digits only
    assert 1 <= len(run["children"]) <= 2
    assert sum(child["chunks"] for child in run["children"]) == 4
    for child in run["children"]:
        assert child["process"].startswith("ForkPoolWorker-")
        assert child["first_chunk_s"] > 0 and child["median_chunk_s"] > 0
        assert child["model_load_s"] >= 0 and child["model_loaded_at_s"] is not None
    # Redis is sampled every 20 ms: warm children may take a small job's chunks before any sample
    # sees one waiting, and then there is nothing to date.
    queue = run["queue"]
    assert queue["samples"] > 0 and 0 <= queue["peak_chunks"] <= run["chunks"]["count"]
    assert queue["mean_wait_s"] >= 0
    if queue["peak_chunks"]:
        assert 0 < queue["first_seen_s"] <= enqueue["wall_s"]
    else:
        assert queue["first_seen_s"] is None and queue["mean_wait_s"] == 0
    roles = {"bench", "worker_parent", "worker_children", "redis", "enqueue"}
    assert roles <= set(run["cpu"]["cpu_s"]) and run["cpu"]["others_cpu_s"] >= 0
    [target] = report["targets"]
    assert target["target"] == "sqlite median crops/s" and target["limit"] == 2500
    assert target["value"] == sqlite["median_crops_per_s"] and "met" in target


def test_e2e_files_are_rendered_once(mnist_dir: Path, tmp_path: Path):
    """The files are cached by count, seed and renderer: a rerun reads them, a new seed draws anew."""
    from digits.cli.devtools.bench_files import scan_files

    directory, manifest = scan_files(12, 0, mnist_dir, tmp_path)
    written = {path.name: path.stat().st_mtime_ns for path in directory.iterdir()}
    assert len(written) == 12 and manifest["count"] == 12
    assert {name.rsplit(".", 1)[1] for name in written} <= {"png", "jpg"}

    again, same = scan_files(12, 0, mnist_dir, tmp_path)
    assert (again, same) == (directory, manifest)
    assert {path.name: path.stat().st_mtime_ns for path in again.iterdir()} == written

    other, _ = scan_files(12, 1, mnist_dir, tmp_path)
    assert other != directory
    first = [min(d.iterdir()).read_bytes() for d in (directory, other)]
    assert first[0] != first[1]
