"""``-o udba``: what each mode costs and how soon a change to a read-only
branch shows through the mount.

* delay: a name made in a lower directory, timed until a ``stat`` through
  the mount finds it (the kernel had cached it as absent just before),
  one change after another.  ``udba=none`` never shows it (not measured).
* watch cost: a walk of a tree of directories (every one looked into, so
  watched with notify), its branch already in the kernel's caches: the
  walk's time, the growth of the kernel's unreclaimable slab (inotify
  marks are; the directory inodes each watch pins are counted as
  reclaimable, so not here) and the daemon's RSS.
* find: ``find -ls`` of a tree of files (a lookup and a stat each) on a
  fresh mount, then again once reval's short timeouts have run out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

from unionfs import daemon, udba

from .runner import Result
from .systems import Pyunion, Stack, System

DELAY, COST, FIND = "udba: change below to seen", "udba: watch cost", "udba: find"
WHAT = {
    DELAY: "a name made in a read-only branch until a stat through the mount finds it "
           "(none: never)",
    COST: "a walk of N directories of a read-only branch, in the kernel's caches (notify "
          "watches each): its time, unreclaimable slab growth, daemon RSS",
    FIND: "`find -ls` of a read-only tree on a fresh mount, then again past reval's "
          f"{udba.SHORT:g} s timeouts",
}
NONE, REVAL, NOTIFY = Pyunion("udba=none"), Pyunion("udba=reval"), Pyunion("udba=notify")
#: give up on a change after this long (reval shows one within udba.SHORT)
_PATIENCE = udba.SHORT + 5


def measure(quick: bool, runs: int, workdir: Path, progress=print) -> list[Result]:
    return [*_delays(quick, workdir, progress),
            *_watch_costs(2_000 if quick else 100_000, runs, workdir, progress),
            *_finds(1_000 if quick else 10_000, runs, workdir, progress)]


def _delays(quick: bool, workdir: Path, progress) -> list[Result]:
    results = []
    for system, changes in ((NOTIFY, 20 if quick else 200), (REVAL, 3 if quick else 10)):
        progress(f"{DELAY} [{changes} changes] on {system.name}")
        result = Result(DELAY, f"{changes} names made below, one by one", system.name)
        lower = _tree(workdir, dirs=1, files=0)
        with _mounted(system, workdir, lower, result) as mnt:
            for i in range(changes):
                seen = mnt / "d0" / f"new{i}"
                assert not os.path.lexists(seen)  # now cached as absent
                (lower / "d0" / f"new{i}").touch()
                start = time.perf_counter()
                while not os.path.lexists(seen):
                    if time.perf_counter() - start > _PATIENCE:
                        raise RuntimeError(f"a change was not seen in {_PATIENCE:g} s")
                result.times.append(time.perf_counter() - start)
        shutil.rmtree(lower)
        results.append(result)
    return results


def _watch_costs(dirs: int, runs: int, workdir: Path, progress) -> list[Result]:
    results = []
    lower = _tree(workdir, dirs=dirs, files=0, fanout=1000)
    _walk(lower)  # into the kernel's caches: the walks below time the union alone
    for system in (NONE, NOTIFY):
        progress(f"{COST} [{dirs} directories] on {system.name}")
        label = f"walk of {dirs // 1000}k directories"
        timed = Result(COST, f"{label}: time", system.name)
        slab = Result(COST, f"{label}: unreclaimable slab growth", system.name, unit="B")
        rss = Result(COST, f"{label}: daemon RSS", system.name, unit="B")
        for _ in range(runs):
            before = _meminfo("SUnreclaim")
            with _mounted(system, workdir, lower, timed) as mnt:
                timed.times.append(_walk(mnt))
                slab.times.append(_meminfo("SUnreclaim") - before)
                pid = daemon.pid_of(str(mnt))
                rss.times.append(_rss(pid))
                if system is NOTIFY and _watches(pid) < dirs:
                    raise RuntimeError(f"{_watches(pid)} directories watched, not {dirs}")
        results += [timed, slab, rss]
    shutil.rmtree(lower)
    return results


def _finds(files: int, runs: int, workdir: Path, progress) -> list[Result]:
    results = []
    lower = _tree(workdir, dirs=files // 100, files=100)
    for system in (NONE, REVAL, NOTIFY):
        progress(f"{FIND} [{files} files] on {system.name}")
        first = Result(FIND, f"{files // 1000}k files, fresh mount", system.name)
        again = Result(FIND, f"{files // 1000}k files, {udba.SHORT:g} s later", system.name)
        for _ in range(runs):
            with _mounted(system, workdir, lower, first) as mnt:
                first.times.append(_find(mnt))
                time.sleep(udba.SHORT)  # what reval lets the kernel keep runs out
                again.times.append(_find(mnt))
        results += [first, again]
    shutil.rmtree(lower)
    return results


def _walk(top: Path) -> float:
    """Seconds to look into every directory under ``top``."""
    start = time.perf_counter()
    subprocess.run(["find", str(top), "-type", "d"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _find(mnt: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["find", str(mnt), "-ls"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _tree(workdir: Path, dirs: int, files: int, fanout: int = 0) -> Path:
    """A read-only branch of ``dirs`` directories of ``files`` files each
    (under ``fanout``-wide parents when given, so no directory is huge)."""
    lower = workdir / "udba-lower"
    lower.mkdir()
    for i in range(dirs):
        directory = lower / (f"p{i // fanout}/d{i}" if fanout else f"d{i}")
        directory.mkdir(parents=True)
        for j in range(files):
            (directory / f"f{j}").touch()
    return lower


@contextlib.contextmanager
def _mounted(system: System, workdir: Path, lower: Path, result: Result):
    """A fresh one-branch mount of ``lower``; a failure is recorded in
    ``result`` (the run goes on), and nothing is left behind."""
    base = workdir / "udba-run"
    stack = Stack((lower,), base / "upper", base / "work", base / "mnt")
    for directory in (stack.upper, stack.work, stack.mnt):
        directory.mkdir(parents=True)
    try:
        yield system.mount(stack)
    except Exception as exc:  # noqa: BLE001 - recorded in the report, the run goes on
        result.error = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        system.unmount(stack)
        shutil.rmtree(base)


def _meminfo(field: str) -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(f"{field}:"))


def _watches(pid: int) -> int:
    """The inotify watches process ``pid`` holds."""
    count = 0
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            count += info.read_text().count("inotify wd:")
    return count


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

