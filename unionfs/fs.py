"""The FUSE face of the union: each operation maps an inode to an entry,
asks ``tree``/``layer`` for the answer, and turns ``OSError`` into
``FUSEError``.  No union rule lives here.

Not handled (yet), in one place:

* Writes: the write path (copy-up, whiteouts, rename, links) is not built
  yet; a union without a writable branch is mounted read-only.
* Branches changed underneath the mount are seen as they are found; the
  kernel may keep showing cached attributes and names for up to
  ``timeout`` seconds.
* ``access`` is never called: the mount always uses ``default_permissions``,
  so the kernel checks permissions itself from the attributes given here.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os
import stat
from dataclasses import dataclass

import pyfuse3
from pyfuse3 import EntryAttributes, FileInfo, FUSEError

from .inodes import ROOT_INODE, InodeNumbers, InodeTable, Node
from .tree import Entry, Location, Tree
from .whiteout import PREFIX, is_reserved

log = logging.getLogger(__name__)

_STAT_FIELDS = (
    "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
    "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
)


@dataclass
class _Listing:
    """An open directory: the names it had at opendir, in a fixed order.

    Each name maps to its top location, or, for "." and "..", an inode.
    """

    ino: int
    entry: Entry
    names: list[tuple[str, Location | int]]


def _fuse_errors(method):
    """Answer the kernel with an errno for every failure of ``method``."""

    @functools.wraps(method)
    async def wrapper(*args):
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s%r", method.__name__, args[1:])
        try:
            return await method(*args)
        except FUSEError:
            raise
        except OSError as exc:
            log.debug("%s: %s", method.__name__, exc)
            raise FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", method.__name__)
            raise FUSEError(errno.EIO) from None

    return wrapper


class UnionOperations(pyfuse3.Operations):
    """Concurrency: all handlers run as tasks of one trio loop, so the
    tables here are only touched from one thread at a time."""

    def __init__(self, tree: Tree, timeout: float = 1.0):
        super().__init__()
        self.tree = tree
        self.timeout = timeout
        root_entry = tree.root()
        root_stat = root_entry.top.layer.lstat(root_entry.top.path)
        self.numbers = InodeNumbers(root_stat, [l.lstat(".").st_dev for l in tree.layers])
        self.inodes = InodeTable(root_entry)
        self._dir_listings: dict[int, _Listing] = {}
        self._handles = itertools.count(1)

    # -- names -----------------------------------------------------------

    @_fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        name = os.fsdecode(name)
        parent = self.inodes[parent_inode]
        if name in (".", ".."):
            node = parent if name == "." else self._parent_of(parent)
            attrs = self._attributes(node)
            self.inodes.remember(node.ino)
            return attrs
        if is_reserved(name):
            raise FUSEError(errno.EPERM)
        found = self.tree.lookup(self._entry(parent), name)
        if found is None:
            return self._negative_entry()
        entry, st = found
        attrs = self._attributes_from(st, self.numbers(st), entry.merged)
        node = self.inodes.remember(attrs.st_ino, parent_inode, name)
        node.entry = entry
        return attrs

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @_fuse_errors
    async def getattr(self, inode, ctx=None):
        return self._attributes(self.inodes[inode])

    @_fuse_errors
    async def readlink(self, inode, ctx):
        top = self._entry(self.inodes[inode]).top
        return os.fsencode(top.layer.readlink(top.path))

    # -- files -----------------------------------------------------------

    @_fuse_errors
    async def open(self, inode, flags, ctx):
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise FUSEError(errno.EROFS)
        top = self._entry(self.inodes[inode]).top
        fd = top.layer.open(top.path, os.O_RDONLY)
        # A file in a read-only branch cannot change, so the kernel may keep
        # its pages across opens.
        return FileInfo(fh=fd, keep_cache=not top.layer.writable)

    @_fuse_errors
    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    @_fuse_errors
    async def release(self, fh):
        os.close(fh)

    # -- directories -----------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode, ctx):
        node = self.inodes[inode]
        entry = self._entry(node)
        names = [(".", node.ino), ("..", self._parent_of(node).ino)]
        names += list(self.tree.listdir(entry).items())
        fh = next(self._handles)
        self._dir_listings[fh] = _Listing(node.ino, entry, names)
        return fh

    @_fuse_errors
    async def readdir(self, fh, start_id, token):
        """Entries come from the snapshot taken at opendir, so an offset
        always means the same place: a continued listing neither repeats
        nor skips."""
        listing = self._dir_listings[fh]
        for index in range(start_id, len(listing.names)):
            name, where = listing.names[index]
            if isinstance(where, int):  # "." or ".."
                attrs, entry = self._attributes(self.inodes[where]), None
            else:
                found = self._entry_in_listing(listing.entry, name, where)
                if found is None:
                    continue  # removed underneath since opendir
                entry, st = found
                attrs = self._attributes_from(st, self.numbers(st), entry.merged)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, index + 1):
                return
            if entry is not None:
                self.inodes.remember(attrs.st_ino, listing.ino, name).entry = entry

    @_fuse_errors
    async def releasedir(self, fh):
        del self._dir_listings[fh]

    # -- the rest --------------------------------------------------------

    @_fuse_errors
    async def statfs(self, ctx):
        layers = self.tree.layers
        source = next((l for l in layers if l.writable), layers[0])
        vfs = source.statvfs()
        out = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                      "f_files", "f_ffree", "f_favail"):
            setattr(out, field, getattr(vfs, field))
        # A whiteout's name is longer than the name it hides, by the prefix.
        out.f_namemax = vfs.f_namemax - len(PREFIX)
        return out

    @_fuse_errors
    async def getxattr(self, inode, name, ctx):
        top = self._entry(self.inodes[inode]).top
        return top.layer.getxattr(top.path, os.fsdecode(name))

    @_fuse_errors
    async def listxattr(self, inode, ctx):
        top = self._entry(self.inodes[inode]).top
        return [os.fsencode(n) for n in top.layer.listxattr(top.path)]

    # -- helpers ---------------------------------------------------------

    def _entry(self, node: Node) -> Entry:
        """Where ``node`` lives, resolved from its parent on first need."""
        if node.entry is None:
            parent, name = self.inodes.parent_link(node)
            found = self.tree.lookup(self._entry(parent), name)
            if found is None:
                raise FUSEError(errno.ENOENT)
            node.entry = found[0]
        return node.entry

    def _entry_in_listing(self, directory: Entry, name: str, top: Location):
        """The entry of a listed name: a directory may merge with lower
        ones, so it is looked up in full; anything else is its top."""
        st = top.layer.lstat_or_none(top.path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            return self.tree.lookup(directory, name)
        return None if st is None else (Entry((top,)), st)

    def _parent_of(self, node: Node) -> Node:
        if node.ino == ROOT_INODE:
            return node
        return self.inodes.parent_link(node)[0]

    def _attributes(self, node: Node) -> EntryAttributes:
        entry = self._entry(node)
        st = entry.top.layer.lstat(entry.top.path)
        return self._attributes_from(st, node.ino, entry.merged)

    def _attributes_from(self, st: os.stat_result, ino: int, merged: bool) -> EntryAttributes:
        attrs = EntryAttributes()
        for field in _STAT_FIELDS:
            setattr(attrs, field, getattr(st, field))
        attrs.st_ino = ino
        attrs.entry_timeout = self.timeout
        attrs.attr_timeout = self.timeout
        if merged and stat.S_ISDIR(st.st_mode):
            attrs.st_nlink = 1  # as overlayfs: a merged directory's count is unknown
        return attrs

    def _negative_entry(self) -> EntryAttributes:
        """A 'no such name' answer the kernel may cache for ``timeout``."""
        attrs = EntryAttributes()
        attrs.st_ino = 0
        attrs.entry_timeout = self.timeout
        return attrs
