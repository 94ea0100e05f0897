"""The systems measured, each able to put a union of given branches on a
mount point and take it off again.

* ``native``: no union at all; the workload runs on a plain copy of the
  branches' merged tree (the physical limit), or, where the mount itself
  is timed, on a bind mount of the bottom branch.
* ``overlayfs``: the kernel's, ``mount -t overlay``.
* ``fuse-overlayfs``, ``unionfs-fuse`` (``-o cow``): the FUSE peers.
* ``pyunion``: ours.

A system whose program is missing is reported as missing, never dropped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PYUNION = str(Path(sys.executable).parent / "pyunion")


@dataclass(frozen=True)
class Stack:
    """Branches for one measurement: ``lowers`` top first, an empty upper,
    an empty work directory on the upper's file system, a mount point."""

    lowers: tuple[Path, ...]
    upper: Path
    work: Path
    mnt: Path


class System:
    name = ""
    program: str | None = None

    def missing(self) -> str | None:
        """Why this system cannot run here, or None."""
        if self.program and not shutil.which(self.program):
            return f"{self.program} is not installed"
        return None

    def mount(self, stack: Stack) -> Path:
        """Mount the union; returns the directory the workload should use."""
        _run(self.mount_command(stack))
        _wait_mounted(stack.mnt)
        return stack.mnt

    def mount_command(self, stack: Stack) -> list[str]:
        raise NotImplementedError

    def unmount(self, stack: Stack) -> None:
        if is_mounted(stack.mnt):
            subprocess.run(["umount", str(stack.mnt)], capture_output=True)
        while is_mounted(stack.mnt):  # busy: detach rather than leave it
            subprocess.run(["umount", "-l", str(stack.mnt)], capture_output=True)
            time.sleep(0.05)


class Native(System):
    """The merged tree, copied into a plain directory."""

    name = "native"

    def mount(self, stack: Stack) -> Path:
        for lower in reversed(stack.lowers):
            _run(["cp", "-a", "--reflink=auto", f"{lower}/.", str(stack.mnt)])
        return stack.mnt

    def unmount(self, stack: Stack) -> None:
        pass


class Bind(System):
    """No union either: a bind mount of the bottom branch, where what is
    timed is the mount itself."""

    name = "native"

    def mount_command(self, stack: Stack) -> list[str]:
        return ["mount", "--bind", str(stack.lowers[-1]), str(stack.mnt)]


class KernelOverlay(System):
    name = "overlayfs"

    def mount_command(self, stack: Stack) -> list[str]:
        return ["mount", "-t", "overlay", "overlay", "-o", _overlay_options(stack),
                str(stack.mnt)]


class FuseOverlayfs(System):
    name = "fuse-overlayfs"
    program = "fuse-overlayfs"

    def mount_command(self, stack: Stack) -> list[str]:
        return ["fuse-overlayfs", "-o", _overlay_options(stack), str(stack.mnt)]


class UnionfsFuse(System):
    name = "unionfs-fuse"
    program = "unionfs"

    def mount_command(self, stack: Stack) -> list[str]:
        branches = ":".join([f"{stack.upper}=RW", *(f"{low}=RO" for low in stack.lowers)])
        return ["unionfs", "-o", "cow", branches, str(stack.mnt)]


#: the name of pyunion's variant without a writable branch
READ_ONLY_UNION = "read-only union"


class Pyunion(System):
    """pyunion with its defaults, or with extra mount ``options``; or a
    union of the read-only branches alone (``writable=False``), whose files
    the kernel reads itself (passthrough: no copy-up can move them)."""

    def __init__(self, options: str = "", writable: bool = True):
        self.options = options
        self.writable = writable
        self.name = " ".join(filter(None, ["pyunion", options,
                                           None if writable else READ_ONLY_UNION]))

    def missing(self) -> str | None:
        return None if os.access(PYUNION, os.X_OK) else f"{PYUNION} is not installed"

    def mount_command(self, stack: Stack) -> list[str]:
        upper = [f"{stack.upper}=rw"] if self.writable else []
        branches = ":".join([*upper, *(f"{low}=ro" for low in stack.lowers)])
        options = ",".join(filter(None, [f"br={branches}", self.options]))
        return [PYUNION, "mount", "-o", options, str(stack.mnt)]


class PyunionProgram(Pyunion):
    """pyunion started as podman starts its mount program."""

    def __init__(self):
        super().__init__()
        self.name = "pyunion as mount program"

    def mount_command(self, stack: Stack) -> list[str]:
        return [PYUNION, "-o", _overlay_options(stack), str(stack.mnt)]


ALL = (Native(), KernelOverlay(), FuseOverlayfs(), UnionfsFuse(), Pyunion())
#: the other page-cache modes, measured where they matter (reads, memory),
#: and a union without a writable branch, whose lower files pass through
PAGECACHE_VARIANTS = (Pyunion("pagecache=drop"), Pyunion("pagecache=direct"),
                      Pyunion(writable=False))


def for_workload(name: str) -> list[System]:
    """Every system; the page-cache modes too where reads or memory are
    measured (workloads.py's sequential reads, pagecache.py), and pyunion as
    a mount program too where mounting is (mountready.py)."""
    if name.startswith(("sequential read", "page cache")):
        return [*ALL, *PAGECACHE_VARIANTS]
    if name == "mount until ready":
        return [*ALL, PyunionProgram()]
    return list(ALL)


def _overlay_options(stack: Stack) -> str:
    lowers = ":".join(map(str, stack.lowers))
    return f"lowerdir={lowers},upperdir={stack.upper},workdir={stack.work}"


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])}...: {done.stderr.strip()[:300]}")


def is_mounted(path: Path) -> bool:
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def _wait_mounted(path: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not is_mounted(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not get mounted")
        time.sleep(0.001)  # fine enough for the mount times measured
