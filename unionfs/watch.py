"""``udba=notify``: inotify watches on the read-only directories the daemon
has looked into, and what an event changes in the daemon and the kernel.

A watch belongs to a :class:`~unionfs.layer.Layer` (a branch removed at run
time takes its watches with it) and to one directory of it, named by its
path in the branch, which is its path in the union.  One watch on a
directory tells of its names (created, removed, renamed) and of changes to
the files in it (attributes, data), so only directories are watched.

On an event the directory's kept names are dropped, then each changed
name is resolved again in the union:

* a name that now leads elsewhere (appeared, gone, another file or type)
  has its kernel entry invalidated.  Only then: invalidating an entry makes
  the kernel drop the dentry and detach every mount on or below it;
* a file changed in place has its kernel attributes and pages invalidated,
  when it is the one the union shows under that name;
* a directory whose attributes changed has its kept names dropped too:
  overlay's marks of it (opaque, redirect) are kept with them;
* the kernel's kept listings of a directory that appeared, went or changed
  its marks, and of the directories below it the kernel holds, are
  dropped: a merged directory keeps its number while its lower parts come
  and go.

The kernel's invalidations are made from a thread: the kernel may wait on
requests the loop must answer.

Past the watch limit (``/proc/sys/fs/inotify/max_user_watches``, shared by
all of the user's processes), a directory that cannot be watched gets
reval's checks (``udba.py``); that is logged once.  Without an inotify
instance at all (``max_user_instances``) the mount is ``udba=reval``.  An overflow of the
event queue drops every kept name and the kernel's attributes and pages of
every file it holds (its names stay: they can only be checked as they are
used).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from typing import NamedTuple

import pyfuse3
import trio
from inotify_simple import INotify, flags

from .inodes import InodeNumbers, InodeTable
from .layer import ROOT, Layer, child
from .tree import Tree

log = logging.getLogger(__name__)

_NAMES = flags.CREATE | flags.DELETE | flags.MOVED_FROM | flags.MOVED_TO
_CONTENT = flags.ATTRIB | flags.MODIFY | flags.CLOSE_WRITE
_MASK = _NAMES | _CONTENT | flags.ONLYDIR | flags.DONT_FOLLOW | flags.EXCL_UNLINK


class Event(NamedTuple):
    layer: Layer
    dir_path: str
    name: str  #: "" for the watched directory itself
    mask: int


class Watcher:
    """The inotify instance of one mount and its watches."""

    def __init__(self):
        self._inotify = INotify(nonblocking=True)
        #: watch descriptor -> the (layer, directory) pairs it stands for
        #: (one directory reached through two branches has one descriptor)
        self._where: dict[int, set[tuple[Layer, str]]] = {}
        self._watched: dict[Layer, dict[str, int]] = {}
        #: directories that could not be watched (past the limit)
        self._unwatched: set[str] = set()

    @classmethod
    def opened(cls) -> Watcher | None:
        """A watcher, or None (logged) when the user has all the inotify
        instances allowed (``/proc/sys/fs/inotify/max_user_instances``):
        the mount then checks as ``udba=reval`` does."""
        try:
            return cls()
        except OSError as exc:
            log.warning("udba=notify: no inotify instance (%s): checking as udba=reval does",
                        exc.strerror)
            return None

    def close(self) -> None:
        self._inotify.close()

    def __len__(self) -> int:
        return len(self._where)

    def watch(self, layer: Layer, dir_path: str) -> bool:
        """Watch ``dir_path`` of ``layer`` (once); False if it cannot be."""
        paths = self._watched.setdefault(layer, {})
        if dir_path in paths:
            return True
        try:
            with layer.proc_path_of(dir_path) as path:
                wd = self._add_watch(path)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return True  # not there: its parent's watch tells when it comes
            if dir_path not in self._unwatched:
                if not self._unwatched:
                    log.warning("udba=notify: cannot watch %s (%s; the limit is "
                                "/proc/sys/fs/inotify/max_user_watches): directories past it "
                                "are checked at each use instead", dir_path, exc.strerror)
                self._unwatched.add(dir_path)
            return False
        paths[dir_path] = wd
        self._where.setdefault(wd, set()).add((layer, dir_path))
        return True

    def _add_watch(self, path: str) -> int:
        return self._inotify.add_watch(path, _MASK)

    def unwatched(self, dir_path: str) -> bool:
        return dir_path in self._unwatched

    def drop(self, layer: Layer) -> None:
        """Stop watching for ``layer`` (removed from the stack)."""
        for dir_path, wd in self._watched.pop(layer, {}).items():
            self._let_go(wd, layer, dir_path)

    def drop_below(self, layer: Layer, dir_path: str) -> None:
        """Stop watching ``dir_path`` of ``layer`` and the directories under
        it (moved away: their watches would tell of them by old paths)."""
        paths = self._watched.get(layer, {})
        prefix = child(dir_path, "")
        for path in [p for p in paths if p == dir_path or p.startswith(prefix)]:
            self._let_go(paths.pop(path), layer, path)

    def _let_go(self, wd: int, layer: Layer, dir_path: str) -> None:
        where = self._where.get(wd)
        if where is None:
            return
        where.discard((layer, dir_path))
        if not where:
            del self._where[wd]
            with contextlib.suppress(OSError):  # gone with its directory already
                self._inotify.rm_watch(wd)

    def layers(self) -> list[Layer]:
        return list(self._watched)

    async def events(self):
        """Batches of :class:`Event`, as they come (None: events were lost)."""
        while True:
            await trio.lowlevel.wait_readable(self._inotify.fileno())
            batch: list[Event] | None = []
            for raw in self._inotify.read(timeout=0):
                if raw.mask & flags.Q_OVERFLOW:
                    batch = None
                elif raw.mask & flags.IGNORED:  # its directory is gone
                    for layer, dir_path in self._where.pop(raw.wd, ()):
                        self._watched.get(layer, {}).pop(dir_path, None)
                elif batch is not None:
                    batch += [Event(layer, dir_path, raw.name, raw.mask)
                              for layer, dir_path in self._where.get(raw.wd, ())]
            yield batch


class Notifier:
    """Turns a mount's inotify events into what the daemon and the kernel
    drop of what they keep."""

    def __init__(self, watcher: Watcher, tree: Tree, numbers: InodeNumbers,
                 inodes: InodeTable):
        self.watcher = watcher
        self._tree = tree
        self._numbers = numbers
        self._inodes = inodes

    async def run(self) -> None:
        async for batch in self.watcher.events():
            try:
                calls = self._lost() if batch is None else self._changed(batch)
            except Exception:  # noqa: BLE001 - the mount must go on: drop all it keeps
                log.exception("udba=notify: events not understood")
                calls = self._lost()
            if calls:
                await trio.to_thread.run_sync(_invalidate, calls)

    def _lost(self) -> list[tuple]:
        log.warning("udba=notify: inotify events were lost: dropping what is kept")
        for layer in self.watcher.layers():
            layer.forget_all_names()
        self._inodes.new_epoch()
        return [(pyfuse3.invalidate_inode, node.ino, False) for node in self._inodes.nodes()]

    def _changed(self, batch: list[Event]) -> list[tuple]:
        """The kernel invalidations a batch of events calls for (made after
        the daemon's own kept names are dropped), in the order of the
        events."""
        names, contents = {}, {}
        #: union directories whose listings, and their subdirectories', may
        #: have changed though their own names did not (merged directories)
        relisted = {}
        for event in batch:
            if event.mask & _NAMES:
                event.layer.forget_names(event.dir_path)
                if event.mask & flags.ISDIR:  # gone, moved, or another one there now
                    moved = child(event.dir_path, event.name)
                    event.layer.forget_names(moved, below=True)
                    self.watcher.drop_below(event.layer, moved)
                    relisted[moved] = None
                names[event.dir_path, event.name] = None
            elif event.mask & _CONTENT:
                path = child(event.dir_path, event.name) if event.name else event.dir_path
                contents[event.layer, path] = None
                if event.mask & flags.ATTRIB and (event.mask & flags.ISDIR or not event.name):
                    # overlay's marks of it (opaque, redirect) are kept with its names
                    event.layer.forget_names(path)
                    relisted[path] = None
        if names or relisted:
            self._inodes.new_epoch()  # entries cached on nodes may lead elsewhere now
        calls = []
        for dir_path, name in names:
            calls += self._renamed(dir_path, name)
        for layer, path in contents:
            calls += self._rewritten(layer, path)
        for path in relisted:
            calls += self._listings_at_or_below(path)
        return calls

    def _renamed(self, dir_path: str, name: str) -> list[tuple]:
        """``dir_path/name`` was made, removed or renamed in a branch: if
        the union name now leads elsewhere than the kernel's, invalidate it."""
        parent = self._number_of(dir_path)
        if parent is None:
            return []  # the directory itself is gone: its own entry tells
        parent_ino, parent_entry = parent
        try:
            found = self._tree.lookup(parent_entry, name)
        except OSError:
            found = None
        now = self._numbers.of(*found) if found else None
        held = self._inodes.linked(parent_ino, name)
        if held is not None and held.ino == now:
            return []  # the union shows what it showed
        if held is not None:
            self._inodes.unlink(held, parent_ino, name)
        # The directory's kept listing goes with its pages.
        return [(pyfuse3.invalidate_entry, parent_ino, os.fsencode(name)),
                (pyfuse3.invalidate_inode, parent_ino, False)]

    def _listings_at_or_below(self, path: str) -> list[tuple]:
        """Drop the kernel's kept listings (with the pages) of the union
        directory ``path`` and of what the kernel holds below it."""
        below = f"{path}/"
        return [(pyfuse3.invalidate_inode, node.ino, False) for node in self._inodes.nodes()
                if node.entry is not None and (path == ROOT or node.entry.path == path
                                               or node.entry.path.startswith(below))]

    def _rewritten(self, layer: Layer, path: str) -> list[tuple]:
        """A file (or directory) changed in place: invalidate the kernel's
        attributes and pages of it if the union shows it."""
        found = self._number_of(path)
        if found is None or found[1].top != (layer, path) or self._inodes.find(found[0]) is None:
            return []
        return [(pyfuse3.invalidate_inode, found[0], False)]

    def _number_of(self, path: str):
        """``(union inode number, entry)`` of a union path, or None."""
        try:
            entry = self._tree.resolve(path)
            st = entry.top.layer.lstat(entry.top.path)
        except OSError:
            return None
        return self._numbers.of(entry, st), entry


def _invalidate(calls: list[tuple]) -> None:
    """In a thread.  The kernel may not know an inode or name (forgotten
    already): that is not an error."""
    for function, *args in calls:
        with contextlib.suppress(OSError):
            function(*args)

