"""Copying one entry of a read-only branch into the work directory.

The copy keeps the type, data (holes stay holes), mode, owner, times and
xattrs, and gets the union's marks (its origin inode number, so ``st_ino``
does not change).  It is made under a fresh name in the work directory and
its data (if it has any) fsynced; the caller renames it into place, so a
crash never leaves half a file visible.  Data moves with
``copy_file_range`` (in the kernel, and a reflink where the file system
can), falling back to ``sendfile``.

Regular files may be big: with ``Data.ALL``, call :func:`copy_entry` off the
event loop.
"""

from __future__ import annotations

import enum
import errno
import os
import stat

from . import durable
from .tree import Location
from .whiteout import XATTR, Marks, is_private_xattr

_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS}


class Data(enum.Enum):
    """What a regular file's copy gets of its data."""

    ALL = "all"  #: every byte, flushed to disk
    NONE = "none"  #: nothing: an empty file, for an open that truncates anyway
    LATER = "later"  #: a hole of the same size, filled chunk by chunk (``partial.py``)


def copy_entry(source: Location, st: os.stat_result, work_fd: int, name: str,
               marks: Marks, data: Data = Data.ALL) -> None:
    """Make ``name`` in the work directory a copy of ``source``."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        _copy_file(source, st, work_fd, name, data)
    elif stat.S_ISDIR(mode):
        os.mkdir(name, 0o700, dir_fd=work_fd)
    elif stat.S_ISLNK(mode):
        os.symlink(source.layer.readlink(source.path), name, dir_fd=work_fd)
    else:
        os.mknod(name, mode, st.st_rdev, dir_fd=work_fd)
    try:
        _copy_metadata(source, st, work_fd, name, marks)
    except BaseException:
        remove_staged(work_fd, name)
        raise


def remove_staged(work_fd: int, name: str) -> None:
    """Remove a staged entry (a directory with whatever it holds).

    No recursion and one descriptor at a time, so no depth is too deep: it
    climbs back with ``..``, safe in the work directory, which only the
    daemon changes.
    """
    try:
        st = os.stat(name, dir_fd=work_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=work_fd)
        return
    fd = _open_dir(name, work_fd)
    pending = [_empty_files(fd)]  # per level: the subdirectories still to remove
    try:
        while pending:
            if pending[-1]:
                below = _open_dir(pending[-1][-1], fd)
                os.close(fd)
                fd = below
                pending.append(_empty_files(fd))
                continue
            pending.pop()
            if pending:
                above = _open_dir("..", fd)
                os.close(fd)
                fd = above
                os.rmdir(pending[-1].pop(), dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=work_fd)


def _open_dir(name: str, dir_fd: int) -> int:
    return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=dir_fd)


def _empty_files(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; return the
    names of its subdirectories."""
    with os.scandir(fd) as entries:
        found = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_dir in found:
        if not is_dir:
            os.unlink(name, dir_fd=fd)
    return [name for name, is_dir in found if is_dir]


def copy_data(src_fd: int, dst_fd: int, size: int) -> None:
    """Copy ``size`` bytes into an empty file, so sparse files stay sparse."""
    for start, stop in data_extents(src_fd, 0, size):
        copy_range(src_fd, dst_fd, start, stop - start)
    os.ftruncate(dst_fd, size)


def data_extents(fd: int, start: int, stop: int) -> list[tuple[int, int]]:
    """The parts of bytes ``start`` to ``stop`` of a file that are not holes."""
    extents = []
    offset = start
    while offset < stop:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        if data >= stop:
            break
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), stop)
        extents.append((data, hole))
        offset = hole
    return extents


def _copy_file(source: Location, st: os.stat_result, work_fd: int, name: str,
               data: Data) -> None:
    dst = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                  dir_fd=work_fd)
    try:
        if data is Data.ALL:
            src = source.layer.open(source.path, os.O_RDONLY)
            try:
                copy_data(src, dst, st.st_size)
            finally:
                os.close(src)
            if st.st_size:  # data must not lag behind the rename that shows it
                durable.fsync(dst)
        elif data is Data.LATER:
            os.ftruncate(dst, st.st_size)
    except BaseException:
        os.close(dst)
        os.unlink(name, dir_fd=work_fd)
        raise
    os.close(dst)


def copy_range(src_fd: int, dst_fd: int, offset: int, count: int) -> None:
    """Copy ``count`` bytes at ``offset`` to the same offset."""
    while count > 0:
        try:
            done = os.copy_file_range(src_fd, dst_fd, count, offset, offset)
        except OSError as exc:
            if exc.errno not in _NO_COPY_FILE_RANGE:
                raise
            os.lseek(dst_fd, offset, os.SEEK_SET)
            done = os.sendfile(dst_fd, src_fd, offset, count)
        if done == 0:  # the source is shorter than it said
            return
        offset += done
        count -= done


def _copy_metadata(source: Location, st: os.stat_result, work_fd: int, name: str,
                   marks: Marks) -> None:
    proc_path = f"/proc/self/fd/{work_fd}/{name}"
    for attr in source.layer.listxattr(source.path):
        if not is_private_xattr(attr):
            value = source.layer.getxattr(source.path, attr)
            os.setxattr(proc_path, attr, value, follow_symlinks=False)
    os.setxattr(proc_path, XATTR, marks.encode(), follow_symlinks=False)
    os.chown(name, st.st_uid, st.st_gid, dir_fd=work_fd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        # After chown, which may clear set-id bits.
        os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=work_fd)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=work_fd, follow_symlinks=False)
