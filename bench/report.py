"""Tables (markdown), raw numbers (JSON) and plots (PNG, when matplotlib is
installed) of a benchmark run.  Every median is also given as a ratio to
native and to the kernel's overlayfs measured in the same run: machines
here are noisy, ratios hold better than absolute times."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

from .runner import Result


def machine_facts(workdir: Path) -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.machine())
    fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", str(workdir)],
                            capture_output=True, text=True).stdout.strip()
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "kernel": platform.release(), "cpus": str(os.cpu_count()), "cpu": cpu,
            "python": platform.python_version(), "branches on": f"{workdir} ({fstype})"}


def markdown(results: list[Result], facts: dict[str, str], what: dict[str, str],
             summary: str = "") -> str:
    """The machine's facts, ``summary`` (a markdown section), then a table
    per workload."""
    lines = ["# pyunion benchmarks", "",
             " · ".join(f"{k}: {v}" for k, v in facts.items()), "",
             *([summary] if summary else [])]
    for workload in dict.fromkeys(r.workload for r in results):
        lines += [f"## {workload}", "", what[workload], "",
                  "| case | system | median | min – max | × native | × overlayfs |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        rows = [r for r in results if r.workload == workload]
        for result in rows:
            lines.append(_row(result, rows))
        lines.append("")
    return "\n".join(lines)


def _row(result: Result, rows: list[Result]) -> str:
    case, system = result.param, result.system
    if result.missing or result.error:
        return f"| {case} | {system} | {result.missing or 'failed: ' + result.error} | | | |"
    median = statistics.median(result.times)
    show = _bytes if result.unit == "B" else duration
    ratios = []
    for reference in ("native", "overlayfs"):
        other = next((r for r in rows if r.param == case and r.system == reference
                      and r.times), None)
        ratios.append(f"{median / statistics.median(other.times):.2f}×" if other else "–")
    return (f"| {case} | {system} | {show(median)} | "
            f"{show(min(result.times))} – {show(max(result.times))} | "
            f"{ratios[0]} | {ratios[1]} |")


def _bytes(count: float) -> str:
    return f"{count / (1 << 20):.1f} MiB"


def duration(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.0f} µs"


def write(results: list[Result], facts: dict[str, str], what: dict[str, str],
          out: Path, summary: str = "", summary_rows: list[dict] = ()) -> str:
    """LATEST.md and LATEST.json in ``out``, the summary's rows (dicts) in
    the JSON's ``summary``; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(results, facts, what, summary)
    (out / "LATEST.md").write_text(table + "\n")
    (out / "LATEST.json").write_text(json.dumps(
        {"machine": facts, "summary": list(summary_rows),
         "results": [asdict(r) for r in results]}, indent=1) + "\n")
    _plots(results, out)
    return table


def _plots(results: list[Result], out: Path) -> None:
    try:
        import matplotlib  # noqa: PLC0415 - optional: only for the pictures
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return
    for workload, filename, log in (("copy-up: 1-byte write", "copy-up.png", True),
                                    ("lookup vs branches", "lookup.png", False),
                                    ("page cache", "page-cache.png", False)):
        rows = [r for r in results if r.workload == workload and r.times]
        if rows:
            figure, axes = plt.subplots(figsize=(7, 4))
            for system in dict.fromkeys(r.system for r in rows):
                mine = [r for r in rows if r.system == system]
                scale = 1 / (1 << 20) if mine[0].unit == "B" else 1e3
                axes.plot([r.param for r in mine],
                          [statistics.median(r.times) * scale for r in mine],
                          marker="o", label=system)
            axes.set_ylabel("median, MiB" if rows[0].unit == "B" else "median, ms")
            axes.set_yscale("log" if log else "linear")
            _finish(plt, figure, axes, workload, out / filename)
    reads = [r for r in results if r.workload.startswith("sequential read") and r.times]
    if reads:
        figure, axes = plt.subplots(figsize=(7, 4))
        systems = list(dict.fromkeys(r.system for r in reads))
        for offset, workload in enumerate(dict.fromkeys(r.workload for r in reads)):
            size = _size_of(next(r.param for r in reads if r.workload == workload))
            speeds = [size / (1 << 20) / statistics.median(r.times)
                      for s in systems for r in reads if r.system == s and r.workload == workload]
            axes.bar([i + offset * 0.4 for i in range(len(speeds))], speeds, width=0.4,
                     label=workload)
        axes.set_xticks([i + 0.2 for i in range(len(systems))], systems)
        axes.set_ylabel("MiB/s")
        _finish(plt, figure, axes, "sequential read throughput", out / "read.png")


def _finish(plt, figure, axes, title: str, path: Path) -> None:
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _size_of(label: str) -> int:
    number, unit = label.split()
    return int(number) << {"KiB": 10, "MiB": 20, "GiB": 30}.get(unit, 0)
