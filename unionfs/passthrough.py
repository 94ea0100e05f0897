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

The kernel's rules, which :class:`Backings` keeps: while any passed-through
handle of an inode is open, every other passed-through handle of it uses
the same backing file (else EBUSY), and no cached handle may be opened
beside them (EINVAL), nor a passed-through one beside cached handles
(ETXTBSY); a direct-I/O handle may sit beside either.  So a file copied up
while cached handles of it are open is passed through from the first open
after they have all closed, and an open that cannot share the inode's
backing file gets direct I/O.

Passthrough needs CAP_SYS_ADMIN in the initial user namespace (the kernel
checks it at every registration), and excludes the writeback cache (which
pyunion never enables).  Without it the mount works as before; the
``passthrough=`` mount option forces it on (the mount fails without it) or
off.
"""

from __future__ import annotations

import enum
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


class Mode(enum.Enum):
    AUTO = "auto"  #: where the kernel, the library and the daemon's privileges allow
    ON = "on"      #: always: the mount fails where it cannot be had
    OFF = "off"    #: never: every read and write goes through the daemon


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
    #: passed-through handles of the inode
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

    def attach(self, ino: int, fd: int) -> int:
        """A backing id for a new passed-through handle of ``ino`` on the
        file open as ``fd``; 0 if it must not be passed through: the inode's
        handles are passed through to another file, or the kernel refused
        the file (one on a stacked file system: ELOOP)."""
        st = os.fstat(fd)
        file = (st.st_dev, st.st_ino)
        backing = self._of.get(ino)
        if backing is not None:
            if backing.file != file:
                return 0
            backing.users += 1
            return backing.id
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
        self._of[ino] = _Backing(backing_id, file)
        return backing_id

    def detach(self, ino: int) -> None:
        """A passed-through handle of ``ino`` was released."""
        backing = self._of[ino]
        backing.users -= 1
        if not backing.users:
            del self._of[ino]
            pyfuse3.backing_close(backing.id)
