"""One daemon per writable branch: the lock that says a branch is in use.

Two daemons writing one upper branch, or one work directory, overwrite each
other's chunk maps and clean away each other's staged entries.  So a daemon
holds an exclusive ``flock`` on its upper branch and on its ``workdir=`` for
its whole life, and a second mount of either is refused, as overlayfs
refuses an upperdir or workdir that is in use.  The lock belongs to
descriptors only the daemon holds (close-on-exec): it goes when the daemon
goes, however it ends; a mount detached with ``umount -l`` keeps it while
its daemon still serves open files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from .branches import BranchError, BranchStack


@contextlib.contextmanager
def held(stack: BranchStack) -> Iterator[None]:
    """Hold the upper branch and work dir of ``stack`` for the ``with``
    block; a :class:`BranchError` says which one another process holds."""
    fds = []
    try:
        for what, path in _writable_dirs(stack):
            fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
            try:
                fcntl.flock(fds[-1], fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fds[-1])
                by = f" (process {holder})" if holder else ""
                raise BranchError(f"{what} {path} is in use by another mount{by}") from None
        yield
    finally:
        for fd in fds:
            os.close(fd)


def _writable_dirs(stack: BranchStack) -> list[tuple[str, str]]:
    if stack.upper is None:
        return []
    found = [("upper branch", stack.upper.path)]
    if stack.workdir is not None:
        found.append(("workdir", stack.workdir))
    return found


def _holder(fd: int) -> int | None:
    """The process that took the flock on ``fd``'s directory (/proc/locks)."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError), open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if fields[1:4] == ["FLOCK", "ADVISORY", "WRITE"] and fields[5] == inode:
                return int(fields[4])
    return None
