"""``python -m bench [--quick]``: pyunion beside native, kernel overlayfs
and the FUSE peers, in one run on this machine.  Run as root (it mounts).

Writes bench/results/LATEST.md (also printed), LATEST.json and PNG plots.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from . import (containers, pagecache, podman, report, runner, runtimes, systems, udba,
               workloads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few runs (CI smoke)")
    parser.add_argument("--runs", type=int, help="timed runs per case (default 5, quick 3)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp"),
                        help="where the branches are built (its file system is recorded)")
    parser.add_argument("--only", help="run only workloads whose name contains this "
                        "('containers' for the container ones, 'podman' for podman's, "
                        "'runtimes' for the OCI runtimes')")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 5)
    chosen = [w for w in workloads.all_workloads() if not args.only or args.only in w.name]
    with tempfile.TemporaryDirectory(prefix="pyunion-bench-", dir=args.workdir) as work:
        progress = lambda line: print(line, file=sys.stderr)  # noqa: E731
        results = []
        for workload in chosen:
            results += runner.measure([workload], _systems_for(workload.name), args.quick, runs,
                                      warmups=1, workdir=Path(work), progress=progress)
        what = {w.name: w.what for w in chosen}
        if not args.only or args.only in pagecache.NAME:
            results += pagecache.measure(_systems_for(pagecache.NAME), args.quick, runs,
                                         Path(work), progress)
            what[pagecache.NAME] = pagecache.WHAT
        if not args.only or args.only in "udba":
            results += udba.measure(args.quick, runs, Path(work), progress)
            what.update(udba.WHAT)
        if not args.only or args.only in "containers":
            results += containers.measure(args.quick, runs, 1, Path(work), progress)
            what[containers.START] = ("`pycontainer run --rm busybox true` beside `runc run` and "
                                      "`crun run`; `run -d` of each container while the "
                                      "ones started before it run")
            what[containers.MEMORY] = ("PSS of pycontainer's own processes per running "
                                       "container; and of all of them, over their number")
        if not args.only or args.only in "podman":
            results += podman.measure(args.quick, runs, 1, Path(work), progress)
            what.update(podman.WHAT)
        if not args.only or args.only in "runtimes":
            results += runtimes.measure(runs, 1, Path(work), progress)
            what.update(runtimes.WHAT)
        facts = report.machine_facts(Path(work))
    table = report.write(results, facts, what, args.out)
    print(table)
    return 0


def _systems_for(workload: str) -> list[systems.System]:
    """Every system; the page-cache modes too where reads or memory are measured."""
    if workload.startswith("sequential read") or workload == pagecache.NAME:
        return [*systems.ALL, *systems.PAGECACHE_VARIANTS]
    return list(systems.ALL)


if __name__ == "__main__":
    sys.exit(main())
