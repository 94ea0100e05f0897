"""What a change to one file's attributes (owner, mode, times, xattrs) acts
on: its name in the writable branch, or, for a file that has no name left
in the union (opened, then unlinked; a removed directory that is still
open), a descriptor of its copy in the writable branch.

POSIX lets a process change an open file whatever became of its names
(``fchmod``, ``futimens``, ``fsetxattr``...); a :class:`Target` lets the
FUSE layer do both cases with the same calls.

An xattr needs room under a quota (``quota.py``); what it takes of a named
file is counted by the layer, of a nameless one here.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .quota import UNLIMITED, Quota, Unlimited
from .tree import Entry


@dataclass(frozen=True)
class Target:
    #: the file's entry, its top in the writable branch; None when it has no name
    entry: Entry | None
    #: a descriptor of the nameless file (unused when ``entry`` is set);
    #: ``O_PATH`` ones too, so calls go through its ``/proc/self/fd`` link
    fd: int = -1
    quota: Quota | Unlimited = UNLIMITED

    def lstat(self) -> os.stat_result:
        if self.entry is None:
            return os.stat(self._fd_path())
        return self.entry.top.layer.lstat(self.entry.top.path)

    def chown(self, uid: int, gid: int) -> None:
        if self.entry is None:
            os.chown(self._fd_path(), uid, gid)
        else:
            self.entry.top.layer.chown(self.entry.top.path, uid, gid)

    def chmod(self, mode: int) -> None:
        if self.entry is None:
            os.chmod(self._fd_path(), mode)
        elif not stat.S_ISLNK(self.lstat().st_mode):  # a link's mode never changes
            self.entry.top.layer.chmod(self.entry.top.path, mode)

    def utime(self, times_ns: tuple[int, int]) -> None:
        if self.entry is None:
            os.utime(self._fd_path(), ns=times_ns)
        else:
            self.entry.top.layer.utime(self.entry.top.path, times_ns)

    def setxattr(self, name: str, value: bytes) -> None:
        self.quota.room(len(name) + len(value))
        if self.entry is None:
            with self.quota.measured(self.fd):
                os.setxattr(self._fd_path(), name, value)
        else:
            self.entry.top.layer.setxattr(self.entry.top.path, name, value)

    def removexattr(self, name: str) -> None:
        if self.entry is None:
            with self.quota.measured(self.fd):
                os.removexattr(self._fd_path(), name)
        else:
            self.entry.top.layer.removexattr(self.entry.top.path, name)

    def _fd_path(self) -> str:
        return f"/proc/self/fd/{self.fd}"
