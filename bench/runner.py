"""Runs every workload on every system over freshly built, identical
branches, with warm-up runs first, and keeps every timing."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .systems import Stack, System
from .workloads import Workload, drop_caches


@dataclass
class Result:
    workload: str
    param: str
    system: str
    times: list[float] = field(default_factory=list)
    missing: str | None = None   # the system is not installed
    error: str | None = None     # the workload failed on this system
    unit: str = "s"              # of the numbers in ``times``: seconds, or "B"ytes


def measure(workloads: list[Workload], systems: list[System], quick: bool, runs: int,
            warmups: int, workdir: Path, progress=print) -> list[Result]:
    results = []
    for workload in workloads:
        for param in workload.quick_params if quick else workload.params:
            label = workload.label(param)
            lowers = _build_lowers(workload, param, warmups + runs, workdir / "lowers")
            for system in systems:
                progress(f"{workload.name} [{label}] on {system.name}")
                result = Result(workload.name, label, system.name, missing=system.missing())
                if result.missing is None:
                    _run_on(system, workload, param, lowers, warmups, runs, workdir, result)
                results.append(result)
            shutil.rmtree(workdir / "lowers")
    return results


def _build_lowers(workload: Workload, param, count: int, root: Path) -> tuple[Path, ...]:
    """The branches, top first: empty ones above the one the workload fills."""
    lowers = [root / f"L{i}" for i in range(workload.branches(param))]
    for lower in lowers:
        lower.mkdir(parents=True)
    workload.build(lowers[-1], param, count)
    return tuple(lowers)


def _run_on(system: System, workload: Workload, param, lowers, warmups: int, runs: int,
            workdir: Path, result: Result) -> None:
    base = workdir / "run"
    stack = Stack(lowers, base / "upper", base / "work", base / "mnt")
    for directory in (stack.upper, stack.work, stack.mnt):
        directory.mkdir(parents=True)
    try:
        mnt = system.mount(stack)
        for i in range(warmups + runs):
            if workload.cold:
                drop_caches()
            seconds = workload.run(mnt, param, i)
            if i >= warmups:
                result.times.append(seconds)
    except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        system.unmount(stack)
        shutil.rmtree(base)
