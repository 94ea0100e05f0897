"""An opened branch: every system call on a branch goes through here.

A layer holds a directory file descriptor taken before the mount exists, and
reaches its files with ``*at`` calls relative to it (and, for the calls that
have no ``*at`` form such as the xattr ones, through ``/proc/self/fd/N/``).
So the daemon never resolves a path through its own mount point, which would
make it wait on itself.

A read-only branch must not change while it is mounted (overlayfs asks the
same), so the names of its directories are read once and kept: a lookup
asks each branch's kept names instead of making a system call per branch.

Paths inside a layer are relative, ``/``-separated, without a leading slash;
the top of the branch is ``"."``.  :func:`child` is the one place they are
joined.
"""

from __future__ import annotations

import functools
import os

from .branches import Branch

ROOT = "."
_LISTINGS_KEPT = 4096  # directories of a read-only branch whose names are kept


def child(parent: str, name: str) -> str:
    """The relative path of ``name`` inside the directory ``parent``."""
    return name if parent == ROOT else f"{parent}/{name}"


def split(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a relative path other than the root."""
    parent, _, name = path.rpartition("/")
    return parent or ROOT, name


class Layer:
    """One branch of the stack, opened; ``index`` 0 is the top."""

    def __init__(self, branch: Branch, index: int):
        self.branch = branch
        self.index = index
        self.fd = os.open(branch.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._names = functools.lru_cache(maxsize=_LISTINGS_KEPT)(self._read_names)

    def __repr__(self) -> str:
        return f"<Layer {self.index} {self.branch.path} {self.branch.mode.value}>"

    @property
    def writable(self) -> bool:
        return self.branch.writable

    def close(self) -> None:
        os.close(self.fd)

    def lstat(self, path: str) -> os.stat_result:
        return os.stat(path, dir_fd=self.fd, follow_symlinks=False)

    def lstat_or_none(self, path: str) -> os.stat_result | None:
        """``lstat``, with a missing entry (or a non-directory parent) as None."""
        try:
            return self.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def may_hold(self, dir_path: str, name: str) -> bool:
        """False when the directory surely has no ``name``; True when it
        does (read-only branch) or may (writable one: ask ``lstat``)."""
        return self.writable or name in self._names(dir_path)

    def _read_names(self, dir_path: str) -> frozenset[str]:
        try:
            return frozenset(self.listdir(dir_path))
        except (FileNotFoundError, NotADirectoryError):
            return frozenset()

    def open(self, path: str, flags: int) -> int:
        return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, dir_fd=self.fd)

    def listdir(self, path: str) -> list[str]:
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str:
        return os.readlink(path, dir_fd=self.fd)

    def getxattr(self, path: str, name: str) -> bytes:
        return os.getxattr(self.proc_path(path), name, follow_symlinks=False)

    def listxattr(self, path: str) -> list[str]:
        return os.listxattr(self.proc_path(path), follow_symlinks=False)

    def statvfs(self) -> os.statvfs_result:
        return os.fstatvfs(self.fd)

    def proc_path(self, path: str) -> str:
        """A path for the calls that have no ``*at`` form (xattrs)."""
        return f"/proc/self/fd/{self.fd}/{path}"
