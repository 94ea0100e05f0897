"""Mount until ready: from the exec of each system's mount command until
a listing of the new mount answers, over a lower branch of a few files.
``native`` is a bind mount of that branch; pyunion is timed both as
``pyunion mount`` and as a mount program (``pyunion -o lowerdir=..``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .runner import Result
from .systems import Bind, Native, Stack, System

NAME = "mount until ready"
CASE = "10 files"
WHAT = ("from the exec of the mount command until `os.listdir` of the mount answers "
        "(native: `mount --bind`); a lower branch of 10 files")


def measure(systems: list[System], runs: int, warmups: int, workdir: Path,
            progress=print) -> list[Result]:
    lower = workdir / "mount-lower"
    lower.mkdir()
    for n in range(10):
        (lower / f"f{n}").write_bytes(b"x")
    results = []
    try:
        for system in [Bind() if isinstance(s, Native) else s for s in systems]:
            progress(f"{NAME} on {system.name}")
            result = Result(NAME, CASE, system.name, missing=system.missing())
            if result.missing is None:
                _time_mounts(system, lower, runs, warmups, workdir / "mount-run", result)
            results.append(result)
    finally:
        shutil.rmtree(lower)
    return results


def _time_mounts(system: System, lower: Path, runs: int, warmups: int, base: Path,
                 result: Result) -> None:
    for i in range(warmups + runs):
        stack = Stack((lower,), base / "upper", base / "work", base / "mnt")
        for directory in (stack.upper, stack.work, stack.mnt):
            directory.mkdir(parents=True)
        try:
            start = time.perf_counter()
            os.listdir(system.mount(stack))
            seconds = time.perf_counter() - start
        except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
            result.error = f"{type(exc).__name__}: {exc}"[:200]
            return
        finally:
            system.unmount(stack)
            shutil.rmtree(base)
        if i >= warmups:
            result.times.append(seconds)
