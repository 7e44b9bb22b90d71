"""The report of ``digits bench --e2e-files`` (:mod:`.bench_files`) as the Markdown it prints, and
the issue's targets met or not."""

from __future__ import annotations

from collections.abc import Sequence

from digits.cli.devtools.bench_files_probe import SPENT

TARGETS = {"sqlite": 2500.0, "postgresql": 2000.0}  # issue 13: median crops/s, files to rows


def targets(backends: dict) -> list[dict]:
    """Each backend's median against its target."""
    return [
        {"target": f"{b} median crops/s", "limit": TARGETS[b], "value": r["median_crops_per_s"]}
        | {"met": r["median_crops_per_s"] >= TARGETS[b]}
        for b, r in backends.items()
        if "runs" in r
    ]


def table(report: dict) -> str:
    """The report as Markdown: each run, where its time went, and the targets."""
    m, f, raw = report["machine"], report["files"], report["raw_inference"]
    lines = [
        f"Machine: {m['nproc']} cores, {m['cpu_model']}; load average "
        f"{_load(m['load_before'])} before, {_load(m['load_after'])} after.",
        f"Command: `{report['command']}`; {f['count']} files ({f['formats']['png']} PNG, "
        f"{f['formats']['jpeg']} JPEG, {f['longer_side_px'][0]}-{f['longer_side_px'][1]} px); "
        f"chunks of {report['chunk_size']}; the worker idle {report['idle_before_job_s']:g} s "
        "before each job.",
        f"Raw model, {raw['processes']} processes x 1 thread: {raw['per_s']:.0f} crops/s.",
        "",
        "| backend | run | crops/s | wall s | first chunk received / started s | last chunk "
        "done s | enqueue CPU s | children's first chunk s (median) | queue wait s | others' "
        "CPU s | first crop after start ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    stage_rows = []
    for backend, result in report["backends"].items():
        if "skipped" in result:
            lines.append(f"| {backend} | skipped: {result['skipped']} | | | | | | | | | |")
            continue
        for number, r in enumerate(result["runs"], 1):
            t, c = r["timeline"], r["chunks"]
            firsts = ", ".join(
                f"{k['first_chunk_s']:.2f} ({k['median_chunk_s']:.2f})" for k in r["children"]
            )
            lines.append(
                f"| {backend} | {number} | {r['crops_per_s']:.0f} | {r['enqueue']['wall_s']:.2f} "
                f"| {t['first_chunk_received_s']} / {t['first_chunk_started_s']} "
                f"| {t['last_chunk_done_s']} | {r['enqueue']['cpu_s']:.2f} | {firsts} "
                f"| {r['queue']['mean_wait_s']} | {r['cpu']['others_cpu_s']:.1f} "
                f"| {r['first_crop_ms']:.1f} |"
            )
            shares = " | ".join(f"{s:.2f} ({s / c['busy_s']:.0%})" for s in c["stages_s"].values())
            stage_rows.append(f"| {backend} | {number} | {c['count']} | {shares} |")
        lines.append(
            f"| {backend} | median | {result['median_crops_per_s']:.0f} "
            f"({result['share_of_raw']:.0%} of raw) | | | | | | | | |"
        )
    names = " | ".join(SPENT)
    lines += ["", f"| backend | run | chunks | {names} (children's seconds) |"]
    lines += ["| --- | --- | --- |" + " --- |" * len(SPENT), *stage_rows]
    lines += ["", "| target | limit | measured | met |", "| --- | --- | --- | --- |"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['limit']:g} | {t['value']} | {_yes(t['met'])} |")
    return "\n".join(lines)


def _yes(met: bool) -> str:
    return "yes" if met else "no"


def _load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)
