"""The writable branch's layer under a quota: each of its calls that makes
or takes away a name, or changes an entry's xattrs, tells the quota
(``quota.py``) what it did to the branch's blocks, read with ``lstat``
before and after: a directory that grew, a new inode, a file whose last
name went.

Entries staged in the work directory are not counted until they arrive in
the branch (``move_in``, ``link_in``): most are gone again before their
change ends.  One that arrives with no other name is new to the count; a
hard link of a counted file adds nothing.  What leaves for the work
directory (``Upper.retire``) is the caller's to report, once it is gone.
"""

from __future__ import annotations

import contextlib
import os
import stat
from typing import Iterator

from .branches import Branch
from .layer import RENAME_EXCHANGE, RENAME_WHITEOUT, Layer, split
from .quota import Quota, tree_blocks


class MeteredLayer(Layer):
    """The writable branch under the quota ``quota``."""

    def __init__(self, branch: Branch, index: int, quota: Quota):
        super().__init__(branch, index)
        self.quota = quota

    def mkdir(self, path: str, mode: int) -> None:
        with self._naming(path, made=True):
            super().mkdir(path, mode)

    def mknod(self, path: str, mode: int, device: int = 0) -> None:
        with self._naming(path, made=True):
            super().mknod(path, mode, device)

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        if not flags & (os.O_CREAT | os.O_TRUNC):
            return super().open(path, flags, mode)
        with self._naming(path, made=True):
            return super().open(path, flags, mode)

    def unlink(self, path: str) -> None:
        with self.quota.removing(lambda: self._pin(path)):
            super().unlink(path)

    def link(self, src: str, dst: str, src_layer: Layer | None = None) -> None:
        with self._naming(dst):
            super().link(src, dst, src_layer)

    def link_in(self, dir_fd: int, name: str, path: str) -> None:
        with self._naming(path, made=_staged_only(dir_fd, name)):
            super().link_in(dir_fd, name, path)
        self.quota.watched_grown()

    def rename(self, src: str, dst: str, flags: int = 0) -> None:
        with self._naming(dst, replacing=not flags & RENAME_EXCHANGE), \
                self._whiteout_left(src, flags):
            super().rename(src, dst, flags)

    def move_in(self, dir_fd: int, name: str, path: str, flags: int = 0) -> None:
        with self._naming(path, made=_staged_only(dir_fd, name),
                          replacing=not flags & RENAME_EXCHANGE):
            super().move_in(dir_fd, name, path, flags)
        self.quota.watched_grown()

    def move_out(self, path: str, dir_fd: int, name: str, flags: int = 0) -> None:
        with self._whiteout_left(path, flags):
            super().move_out(path, dir_fd, name, flags)
        self.quota.watched_grown()

    def setxattr(self, path: str, name: str, value: bytes) -> None:
        with self._changing(path):
            super().setxattr(path, name, value)

    def removexattr(self, path: str, name: str) -> None:
        with self._changing(path):
            super().removexattr(path, name)

    def _pin(self, path: str) -> int:
        return super().open(path, os.O_PATH)

    @contextlib.contextmanager
    def _naming(self, path: str, made: bool = False, replacing: bool = False) -> Iterator[None]:
        """Around a call that puts a name at ``path``: count what its
        directory grows by and, if ``made``, the entry it puts there (new
        to the count; or, if it was there already, what the call changed
        of it).  ``replacing``: what was at ``path`` may lose its last name."""
        parent = self.lstat(split(path)[0]).st_blocks
        old = self.lstat_or_none(path) if made else None
        with (self.quota.removing(lambda: self._pin(path)) if replacing
              else contextlib.nullcontext()):
            yield
        grown = self.lstat(split(path)[0]).st_blocks - parent
        if made:
            new = self.lstat(path)
            if old is not None and old.st_ino == new.st_ino:
                grown += new.st_blocks - old.st_blocks
            else:
                grown += (tree_blocks(self, path) if stat.S_ISDIR(new.st_mode)
                          else new.st_blocks)
        self.quota.add(grown)

    @contextlib.contextmanager
    def _whiteout_left(self, path: str, flags: int) -> Iterator[None]:
        """Around a rename from ``path``: with ``RENAME_WHITEOUT``, count the
        device it leaves there (the directory keeps the name)."""
        yield
        if flags & RENAME_WHITEOUT:
            self.quota.add(self.lstat(path).st_blocks)

    @contextlib.contextmanager
    def _changing(self, path: str) -> Iterator[None]:
        fd = self._pin(path)
        try:
            with self.quota.measured(fd):
                yield
        finally:
            os.close(fd)


def _staged_only(dir_fd: int, name: str) -> bool:
    """True when ``name`` in the work directory has no other name (new to
    the count when it arrives in the branch)."""
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    return stat.S_ISDIR(st.st_mode) or st.st_nlink == 1
