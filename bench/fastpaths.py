"""Issue #16's table: each of its rows, native, overlayfs and
fuse-overlayfs beside pyunion (every variant of it measured: the
page-cache modes where reads and memory are measured), the issue's target
and a verdict computed from the medians of the same run.

This module owns the rows and their verdicts, not the measuring: a row
reads the results of workloads (workloads.py), the page cache
(pagecache.py), mount times (mountready.py) and containers
(containers.py).  ``python -m bench --only fastpaths`` runs just what the
rows need; a full run's table has them too.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import containers, mountready, pagecache, runner, systems, workloads
from .report import duration
from .runner import Result
from .workloads import LOOKUP_NAMES, MiB

NAME = "fastpaths"
COLUMNS = ("native", "overlayfs", "fuse-overlayfs", "pyunion")

_FIRST: Callable[[tuple], tuple] = lambda params: params[:1]  # noqa: E731
#: the workloads the rows read, each with the params it needs of a run's
_PARAMS: dict[str, Callable[[tuple], tuple]] = {
    "list a directory, warm": _FIRST, "find, warm": _FIRST, "list a directory": _FIRST,
    "sequential read, warm": _FIRST, "sequential read, cold": _FIRST,
    "sequential read, shared map": _FIRST, "full rewrite": _FIRST,
    "copy-up: 1-byte write": _FIRST,  # 4 KiB
    "lookup vs branches": lambda params: (params[-1], params[0]),  # 64 (quick: 8) and 1
    "tar of a library": _FIRST, "compileall of a library": _FIRST}
_MEMORY_COUNT = {True: 3, False: 20}  # containers running, by quick


class NoFigure(Exception):
    """What a cell says instead of a figure (not installed, failed)."""


class Figures:
    """The medians of one run's results, by workload, case and system."""

    def __init__(self, results: list[Result]):
        self._results = {(r.workload, r.param, r.system): r for r in results}

    def median(self, workload: str, case: str, system: str) -> float:
        result = self.result(workload, case, system)
        if result.error:
            raise NoFigure("failed")
        return statistics.median(result.times)

    def result(self, workload: str, case: str, system: str) -> Result:
        result = self._results.get((workload, case, system))
        if result is None or result.missing:
            raise NoFigure("not installed" if result else "not measured")
        return result

    def systems(self, workload: str, case: str) -> list[str]:
        return [s for w, c, s in self._results if (w, c) == (workload, case)]


@dataclass(frozen=True)
class Row:
    label: str                                   # the words
    target: str
    workload: str                                # whose systems the row shows
    case: str
    value: Callable[[Figures, str], object]      # (figures, system) -> value
    show: Callable[[object], str]
    #: (pyunion's value, the value of each system beside it) -> met, why
    judge: Callable[[object, dict[str, object]], tuple[bool, str]]
    #: column -> the system in it, beside pyunion's column
    beside: dict[str, str] = dataclasses.field(
        default_factory=lambda: {column: column for column in COLUMNS[:3]})
    mine: str = "pyunion"                        # the pyunion column's systems start so
    #: who must meet the target: the default pyunion ("default"; the other
    #: variants are shown beside it), "every" variant, or "any" one
    decides: str = "default"


def rows(quick: bool) -> list[Row]:
    """The issue's rows, in its order, for a quick run or a full one."""
    by_name = {w.name: w for w in workloads.all_workloads()}

    def case(workload: str, index: int = 0) -> str:
        chosen = _chosen(by_name[workload], quick)
        return by_name[workload].label(chosen[index])

    def timed(label: str, workload: str, case_label: str, target: str, judge,
              **options) -> Row:
        return Row(label, target, workload, case_label, _median(workload, case_label),
                   duration, judge, **options)

    def speed(label: str, workload: str, target: str, **options) -> Row:
        size, median = _chosen(by_name[workload], quick)[0], _median(workload, case(workload))
        return Row(label, target, workload, case(workload),
                   lambda figures, system: size / MiB / median(figures, system),
                   lambda mib_s: f"{mib_s:.0f}", _versus("native", 0.9, higher=True),
                   **options)

    lookup = "lookup vs branches"
    size = pagecache.file_size(quick)
    running = f"{_MEMORY_COUNT[quick]} running"
    return [
        timed("listdir of a 10k-entry dir, warm", "list a directory, warm",
              case("list a directory, warm"), "≤ 2× native", _versus("native", 2)),
        timed("`find` over 10k files, warm", "find, warm", case("find, warm"), "≤ 2× native",
              _versus("native", 2)),
        timed("listdir 10k, cold", "list a directory", case("list a directory"),
              "≤ fuse-overlayfs", _versus("fuse-overlayfs", 1)),
        speed("seq read 1 GiB warm (MiB/s)", "sequential read, warm",
              "≥ 0.9× native, in every page-cache mode", decides="every"),
        speed("seq read 1 GiB cold (MiB/s)", "sequential read, cold", "≥ 0.9× native"),
        timed("full rewrite of a 64 MiB lower file", "full rewrite", case("full rewrite"),
              "≤ 1.5× overlayfs", _versus("overlayfs", 1.5)),
        timed("1-byte first write, 4 KiB lower file", "copy-up: 1-byte write",
              case("copy-up: 1-byte write"), "≤ overlayfs", _versus("overlayfs", 1)),
        Row("stat of a new name, 64 layers vs 1 (µs per stat)", "64 layers ≤ 1.2× of 1",
            lookup, case(lookup),
            lambda figures, system: tuple(figures.median(lookup, case(lookup, i), system)
                                          / LOOKUP_NAMES for i in (0, 1)),
            lambda pair: f"{pair[0] * 1e6:.1f} / {pair[1] * 1e6:.1f} µs", _layers),
        timed("mount until ready", mountready.NAME, mountready.CASE,
              "≤ 20 ms, `pyunion mount` and as a mount program", _below(0.020, "20 ms"),
              decides="every"),
        timed("`tar -c` of a 1,500-file Python library tree (open, read, close each)",
              "tar of a library", case("tar of a library"), "≤ fuse-overlayfs",
              _versus("fuse-overlayfs", 1)),
        timed("`python -m compileall` on that tree (writes ~700 .pyc)",
              "compileall of a library", case("compileall of a library"), "≤ fuse-overlayfs",
              _versus("fuse-overlayfs", 1)),
        Row("page cache after 1 GiB through 4 mounts (× the file size); MAP_SHARED",
            "1.0× with `MAP_SHARED` mmap working and warm reads at native speed",
            pagecache.NAME, pagecache.case(size, 4),
            lambda figures, system: _sharing(figures, system, size,
                                             case("sequential read, shared map"),
                                             case("sequential read, warm")),
            _show_sharing, _shared, decides="any"),
        timed("`pycontainer run --rm busybox true` (native: runc)", containers.START,
              "busybox true", "≤ runc, same run", _versus("runc", 1),
              beside={"native": "runc"}, mine="pycontainer"),
        Row(f"memory per running container (PSS: union daemon, supervisor, init), {running}",
            "≤ 15 MiB (half the issue's ~30 MiB)", containers.MEMORY, running,
            _median(containers.MEMORY, running), lambda size: f"{size / MiB:.1f} MiB",
            _below(15 * MiB, "15 MiB"), beside={}, mine="pycontainer"),
    ]


def _median(workload: str, case: str) -> Callable[[Figures, str], float]:
    return lambda figures, system: figures.median(workload, case, system)


def _chosen(workload: workloads.Workload, quick: bool) -> tuple:
    return _PARAMS[workload.name](workload.quick_params if quick else workload.params)


def measure(quick: bool, runs: int, workdir: Path, progress=print) -> list[Result]:
    """Only what the rows need, every system measured as in a full run."""
    results = []
    for workload in workloads.all_workloads():
        if workload.name in _PARAMS:
            chosen = _chosen(workload, quick)
            narrowed = dataclasses.replace(workload, params=chosen, quick_params=chosen)
            results += runner.measure([narrowed], _shown(workload.name), quick, runs,
                                      warmups=1, workdir=workdir, progress=progress)
    results += pagecache.measure(_shown(pagecache.NAME), quick, runs, workdir, progress,
                                 counts=(4,))
    results += mountready.measure(_shown(mountready.NAME), runs, 1, workdir, progress)
    results += containers.measure(quick, runs, 1, workdir, progress, runtimes=("runc",),
                                  counts=(_MEMORY_COUNT[quick],))
    return results


def _shown(workload: str) -> list[systems.System]:
    """The systems the table has columns for."""
    return [s for s in systems.for_workload(workload)
            if s.name in COLUMNS[:3] or isinstance(s, systems.Pyunion)]


def table(results: list[Result], quick: bool) -> list[dict[str, str]]:
    """One dict per row of the issue that this run measured: its cells,
    target and verdict; rows the run did not touch are left out."""
    figures = Figures(results)
    lines = []
    for row in rows(quick):
        mine = [s for s in figures.systems(row.workload, row.case)
                if s == row.mine or s.startswith(row.mine + " ")]
        if not mine:
            continue
        cells, values = {}, {}
        for column, system in row.beside.items():
            value, text = _cell(row, figures, system)
            cells[column] = text if system == column else f"{system}: {text}"
            if value is not None:
                values[system] = value
        judged, shown = [], []
        for system in mine:
            value, text = _cell(row, figures, system)
            variant = system[len(row.mine):].strip()
            shown.append(f"{variant}: {text}" if variant else text)
            judged.append((variant, None if value is None else row.judge(value, values)))
        cells["pyunion"] = ("" if row.mine == "pyunion" else f"{row.mine}: ") + "; ".join(shown)
        label = f"{row.label} [{row.case}]" if quick else row.label
        lines.append({"workload": label, **{c: cells.get(c, "–") for c in COLUMNS},
                      "target": row.target, "verdict": _verdict(judged, row.decides)})
    return lines


def _cell(row: Row, figures: Figures, system: str) -> tuple[object, str]:
    try:
        value = row.value(figures, system)
    except NoFigure as why:
        return None, str(why)
    return value, row.show(value)


def _verdict(judged: list[tuple[str, tuple[bool, str] | None]], decides: str) -> str:
    """"met" or "missed" as Row.decides says, with each variant's why.  A
    read-only union is shown, never counted: the rows are about unions
    that can be written."""
    if any(outcome is None for _, outcome in judged):
        return "not measured"
    oks = [ok for variant, (ok, _) in judged
           if (decides != "default" or not variant) and variant != systems.READ_ONLY_UNION]
    if not oks:
        return "not measured"
    met = any(oks) if decides == "any" else all(oks)
    why = "; ".join(f"{variant}: {reason}" if variant else reason
                    for variant, (_, reason) in judged)
    return f"met ({why})" if met else f"**missed** ({why})"


def markdown(lines: list[dict[str, str]]) -> str:
    if not lines:
        return ""
    heads = ["workload", *COLUMNS, "target", "verdict"]
    return "\n".join(["## issue #16: kernel fast paths", "",
                      "Medians of this run; pyunion's first figure is with its defaults, "
                      "then its page-cache modes where they are measured. The verdict is the default pyunion's (every mode's for the "
                      "warm read, the best mode's for the page cache), with the ratios it "
                      "rests on.", "",
                      "| " + " | ".join(heads) + " |",
                      "| --- |" + " ---: |" * len(COLUMNS) + " --- | --- |",
                      *("| " + " | ".join(line[h] for h in heads) + " |" for line in lines),
                      ""])


# Targets: each judges pyunion's value against the figures beside it.

def _versus(system: str, factor: float, higher: bool = False):
    """At most ``factor`` times ``system``'s figure (a time, a size), or
    at least that where ``higher`` is better (a speed)."""
    def judge(value: float, values: dict[str, object]) -> tuple[bool, str]:
        if system not in values:
            return False, f"no {system} figure"
        ratio = value / values[system]
        return (ratio >= factor if higher else ratio <= factor), f"{ratio:.2f}× {system}"
    return judge


def _below(limit: float, said: str):
    """At most ``limit`` (``said`` in the verdict)."""
    def judge(value: float, values) -> tuple[bool, str]:
        return value <= limit, f"{value / limit:.2f}× {said}"
    return judge


def _layers(pair: tuple[float, float], values) -> tuple[bool, str]:
    ratio = pair[0] / pair[1]
    return ratio <= 1.2, f"{ratio:.2f}× of 1"


def _sharing(figures: Figures, system: str, size: int, mapped: str,
             warm: str) -> tuple[float, bool, float]:
    """(page cache grown over the file's size, whether a MAP_SHARED map of
    a lower file reads, warm read speed over native's)."""
    grown = figures.median(pagecache.NAME, pagecache.case(size, 4), system) / size
    maps = figures.result("sequential read, shared map", mapped, system).error is None
    read = "sequential read, warm"
    return grown, maps, figures.median(read, warm, "native") / figures.median(read, warm, system)


def _show_sharing(value: tuple[float, bool, float]) -> str:
    grown, maps, _ = value
    return f"{grown:.1f}×, MAP_SHARED {'works' if maps else 'fails'}"


def _shared(value: tuple[float, bool, float], values) -> tuple[bool, str]:
    """One copy (10% slack for what else the machine caches meanwhile),
    shared maps, and warm reads at 0.9× native's speed or better."""
    grown, maps, speed = value
    misses = [what for what, ok in ((f"{grown:.1f}× the file", grown <= 1.1),
                                    ("no MAP_SHARED", maps),
                                    (f"warm read {speed:.2f}× native", speed >= 0.9)) if not ok]
    return not misses, ", ".join(misses) or f"{grown:.1f}×, maps, {speed:.2f}× native"

