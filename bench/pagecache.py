"""Page cache: the same lower file read through 1 and through 4 mounts of
one base, and how much the kernel's page cache grew.  Kernel overlayfs (and
aufs) keep one copy, shared with the base; a FUSE union keeps one per mount
for its own inode, plus the base's copy its daemon read.  ``native`` reads
the base file itself as many times."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .runner import Result
from .systems import Native, Stack, System
from .workloads import GiB, MiB, _read_all, _write_file, drop_caches

NAME = "page cache"
#: A FUSE release reaches the daemon after close(2) returns, so what a mount
#: drops at the last close is counted after this pause (for every system).
SETTLE_SECONDS = 1.0
WHAT = "growth of the page cache after reading one lower file through N mounts of one base"


def measure(systems: list[System], quick: bool, runs: int, workdir: Path,
            progress=print, counts: tuple[int, ...] = (1, 4)) -> list[Result]:
    """Through each number of mounts in ``counts``."""
    size = file_size(quick)
    base = workdir / "pagecache-base"
    base.mkdir()
    _write_file(base / "f", size)
    results = []
    try:
        for mounts in counts:
            for system in systems:
                progress(f"{NAME} [{mounts} mounts, {size // MiB} MiB] on {system.name}")
                result = Result(NAME, case(size, mounts),
                                system.name, unit="B", missing=system.missing())
                if result.missing is None:
                    _run_on(system, base, mounts, runs, workdir / "pagecache-run", result)
                results.append(result)
    finally:
        shutil.rmtree(base)
    return results


def file_size(quick: bool) -> int:
    return 16 * MiB if quick else GiB


def case(size: int, mounts: int) -> str:
    return f"{size // MiB} MiB through {mounts} mount(s)"


def _run_on(system: System, base: Path, mounts: int, runs: int, workdir: Path,
            result: Result) -> None:
    stacks = []
    try:
        if isinstance(system, Native):
            paths = [base / "f"] * mounts
        else:
            paths = []
            for i in range(mounts):
                stack = Stack((base,), workdir / f"{i}/upper", workdir / f"{i}/work",
                              workdir / f"{i}/mnt")
                for directory in (stack.upper, stack.work, stack.mnt):
                    directory.mkdir(parents=True)
                stacks.append(stack)
                paths.append(system.mount(stack) / "f")
        for _ in range(runs):
            drop_caches()
            before = _cached()
            for path in paths:
                _read_all(path)
            time.sleep(SETTLE_SECONDS)
            result.times.append(_cached() - before)
    except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        for stack in stacks:
            system.unmount(stack)
        shutil.rmtree(workdir, ignore_errors=True)


def _cached() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Cached:"))
