"""FUSE passthrough: open files whose reads, writes and maps the kernel does
itself, on a backing file the daemon hands it at open (kernel 6.9, libfuse
3.16, pyfuse3 as the set-up patches it).  Such a file costs no round trip
to the daemon per read or write, and its pages are the backing file's own:
N mounts of one branch share one copy, and ``MAP_SHARED`` maps it.

Which files are passed through (``handles.py`` asks :meth:`Backings.attach`):

* a file of the writable branch, unless it is a partial copy (its bytes
  live in two files) or the mount has a quota (every write is measured);
* a file of a read-only branch only when the union has no writable branch.
  In a writable union such a file may be copied up while open, and an
  open read handle must then see the copy (overlayfs's rule, and ours);
  the kernel cannot move a passed-through file to another backing file,
  so those files keep the page-cache modes (``handles.PageCache``).

The kernel's rules, which :class:`Backings` and ``handles.py`` keep (it
answers a breach with EIO): while any passed-through handle of an inode is
open, every other handle of it must be passed through too, on the same
backing file; and no handle is passed through beside a cached one, nor
beside a direct-I/O one (a map of it makes the inode cached).  So a file
copied up while handles of the lower file are open is passed through from
the first open after they have all closed.  A handle opened while the
inode's backing file is another file than its own (a live branch change
pointed the name elsewhere) is opened with that backing id and direct I/O:
reads and writes go through the daemon to its own file, but its maps show
the backing file.

Passthrough needs CAP_SYS_ADMIN in the initial user namespace (the kernel
checks it at every registration), and excludes the writeback cache (which
pyunion never enables).  Without it the mount works as before; the
``passthrough=`` mount option forces it on (the mount fails without it) or
off.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

import pyfuse3

log = logging.getLogger(__name__)

_CAP_SYS_ADMIN = 21
#: the inode number of the initial user namespace's /proc/PID/ns/user
#: (``PROC_USER_INIT_INO``)
_INITIAL_USER_NAMESPACE = 0xEFFFFFFD


def unavailable() -> str | None:
    """Why this daemon cannot pass files through, in words, or None.  (The
    kernel's own support shows only in its answer to INIT.)"""
    if not hasattr(pyfuse3, "backing_open"):
        return "pyfuse3 is built without it (scripts/setup.sh builds one with it)"
    if os.stat("/proc/self/ns/user").st_ino != _INITIAL_USER_NAMESPACE:
        return "the daemon runs in a user namespace (the kernel wants CAP_SYS_ADMIN in the first)"
    if not _effective_capabilities() >> _CAP_SYS_ADMIN & 1:
        return "the daemon lacks CAP_SYS_ADMIN"
    return None


def _effective_capabilities() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


@dataclass
class _Backing:
    id: int
    #: (st_dev, st_ino) of the backing file
    file: tuple[int, int]
    #: handles of the inode opened with its id
    users: int = 1


class Backings:
    """The backing file the kernel holds for each inode with passed-through
    handles: registered at the first such open, released at the last close."""

    def __init__(self) -> None:
        #: set once the kernel agreed to passthrough at INIT
        self.enabled = False
        self._of: dict[int, _Backing] = {}

    def holds(self, ino: int) -> bool:
        return ino in self._of

    def share(self, ino: int, fd: int) -> tuple[int, bool]:
        """The backing id ``ino`` holds, for a new handle of it on the file
        open as ``fd``; and whether that is the backing file."""
        backing = self._of[ino]
        backing.users += 1
        return backing.id, backing.file == _file(fd)

    def attach(self, ino: int, fd: int) -> int:
        """Register the file open as ``fd`` as the backing file of ``ino``,
        which holds none; its backing id, or 0 if the kernel refused it (a
        file on a stacked file system: ELOOP)."""
        try:
            backing_id = pyfuse3.backing_open(fd)
        except OSError as exc:
            if exc.errno == errno.EPERM:
                self.enabled = False
                log.warning("passthrough refused by the kernel (%s): files go through "
                            "the daemon from now on", exc.strerror)
            else:
                log.debug("no passthrough for inode %d: %s", ino, exc.strerror)
            return 0
        self._of[ino] = _Backing(backing_id, _file(fd))
        return backing_id

    def detach(self, ino: int) -> None:
        """A passed-through handle of ``ino`` was released."""
        backing = self._of[ino]
        backing.users -= 1
        if not backing.users:
            del self._of[ino]
            try:
                pyfuse3.backing_close(backing.id)
            except OSError as exc:
                log.warning("backing id %d of inode %d not closed: %s",
                            backing.id, ino, exc.strerror)


def _file(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino
