"""The benchmark's report (:mod:`.bench`) as the table it prints, and each target met or not."""

from __future__ import annotations

from collections.abc import Sequence

# The targets on this machine (2 cores, CPU, the cnn model).
TARGET_THROUGHPUT = 2500.0  # crops/s end to end
TARGET_SHARE_OF_RAW = 0.40
TARGET_IDLE_P50_MS = 30.0
TARGET_IDLE_P99_MS = 150.0
TARGET_LOADED_P99_MS = 500.0
TARGET_RSS_MB = 800.0
TARGET_FIELDS = 150.0  # fields/s end to end, both readers (issue 11; moonshot 300)


def targets(report: dict) -> list[dict]:
    """Each target with the measured value and whether it is met, per backend."""
    out = []

    def check(name: str, value: float | None, limit: float, at_least: bool) -> None:
        met = value is not None and (value >= limit if at_least else value <= limit)
        out.append({"target": name, "limit": limit, "value": value, "met": met})

    for backend, result in report.get("end_to_end", {}).items():
        if "crops_per_s" not in result:
            continue
        check(f"{backend} end to end crops/s", result["crops_per_s"], TARGET_THROUGHPUT, True)
        check(
            f"{backend} share of raw inference", result["share_of_raw"], TARGET_SHARE_OF_RAW, True
        )
        idle, loaded = result["latency_idle"], result["latency_loaded"]
        check(f"{backend} idle p50 ms", idle["p50_ms"], TARGET_IDLE_P50_MS, False)
        check(f"{backend} idle p99 ms", idle["p99_ms"], TARGET_IDLE_P99_MS, False)
        check(f"{backend} p99 ms under batch", loaded["p99_ms"], TARGET_LOADED_P99_MS, False)
        peaks = [result["memory"]["parent"]] + result["memory"]["children"]
        largest = max(p["peak_rss_mb"] or 0.0 for p in peaks)
        check(f"{backend} peak RSS MB per process", largest, TARGET_RSS_MB, False)
    if "fields" in report:
        rate = report["fields"]["end_to_end"]["fields_per_s"]
        check("fields end to end fields/s (sqlite)", rate, TARGET_FIELDS, True)
    return out


def table(report: dict) -> str:
    """The report as a Markdown table, the form docs/performance.md keeps."""
    m = report["machine"]
    lines = [
        f"Machine: {m['nproc']} cores, {m['cpu_model']}; load average "
        f"{_load(m['load_before'])} before, {_load(m['load_after'])} after.",
        f"Command: `{report['command']}`",
        "",
        "| measurement | value |",
        "| --- | --- |",
    ]
    if "seed_predict" in report:
        lines += _digit_rows(report)
    if "fields" in report:
        lines += _field_rows(report["fields"])
    lines += ["", "| target | limit | measured | met |", "| --- | --- | --- | --- |"]
    for t in report["targets"]:
        lines.append(
            f"| {t['target']} | {t['limit']:g} | {t['value']} | {'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(lines)


def _digit_rows(report: dict) -> list[str]:
    lines = [
        f"| seed: `model.predict` per image | {report['seed_predict']['per_s']:.1f} images/s |",
        f"| raw inference, {report['raw_inference']['processes']} processes x 1 thread, "
        f"batches of {report['raw_inference']['batch']} | "
        f"{report['raw_inference']['per_s']:.0f} images/s |",
        f"| normalization (decode included), one core | "
        f"{report['normalize']['crops_per_s_one_core']:.0f} crops/s |",
        f"| compute ceiling: normalize + classify on {report['compute_ceiling']['processes']} "
        f"cores, no queue or database | {report['compute_ceiling']['crops_per_s']:.0f} crops/s |",
    ]
    for backend, r in report["end_to_end"].items():
        if "skipped" in r:
            lines.append(f"| {backend} | skipped: {r['skipped']} |")
            continue
        idle, loaded = r["latency_idle"], r["latency_loaded"]
        peak = max(p["peak_rss_mb"] or 0 for p in [r["memory"]["parent"], *r["memory"]["children"]])
        children = ", ".join(f"{c['peak_rss_mb']:.0f}" for c in r["memory"]["children"])
        pss = ", ".join(f"{c['pss_mb'] or 0:.0f}" for c in r["memory"]["children"])
        lines += [
            f"| {backend}: end to end, {r['crops']} crops | {r['crops_per_s']:.0f} crops/s "
            f"({r['share_of_raw']:.0%} of raw, {r['share_of_compute_ceiling']:.0%} of the "
            f"compute ceiling; submit {r['submit_seconds']:.1f} s of {r['seconds']:.1f} s; "
            f"{r['status']}) |",
            f"| {backend}: single-crop latency, idle queue ({idle['jobs']} jobs) | "
            f"p50 {idle['p50_ms']} ms, p95 {idle['p95_ms']} ms, p99 {idle['p99_ms']} ms |",
            f"| {backend}: single-crop latency, batch running ({loaded['jobs']} jobs) | "
            f"p50 {loaded['p50_ms']} ms, p95 {loaded['p95_ms']} ms, p99 {loaded['p99_ms']} ms |",
            f"| {backend}: worker peak RSS | parent {r['memory']['parent']['peak_rss_mb']:.0f} MB,"
            f" children {children} MB (largest {peak:.0f} MB; proportional share {pss} MB) |",
            f"| {backend}: CPU seconds during the end-to-end run | {_cpu_line(r['cpu'])} |",
        ]
        if r.get("profile", {}).get("shares"):
            shares = ", ".join(f"{k} {v:.0%}" for k, v in r["profile"]["shares"].items())
            lines.append(f"| {backend}: worker children's time (py-spy) | {shares} |")
    return lines


def _field_rows(f: dict) -> list[str]:
    r, kind = f["end_to_end"], f["kind"]
    peak = max(p["peak_rss_mb"] or 0 for p in [r["memory"]["parent"], *r["memory"]["children"]])
    return [
        f"| fields ({kind}): segmenter `read_fields`, decode included, one core | "
        f"{f['segmenter_per_s_one_core']:.1f} fields/s |",
        f"| fields ({kind}): sequence reader, decode included, one core | "
        f"{f['sequence_per_s_one_core']:.1f} fields/s (decode alone {f['decode_per_s_one_core']:.0f}"
        " fields/s) |",
        f"| fields ({kind}): both readers `read_pairs`, decode included, one core, "
        f"{f['field_chunk_size']} fields a call | {f['pair_per_s_one_core']:.1f} fields/s |",
        f"| fields: compute ceiling, both readers on {f['compute_ceiling']['processes']} cores, "
        f"no queue or database | {f['compute_ceiling']['fields_per_s']:.1f} fields/s |",
        f"| fields: end to end through the worker (sqlite), {r['fields']} {kind} fields | "
        f"{r['fields_per_s']:.1f} fields/s ({r['share_of_compute_ceiling']:.0%} of the compute "
        f"ceiling; {r['chunks']} chunks; submit {r['submit_seconds']:.1f} s of "
        f"{r['seconds']:.1f} s; {r['status']}: {r['ok']} ok, {r['needs_review']} to review, "
        f"{r['blank']} blank, {r['error']} errors) |",
        f"| fields: CPU seconds during the end-to-end run | {_cpu_line(r['cpu'])} |",
        f"| fields: worker peak RSS | largest process {peak:.0f} MB |",
    ]


def _cpu_line(cpu: dict) -> str:
    """Where the machine's CPU went during the run, so a slow run shows what it was slow on."""
    parts = [f"{role.replace('_', ' ')} {seconds:.1f}" for role, seconds in cpu["cpu_s"].items()]
    parts.append(f"other processes {cpu['others_cpu_s']:.1f}")
    capacity = cpu["wall_s"] * cpu["cores"]
    return f"{', '.join(parts)} (of {capacity:.1f} core-seconds in {cpu['wall_s']:.1f} s)"


def _load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)
