"""An opened branch: every system call on a branch goes through here.

A layer holds a directory file descriptor taken before the mount exists, and
reaches its files with ``*at`` calls relative to it (and, for the calls that
have no ``*at`` form such as the xattr ones, through ``/proc/self/fd/N/``).
So the daemon never resolves a path through its own mount point, which would
make it wait on itself.

Paths in the union may be as long as ``PATH_MAX`` and longer (a caller whose
working directory is deep inside), and the daemon adds to them (``.wh.``,
``/proc/self/fd/N/``).  So a long path is never handed to the kernel
whole: :meth:`Layer.at` opens its parent a piece at a time and the call
gets the last name only.  Every path the daemon hands to the kernel stays
below ``PATH_MAX``, whatever the depth.

A read-only branch must not change while it is mounted (overlayfs asks the
same), so the names of its directories are read once and kept: a lookup
asks each branch's kept names instead of making a system call per branch.

Paths inside a layer are relative, ``/``-separated, without a leading slash;
the top of the branch is ``"."``.  :func:`child` is the one place they are
joined.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
from typing import Iterator

from .branches import Branch, Mode
from .whiteout import META_DIR

ROOT = "."
_LISTINGS_KEPT = 4096  # directories of a read-only branch whose names are kept
#: longest path (in characters, so at most 4,000 bytes) handed to the kernel
#: whole, leaving room for ``/proc/self/fd/N/`` below ``PATH_MAX``
_DIRECT_MAX = 1000
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4  # the source is left as a character device 0/0
_libc = ctypes.CDLL(None, use_errno=True)


def child(parent: str, name: str) -> str:
    """The relative path of ``name`` inside the directory ``parent``."""
    return name if parent == ROOT else f"{parent}/{name}"


def split(path: str) -> tuple[str, str]:
    """``(parent, name)`` of a relative path other than the root."""
    parent, _, name = path.rpartition("/")
    return parent or ROOT, name


def renameat2(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str, flags: int = 0) -> None:
    """``renameat2(2)``, which Python lacks: ``RENAME_*`` flags."""
    if _libc.renameat2(src_dir_fd, os.fsencode(src), dst_dir_fd, os.fsencode(dst), flags):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src, None, dst)


class Layer:
    """One branch of the stack, opened; ``index`` 0 is the top."""

    def __init__(self, branch: Branch, index: int):
        self.branch = branch
        self.index = index
        self.fd = os.open(branch.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._names = functools.lru_cache(maxsize=_LISTINGS_KEPT)(self._read_names)
        #: its entries may carry pyunion's marks (``tree.read_marks``): it is
        #: writable, or was a writable branch once
        self.keeps_marks = branch.writable or self.lstat_or_none(META_DIR) is not None

    def __repr__(self) -> str:
        return f"<Layer {self.index} {self.branch.path} {self.branch.mode.value}>"

    @property
    def writable(self) -> bool:
        return self.branch.writable

    def close(self) -> None:
        os.close(self.fd)

    def set_mode(self, mode: Mode) -> None:
        """Make the branch ``rw`` or ``ro`` (a live change of the stack);
        its kept names are read afresh from then on."""
        self.branch = Branch(self.branch.path, mode)
        self.forget_names()

    def forget_names(self) -> None:
        """Read its names afresh from now on."""
        self._names.cache_clear()

    @contextlib.contextmanager
    def at(self, path: str) -> Iterator[tuple[int, str]]:
        """``(dir_fd, name)`` to reach ``path`` with an ``*at`` call: the
        branch and the path itself when it is short, else its parent,
        opened a piece at a time, and its last name."""
        if len(path) <= _DIRECT_MAX:
            yield self.fd, path
            return
        parent, name = split(path)
        fd = self.fd
        try:
            while parent:
                cut = len(parent) if len(parent) <= _DIRECT_MAX else parent.rfind(
                    "/", 0, _DIRECT_MAX + 1)
                if cut <= 0:
                    raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), path)
                below = os.open(parent[:cut], os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW
                                | os.O_CLOEXEC, dir_fd=fd)
                if fd != self.fd:
                    os.close(fd)
                fd, parent = below, parent[cut + 1:]
            yield fd, name
        finally:
            if fd != self.fd:
                os.close(fd)

    @contextlib.contextmanager
    def proc_path_of(self, path: str) -> Iterator[str]:
        """A path for the calls that have no ``*at`` form (xattrs), valid
        inside the ``with``."""
        with self.at(path) as (fd, name):
            yield f"/proc/self/fd/{fd}/{name}"

    # -- reading ----------------------------------------------------------

    def lstat(self, path: str) -> os.stat_result:
        with self.at(path) as (fd, name):
            return os.stat(name, dir_fd=fd, follow_symlinks=False)

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

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        with self.at(path) as (fd, name):
            return os.open(name, flags | os.O_CLOEXEC | os.O_NOFOLLOW, mode, dir_fd=fd)

    def listdir(self, path: str) -> list[str]:
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def scandir(self, path: str) -> list[tuple[str, os.stat_result | None]]:
        """The names in a directory, each special file (device, fifo,
        socket) with its ``lstat``, the others with None: what tells an
        overlayfs whiteout, at the cost of a stat of special files only."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as entries:
                return [(e.name, None if e.is_dir(follow_symlinks=False)
                         or e.is_file(follow_symlinks=False) or e.is_symlink()
                         else e.stat(follow_symlinks=False)) for e in entries]
        finally:
            os.close(fd)

    def walk(self, top: str) -> Iterator[tuple[str, list[str], list[str]]]:
        """Like ``os.walk`` of the directory ``top``: ``(dir_path,
        dir_names, other_names)``, top-down (prune ``dir_names`` in place),
        in a loop rather than by recursion, so any depth and length works.
        A directory that goes (or moves) before its turn is skipped, as
        ``os.walk`` does: the walk sees what is there as it goes."""
        pending = [top]
        while pending:
            dir_path = pending.pop()
            try:
                fd = self.open(dir_path, os.O_RDONLY | os.O_DIRECTORY)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                with os.scandir(fd) as entries:
                    found = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
            finally:
                os.close(fd)
            dir_names = [name for name, is_dir in found if is_dir]
            yield dir_path, dir_names, [name for name, is_dir in found if not is_dir]
            pending += [child(dir_path, name) for name in reversed(dir_names)]

    def readlink(self, path: str) -> str:
        with self.at(path) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    def getxattr(self, path: str, name: str) -> bytes:
        with self.proc_path_of(path) as proc_path:
            return os.getxattr(proc_path, name, follow_symlinks=False)

    def listxattr(self, path: str) -> list[str]:
        with self.proc_path_of(path) as proc_path:
            return os.listxattr(proc_path, follow_symlinks=False)

    def statvfs(self) -> os.statvfs_result:
        return os.fstatvfs(self.fd)

    # -- changing (the writable branch only) ------------------------------

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        with self.proc_path_of(path) as proc_path:
            os.setxattr(proc_path, name, value, follow_symlinks=False)

    def removexattr(self, path: str, name: str) -> None:
        with self.proc_path_of(path) as proc_path:
            os.removexattr(proc_path, name, follow_symlinks=False)

    def chown(self, path: str, uid: int, gid: int) -> None:
        with self.at(path) as (fd, name):
            os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)

    def chmod(self, path: str, mode: int) -> None:
        with self.at(path) as (fd, name):
            os.chmod(name, mode, dir_fd=fd)

    def utime(self, path: str, ns: tuple[int, int]) -> None:
        with self.at(path) as (fd, name):
            os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)

    def mkdir(self, path: str, mode: int) -> None:
        with self.at(path) as (fd, name):
            os.mkdir(name, mode, dir_fd=fd)

    def mknod(self, path: str, mode: int, device: int = 0) -> None:
        with self.at(path) as (fd, name):
            os.mknod(name, mode, device, dir_fd=fd)

    def unlink(self, path: str) -> None:
        with self.at(path) as (fd, name):
            os.unlink(name, dir_fd=fd)

    def link(self, src: str, dst: str) -> None:
        with self.at(src) as (src_fd, src_name), self.at(dst) as (dst_fd, dst_name):
            os.link(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd,
                    follow_symlinks=False)

    def rename(self, src: str, dst: str, flags: int = 0) -> None:
        """``renameat2`` inside the branch, with ``RENAME_*`` ``flags``."""
        with self.at(src) as (src_fd, src_name), self.at(dst) as (dst_fd, dst_name):
            renameat2(src_fd, src_name, dst_fd, dst_name, flags)

    def move_in(self, dir_fd: int, name: str, path: str, flags: int = 0) -> None:
        """Rename ``name`` of the directory ``dir_fd`` (the work
        directory) to ``path`` in the branch."""
        with self.at(path) as (fd, leaf):
            renameat2(dir_fd, name, fd, leaf, flags)

    def link_in(self, dir_fd: int, name: str, path: str) -> None:
        """A new name ``path`` in the branch for ``name`` of the directory
        ``dir_fd`` (the work directory)."""
        with self.at(path) as (fd, leaf):
            os.link(name, leaf, src_dir_fd=dir_fd, dst_dir_fd=fd, follow_symlinks=False)

    def move_out(self, path: str, dir_fd: int, name: str, flags: int = 0) -> None:
        """Rename ``path`` in the branch to ``name`` in ``dir_fd``."""
        with self.at(path) as (fd, leaf):
            renameat2(fd, leaf, dir_fd, name, flags)
