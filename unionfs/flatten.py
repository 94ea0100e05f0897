"""Flattening: the writable branch made a plain aufs-format layer.

Stacked read-only above the same lower branches, by pyunion or any tool
that reads aufs's whiteouts and opaque directories and nothing of
pyunion's own, a flattened branch shows what the union showed:

* a renamed directory (a redirect, ``changes.py``) gets every entry its
  union subtree shows from below copied up into it (nested redirects and
  whiteouts included), is made opaque (in the mount's format), and then
  loses its redirect and the whiteouts in its subtree, which hide nothing
  any more (overlayfs would list them: it merges no directory there);
* every name of a lower file whose data lives in the hard-link index
  (``index.py``) becomes a hard link to the index copy; once all of them
  are, the union count (the ``nlink`` mark) and the index entry go, so
  the file's real link count is the union's;
* every partial copy is completed (``partial.py``).

Each step is a copy-up the union would make anyway, or a change that
shows nothing new once the steps before it are done: a daemon killed at
any point leaves the view as it was, and a second flatten finishes the job.
It runs while the mount serves: each step holds the mount's change lock
(when given) and resolves its name afresh; data is copied in threads, a
partial file's without the lock.

Not handled: a flatten of a path leaves a renamed ancestor of that path
(and index entries with names elsewhere) as they are; names renamed or
linked while a flatten runs may need another one.  A kill between
dropping an index entry's count and the entry itself shows its file's
link count one too high until the next flatten.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from typing import TYPE_CHECKING, Callable

import trio

from .changes import Changes
from .copyup import copy_entry
from .index import Index
from .inodes import InodeNumbers
from .layer import ROOT, Layer, child, split
from .quota import SECTOR
from .tree import Entry, Location, Tree, read_marks
from .upper import Upper
from .whiteout import OPAQUE, Marks, is_reserved, is_whiteout_device

if TYPE_CHECKING:
    from .partial import PartialFiles


class Flattening:
    """One flatten.  It resolves names with a tree and changes of its own:
    they keep no state beyond the branches, so they see what the mount's
    own see.  ``on_changed`` runs after each change that moves where a
    name's data lives (cached entries may be stale); ``on_dirs_copied``
    after directories are copied up, with their inode numbers (as
    ``Changes.on_dirs_copied``); ``on_copied_up`` after
    each copy-up, with the entry's union inode number and new entry (open
    files on the lower file may follow it)."""

    def __init__(self, layers: list[Layer], upper: Upper, numbers: InodeNumbers,
                 partials: PartialFiles, on_changed: Callable[[], None],
                 on_dirs_copied: Callable[[list[int]], None],
                 on_copied_up: Callable[[int, Entry], None], change_lock: trio.Lock):
        self._index = Index(upper.meta, numbers)
        self._tree = Tree(layers, self._index)
        # Partial copies, so that a step holds the lock for metadata only;
        # their data comes up after, without it.
        self._changes = Changes(self._tree, upper, numbers, self._index, partial_copies=True)
        self._changes.on_dirs_copied = on_dirs_copied
        self._upper = upper
        self._numbers = numbers
        self._partials = partials
        self._on_changed = on_changed
        self._on_copied_up = on_copied_up
        self._lock = change_lock

    async def run(self, entry: Entry) -> None:
        """Flatten what is at or below ``entry``."""
        await self._resolve_redirects(entry.path)
        if self._index.numbers():
            await self._link_indexed_names(entry.path)
            async with self._lock:
                self._drop_spent_index_entries()
        found = self._lookup(entry.path)
        if found is not None and found[0].in_upper:
            await self._partials.complete_below(found[0].top, self._on_changed)

    async def _resolve_redirects(self, path: str) -> None:
        """Copy up the union subtree of every renamed directory at or below
        ``path``, then seal the directory.  Depth-first, with a stack of
        ``(path, its parent's inode in the branch, the renamed directory it
        is in)`` and of :class:`_Renamed` seals, each pushed under its
        subtree; no recursion limits the depth."""
        stack: list = [(path, None, None)]
        while stack:
            item = stack.pop()
            if isinstance(item, _Renamed):
                async with self._lock:
                    self._seal(item)
                continue
            path, parent_ino, renamed = item
            found = await self._copy_up(path) if renamed else self._lookup(path)
            if found is None:
                if renamed and not self._is_dir_in_upper(split(path)[0], parent_ino):
                    renamed.whole = False  # its directory moved: the name was missed
                continue
            entry, st = found
            if not entry.in_upper or not stat.S_ISDIR(st.st_mode):
                continue
            if entry.marks.redirect is not None:
                renamed = _Renamed(path, st.st_ino)
                stack.append(renamed)
            stack += [(child(path, name), st.st_ino, renamed)
                      for name, listed in self._tree.listdir(entry).items()
                      if renamed or listed.location.layer.writable and _is_dir(listed.location)]
            await trio.lowlevel.checkpoint()

    async def _link_indexed_names(self, path: str) -> None:
        """Copy up (a link) every name at or below ``path`` that shows an
        index entry, looking into every directory that has parts below."""
        found = self._lookup(path)
        if found is not None and not stat.S_ISDIR(found[1].st_mode):
            if _shows_index(found[0]):
                await self._copy_up(path)
            return
        stack = [path]
        while stack:
            path = stack.pop()
            found = self._lookup(path)
            if found is None or not stat.S_ISDIR(found[1].st_mode):
                continue
            names = [(name, self._tree.lookup(found[0], name))
                     for name in self._tree.listdir(found[0])]
            for name, named in names:
                if named is None:
                    continue
                entry, st = named
                if stat.S_ISDIR(st.st_mode):
                    if entry.lower:
                        stack.append(child(path, name))
                elif _shows_index(entry):
                    await self._copy_up(child(path, name))  # looked up anew
            await trio.lowlevel.checkpoint()

    async def _copy_up(self, path: str):
        """The name at ``path``, copied into the writable branch if it is
        not there; ``(entry, stat)``, or None if it went away."""
        async with self._lock:
            found = self._lookup(path)
            if found is None or found[0].in_upper:
                return found
            entry, st = found
            if not entry.top.layer.writable and not stat.S_ISDIR(st.st_mode) \
                    and st.st_nlink > 1:
                await self._index_copy(entry, st)
                found = self._lookup(path)  # looked up again after the wait
                if found is None or found[0].in_upper:
                    return found
                entry, st = found
            copied = await self._changes.copy_up(entry)
            self._on_changed()
            self._on_copied_up(self._numbers.of(copied, st), copied)
            return self._lookup(path)

    async def _index_copy(self, entry: Entry, st: os.stat_result) -> None:
        """Put a lower file with several names into the hard-link index, as
        its first copy-up would: its names then resolve there, to the same
        data and link count, and each one's copy-up is a link."""
        marks = Marks(origin=self._numbers.of(entry, st), nlink=st.st_nlink)
        staged = self._upper.staging_name()
        with self._upper.quota.reserved(st.st_blocks * SECTOR):
            await trio.to_thread.run_sync(copy_entry, entry.top, st, self._upper.work_fd, staged,
                                          marks)
        try:
            if self._index.find(st) is None:  # not put there while this copied
                self._index.add(self._upper.work_fd, staged, marks.origin)
        finally:
            self._upper.discard(staged)

    def _seal(self, renamed: _Renamed) -> None:
        """A renamed directory whose union subtree is all in the writable
        branch: made opaque, then its redirect goes (each step hides only
        what no longer shows).  Left as it is if it is another directory
        now, or some of its subtree was missed (a rename meanwhile)."""
        found = self._lookup(renamed.path)
        if not renamed.whole or found is None or not found[0].in_upper:
            return
        directory, st = found
        if st.st_ino != renamed.ino or directory.marks.redirect is None:
            return
        self._upper.mark_opaque(directory.path)
        directory.top.layer.utime(directory.path, (st.st_atime_ns, st.st_mtime_ns))
        marks = read_marks(directory.top)
        self._upper.set_marks(directory.path, dataclasses.replace(marks, redirect=None))
        self._drop_dead_whiteouts(directory.path)
        self._on_changed()

    def _drop_dead_whiteouts(self, path: str) -> None:
        """Remove the whiteouts in the subtree of the sealed directory
        ``path``, but for those under a directory still renamed (a nested
        seal that was left: they still hide something)."""
        layer = self._upper.layer
        for dir_path, dir_names, names in layer.walk(path):
            dir_names[:] = [name for name in dir_names if read_marks(
                Location(layer, child(dir_path, name))).redirect is None]
            for name in names:
                entry = child(dir_path, name)
                if (is_reserved(name) and name != OPAQUE) or _is_whiteout_device(layer, entry):
                    layer.unlink(entry)

    def _drop_spent_index_entries(self) -> None:
        """Drop the index entries no name resolves to any more: those whose
        file has every union name in the branch (its real link count is its
        union count plus the index's own).  The count goes first, so the
        union shows the real one; an entry left without it is spent too."""
        for number in self._index.numbers():
            location = self._index.location(number)
            st = location.layer.lstat_or_none(location.path)
            if st is None:
                continue
            marks = read_marks(location)
            if marks.nlink is not None:
                if st.st_nlink != marks.nlink + 1:
                    continue  # a name still finds its data only here
                self._upper.set_marks(location.path, dataclasses.replace(marks, nlink=None),
                                      location.layer)
            self._index.remove(number)
            self._on_changed()  # cached entries carry the count

    def _is_dir_in_upper(self, path: str, ino: int) -> bool:
        """True if the directory ``path`` of the writable branch is ``ino``."""
        st = self._upper.layer.lstat_or_none(path)
        return st is not None and st.st_ino == ino

    def _lookup(self, path: str):
        """``(entry, stat)`` of a union path now, or None if it is gone."""
        try:
            if path == ROOT:
                entry = self._tree.root()
                return entry, entry.top.layer.lstat(entry.top.path)
            parent, name = split(path)
            return self._tree.lookup(self._tree.resolve(parent), name)
        except (FileNotFoundError, NotADirectoryError):
            return None


@dataclasses.dataclass
class _Renamed:
    """A renamed directory being flattened: its path, its inode in the
    writable branch, and whether its whole subtree was seen."""

    path: str
    ino: int
    whole: bool = True


def _is_whiteout_device(layer: Layer, path: str) -> bool:
    st = layer.lstat_or_none(path)
    return st is not None and is_whiteout_device(st.st_mode, st.st_rdev)


def _is_dir(location: Location) -> bool:
    st = location.layer.lstat_or_none(location.path)
    return st is not None and stat.S_ISDIR(st.st_mode)


def _shows_index(entry: Entry) -> bool:
    """True for a name whose data is in the index but not the name itself."""
    return entry.top.layer.writable and not entry.in_upper
