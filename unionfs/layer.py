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

The names of a read-only branch's directories are read once and kept: a
lookup asks each branch's kept names instead of making a system call per
branch.  So are overlay's marks of the directory (opaque, redirect:
``whiteout.DirMarks``), read with one ``flistxattr`` on the descriptor the
names are read from.  Whether kept names are trusted as they are is the
mount's ``udba`` choice (``udba.py``): for ever (``none``), after a
``stat`` of the directory shows it unchanged (``reval``), or until an
inotify event drops them (``notify``, through :meth:`Layer.forget_names`).

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
import stat
from collections import OrderedDict
from typing import Callable, Iterator, NamedTuple

from . import mounts
from .branches import Branch, Mode
from .whiteout import DIR_XATTRS, META_DIR, NO_DIR_MARKS, DirMarks

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


#: file systems whose ``d_ino`` is the ``st_ino`` of the same file (on
#: one device: not overlayfs, whose files may show their layers' numbers,
#: nor FUSE, which may list no numbers at all)
_LISTS_NUMBERS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs"})


class Scanned(NamedTuple):
    """One name of a directory as read (``Layer.scandir``)."""

    name: str
    #: its ``d_ino`` where that is its ``st_ino`` on the branch's device
    #: (0 where it may not be), and its file type (``stat.S_IFMT``) from
    #: ``d_type``
    ino: int
    kind: int
    #: a special file's (device, fifo, socket) ``lstat``; None for the others
    special: os.stat_result | None


class _Listing(NamedTuple):
    """A read-only directory's names, and what showed it unchanged then."""

    names: frozenset[str]
    #: ``(st_ino, st_mtime_ns, st_ctime_ns)`` of the directory; None: absent
    stamp: tuple[int, int, int] | None
    #: ``stat`` the directory before each use (reval, or notify unwatched)
    check: bool
    marks: DirMarks = NO_DIR_MARKS


def _scanned(entry: os.DirEntry, numbered: bool) -> Scanned:
    """(Where the file system gives no ``d_type``, ``is_dir`` and the
    others ``lstat``.)"""
    ino = entry.inode() if numbered else 0
    for kind, test in ((stat.S_IFDIR, entry.is_dir), (stat.S_IFREG, entry.is_file)):
        if test(follow_symlinks=False):
            return Scanned(entry.name, ino, kind, None)
    if entry.is_symlink():
        return Scanned(entry.name, ino, stat.S_IFLNK, None)
    special = entry.stat(follow_symlinks=False)
    return Scanned(entry.name, ino, stat.S_IFMT(special.st_mode), special)


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return st.st_ino, st.st_mtime_ns, st.st_ctime_ns


def _dir_marks(target: int | str) -> DirMarks:
    """overlay's marks of a directory, by descriptor or path: one
    ``listxattr``, and a ``getxattr`` for each of overlay's found."""
    follow = {} if isinstance(target, int) else {"follow_symlinks": False}
    values = {}
    try:
        for name in os.listxattr(target, **follow):
            if name in DIR_XATTRS:
                values[name] = os.getxattr(target, name, **follow)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.ENODATA):
            raise
    return DirMarks.of(values) if values else NO_DIR_MARKS


class Layer:
    """One branch of the stack, opened; ``index`` 0 is the top."""

    #: counts the changes of any layer's kept names (what was built from
    #: them, ``holders.py``, is stale once it moves)
    names_generation = 0

    def __init__(self, branch: Branch, index: int):
        self.branch = branch
        self.index = index
        self.fd = os.open(branch.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._listings: OrderedDict[str, _Listing] = OrderedDict()
        #: set by the mount's udba choice (``udba.py``): ``stat`` a
        #: directory before trusting its kept names
        self.check_dirs = False
        #: set by ``udba=notify``: called with each read-only directory the
        #: daemon looks into; False when it cannot be watched
        self.watch: Callable[[Layer, str], bool] | None = None
        #: its entries may carry pyunion's marks (``tree.read_marks``): it is
        #: writable, or was a writable branch once
        self.keeps_marks = branch.writable or self.lstat_or_none(META_DIR) is not None
        #: the device of its files (a file system mounted inside it aside)
        self.dev = os.fstat(self.fd).st_dev

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
        self.forget_all_names()

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
        return self.writable or name in self._listing(dir_path).names

    def kept_names(self, dir_path: str) -> frozenset[str] | None:
        """The names of the directory ``dir_path`` in a read-only branch;
        None in the writable one (ask ``lstat``).  :meth:`may_hold` for
        several names at the cost of one."""
        return None if self.writable else self._listing(dir_path).names

    def dir_marks(self, dir_path: str) -> DirMarks:
        """overlay's marks of the directory ``dir_path``: kept with its
        names in a read-only branch, read at each call in the writable one."""
        if not self.writable:
            return self._listing(dir_path).marks
        try:
            with self.proc_path_of(dir_path) as proc_path:
                return _dir_marks(proc_path)
        except (FileNotFoundError, NotADirectoryError):
            return NO_DIR_MARKS

    def forget_names(self, dir_path: str, below: bool = False) -> None:
        """Drop the kept names of ``dir_path`` (and of every directory
        under it with ``below``): it changed."""
        Layer.names_generation += 1
        self._listings.pop(dir_path, None)
        if below:
            prefix = child(dir_path, "")
            for path in [p for p in self._listings if p.startswith(prefix)]:
                del self._listings[path]

    def forget_all_names(self) -> None:
        Layer.names_generation += 1
        self._listings.clear()

    def _listing(self, dir_path: str) -> _Listing:
        """The kept names of a directory (read again if they may be stale),
        the most recently used ``_LISTINGS_KEPT`` of them kept."""
        kept = self._listings.get(dir_path)
        if kept is not None:
            self._listings.move_to_end(dir_path)
            if not kept.check or kept.stamp == self._stamp_of(dir_path):
                return kept
        kept = self._listings[dir_path] = self._read_listing(dir_path)
        if len(self._listings) > _LISTINGS_KEPT:
            self._listings.popitem(last=False)
        return kept

    def _stamp_of(self, dir_path: str) -> tuple[int, int, int] | None:
        st = self.lstat_or_none(dir_path)
        return _stamp(st) if st is not None else None

    def _read_listing(self, dir_path: str) -> _Listing:
        """Watched (notify) before it is read, stamped before it is read:
        a change while reading shows as an event or a newer stamp."""
        check = self.check_dirs or (self.watch is not None and not self.watch(self, dir_path))
        try:
            fd = self.open(dir_path, os.O_RDONLY | os.O_DIRECTORY)
        except (FileNotFoundError, NotADirectoryError):
            return _Listing(frozenset(), None, check)
        try:
            stamp = _stamp(os.fstat(fd))
            return _Listing(frozenset(os.listdir(fd)), stamp, check, _dir_marks(fd))
        finally:
            os.close(fd)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        with self.at(path) as (fd, name):
            return os.open(name, flags | os.O_CLOEXEC | os.O_NOFOLLOW, mode, dir_fd=fd)

    def listdir(self, path: str) -> list[str]:
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def scandir(self, path: str) -> list[Scanned]:
        """The names in a directory with their ``d_ino`` and type, each
        special file (device, fifo, socket) with its ``lstat`` too: what
        tells an overlayfs whiteout, at the cost of a stat of special files
        only.  ``d_ino`` is kept only where the branch's file system lists
        its files' numbers and the directory is on the branch's device (not
        inside a file system mounted in the branch; a file that is itself a
        mount point cannot be told without a stat)."""
        if self.watch is not None:
            self.watch(self, path)  # its names go to the kernel: watch them
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            numbered = self._lists_numbers and os.fstat(fd).st_dev == self.dev
            with os.scandir(fd) as entries:
                return [_scanned(e, numbered) for e in entries]
        finally:
            os.close(fd)

    @functools.cached_property
    def _lists_numbers(self) -> bool:
        """(Asked at the first listing: the mount table is not read per
        branch at mount.)"""
        return mounts.fstype_of(self.dev) in _LISTS_NUMBERS

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

    def link(self, src: str, dst: str, src_layer: Layer | None = None) -> None:
        """A new name ``dst`` for ``src`` of this layer, or of ``src_layer``
        (on the same file system: the hard-link index of ``workdir=``)."""
        with (src_layer or self).at(src) as (src_fd, src_name), \
                self.at(dst) as (dst_fd, dst_name):
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
