"""``python -m bench [--quick]``: pyunion beside native, kernel overlayfs
and the FUSE peers, in one run on this machine.  Run as root (it mounts).

Writes bench/results/LATEST.md (also printed), LATEST.json and PNG plots;
issue #16's table of targets and verdicts heads them where the run measured
its rows (``--only fastpaths`` measures just those).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from . import (containers, fastpaths, mountready, pagecache, podman, report, runner, runtimes,
               systems, udba, workloads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few runs (CI smoke)")
    parser.add_argument("--runs", type=int, help="timed runs per case (default 5, quick 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                        help="where the branches are built (its file system is recorded)")
    parser.add_argument("--only", help="run only workloads whose name contains this "
                        "('containers' for the container ones, 'podman' for podman's, "
                        "'runtimes' for the OCI runtimes); 'fastpaths': what issue #16's "
                        "table needs, and that table")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 5)
    with tempfile.TemporaryDirectory(prefix="pyunion-bench-", dir=args.workdir) as work:
        progress = lambda line: print(line, file=sys.stderr)  # noqa: E731
        if args.only == fastpaths.NAME:
            results = fastpaths.measure(args.quick, runs, Path(work), progress)
        else:
            results = _measure(args.only, args.quick, runs, Path(work), progress)
        facts = report.machine_facts(Path(work))
    what = {**{w.name: w.what for w in workloads.all_workloads()}, pagecache.NAME: pagecache.WHAT,
            mountready.NAME: mountready.WHAT, **udba.WHAT, **containers.WHAT, **podman.WHAT,
            **runtimes.WHAT}
    summary = fastpaths.table(results, args.quick)
    table = report.write(results, facts, what, args.out, fastpaths.markdown(summary), summary)
    print(table)
    return 0


def _measure(only: str | None, quick: bool, runs: int, work: Path, progress) -> list:
    """Every measurement whose name contains ``only`` (all without it)."""
    chosen = lambda name: not only or only in name  # noqa: E731
    results = []
    for workload in workloads.all_workloads():
        if chosen(workload.name):
            results += runner.measure([workload], systems.for_workload(workload.name), quick,
                                      runs, warmups=1, workdir=work, progress=progress)
    if chosen(pagecache.NAME):
        results += pagecache.measure(systems.for_workload(pagecache.NAME), quick, runs, work,
                                     progress)
    if chosen(mountready.NAME):
        results += mountready.measure(systems.for_workload(mountready.NAME), runs, 1, work,
                                      progress)
    if not only or only in "udba":
        results += udba.measure(quick, runs, work, progress)
    if not only or only in "containers":
        results += containers.measure(quick, runs, 1, work, progress)
    if not only or only in "podman":
        results += podman.measure(quick, runs, 1, work, progress)
    if not only or only in "runtimes":
        results += runtimes.measure(runs, 1, work, progress)
    return results


if __name__ == "__main__":
    sys.exit(main())
