"""What each changing operation does to the branches.

Every change lands in the writable branch; read-only branches are only ever
read.  The order of steps is chosen so that a crash between any two of them
leaves the union showing either the old state or the new one:

* a new entry is built in the work directory (owner, mode, opaque marker)
  and renamed into place; only then is a whiteout of its name removed;
* a whiteout is made before the upper entry it replaces goes away;
* a directory that is renamed while parts of it live below gets a redirect
  to them before it moves (overlayfs's ``redirect_dir``), so a whole lower
  tree moves with one rename and no copying; one that moves over a name
  whose lower entries are whited out is made opaque first.

Names and entries are union-level (:class:`~unionfs.tree.Entry`); inode
bookkeeping is the caller's.  Copying a big file is awaited off the event
loop; everything else is a few metadata calls done in place.

Under a quota (``quota.py``), a new name, a link and a copy-up need room
first (a copy-up, for its data too, before anything is copied up); a
copy-up's data is kept room for while it copies, and the copy, as made,
must fit, or it is discarded.  Removals never ask for room.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from typing import Callable

import trio

from . import copyup, durable
from .chunkmap import ChunkMap, Source
from .copyup import Data
from .index import INDEX_DIR, Index
from .intents import Intents
from .inodes import InodeNumbers
from .layer import RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT, child, split
from .quota import SECTOR
from .tree import Entry, Location, Tree, read_marks
from .upper import Upper
from .whiteout import META_DIR, Marks

#: The size up to which a copy-up copies a regular file whole, with
#: ``copyup=partial``, where flushes are skipped (``volatile``).  A whole
#: copy makes one file; a partial one makes three (intent record, chunk
#: map, file) and brings the first chunk up at the first write.  A whole
#: copy is also flushed before it is renamed into place, though, and on a
#: durable mount that flush (and the thread it waits in) costs more than the
#: two files saved, at every size: there every non-empty file is copied
#: partially.  Median first 1-byte write (open, pwrite, close) to a lower
#: file through the mount, ext4, whole / partial copy, ms (medians of 3 runs
#: of 50; overlayfs took 0.27-0.52 at 4-16 KiB, 0.03-0.05 volatile):
#:
#: ========  ===========  ===========
#: size      volatile     durable
#: ========  ===========  ===========
#: 4 KiB     0.49 / 0.87  1.63 / 0.87
#: 16 KiB    0.57 / 0.84  1.30 / 0.87
#: 64 KiB    0.57 / 1.03  1.35 / 0.89
#: 128 KiB   0.61 / 1.03  1.73 / 0.79
#: 256 KiB   0.69 / 0.88  1.45 / 0.91
#: 512 KiB   0.99 / 0.95  1.85 / 0.94
#: 1 MiB     1.26 / 0.86  4.01 / 0.92
#: ========  ===========  ===========
SMALL_FILE = 256 * 1024


class Changes:
    """``partial_copies``: a regular file's copy-up copies no data; writes
    bring it up chunk by chunk (``partial.py``); on a volatile mount, one of
    at most ``SMALL_FILE`` bytes is copied whole."""

    def __init__(self, tree: Tree, upper: Upper, numbers: InodeNumbers, index: Index,
                 partial_copies: bool = True):
        self.tree = tree
        self.upper = upper
        self.numbers = numbers
        self.index = index
        self.partial_copies = partial_copies
        self.intents = Intents(upper)
        #: called with the inode numbers of directories that got a copy in
        #: the writable branch, which changes the locations of everything
        #: below them, and their attributes (a merged directory's link count)
        self.on_dirs_copied: Callable[[list[int]], None] = lambda numbers: None

    # -- copy-up ----------------------------------------------------------

    def upper_dir(self, entry: Entry) -> Entry:
        """``entry``, a directory, made present in the writable branch
        (with its parents), keeping its lower parts merged below it."""
        if entry.in_upper:
            return entry
        if self.upper.layer.lstat_or_none(entry.path) is not None:
            # Copied up by an earlier step of this change (a rename's source
            # brings up the parent it shares with the target).
            return self.tree.resolve(entry.path)
        missing = [entry.path]  # it and its ancestors not yet up, deepest first
        while (parent := split(missing[-1])[0]) != ROOT and \
                self.upper.layer.lstat_or_none(parent) is None:
            missing.append(parent)
        parent = self.tree.resolve(split(missing[-1])[0])
        copied = []
        for path in reversed(missing):
            entry, st = self.tree.lookup(parent, split(path)[1])
            marks = Marks(origin=self.numbers.of(entry, st))
            self._install_copy(self._stage(entry, st, marks, Data.NONE), path)
            copied.append(marks.origin)
            entry = parent = Entry(path, (Location(self.upper.layer, path), *entry.lower), marks)
        self.on_dirs_copied(copied)
        return entry

    async def copy_up(self, entry: Entry, with_data: bool = True) -> Entry:
        """``entry`` copied into the writable branch, if it is not there yet.

        A directory is copied without its contents, which stay merged below.
        A file with other names below is also linked into the hard-link
        index, where those names find it.
        """
        if entry.in_upper:
            return entry
        st = entry.top.layer.lstat(entry.top.path)
        if stat.S_ISDIR(st.st_mode):
            return self.upper_dir(entry)
        # Its data is up already (in the index) if its top is writable.
        data = None if entry.top.layer.writable else self._data_to_copy(st, with_data)
        self.upper.quota.room_for_name(st.st_blocks * SECTOR if data is Data.ALL else 0)
        self.upper_dir(self.tree.resolve(split(entry.path)[0]))
        if data is None:
            with self._parent_times_kept(entry.path):
                self.upper.layer.link(entry.top.path, entry.path, entry.top.layer)
        else:
            marks = Marks(origin=self.numbers.of(entry, st),
                          nlink=st.st_nlink if st.st_nlink > 1 else None)
            if data is Data.LATER:
                marks = dataclasses.replace(marks, partial=ChunkMap.new_id())
            with self._chunk_map_kept(marks.partial, entry.path):  # gone if this fails
                if data is Data.LATER:
                    self._new_chunk_map(marks.partial, entry.top, st)
                staged = await self._stage_in_room(entry, st, marks, data)
                if marks.nlink is not None:
                    self._index(staged, marks.origin)
                self._install_copy(staged, entry.path)
            entry = Entry(entry.path, entry.locations, marks)
        return Entry(entry.path, (Location(self.upper.layer, entry.path),), entry.marks)

    def _data_to_copy(self, st: os.stat_result, with_data: bool) -> Data:
        if not with_data:
            return Data.NONE
        # A file with other names below keeps a whole copy in the index.
        if self.partial_copies and stat.S_ISREG(st.st_mode) and st.st_nlink == 1 \
                and st.st_size > (0 if durable.flushes() else SMALL_FILE):
            return Data.LATER
        return Data.ALL

    def _new_chunk_map(self, map_id: str, source: Location, st: os.stat_result) -> None:
        self.upper.new_chunk_map(map_id, Source(source.layer.index, source.path, self.numbers(st)),
                                 st.st_size)

    def _chunk_map_kept(self, map_id: str | None, path: str):
        """Around the steps that make or unlink the partial file at
        ``path``: a kill in between keeps the chunk map ``map_id`` only if
        the file there uses it (an intent record)."""
        if map_id is None:
            return contextlib.nullcontext()
        return self.intents.recorded(self._settle, kind="map", id=map_id, path=path)

    @contextlib.contextmanager
    def _data_forgotten(self, entry: Entry, st: os.stat_result):
        """Around the step that takes a name of the upper file ``entry``
        away: a partial file's chunk map goes with its last name (open
        handles keep theirs)."""
        if entry.marks.partial is None or st.st_nlink != 1:
            yield
            return
        with self._chunk_map_kept(entry.marks.partial, entry.path):
            yield
            self.upper.remove_chunk_map(entry.marks.partial)

    async def _stage_off_loop(self, entry: Entry, st: os.stat_result, marks: Marks,
                              data: Data) -> str:
        """A copy that may wait for the disk (a big one, or one flushed)
        runs in a thread; a small unflushed one takes less than the thread
        hop would."""
        if stat.S_ISREG(st.st_mode) and data is Data.ALL and st.st_size \
                and (st.st_size > SMALL_FILE or durable.flushes()):
            return await trio.to_thread.run_sync(self._stage, entry, st, marks, data)
        return self._stage(entry, st, marks, data)

    async def _stage_in_room(self, entry: Entry, st: os.stat_result, marks: Marks,
                             data: Data) -> str:
        """``_stage_off_loop`` under the quota: room is kept for the data
        while it copies, and the copy as made must fit (else it goes)."""
        quota = self.upper.quota
        with quota.reserved(st.st_blocks * SECTOR if data is Data.ALL else 0):
            staged = await self._stage_off_loop(entry, st, marks, data)
        try:
            quota.room_for_file(self.upper.work_fd, staged)
        except BaseException:
            self.upper.discard(staged)
            raise
        return staged

    def _stage(self, entry: Entry, st: os.stat_result, marks: Marks, data: Data) -> str:
        staged = self.upper.staging_name()
        copyup.copy_entry(entry.top, st, self.upper.work_fd, staged, marks, data)
        return staged

    def _index(self, staged: str, number: int) -> None:
        try:
            self.index.add(self.upper.work_fd, staged, number)
        except BaseException:
            self.upper.discard(staged)
            raise

    def _install_copy(self, staged: str, path: str) -> None:
        try:
            with self._parent_times_kept(path):
                self.upper.install(staged, path)
        except BaseException:
            self.upper.discard(staged)
            raise

    @contextlib.contextmanager
    def _parent_times_kept(self, path: str):
        """A copy-up changes nothing the union shows of the parent, so it
        keeps its times (as overlayfs does)."""
        parent = split(path)[0]
        st = self.upper.layer.lstat(parent)
        yield
        self.upper.layer.utime(parent, (st.st_atime_ns, st.st_mtime_ns))

    def flush_names(self, entry: Entry) -> None:
        """Flush the directories a copy-up of ``entry`` added names to: every
        one on the way to it, and its chunk map's or index entry's, so that
        what a later fsync of the file acknowledged survives a power loss."""
        paths = [ROOT]
        parent = split(entry.path)[0]
        for name in parent.split("/") if parent != ROOT else ():
            paths.append(child(paths[-1], name))
        flushed = [(self.upper.layer, path) for path in paths]
        if entry.marks.nlink is not None:
            flushed += [(self.upper.meta, META_DIR), (self.upper.meta, INDEX_DIR)]
        for layer, path in flushed:
            fd = layer.open(path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                durable.fsync(fd)
            finally:
                os.close(fd)
        if entry.marks.partial is not None:
            durable.fsync(self.upper.chunks_fd)

    # -- link counts of indexed files ---------------------------------------

    async def _counted_before_removal(self, entry: Entry, st: os.stat_result) -> Marks | None:
        """Before a name of a non-directory goes away: the marks that keep
        its file's union link count, if it has one.  A lower file with
        other names gets its index copy first (same count), which keeps
        the count of the names that stay."""
        if entry.top.layer.writable:
            return entry.marks if entry.marks.nlink is not None else None
        if st.st_nlink == 1:
            return None
        marks = Marks(origin=self.numbers.of(entry, st), nlink=st.st_nlink)
        staged = await self._stage_off_loop(entry, st, marks, Data.ALL)
        self._index(staged, marks.origin)
        self.upper.discard(staged)
        return marks

    def _with_count(self, counted: Marks | None, path: str, delta: int,
                    step: Callable[[], None]) -> Marks | None:
        """Run ``step``, which makes (``delta`` +1) or removes (-1) the
        union name ``path`` of a file whose count ``counted`` keeps, and
        change the count with it: an intent record keeps the two
        old-or-new whenever the daemon dies.  Returns the new marks."""
        if counted is None:
            step()
            return None
        old = read_marks(self.index.location(counted.origin)).nlink
        new = old + delta
        with self.intents.recorded(self._settle, kind="count", number=counted.origin, path=path,
                                   named=max(old, new), unnamed=min(old, new)):
            step()
            self._set_count(counted.origin, new)
        return dataclasses.replace(counted, nlink=new)

    def _set_count(self, number: int, count: int) -> None:
        if count <= 0:
            self.index.remove(number)
            return
        location = self.index.location(number)
        self.upper.set_marks(location.path, dataclasses.replace(read_marks(location), nlink=count),
                             location.layer)

    def replay_intents(self) -> None:
        """Finish or undo the changes a killed daemon left half done (at
        mount, before any request; see ``intents.py``)."""
        for name, record in self.intents.left():
            self._settle(record)
            self.intents.done(name)

    def _settle(self, record: dict) -> None:
        """Finish or undo the change an intent record describes, by what
        is on disk."""
        if record["kind"] == "count":
            found = self._lookup(record["path"])
            named = found is not None and self.numbers.of(*found) == record["number"]
            self._set_count(record["number"], record["named" if named else "unnamed"])
        elif record["kind"] == "map":
            if self._partial_map_at(record["path"]) != record["id"]:
                self.upper.remove_chunk_map(record["id"])
        else:
            st = self.upper.layer.lstat_or_none(record["path"])
            if st is not None and st.st_ino == record["ino"]:
                self.upper.retire(record["path"], record.get("whiteout", False))

    def _partial_map_at(self, path: str) -> str | None:
        st = self.upper.layer.lstat_or_none(path)
        if st is None or not stat.S_ISREG(st.st_mode):
            return None
        return read_marks(Location(self.upper.layer, path)).partial

    def _lookup(self, path: str):
        parent, name = split(path)
        try:
            return self.tree.lookup(self.tree.resolve(parent), name)
        except (FileNotFoundError, NotADirectoryError):
            return None

    # -- new names --------------------------------------------------------

    def create(self, parent: Entry, name: str, mode: int, flags: int, uid: int, gid: int):
        """Make and open a regular file with ``flags`` (already reduced to
        what the real file should get); returns ``(fd, entry)``."""
        fds = []

        def make(staged: str) -> None:
            fds.append(os.open(staged, flags | os.O_CREAT | os.O_EXCL
                               | os.O_CLOEXEC, mode, dir_fd=self.upper.work_fd))

        try:
            entry = self._make(parent, name, mode, uid, gid, make)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds[0], entry

    def mkdir(self, parent: Entry, name: str, mode: int, uid: int, gid: int) -> Entry:
        return self._make(parent, name, mode | stat.S_IFDIR, uid, gid,
                          lambda staged: os.mkdir(staged, stat.S_IMODE(mode),
                                                  dir_fd=self.upper.work_fd))

    def mknod(self, parent: Entry, name: str, mode: int, rdev: int, uid: int, gid: int) -> Entry:
        return self._make(parent, name, mode, uid, gid,
                          lambda staged: os.mknod(staged, mode, rdev, dir_fd=self.upper.work_fd))

    def symlink(self, parent: Entry, name: str, target: str, uid: int, gid: int) -> Entry:
        return self._make(parent, name, stat.S_IFLNK | 0o777, uid, gid,
                          lambda staged: os.symlink(target, staged, dir_fd=self.upper.work_fd))

    async def link(self, entry: Entry, parent: Entry, name: str) -> tuple[Entry, Entry]:
        """A new name for ``entry``; returns (entry after copy-up, new entry)."""
        self.upper.quota.room_for_name()
        entry = await self.copy_up(entry)
        parent = self.upper_dir(parent)
        path = child(parent.path, name)
        counted = entry.marks if entry.marks.nlink is not None else None
        marks = self._with_count(counted, path, +1, lambda: self.upper.link(
            entry.top.path, path)) or entry.marks
        return (Entry(entry.path, entry.locations, marks),
                Entry(path, (Location(self.upper.layer, path),), marks))

    def _make(self, parent: Entry, name: str, mode: int, uid: int, gid: int,
              make: Callable[[str], None]) -> Entry:
        self.upper.quota.room_for_name()
        parent = self.upper_dir(parent)
        parent_st = self.upper.layer.lstat(parent.path)
        is_dir = stat.S_ISDIR(mode)
        if parent_st.st_mode & stat.S_ISGID:  # BSD group semantics, as the kernel does
            gid = parent_st.st_gid
            mode |= stat.S_ISGID if is_dir else 0
        staged = self.upper.staging_name()
        make(staged)
        try:
            os.chown(staged, uid, gid, dir_fd=self.upper.work_fd, follow_symlinks=False)
            if not stat.S_ISLNK(mode):
                os.chmod(staged, stat.S_IMODE(mode), dir_fd=self.upper.work_fd)
            over_whiteout = self.upper.has_whiteout(parent.path, name)
            if is_dir and over_whiteout:
                # What was deleted below must not show through again.
                self.upper.mark_opaque(staged, in_work=True)
            path = child(parent.path, name)
            self.upper.install(staged, path)
        except BaseException:
            self.upper.discard(staged)
            raise
        if over_whiteout:
            self.upper.remove_whiteout(parent.path, name)
        return Entry(path, (Location(self.upper.layer, path),))

    # -- removing names ---------------------------------------------------

    async def remove(self, parent: Entry, name: str, entry: Entry) -> None:
        """unlink or rmdir: a directory must look empty in the union."""
        st = entry.top.layer.lstat(entry.top.path)
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir and self.tree.listdir(entry):
            raise OSError(errno.ENOTEMPTY, "directory not empty")
        counted = None if is_dir else await self._counted_before_removal(entry, st)

        def remove_name() -> None:
            whiteout = self.tree.lookup_below(parent, name) is not None
            if entry.in_upper:  # a directory may still hold whiteouts: retired
                with contextlib.nullcontext() if is_dir else self._data_forgotten(entry, st):
                    self.upper.retire(entry.top.path, whiteout)
            elif whiteout:
                self.upper.add_whiteout(self.upper_dir(parent).path, name)

        self._with_count(counted, entry.path, -1, remove_name)

    # -- rename -----------------------------------------------------------

    async def rename(self, old_parent: Entry, old_name: str, src: Entry,
                     new_parent: Entry, new_name: str, dst: Entry | None, flags: int) -> None:
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise OSError(errno.ENOENT, "nothing to exchange with")
            return await self._exchange(src, new_parent, new_name, dst, old_parent, old_name)
        src_is_dir = _is_dir(src)
        counted = None  # the count of the file whose name dst is, if kept
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise OSError(errno.EEXIST, "target exists")
            dst_is_dir = _is_dir(dst)
            if dst_is_dir != src_is_dir:
                raise OSError(errno.EISDIR if dst_is_dir else errno.ENOTDIR, "type mismatch")
            if src_is_dir and self.tree.listdir(dst):
                raise OSError(errno.ENOTEMPTY, "target directory not empty")
            dst_st = dst.top.layer.lstat(dst.top.path)
            if not src_is_dir:
                counted = await self._counted_before_removal(dst, dst_st)
        src = await self.copy_up(src)
        new_parent = self.upper_dir(new_parent)
        if src_is_dir:
            self._keep_lower_parts(src, new_parent, new_name)
        whiteout = self.tree.lookup_below(old_parent, old_name) is not None
        new_path = child(new_parent.path, new_name)
        if dst is not None and dst.in_upper and src_is_dir:
            # Upper.move swaps with the directory replaced, then retires it.
            replaced = self.upper.layer.lstat(new_path).st_ino
            with self.intents.recorded(self._settle, kind="retire", path=src.path, ino=replaced,
                                       whiteout=whiteout):
                self.upper.move(src.path, new_path, whiteout)
        else:
            def move() -> None:
                with (self._data_forgotten(dst, dst_st) if dst is not None and dst.in_upper
                      else contextlib.nullcontext()):
                    self.upper.move(src.path, new_path, whiteout)

            self._with_count(counted, new_path, -1, move)

    async def _exchange(self, a: Entry, b_parent: Entry, b_name: str, b: Entry,
                        a_parent: Entry, a_name: str) -> None:
        a = await self.copy_up(a)
        b = await self.copy_up(b)
        if _is_dir(a):
            self._keep_lower_parts(a, self.upper_dir(b_parent), b_name)
        if _is_dir(b):
            self._keep_lower_parts(b, self.upper_dir(a_parent), a_name)
        self.upper.layer.rename(a.path, b.path, RENAME_EXCHANGE)

    def _keep_lower_parts(self, directory: Entry, new_parent: Entry, new_name: str) -> None:
        """Before ``directory`` (in the writable branch) moves to
        ``new_parent/new_name``: point it at its lower parts, or, if it has
        none, keep it from merging with what lies below its new name."""
        if directory.marks.redirect is not None:
            return
        if directory.lower:
            self.upper.set_marks(directory.path, dataclasses.replace(
                directory.marks, redirect=directory.lower[0].path))
        elif self.tree.lookup_below(new_parent, new_name) is not None:
            self.upper.mark_opaque(directory.path)


def _is_dir(entry: Entry) -> bool:
    return stat.S_ISDIR(entry.top.layer.lstat(entry.top.path).st_mode)
