"""What a change to one file's attributes (owner, mode, times, xattrs) acts
on: its name in the writable branch, or, for a file that has no name left
in the union (opened, then unlinked), a read-write descriptor of its copy.

POSIX lets a process change an open file whatever became of its names
(``fchmod``, ``futimens``, ``fsetxattr``...); a :class:`Target` lets the
FUSE layer do both cases with the same calls.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .tree import Entry


@dataclass(frozen=True)
class Target:
    #: the file's entry, its top in the writable branch; None when it has no name
    entry: Entry | None
    #: a read-write descriptor of the nameless file (unused when ``entry`` is set)
    fd: int = -1

    def lstat(self) -> os.stat_result:
        if self.entry is None:
            return os.fstat(self.fd)
        return self.entry.top.layer.lstat(self.entry.top.path)

    def chown(self, uid: int, gid: int) -> None:
        if self.entry is None:
            os.fchown(self.fd, uid, gid)
        else:
            layer, path = self.entry.top
            os.chown(path, uid, gid, dir_fd=layer.fd, follow_symlinks=False)

    def chmod(self, mode: int) -> None:
        if self.entry is None:
            os.fchmod(self.fd, mode)
        elif not stat.S_ISLNK(self.lstat().st_mode):  # a link's mode never changes
            layer, path = self.entry.top
            os.chmod(path, mode, dir_fd=layer.fd)

    def utime(self, times_ns: tuple[int, int]) -> None:
        if self.entry is None:
            os.utime(self.fd, ns=times_ns)
        else:
            layer, path = self.entry.top
            os.utime(path, ns=times_ns, dir_fd=layer.fd, follow_symlinks=False)

    def setxattr(self, name: str, value: bytes) -> None:
        if self.entry is None:
            os.setxattr(self.fd, name, value)
        else:
            os.setxattr(self._proc_path(), name, value, follow_symlinks=False)

    def removexattr(self, name: str) -> None:
        if self.entry is None:
            os.removexattr(self.fd, name)
        else:
            os.removexattr(self._proc_path(), name, follow_symlinks=False)

    def _proc_path(self) -> str:
        return self.entry.top.layer.proc_path(self.entry.top.path)
