"""Paths inside a container's root, resolved as the container will see
them before it is its ``/``: an absolute symlink stays in the root, ``..``
stops at it, and no rename can lead a resolved path out (openat2's
RESOLVE_IN_ROOT, as runc resolves through libpathrs).  Every mount point,
device node and link the runtime makes in a root is reached through here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
from collections.abc import Iterator

from . import syscalls as sc

_PATH_ONLY = os.O_PATH | os.O_CLOEXEC
_IN_ROOT = sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS
_MAX_LINKS = 40  # as the kernel follows at most


@contextlib.contextmanager
def target(root: str, path: str, is_dir: bool = True) -> Iterator[str]:
    """A name for ``path`` in ``root`` to mount on: ``/proc/self/fd/N`` of
    an O_PATH descriptor to it; made if missing (a file last when not
    ``is_dir``)."""
    fd = open_path(root, path, is_dir)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def open_path(root: str, path: str, is_dir: bool = True) -> int:
    """``path`` in ``root`` opened O_PATH, made if missing."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_in_root(root_fd, path, is_dir)
    finally:
        os.close(root_fd)


@contextlib.contextmanager
def parent(root: str, path: str) -> Iterator[tuple[int, str]]:
    """The directory of ``path`` in ``root`` (made if missing) as a
    descriptor, and the last name: for making a node or link there."""
    fd = open_path(root, os.path.dirname(path.rstrip("/")) or "/")
    try:
        yield fd, os.path.basename(path.rstrip("/"))
    finally:
        os.close(fd)


def inside(root: str, name: str) -> str:
    """The container path that ``name`` (a /proc/self/fd link from
    :func:`target`) stands for."""
    return os.path.normpath("/" + os.path.relpath(os.readlink(name), root))


def _open_in_root(root_fd: int, path: str, is_dir: bool, links: int = 0) -> int:
    """Made where missing as runc's MkdirAllInRoot makes it: a dangling
    symlink on the way is followed (in the root), and what it names made."""
    try:
        return sc.openat2(root_fd, path, _PATH_ONLY, _IN_ROOT)
    except FileNotFoundError:
        if path.strip("/") == "":
            raise
    dir_fd = _open_in_root(root_fd, posixpath.dirname(path.rstrip("/")), True, links)
    name = posixpath.basename(path.rstrip("/"))
    try:
        try:
            link = os.readlink(name, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
            link = None
        if link is not None:
            if links >= _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            here = _inside_fd(root_fd, dir_fd)
            return _open_in_root(root_fd, posixpath.join(here, link), is_dir, links + 1)
        if is_dir:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        else:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644,
                             dir_fd=dir_fd))
    finally:
        os.close(dir_fd)
    return sc.openat2(root_fd, path, _PATH_ONLY, _IN_ROOT)


def _inside_fd(root_fd: int, fd: int) -> str:
    return inside(os.readlink(f"/proc/self/fd/{root_fd}"), f"/proc/self/fd/{fd}")
