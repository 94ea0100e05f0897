"""pyunion as podman's ``mount_program``: how long ``podman run --rm
busybox true`` takes with pyunion, with fuse-overlayfs and with the kernel's
overlay driver (each its own throwaway podman, bench/podman_env.py); and how
long the mount program takes, from its start until it returns with the
mount ready, which every container start waits for.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from container import images

from .podman_env import PODMAN, Podman, PodmanError, busybox_tar
from .runner import Result
from .systems import PYUNION, is_mounted

RUN = "podman run"
MOUNT = "mount program ready"
WHAT = {RUN: "`podman run --rm --network none busybox true`: pyunion and fuse-overlayfs as "
             "the overlay driver's mount_program, beside the kernel's overlay driver",
        MOUNT: "from starting `PROGRAM -o lowerdir=BUSYBOX,upperdir=..,workdir=.. MNT` "
               "until it returns with the mount ready (`mount -t overlay` for the kernel)"}

RUN_TRUE = ("run", "--rm", "--network", "none", "localhost/busybox", "true")

#: system name -> mount program (None: the kernel's driver)
PROGRAMS = {"pyunion": PYUNION, "fuse-overlayfs": shutil.which("fuse-overlayfs") or "",
            "overlayfs": None}


def measure(quick: bool, runs: int, warmups: int, workdir: Path, progress=print) -> list[Result]:
    results = []
    context = workdir / "podman-context"
    context.mkdir()
    tar = busybox_tar(context) if PODMAN else None
    for system, program in PROGRAMS.items():
        progress(f"{RUN} on {system}")
        result = Result(RUN, "busybox true", system, missing=_missing(system, program)
                        or (None if PODMAN else "podman is not installed"))
        if result.missing is None:
            _time_runs(Podman(program), tar, runs, warmups, result)
        results.append(result)
    lower = images.build_busybox()
    for system, program in PROGRAMS.items():
        progress(f"{MOUNT} on {system}")
        result = Result(MOUNT, "busybox lower", system, missing=_missing(system, program))
        if result.missing is None:
            _time_mounts(program, lower, workdir / "mount-ready", runs, warmups, result)
        results.append(result)
    shutil.rmtree(context)
    return results


def _missing(system: str, program: str | None) -> str | None:
    return f"{system} is not installed" if program == "" else None


def _time_runs(podman: Podman, tar: Path, runs: int, warmups: int, result: Result) -> None:
    try:
        podman.copying("import", str(tar), "localhost/busybox")
        time_commands(podman, RUN_TRUE, runs, warmups, result)
    except PodmanError as exc:  # recorded in the report, the run goes on
        result.error = last_line(exc)
    finally:
        podman.tear_down()


def time_commands(podman: Podman, args: tuple[str, ...], runs: int, warmups: int,
                  result: Result) -> None:
    """``podman ARGS`` ``warmups + runs`` times, the last ``runs`` timed
    into ``result``; raises PodmanError when one fails."""
    for i in range(warmups + runs):
        start = time.perf_counter()
        podman(*args)
        if i >= warmups:
            result.times.append(time.perf_counter() - start)


def last_line(error: PodmanError) -> str:
    """podman's last words, short enough for a table cell: from the exit
    status on, the command line being the row's own."""
    line = str(error).strip().splitlines()[-1]
    return re.sub(r"^podman .*? (exited -?\d+: )", r"\1", line)[:200]


def _time_mounts(program: str | None, lower: str, base: Path, runs: int, warmups: int,
                 result: Result) -> None:
    for i in range(warmups + runs):
        upper, work, mnt = base / "upper", base / "work", base / "mnt"
        for directory in (upper, work, mnt):
            directory.mkdir(parents=True)
        options = f"lowerdir={lower},upperdir={upper},workdir={work}"
        command = ([program, "-o", options, str(mnt)] if program
                   else ["mount", "-t", "overlay", "overlay", "-o", options, str(mnt)])
        try:
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0 or not is_mounted(mnt):
                said = done.stderr.strip().splitlines()
                result.error = (said[-1] if said else "returned before the mount was ready")[:200]
                return
            if i >= warmups:
                result.times.append(seconds)
        finally:
            _unmount(mnt, program)
            shutil.rmtree(base)


def _unmount(mnt: Path, program: str | None) -> None:
    """As podman does: ``fusermount3 -u`` for a mount program, then a lazy
    unmount if that left it."""
    if program:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
    while is_mounted(mnt):
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
