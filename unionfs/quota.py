"""The quota of the writable branch (``-o quota=SIZE``): the daemon counts
the blocks the branch holds and refuses what would take it past the limit.

A project quota would do this in the kernel; ext4 without ``prjquota``
(most machines) has none, so the daemon keeps the count itself:

* **What counts**: ``st_blocks`` of everything in the writable branch
  (files, directories, symlinks, whiteouts, and pyunion's own entries: the
  work directory, chunk maps, the hard-link index), and of a ``workdir=``'s
  ``work`` and ``chunks``; a hard-linked file once.  A file whose last name
  is gone counts until the daemon's last descriptor that reaches its data
  is closed (the *holders*: open files, partial copies), since only then
  does the file system free it; so does a private copy
  (``handles.private_copy``), which never has a name.  (The ``O_PATH``
  descriptor the inode table keeps of a removed file, for its inode
  number, is no holder: the kernel lets it go a moment after the removal,
  and a write just after an ``rm`` must find the room.)
* **How**: one walk at mount (:meth:`Quota.count`), then every change
  reports what it did by measuring, not predicting: ``st_blocks`` of what
  it touched, read before and after (``metered.py`` for names; the data
  paths in ``handles.py`` and ``partial.py``; ``upper.py`` for what leaves
  the branch).
* **What is refused** (``ENOSPC``): a write whose range holds more holes
  than there is room (no short writes); a copy-up whose data does not fit
  (refused before it copies, and again if the copy came out bigger; the
  copy is then discarded); a new name, a copy-up or an xattr when not one
  block is free.  Reads, lookups and removals are never refused: a removal
  that needs blocks (a whiteout's directory, the index copy of a
  hard-linked lower file) may take the count past the limit, and so may
  blocks the file system adds on its own (an extent block), by a few
  blocks; ``statfs`` then shows nothing free.

Concurrency: the request handlers run on the trio loop, one at a time
between awaits, so a write checks its room and writes with nothing in
between.  Work in threads takes room first (:meth:`reserved`): a full
copy-up's data, a step of a flatten's completion.  Measurements of one
inode may overlap only when a completion step (a *long* window, in a
thread) copies into a partial file while the loop changes the same file's
xattrs: a short window on an inode inside a long window on it counts
nothing, the long one counts both.  Short windows hold the lock for their
whole length, so they never straddle the start or the end of a long one.

Not handled: blocks that the file system allocates later on its own (an
extent block at writeback, for a file in many pieces) are not seen until
the next mount counts afresh (and when such a file is freed, they come
off the count all the same); nor are changes made to the branch from
outside the mount.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import stat
import threading
from typing import Callable, Iterator

from .copyup import data_extents
from .layer import Layer, child

SECTOR = 512  # the unit of st_blocks
STATVFS_FIELDS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                  "f_ffree", "f_favail", "f_namemax")


def _no_space() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Unlimited:
    """No quota: every hook does nothing, at no cost (no system calls)."""

    limit: int | None = None

    def room(self, size: int) -> None:
        pass

    def room_for_name(self, data: int = 0) -> None:
        pass

    def room_for(self, fd: int, start: int, stop: int) -> None:
        pass

    def room_for_file(self, dir_fd: int, name: str) -> None:
        pass

    def reserved(self, size: int):
        return contextlib.nullcontext()

    def measured(self, *fds: int, long: bool = False):
        return contextlib.nullcontext()

    def removing(self, pin: Callable[[], int], contents: Callable[[], int] | None = None):
        return contextlib.nullcontext()

    def making(self, dir_fd: int, path: str):
        return contextlib.nullcontext()

    def arrived(self, fd: int) -> None:
        pass

    def hold(self, fd: int) -> None:
        pass

    def let_go(self, fd: int) -> None:
        pass

    def statvfs(self, vfs: os.statvfs_result) -> dict[str, int]:
        return {field: getattr(vfs, field) for field in STATVFS_FIELDS}


UNLIMITED = Unlimited()


class Quota:
    """The count of a writable branch's bytes (``used``), and its limit."""

    def __init__(self, limit: int):
        self.limit = limit
        #: the file system's block size (known once counted): the room a
        #: new name needs
        self.block = 4096
        self.used = 0
        self._reserved = 0
        self._lock = threading.RLock()
        #: inode number -> how many descriptors the daemon keeps of it
        self._holders: collections.Counter[int] = collections.Counter()
        #: inode number -> long windows open on it
        self._long: collections.Counter[int] = collections.Counter()
        #: directories whose entries are made by plain calls (the work
        #: directory): descriptor -> their blocks when last seen
        self._watched: dict[int, int] = {}

    # -- the count at mount --------------------------------------------------

    def count(self, trees: list[tuple[Layer, str]], watched: list[int]) -> None:
        """Count what the branch holds now: the trees (a layer and a
        directory in it), walked without recursion.  ``watched`` are
        directories whose names are made by plain calls (the work
        directory): :meth:`watched_grown` counts what they grow by."""
        self.block = trees[0][0].statvfs().f_bsize
        seen: set[int] = set()  # hard-linked files, counted once
        total = 0
        for layer, top in trees:
            for dir_path, _, names in layer.walk(top):
                total += layer.lstat(dir_path).st_blocks
                for name in names:
                    st = layer.lstat_or_none(child(dir_path, name))
                    if st is None or (st.st_nlink > 1 and st.st_ino in seen):
                        continue
                    if st.st_nlink > 1:
                        seen.add(st.st_ino)
                    total += st.st_blocks
        with self._lock:
            self.used = total * SECTOR
            self._watched = {fd: os.fstat(fd).st_blocks for fd in watched}

    # -- room ----------------------------------------------------------------

    def _free(self) -> int:
        return self.limit - self.used - self._reserved

    def room(self, size: int) -> None:
        """Raise ENOSPC unless ``size`` more bytes fit."""
        with self._lock:
            if size > self._free():
                raise _no_space()

    def room_for_name(self, data: int = 0) -> None:
        """A change that makes a name (or copies one up, with ``data``
        bytes) needs a free block (and room for the data)."""
        self.room(self.block + data)

    def room_for(self, fd: int, start: int, stop: int) -> None:
        """Room to write bytes ``start`` to ``stop`` of the file ``fd``: for
        the blocks of that range that are holes now (only counted when the
        whole range might not fit)."""
        first, last = start // self.block * self.block, -(-stop // self.block) * self.block
        with self._lock:
            free = self._free()
        if last - first <= free:
            return
        held = sum(min(last, -(-end // self.block) * self.block)
                   - max(first, begin // self.block * self.block)
                   for begin, end in data_extents(fd, first, last))
        if last - first - held > free:
            raise _no_space()

    def room_for_file(self, dir_fd: int, name: str) -> None:
        """Room for the file ``name`` of the directory ``dir_fd`` as it is
        (a copy made in the work directory), before it joins the count."""
        self.room(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * SECTOR)

    @contextlib.contextmanager
    def reserved(self, size: int) -> Iterator[None]:
        """Keep ``size`` bytes for the block (work in a thread, which other
        requests must not take the room of); ENOSPC if they do not fit."""
        with self._lock:
            if size > self._free():
                raise _no_space()
            self._reserved += size
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= size

    # -- measuring -------------------------------------------------------------

    def add(self, blocks: int) -> None:
        """Count ``blocks`` (of ``st_blocks``) more, or fewer."""
        with self._lock:
            self.used += blocks * SECTOR

    @contextlib.contextmanager
    def measured(self, *fds: int, long: bool = False) -> Iterator[None]:
        """Count what the block does to the blocks of the files ``fds``.
        ``long``: it runs in a thread, beside the loop (see the module)."""
        if not long:
            with self._lock:
                before = [os.fstat(fd) for fd in fds]
                try:
                    yield
                finally:
                    self.add(sum(os.fstat(fd).st_blocks - st.st_blocks
                                 for fd, st in zip(fds, before) if st.st_ino not in self._long))
            return
        with self._lock:
            before = [os.fstat(fd) for fd in fds]
            self._long.update(st.st_ino for st in before)
        try:
            yield
        finally:
            with self._lock:
                self._long.subtract(st.st_ino for st in before)
                self._long += collections.Counter()  # drop the zeros
                self.add(sum(os.fstat(fd).st_blocks - st.st_blocks
                             for fd, st in zip(fds, before)))

    @contextlib.contextmanager
    def removing(self, pin: Callable[[], int],
                 contents: Callable[[], int] | None = None) -> Iterator[None]:
        """Around steps that may take away the last name of a file:
        ``pin()`` opens it (``O_PATH``, closed here; FileNotFoundError: no
        such file, nothing to count).  A file left with no name is freed
        now, or, while the daemon holds it, when the last holder lets go
        (:meth:`let_go`).  For a directory, ``contents()`` gives the blocks
        of it and what it holds (:func:`tree_blocks`): all go with it."""
        try:
            fd = pin()
        except (FileNotFoundError, NotADirectoryError):
            yield
            return
        try:
            st = os.fstat(fd)
            inside = contents() - st.st_blocks if contents and stat.S_ISDIR(st.st_mode) else 0
        except BaseException:
            os.close(fd)
            raise
        try:
            yield
        finally:
            try:
                after = os.fstat(fd)
                if after.st_nlink == 0:  # (a directory goes after what it held)
                    with self._lock:
                        self.add(-inside - (0 if self._holders[after.st_ino]
                                            else after.st_blocks))
            finally:
                os.close(fd)

    @contextlib.contextmanager
    def making(self, dir_fd: int, path: str) -> Iterator[None]:
        """Around the block that makes the entry ``path`` (short, relative
        to the directory ``dir_fd``) by plain calls, not a layer's: count
        it, and what its directory grew by."""
        parent = os.path.dirname(path) or "."
        before = os.stat(parent, dir_fd=dir_fd).st_blocks
        yield
        made = os.stat(path, dir_fd=dir_fd, follow_symlinks=False).st_blocks
        self.add(os.stat(parent, dir_fd=dir_fd).st_blocks - before + made)

    def arrived(self, fd: int) -> None:
        """Count a file the branch keeps that no name of it shows (a private
        copy in the work directory)."""
        self.add(os.fstat(fd).st_blocks)
        self.watched_grown()

    def watched_grown(self) -> None:
        """Count what the watched directories grew by since last seen
        (after a call that adds a name to one)."""
        with self._lock:
            for dir_fd, blocks in self._watched.items():
                now = os.fstat(dir_fd).st_blocks
                self.add(now - blocks)
                self._watched[dir_fd] = now

    # -- holders ---------------------------------------------------------------

    def hold(self, fd: int) -> None:
        """The daemon keeps ``fd``, a descriptor of a file of the branch."""
        ino = os.fstat(fd).st_ino
        with self._lock:
            self._holders[ino] += 1

    def let_go(self, fd: int) -> None:
        """Before the daemon closes a descriptor it kept (:meth:`hold`): the
        last one of a file with no name left frees it."""
        st = os.fstat(fd)
        with self._lock:
            self._holders[st.st_ino] -= 1
            if self._holders[st.st_ino] <= 0:
                del self._holders[st.st_ino]
                if st.st_nlink == 0:
                    self.add(-st.st_blocks)

    # -- what statfs shows -------------------------------------------------------

    def statvfs(self, vfs: os.statvfs_result) -> dict[str, int]:
        """The branch's file system as the mount shows it: the quota as its
        size, what is left of it as free (no more than is really free)."""
        shown = UNLIMITED.statvfs(vfs)
        with self._lock:
            free = max(0, self.limit - self.used) // vfs.f_frsize
        shown["f_blocks"] = self.limit // vfs.f_frsize
        shown["f_bfree"] = min(vfs.f_bfree, free)
        shown["f_bavail"] = min(vfs.f_bavail, free)
        return shown


def tree_blocks(layer: Layer, path: str) -> int:
    """The blocks of the directory ``path`` of ``layer`` and what it holds
    (files with other names elsewhere left out)."""
    total = 0
    for dir_path, _, names in layer.walk(path):
        total += layer.lstat(dir_path).st_blocks
        for name in names:
            st = layer.lstat_or_none(child(dir_path, name))
            if st is not None and st.st_nlink == 1:
                total += st.st_blocks
    return total
