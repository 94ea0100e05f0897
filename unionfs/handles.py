"""Open files: the real descriptor behind each FUSE file handle, where its
data comes from (the real file, or a partial file's two halves), and what
the kernel may cache of it.

A handle's number is its real descriptor.  A handle opened on a lower file
keeps reading it until the file is copied up; then it reads the copy
(``moved_up``).  Handles of one partially copied-up file share one
:class:`~unionfs.partial.PartialFile`.

How the kernel reads and writes a handle (``_Io``): through the daemon
with the kernel's page cache, through the daemon with none (direct I/O),
or itself on a backing file (passthrough, ``passthrough.py``, which says
which files).

Under a quota (``quota.py``), a write needs room for the holes it fills,
every write and truncate is measured, and each descriptor of a file of the
writable branch is a holder of it: a file unlinked while open is freed
when its last holder closes.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import stat
from dataclasses import dataclass

import pyfuse3
import trio
from pyfuse3 import FileInfo

from . import durable
from .copyup import copy_data
from .inodes import Node
from .layer import Layer
from .partial import PartialFile, PartialFiles
from .passthrough import Backings
from .quota import SECTOR, UNLIMITED
from .tree import Entry
from .udba import changed_below
from .upper import Upper
from .whiteout import is_private_xattr

# What an open passes on to the real file: the kernel itself handles
# O_APPEND (it sends the right offset) and O_CREAT/O_EXCL (via create).
OPEN_FLAGS_KEPT = os.O_ACCMODE | os.O_SYNC | os.O_DSYNC | os.O_TRUNC


class PageCache(enum.Enum):
    """What the kernel keeps of a lower file read through the mount.

    Reading it also fills the lower file's own cache, which every mount of
    that branch shares; the mount's copy comes on top, once per mount.
    """

    KEEP = "keep"  #: the mount's copy stays: fastest re-reads, one copy per mount
    DROP = "drop"  #: dropped at the last close: only the shared copy stays
    DIRECT = "direct"  #: never made (direct I/O); MAP_SHARED maps fail with ENODEV


class _Io(enum.Enum):
    CACHED = "cached"  #: through the daemon; the kernel keeps pages (``PageCache``)
    DIRECT = "direct"  #: through the daemon; nothing cached
    PASSED = "passed"  #: by the kernel itself, on the backing file
    #: through the daemon, its maps on the inode's backing file, which is
    #: another file (``passthrough.py``: the only kind the kernel allows then)
    MAPPED = "mapped"


@dataclass
class _OpenFile:
    node: Node
    #: set while the file is partially copied up: its data comes from here
    partial: PartialFile | None = None
    sync: bool = False
    #: its data is all in a read-only branch (not copied up, even partly)
    lower_only: bool = False
    #: the descriptor is of a file of the writable branch (a quota holder)
    held: bool = False
    #: the branch of the file the descriptor is on
    layer: Layer | None = None
    #: opened for writing
    writing: bool = False
    io: _Io = _Io.CACHED


class OpenFiles:
    def __init__(self, upper: Upper | None, partials: PartialFiles | None,
                 pagecache: PageCache, backings: Backings):
        self._upper = upper
        self._quota = upper.quota if upper else UNLIMITED
        self._partials = partials
        self._pagecache = pagecache
        self._backings = backings
        self._files: dict[int, _OpenFile] = {}
        #: False once the writable branch was made read-only or taken out
        #: (``pyunion branch ... --force``): writes through handles already
        #: open fail with EROFS
        self.writable = True

    def __len__(self) -> int:
        return len(self._files)

    async def open(self, node: Node, entry: Entry, flags: int) -> FileInfo:
        """Open ``entry``'s top file (copied up already if writing).

        A lower file changed below since the kernel was told of it
        (``udba.changed_below``; another file under its name fails with
        ESTALE) has the kernel's attributes and pages of it dropped before
        the answer, and none kept: a read gets the new data, never the old
        pages of another size mixed with it."""
        partial = entry.marks.partial is not None
        kept = flags & OPEN_FLAGS_KEPT
        fd = entry.top.layer.open(entry.top.path, kept & ~os.O_TRUNC if partial else kept)
        changed = None
        if not entry.top.layer.writable:
            try:
                changed = changed_below(node.told, fd)
            except BaseException:
                os.close(fd)
                raise
        info = self.adopt(node, fd, entry, flags)
        if changed is not None:
            node.told = changed
            await _drop_cached_pages(node.ino)
            info.keep_cache = False
        return info

    def adopt(self, node: Node, fd: int, entry: Entry, flags: int) -> FileInfo:
        """Make the open descriptor ``fd`` a handle (closed on failure)."""
        open_file = _OpenFile(node, sync=bool(flags & (os.O_SYNC | os.O_DSYNC)),
                              lower_only=not entry.top.layer.writable, layer=entry.top.layer,
                              writing=flags & os.O_ACCMODE != os.O_RDONLY)
        try:
            if entry.marks.partial is not None:
                open_file.partial = self._partials.acquire(entry.top, entry.marks)
                if flags & os.O_TRUNC:
                    open_file.partial.truncate(0)
            backing_id = self._choose_io(node, open_file, fd)
        except BaseException:
            if open_file.partial is not None:
                self._partials.release(open_file.partial)
            os.close(fd)
            raise
        node.fds.add(fd)
        self._files[fd] = open_file
        if not open_file.lower_only:
            self._hold(open_file, fd)
        # Data changes through this mount, which keeps the kernel's cache in
        # step, so pages may stay cached across opens (a lower file changed
        # below is caught by ``open``).
        info = FileInfo(fh=fd, keep_cache=open_file.io is _Io.CACHED,
                        direct_io=open_file.io in (_Io.DIRECT, _Io.MAPPED))
        if backing_id:
            info.backing_id = backing_id
        return info

    def _choose_io(self, node: Node, open_file: _OpenFile, fd: int) -> int:
        """Set the new handle's ``io`` by the kernel's rules
        (``passthrough.py``); the backing id it is opened with, or 0."""
        if self._backings.holds(node.ino):
            backing_id, same_file = self._backings.share(node.ino, fd)
            open_file.io = _Io.PASSED if same_file else _Io.MAPPED
            return backing_id
        if self._pagecache is PageCache.DIRECT and open_file.lower_only:
            open_file.io = _Io.DIRECT
        passable = (self._backings.enabled and open_file.partial is None
                    and (self._upper is None if open_file.lower_only
                         else self._quota is UNLIMITED))
        # Beside a cached handle, or a direct one (a map of it makes the
        # inode cached), the kernel refuses a passed-through open.
        if not passable or node.fds:
            return 0
        backing_id = self._backings.attach(node.ino, fd)
        if backing_id:
            open_file.io = _Io.PASSED
        return backing_id

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        """In a thread: a read may wait for the disk.  (Writes land in the
        page cache and stay on the loop, where they run fastest.)"""
        partial = self._files[fh].partial
        if partial:
            return await trio.to_thread.run_sync(partial.read, offset, size)
        return await trio.to_thread.run_sync(os.pread, fh, size, offset)

    def write(self, fh: int, offset: int, data: bytes) -> int:
        if not self.writable:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        open_file = self._files[fh]
        if open_file.partial is None:
            with self._quota.measured(fh):
                self._quota.room_for(fh, offset, offset + len(data))
                return os.pwrite(fh, data, offset)
        written = open_file.partial.write(offset, data)
        if open_file.sync:
            open_file.partial.fsync(datasync=True)
        return written

    def users_of(self, layer: Layer, writing: bool = False, passed: bool = False) -> int:
        """How many handles are on files of ``layer``, or read a partial
        copy's data from it (with ``writing``: only those open for writing;
        with ``passed``: only those the kernel reads and writes itself)."""
        return sum(1 for f in self._files.values()
                   if (f.layer is layer or (f.partial is not None
                                            and f.partial.lower_layer is layer))
                   and (f.writing or not writing) and (f.io is _Io.PASSED or not passed))

    def node(self, fh: int) -> Node:
        return self._files[fh].node

    def fsync(self, fh: int, datasync: bool) -> None:
        partial = self._files[fh].partial
        if partial is not None:
            partial.fsync(datasync)
        else:
            durable.fsync(fh, datasync)

    def release(self, fh: int) -> None:
        open_file = self._files.pop(fh)
        open_file.node.fds.discard(fh)
        if open_file.partial is not None:
            self._partials.release(open_file.partial)
        if open_file.held:
            self._quota.let_go(fh)
        if open_file.io in (_Io.PASSED, _Io.MAPPED):
            self._backings.detach(open_file.node.ino)
        os.close(fh)
        if (self._pagecache is PageCache.DROP and open_file.lower_only
                and not open_file.node.fds):
            trio.lowlevel.spawn_system_task(_drop_cached_pages, open_file.node.ino)

    def truncate(self, entry: Entry | None, fh: int | None, size: int) -> None:
        """Truncate through the handle ``fh`` if given (``ftruncate``: the
        file may have no name left), else ``entry``'s file."""
        if fh is not None:
            partial = self._files[fh].partial
            if partial is not None:
                partial.truncate(size)
            else:
                with self._quota.measured(fh):
                    os.ftruncate(fh, size)
        elif entry.marks.partial is not None:
            partial = self._partials.acquire(entry.top, entry.marks)
            try:
                partial.truncate(size)
            finally:
                self._partials.release(partial)
        else:
            fd = entry.top.layer.open(entry.top.path, os.O_WRONLY)
            try:
                with self._quota.measured(fd):
                    os.ftruncate(fd, size)
            finally:
                os.close(fd)

    def moved_up(self, node: Node, entry: Entry) -> None:
        """After ``node`` was copied up to ``entry``: handles still on the
        lower file read the copy from now on (one in flight keeps the old
        data).  Handles already on the upper file stay as they are."""
        for fd in node.fds:
            open_file = self._files[fd]
            if not open_file.lower_only:
                continue
            open_file.lower_only = False
            open_file.layer = entry.top.layer
            if entry.marks.partial is not None:
                open_file.partial = self._partials.acquire(entry.top, entry.marks)
            else:
                new = entry.top.layer.open(entry.top.path, os.O_RDONLY)
                os.dup2(new, fd)
                os.close(new)
                self._hold(open_file, fd)

    def descriptor(self, node: Node) -> int:
        """A descriptor of ``node``'s file, to read its attributes when it
        has no name left."""
        fd = next(iter(node.fds))
        partial = self._files[fd].partial
        return partial.upper_fd if partial else fd

    def unnamed(self, node: Node) -> int:
        """A descriptor to change ``node``'s file through, when it has no
        name left: the writable copy its handles use.  A file whose handles
        all read a read-only branch first gets a private copy, which they
        read from then on (a read-only branch is never changed)."""
        for fd in node.fds:
            open_file = self._files[fd]
            if not open_file.lower_only:
                return open_file.partial.upper_fd if open_file.partial else fd
        if self._upper is None:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        copy = private_copy(next(iter(node.fds)), self._upper)
        try:
            for fd in node.fds:
                os.dup2(copy, fd)
                self._files[fd].lower_only = False
                self._hold(self._files[fd], fd)
        finally:
            os.close(copy)
        return next(iter(node.fds))

    def _hold(self, open_file: _OpenFile, fd: int) -> None:
        """``fd`` is now of a file of the writable branch."""
        self._quota.hold(fd)
        open_file.held = True


def private_copy(src: int, upper: Upper) -> int:
    """A copy in the work directory of the file or directory ``src`` (a
    descriptor), for changes to a file of a read-only branch that has no
    union name left: it takes them instead.  A file's copy is unlinked at
    once and lives as long as descriptors of it; a directory's stays until
    the next mount empties the work directory.  Returns a descriptor of
    the copy (``O_PATH`` for a directory), counted by the quota."""
    st = os.fstat(src)
    upper.quota.room(st.st_blocks * SECTOR)
    name = upper.staging_name()
    if stat.S_ISDIR(st.st_mode):
        os.mkdir(name, 0o700, dir_fd=upper.work_fd)
        fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=upper.work_fd)
    else:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                     dir_fd=upper.work_fd)
        os.unlink(name, dir_fd=upper.work_fd)
    try:
        if stat.S_ISREG(st.st_mode):
            copy_data(src, fd, st.st_size)
        source, copy = f"/proc/self/fd/{src}", f"/proc/self/fd/{fd}"
        for attr in os.listxattr(source):
            if not is_private_xattr(attr):
                os.setxattr(copy, attr, os.getxattr(source, attr))
        os.chown(copy, st.st_uid, st.st_gid)
        os.chmod(copy, stat.S_IMODE(st.st_mode))  # after chown, which clears set-id bits
        os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
        upper.quota.arrived(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def _drop_cached_pages(ino: int) -> None:
    """The kernel's attributes and pages of ``ino``, dropped off the loop:
    the kernel may wait for requests the loop must answer."""
    with contextlib.suppress(OSError):
        await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)
