"""tmpcopyup's copy: a directory's entries into another, with their owners,
modes and times (runc's CopyDirectory), descriptor to descriptor, so the
source may be a directory a new mount already hides."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator


def copy_tree(source: int, dest: int) -> None:
    """Copy the entries of the directory ``source`` into ``dest``, with
    their owners, modes and times."""
    for entry in os.scandir(source):
        name = entry.name
        info = os.stat(name, dir_fd=source, follow_symlinks=False)
        kind = stat.S_IFMT(info.st_mode)
        if kind == stat.S_IFLNK:
            os.symlink(os.readlink(name, dir_fd=source), name, dir_fd=dest)
        elif kind == stat.S_IFDIR:
            os.mkdir(name, 0o700, dir_fd=dest)
            with _opened(name, source, os.O_DIRECTORY) as inner, \
                    _opened(name, dest, os.O_DIRECTORY) as outer:
                copy_tree(inner, outer)
        elif kind == stat.S_IFREG:
            with _opened(name, source, os.O_RDONLY) as reading, \
                    _opened(name, dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) as writing:
                while os.sendfile(writing, reading, None, 1 << 20):
                    pass
        else:
            os.mknod(name, info.st_mode, info.st_rdev, dir_fd=dest)
        os.chown(name, info.st_uid, info.st_gid, dir_fd=dest, follow_symlinks=False)
        if kind != stat.S_IFLNK:
            os.chmod(name, stat.S_IMODE(info.st_mode), dir_fd=dest)
        os.utime(name, ns=(info.st_atime_ns, info.st_mtime_ns), dir_fd=dest,
                 follow_symlinks=False)


@contextlib.contextmanager
def _opened(name: str, dir_fd: int, flags: int, mode: int = 0o777) -> Iterator[int]:
    fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)
