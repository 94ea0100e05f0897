"""Flushing the writable branch to disk, or not, for a ``volatile`` mount.

Every flush the daemon makes (an fsync through the mount, a copy-up's data
before the rename that shows it, a chunk map) goes through :func:`fsync`.
With ``-o volatile`` (overlayfs's option, which podman passes for
containers run with ``--rm``) none reaches the disk: they return at once.
The daemon killed loses nothing even so (every write is in the kernel's
page cache), but a crash of the machine may lose the writable branch's
recent changes, or leave them torn.

So, as overlayfs does, a volatile mount keeps ``incompat/volatile`` in its
work directory while it lives, holding the machine's boot id.  A mount that
finds one left by an earlier boot refuses the branch, which may be damaged;
one left in this boot (the daemon was killed, the machine went on) is
harmless and goes.  A clean unmount flushes the branch's file system and
removes it.  containers/storage removes the marker itself before each mount,
as it does for overlayfs.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat

from .branches import BranchError

MARKER_DIR = "incompat"
MARKER = "volatile"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_libc = ctypes.CDLL(None, use_errno=True)
_volatile = False


class DamagedBranch(BranchError):
    """A volatile mount's branch that the machine went down under."""


def make_volatile() -> None:
    """From now on, flushes are skipped (the daemon serves one mount)."""
    global _volatile
    _volatile = True


def flushes() -> bool:
    """Whether flushes reach the disk (not on a volatile mount)."""
    return not _volatile


def fsync(fd: int, datasync: bool = False) -> None:
    if not _volatile:
        (os.fdatasync if datasync else os.fsync)(fd)


def check(work_path: str) -> None:
    """Before the mount: refuse a branch whose work directory ``work_path``
    holds the marker of a volatile mount that the machine went down under
    (or one that tells nothing of its boot)."""
    try:
        work_fd = os.open(work_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return  # never mounted: nothing to check
    try:
        dir_fd = _marker_dir(work_fd)
        try:
            left_by = _left_by(dir_fd)
        finally:
            os.close(dir_fd)
    except FileNotFoundError:
        return
    except OSError:  # not pyunion's directory (a file, a symlink)
        left_by = None
    finally:
        os.close(work_fd)
    if left_by != _boot_id().encode():
        since = ("the machine has restarted since" if left_by is not None else
                 "this marker tells nothing of the boot it was made in")
        raise DamagedBranch(
            f"the writable branch was mounted volatile, and {since}: its last changes "
            f"may be lost or torn; remove {work_path}/{MARKER_DIR} to mount it anyway")


def mark(work_fd: int) -> None:
    """Leave the marker of a volatile mount in its work directory, whole
    or not at all (staged, then renamed into place)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(MARKER_DIR, 0o700, dir_fd=work_fd)
    dir_fd = _marker_dir(work_fd)
    try:
        staged = f"{MARKER}.{os.getpid()}"
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
        with os.fdopen(fd, "w") as f:
            f.write(_boot_id() + "\n")
        os.rename(staged, MARKER, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def unmark(work_fd: int) -> None:
    """Remove the marker (:func:`check` has passed it), and what a
    :func:`mark` killed half-way staged.  What is gone already is fine:
    podman removes a ``--rm`` container's work directory as soon as it has
    unmounted it, while the daemon may still be settling."""
    with contextlib.suppress(FileNotFoundError):
        dir_fd = _marker_dir(work_fd)
        try:
            for name in os.listdir(dir_fd):
                if name == MARKER or name.startswith(MARKER + "."):
                    os.unlink(name, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        os.rmdir(MARKER_DIR, dir_fd=work_fd)


def settle(work_fd: int) -> None:
    """At a clean unmount: flush the branch's file system, then the marker goes."""
    if _libc.syncfs(work_fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    unmark(work_fd)


def _left_by(dir_fd: int) -> bytes | None:
    """The boot id in the marker; None if it is not a file pyunion could
    have written (overlayfs's own is a directory, ``volatile/dirty``), which
    is never waited on (a fifo) nor read past a boot id's length."""
    try:
        fd = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink
            return None
        raise
    try:
        return os.read(fd, 64).strip() if stat.S_ISREG(os.fstat(fd).st_mode) else None
    finally:
        os.close(fd)


def _marker_dir(work_fd: int) -> int:
    return os.open(MARKER_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                   dir_fd=work_fd)


def _boot_id() -> str:
    with open(_BOOT_ID) as f:
        return f.read().strip()
