"""The branch list of a union: parsing, modes and validation.

Two spellings describe the same stack:

* aufs: ``br=/upper=rw:/base=ro:/older`` -- leftmost on top; a branch without
  a mode is ``rw`` when it is first and ``ro`` otherwise, as in aufs.
* overlayfs: ``lowerdir=/base:/older,upperdir=/upper,workdir=/work``.

Everything is checked here, once, before anything is mounted or written, and
every problem is a :class:`BranchError` whose message is one line.  Relative
paths are resolved against the current directory (as ``mount`` does for its
arguments), and the result is made canonical with ``realpath`` so that
overlap checks see through symlinks.

This module only reads the file system; opening branches for use is
``layer.py``'s job.
"""

from __future__ import annotations

import enum
import errno
import os
import stat
from dataclasses import dataclass


class BranchError(ValueError):
    """A branch list that cannot be mounted; the message is one line."""


class Mode(enum.Enum):
    RW = "rw"
    RO = "ro"


@dataclass(frozen=True)
class Branch:
    path: str
    mode: Mode

    @property
    def writable(self) -> bool:
        return self.mode is Mode.RW


@dataclass(frozen=True)
class BranchStack:
    """A validated stack: ``branches[0]`` is on top."""

    branches: tuple[Branch, ...]
    workdir: str | None

    @property
    def upper(self) -> Branch | None:
        top = self.branches[0]
        return top if top.writable else None


def parse_br(spec: str) -> list[Branch]:
    """Parse the aufs ``br=`` value (without the ``br=``)."""
    if not spec:
        raise BranchError("no branches given")
    branches = []
    for index, item in enumerate(spec.split(":")):
        path, sep, mode_text = item.rpartition("=")
        if not sep:
            path, mode_text = item, ("rw" if index == 0 else "ro")
        try:
            mode = Mode(mode_text)
        except ValueError:
            raise BranchError(
                f"branch {path or item!r}: unknown mode {mode_text!r} (use rw or ro)"
            ) from None
        branches.append(Branch(_absolute(path, index), mode))
    return branches


def parse_overlay(lowerdir: str | None, upperdir: str | None) -> list[Branch]:
    """Turn overlayfs-style ``upperdir``/``lowerdir`` values into branches."""
    if not lowerdir:
        raise BranchError("lowerdir= is required with the overlayfs-style options")
    branches = []
    if upperdir is not None:
        branches.append(Branch(_absolute(upperdir, 0), Mode.RW))
    for path in lowerdir.split(":"):
        branches.append(Branch(_absolute(path, len(branches)), Mode.RO))
    return branches


def validate(branches: list[Branch], workdir: str | None = None) -> BranchStack:
    """Check that every branch exists, is distinct and nothing overlaps."""
    if not branches:
        raise BranchError("no branches given")
    for index, branch in enumerate(branches):
        _require_directory(branch.path, "branch")
        if branch.writable and index != 0:
            raise BranchError(f"branch {branch.path}: only the top branch may be rw")
    real = [os.path.realpath(b.path) for b in branches]
    for i, a in enumerate(real):
        for b in real[i + 1 :]:
            if a == b:
                raise BranchError(f"branch {a} is given twice")
            if _inside(a, b) or _inside(b, a):
                inner, outer = (a, b) if _inside(a, b) else (b, a)
                raise BranchError(f"branch {inner} is inside branch {outer}")
    stack = tuple(Branch(path, b.mode) for path, b in zip(real, branches))
    if workdir is not None:
        workdir = _check_workdir(workdir, stack)
    return BranchStack(stack, workdir)


def check_mountpoint(mountpoint: str, stack: BranchStack) -> str:
    """Refuse a mount point that is missing or that would hide a branch.

    A FUSE daemon that reaches its own mount point waits on itself, so the
    mount point may be neither a branch nor the work directory, nor inside
    one, nor above one.
    """
    _require_directory(mountpoint, "mount point")
    mnt = os.path.realpath(mountpoint)
    used = [(f"branch {b.path}", b.path) for b in stack.branches]
    if stack.workdir is not None:
        used.append((f"workdir {stack.workdir}", stack.workdir))
    for what, path in used:
        if mnt == path or _inside(mnt, path):
            raise BranchError(f"mount point {mnt} is inside {what}")
        if _inside(path, mnt):
            raise BranchError(f"mount point {mnt} would hide {what}")
    return mnt


def _check_workdir(workdir: str, stack: tuple[Branch, ...]) -> str:
    upper = stack[0] if stack[0].writable else None
    if upper is None:
        raise BranchError("workdir= needs a writable (upper) branch")
    path = os.path.realpath(_absolute(workdir, None))
    _require_directory(path, "workdir")
    if path == upper.path or _inside(path, upper.path) or _inside(upper.path, path):
        raise BranchError(f"workdir {path} and upper branch {upper.path} must not overlap")
    for branch in stack[1:]:
        if path == branch.path or _inside(path, branch.path) or _inside(branch.path, path):
            raise BranchError(f"workdir {path} overlaps read-only branch {branch.path}")
    if os.stat(path).st_dev != os.stat(upper.path).st_dev:
        raise BranchError(f"workdir {path} is not on the same file system as {upper.path}")
    return path


def _absolute(path: str, index: int | None) -> str:
    if not path:
        where = f" (branch {index + 1})" if index is not None else ""
        raise BranchError(f"empty path{where}")
    return os.path.abspath(path)


def _require_directory(path: str, what: str) -> None:
    try:
        st = os.stat(path)
        os.statvfs(path)  # a dead FUSE mount may answer stat from the kernel's cache
    except FileNotFoundError:
        raise BranchError(f"{what} {path}: no such directory") from None
    except OSError as exc:
        dead = (" (a FUSE mount whose daemon died: unmount it first)"
                if exc.errno == errno.ENOTCONN else "")
        raise BranchError(f"{what} {path}: {exc.strerror}{dead}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BranchError(f"{what} {path}: not a directory")


def _inside(path: str, parent: str) -> bool:
    """True if ``path`` lies strictly below ``parent`` (both canonical)."""
    return path.startswith(parent.rstrip("/") + "/")
