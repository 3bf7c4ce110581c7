"""scripts/bench_report.py: a ratio is taken within each run, then the median of those."""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _script(name: str) -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report() -> ModuleType:
    return _script("bench_report")


def _records(report: ModuleType) -> list[dict[str, Any]]:
    # the machine drifts: the baseline is fast in run 2, and our system in run 1
    ours = [10.0, 40.0, 30.0]
    rclone = [20.0, 20.0, 60.0]
    out: list[dict[str, Any]] = []
    for run, (a, b) in enumerate(zip(ours, rclone, strict=True)):
        for system, v in ((report.API, a), (report.RCLONE, b)):
            out.append(
                {"rtt_ms": 0.0, "workload": "random", "system": system, "run": run, "reads_s": v}
            )
    out.append(  # a failed run counts for nothing
        {"rtt_ms": 0.0, "workload": "random", "system": report.RCLONE, "run": 3, "error": "x"}
    )
    return out


def _row(rows: list[dict[str, Any]], target: str, system: str) -> dict[str, Any]:
    (row,) = [r for r in rows if r["target"] == target and r["system"] == system]
    return row


def test_a_target_ratio_is_the_median_of_the_runs_own_ratios(report: ModuleType) -> None:
    records = _records(report)
    summary = report.summarize(records)
    row = _row(report.evaluate(summary, records), "random reads/s >= rclone", report.API)
    assert row["measured"] == pytest.approx(0.5)  # runs: 0.5, 2.0, 0.5
    assert row["result"] == "MISS"
    assert row["value"] == 30.0 and row["baseline"] == 20.0  # the medians, as shown


def test_without_records_the_ratio_is_of_the_medians(report: ModuleType) -> None:
    summary = report.summarize(_records(report))
    row = _row(report.evaluate(summary), "random reads/s >= rclone", report.API)
    assert row["measured"] == pytest.approx(1.5)  # 30 / 20
    assert row["result"] == "PASS"


def test_the_table_shows_the_paired_ratio(report: ModuleType) -> None:
    records = _records(report)
    summary = report.summarize(records)
    lines = report.workload_table(summary, 0.0, "random", report.by_run(records))
    (api_line,) = [line for line in lines if line.startswith(f"| {report.API} |")]
    assert api_line.split(" | ")[-2] == "0.50x"
    text = report.render(
        {
            "when": "now",
            "mode": "quick",
            "machine": "m",
            "commit": "c",
            "runs": 3,
            "elapsed_s": 1.0,
            "data": "d",
        },
        summary,
        report.evaluate(summary, records),
        records,
    )
    assert "| 0.50x |" in text and "1.50x" not in text


def test_the_reader_processes_targets_compare_within_their_own_workload(
    report: ModuleType,
) -> None:
    records = [
        {"rtt_ms": 0.0, "workload": w, "system": s, "run": 0, "epoch2_files_s": v}
        for w, s, v in (
            ("epoch", report.API, 600.0),
            ("epoch", report.LOCAL, 1000.0),
            ("loader", report.API, 900.0),
            ("loader", report.LOCAL, 3000.0),
        )
    ]
    summary = report.summarize(records)
    rows = report.evaluate(summary, records)
    threads = _row(rows, "epoch 2 files/s >= 0.6x local disk", report.API)
    procs = _row(rows, "epoch 2 files/s >= 0.6x local disk (8 reader processes)", report.API)
    assert (threads["measured"], threads["result"]) == (pytest.approx(0.6), "PASS")
    assert (procs["measured"], procs["result"]) == (pytest.approx(0.3), "MISS")
    lines = report.workload_table(summary, 0.0, "loader", report.by_run(records))
    assert lines[0] == f"#### {report.TITLES['loader']}"
    (api_line,) = [line for line in lines if line.startswith(f"| {report.API} |")]
    assert "| 0.30x |" in api_line


def test_a_warm_epoch_paired_with_local_disk_in_its_worker_is_the_ratio_used(
    report: ModuleType,
) -> None:
    # local disk's own row was fast in its own minutes (0.5x); the epochs read between the
    # API's warm epochs say 0.7x, and that is the figure
    records = [
        {
            "rtt_ms": 0.0,
            "workload": "epoch",
            "system": report.LOCAL,
            "run": 0,
            "epoch2_files_s": 2000.0,
        },
        {
            "rtt_ms": 0.0,
            "workload": "epoch",
            "system": report.API,
            "run": 0,
            "epoch2_files_s": 1000.0,
            "epoch2_local_files_s": 1400.0,
            report.PAIRED_LOCAL: 0.7,
        },
        {
            "rtt_ms": 0.0,
            "workload": "epoch",
            "system": report.HOOKS,
            "run": 0,
            "epoch2_files_s": 1100.0,
        },
    ]
    summary = report.summarize(records)
    rows = report.evaluate(summary, records)
    api = _row(rows, "epoch 2 files/s >= 0.6x local disk", report.API)
    hooks = _row(rows, "epoch 2 files/s >= 0.6x local disk", report.HOOKS)
    assert (api["measured"], api["result"]) == (pytest.approx(0.7), "PASS")
    assert (hooks["measured"], hooks["result"]) == (pytest.approx(0.55), "MISS")  # no pairs
    lines = report.workload_table(summary, 0.0, "epoch", report.by_run(records))
    (api_line,) = [line for line in lines if line.startswith(f"| {report.API} |")]
    assert "| 0.70x |" in api_line and "| 1,400 |" in api_line and "0.50x" not in api_line


@pytest.fixture(scope="module")
def workers() -> ModuleType:
    return _script("bench_workers")


def test_each_warm_epoch_follows_one_over_local_disk_in_the_same_order(
    workers: ModuleType, tmp_path: Path
) -> None:
    names = [f"d/f{i:02}" for i in range(40)]
    (tmp_path / "d").mkdir()
    for name in names:
        (tmp_path / name).write_bytes(b"x" * 3)
    local = [str(tmp_path / n) for n in names]
    log: list[str] = []

    def read(path: str) -> int:
        log.append(path)
        return 5

    result = workers._epochs(read, names, 1, 3, seed=7, local_paths=local)
    assert [p["bytes"] for p in result["passes"]] == [200, 200, 200]
    assert [p["bytes"] for p in result["local_passes"]] == [120, 120]  # read from disk
    epochs = [log[:40], log[40:80], log[80:]]
    assert all(sorted(e) == names for e in epochs) and epochs[0] != epochs[1] != epochs[2]

    calls: list[tuple[bool, list[str]]] = []  # (over local disk, the order), as run

    def each(fn: Any, order: list[str]) -> list[int]:
        if fn is workers._read_local:
            calls.append((True, [os.path.relpath(p, tmp_path) for p in order]))
        else:
            calls.append((False, order))
        return [1] * len(order)

    seen = workers._run_passes(each, read, names, local, 3, 7)
    assert (len(seen["passes"]), len(seen["local_passes"])) == (3, 2)
    assert [is_local for is_local, _ in calls] == [False, True, False, True, False]
    assert calls[1][1] == calls[2][1] and calls[3][1] == calls[4][1]  # local's order first
    assert "local_passes" not in workers._epochs(read, names, 1, 2, seed=7)


def test_each_epoch_records_the_bytes_fetched_during_it(workers: ModuleType) -> None:
    names = [f"d/f{i:02}" for i in range(30)]
    served = [0]  # the proxies' counter: what the reads fetched, more in the first epoch
    epoch = [0]

    def read(path: str) -> int:
        served[0] += 10 if epoch[0] == 0 else 4
        return 1

    def each(fn: Any, order: list[str]) -> list[int]:
        out = [fn(p) for p in order]
        epoch[0] += 1
        return out

    def fetched() -> int:
        return served[0]

    result = workers._run_passes(each, read, names, [], 2, 7, fetched)
    assert [p["fetched"] for p in result["passes"]] == [300, 120]
    assert "fetched" not in workers._run_passes(each, read, names, [], 1, 7)["passes"][0]


def test_every_workload_of_the_bench_has_a_table(report: ModuleType) -> None:
    bench = Path(__file__).resolve().parent.parent / "scripts" / "bench.py"
    declared = re.search(r"^WORKLOADS = \((.*)\)$", bench.read_text(), re.MULTILINE)
    assert declared is not None
    workloads = {w.strip().strip('"') for w in declared.group(1).split(",")}
    assert workloads == set(report.COLUMNS) == set(report.TITLES)
