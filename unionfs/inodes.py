"""FUSE inode numbers: how they are made, and what the kernel holds of them.

pyfuse3 uses one number both as the FUSE node id and as ``st_ino``, so the
number must be stable and unique among live files:

* :class:`InodeNumbers` derives it from the real ``(st_dev, st_ino)`` of an
  entry's top location, as overlayfs's ``xino`` does: the real inode number,
  with the index of its file system (in branch order) in the top 8 bits.
  Branches on one file system keep their real numbers; hard links share one.
* :class:`InodeTable` keeps a :class:`Node` for every number the kernel has
  been given, with the kernel's lookup count.  ``forget`` drops it at zero,
  so memory follows what the kernel caches, not what was ever seen.  A node
  records the names it was reached by, (parent number, name), never a full
  path, so renaming a directory later needs no walk over its subtree.

A file system reuses the inode numbers of removed files.  Were a number
the kernel still holds for a removed file (a removed directory that is some
process's cwd, say) to come back for a new file, the kernel would bind the
new name to the old inode (lookups in it then fail with ENOENT or ESTALE).
So a node whose last name is removed keeps a descriptor of its file until
the kernel forgets it: the number stays taken, and the removed file's
attributes stay readable, as on a local file system.
"""

from __future__ import annotations

import errno
import os
from typing import NamedTuple

import pyfuse3

from .tree import Entry
from .udba import Seen

ROOT_INODE = pyfuse3.ROOT_INODE
_FS_SHIFT = 56


class InodeNumbers:
    """Maps real ``(st_dev, st_ino)`` pairs to union inode numbers."""

    def __init__(self, root: os.stat_result, devices: list[int]):
        self._fs_index: dict[int, int] = {}
        for dev in devices:
            self._fs_index.setdefault(dev, len(self._fs_index))
        self._root = (root.st_dev, root.st_ino)
        # The root is always ROOT_INODE, so its own number is free: a file
        # whose number would clash with ROOT_INODE gets it instead.
        self._root_stand_in = self._compose(root.st_dev, root.st_ino)
        #: a directory that came to stand on another branch's directory in
        #: a live change of the stack keeps its number (cwds and mounts on it
        #: stay valid): the real (st_dev, st_ino) of its new top -> number
        self._kept: dict[tuple[int, int], int] = {}

    def of(self, entry: Entry, st: os.stat_result) -> int:
        """The number of ``entry``: the one it had before any copy-up."""
        if entry.marks.origin is not None:
            return entry.marks.origin
        return self(st)

    def __call__(self, st: os.stat_result) -> int:
        return self.number(st.st_dev, st.st_ino)

    def number(self, dev: int, ino: int) -> int:
        """The number of the file ``ino`` of device ``dev`` (no marks)."""
        if (dev, ino) == self._root:
            return ROOT_INODE
        if (kept := self._kept.get((dev, ino))) is not None:
            return kept
        number = self._compose(dev, ino)
        return self._root_stand_in if number == ROOT_INODE else number

    def keep(self, st: os.stat_result, number: int) -> None:
        """From now on, the entry whose real stat is ``st`` has ``number``."""
        self._kept[(st.st_dev, st.st_ino)] = number

    def forget_kept(self, st: os.stat_result) -> None:
        """The entry whose real stat is ``st`` has its own number again."""
        self._kept.pop((st.st_dev, st.st_ino), None)

    def _compose(self, dev: int, ino: int) -> int:
        if ino >> _FS_SHIFT:
            raise OSError(errno.EOVERFLOW, "inode number too large for the union")
        index = self._fs_index.setdefault(dev, len(self._fs_index))
        return index << _FS_SHIFT | ino


class Held(NamedTuple):
    """A removed file's descriptor, kept for its node."""

    fd: int  #: ``O_PATH``
    writable: bool  #: the file is in the writable branch (else: read-only)


class Node:
    """What the daemon knows of one inode the kernel holds."""

    __slots__ = ("ino", "removed", "lookups", "links", "entry", "epoch", "fds", "names_unflushed",
                 "told")

    def __init__(self, ino: int):
        self.ino = ino
        #: once its last name is removed: its file, held
        self.removed: Held | None = None
        self.lookups = 0
        #: the (parent inode, name) pairs this inode was reached by
        self.links: set[tuple[int, str]] = set()
        #: where the inode lives, once resolved, and the table's epoch then
        self.entry: Entry | None = None
        self.epoch = 0
        #: descriptors open on it for the kernel's file handles
        self.fds: set[int] = set()
        #: copied up, and the directories that got its new names not yet flushed
        self.names_unflushed = False
        #: of a lower file: what the kernel was last told of it (``udba.py``)
        self.told: Seen | None = None


class InodeTable:
    """The live inodes, keyed by number; the root is never forgotten.

    ``epoch`` grows whenever a directory moves: every cached entry below it
    may now be at another path, so entries cached before are resolved anew.
    """

    def __init__(self):
        self._nodes = {ROOT_INODE: Node(ROOT_INODE)}
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def __getitem__(self, ino: int) -> Node:
        try:
            return self._nodes[ino]
        except KeyError:
            raise OSError(errno.ESTALE, "unknown inode") from None

    def remember(self, ino: int, parent: int | None = None, name: str | None = None) -> Node:
        """Count one more kernel reference to ``ino``, reached as ``parent/name``."""
        node = self._nodes.get(ino)
        if node is None:
            node = self._nodes[ino] = Node(ino)
        node.lookups += 1
        if parent is not None:
            node.links.add((parent, name))
        return node

    def find(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def linked(self, parent: int, name: str) -> Node | None:
        """The node the kernel reached as ``parent/name``, if any.  A walk
        over every node: for the rare name changed below (``watch.py``)."""
        link = (parent, name)
        return next((node for node in self._nodes.values() if link in node.links), None)

    def new_epoch(self) -> None:
        self.epoch += 1

    def cached_entry(self, node: Node) -> Entry | None:
        return node.entry if node.epoch == self.epoch else None

    def cache_entry(self, node: Node, entry: Entry | None) -> None:
        node.entry, node.epoch = entry, self.epoch

    def link(self, node: Node, parent: int, name: str) -> None:
        node.links.add((parent, name))

    def unlink(self, node: Node, parent: int, name: str, removed: Held | None = None) -> None:
        """``parent/name`` no longer leads to ``node``; ``removed`` is a
        descriptor of its file if that was the file's last name, which
        the table now owns."""
        node.links.discard((parent, name))
        node.entry = None
        if removed is not None:
            node.removed = removed

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or ino == ROOT_INODE:
            return
        node.lookups -= count
        if node.lookups <= 0:
            del self._nodes[ino]
            if node.removed is not None:
                os.close(node.removed.fd)

    def parent_link(self, node: Node) -> tuple[Node, str]:
        """A (parent node, name) pair by which ``node`` can be reached now."""
        for parent, name in list(node.links):
            if parent in self._nodes:
                return self._nodes[parent], name
            node.links.discard((parent, name))
        raise OSError(errno.ESTALE, "inode has no live parent")
