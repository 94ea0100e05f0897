"""The FUSE face of the union: each operation maps inodes to entries, asks
``tree`` (names) or ``changes`` (writes) for the answer, keeps the inode
table in step, and turns ``OSError`` into ``FUSEError``.  No union rule
lives here.

Not handled, in one place:

* A read-only branch changed underneath the mount shows as the ``udba``
  option says (``udba.py``): its names and attributes may stay unseen for
  a while, but no read returns another file's data.
* A file opened read-only from a read-only branch, then unlinked from the
  name it was opened by while it keeps another: a change through the
  descriptor (``fchmod``...) goes to a private copy, not to the other name.
* Changes wait for each other (one lock): while a big file is copied up
  with ``copyup=full``, other changes wait; lookups, reads and writes go on.
* No writeback cache: with it the kernel would turn write-only opens into
  read-write ones and send writes late, past the per-write ordering that
  partial copies rely on for crash safety.  (Passthrough, which some files
  get, ``passthrough.py``, excludes it anyway.)
* Directory listings are kept by the kernel (``opendir``) for as long as
  the kernel keeps names (``udba.py``); a change through the mount drops
  the listing of its directory in the kernel itself, a change made by the
  daemon (live branches, ``udba=notify``) drops it by invalidation.  Where
  the kernel keeps every listing (``udba=none``) it opens directories
  itself: an open directory costs the daemon nothing, and does not count
  towards ``max_open``.
* ``access`` is never called: the mount always uses ``default_permissions``,
  so the kernel checks permissions itself from the attributes given here.
* ``fallocate``, ``lseek`` (SEEK_DATA/SEEK_HOLE), ``copy_file_range``,
  ``ioctl`` and ``poll`` are not passed on by pyfuse3; the kernel answers
  them itself or with EOPNOTSUPP.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
import os
import stat

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FUSEError

from . import durable
from .changes import Changes
from .handles import OPEN_FLAGS_KEPT, OpenFiles, PageCache, private_copy
from .inodes import ROOT_INODE, Held, InodeNumbers, InodeTable, Node
from .index import Index
from .branches import Branch
from .layer import ROOT, Layer, split
from .owners import AS_STORED, Owners
from .listings import END, Listings, listing
from .live import LiveStack, outside_the_mount
from .partial import PartialFiles
from .passthrough import Backings
from .quota import UNLIMITED
from .restack import Change
from .target import Target
from .tree import Entry, Listed, Tree, read_marks
from .udba import Mode, Policy, check_identity, seen
from .upper import Upper
from .watch import Notifier, Watcher
from .whiteout import FLATTEN_XATTR, is_private_xattr, is_reserved, is_whiteout_device

log = logging.getLogger(__name__)

_STAT_FIELDS = (
    "st_mode", "st_nlink", "st_rdev", "st_size",
    "st_blksize", "st_blocks", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
)
def _listed_attributes(listed: Listed, numbers: InodeNumbers) -> EntryAttributes | None:
    """A name's number and type, all a plain READDIR gives, from its
    listing alone where nothing but its own file decides them: a file (not
    a directory: it may be merged, or moved) in a branch that keeps no
    marks, whose number the listing holds (``Layer.scandir``).  None
    elsewhere."""
    layer = listed.location.layer
    if layer.keeps_marks or listed.kind == stat.S_IFDIR or not listed.ino:
        return None
    attrs = EntryAttributes()
    attrs.st_ino = numbers.number(layer.dev, listed.ino)
    attrs.st_mode = listed.kind
    return attrs


def _close(held: Held | None) -> None:
    if held is not None:
        os.close(held.fd)


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
            log.debug("%s: %s", method.__name__, exc, exc_info=True)
            raise FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", method.__name__)
            raise FUSEError(errno.EIO) from None

    return wrapper


def _changing(method):
    """Run a handler that changes names or files holding the change lock
    (see :class:`UnionOperations`)."""

    @functools.wraps(method)
    async def wrapper(self, *args):
        async with self._change_lock:
            return await method(self, *args)

    return wrapper


class UnionOperations(pyfuse3.Operations):
    """Concurrency: all handlers run as tasks of one trio loop, so the
    tables here are only touched from one thread at a time, and a handler
    can be overtaken only where it awaits: a copy-up copying data or a read
    (in a thread), or a lock.

    Every handler that changes the union holds one lock, ``_change_lock``,
    and resolves the entries it acts on only once it holds it.  So a change
    never acts on what it looked up before a wait: while a copy-up copies,
    other changes wait for it, and then find its result.  Lookups, reads,
    listings and writes to open files do not take it and keep going.
    """

    #: the kernel enforces the branches' POSIX ACLs (which pass as xattrs),
    #: as overlayfs and fuse-overlayfs do: the mode alone would let in whom
    #: an ACL keeps out
    enable_acl = True
    #: the kernel may list a directory with plain READDIR where it has no
    #: use for attributes (a listing read on from the middle)
    enable_readdirplus_auto = True
    #: ``MAP_SHARED`` maps of files read with direct I/O (``pagecache=direct``)
    enable_direct_io_allow_mmap = True

    def __init__(self, layers: list[Layer], upper: Upper | None = None,
                 partial_copies: bool = True, pagecache: PageCache = PageCache.KEEP,
                 max_open: int | None = None, udba: Mode = Mode.NONE,
                 owners: Owners = AS_STORED, passthrough: bool = False):
        """``passthrough``: ask the kernel for it at INIT (``passthrough.py``)."""
        super().__init__()
        self.enable_passthrough = passthrough
        self.backings = Backings()
        self._owners = owners
        self.numbers = InodeNumbers(layers[0].lstat(ROOT),
                                    [layer.lstat(ROOT).st_dev for layer in layers])
        index = Index(upper.meta, self.numbers) if upper else None
        self.tree = Tree(layers, index)
        self._quota = upper.quota if upper else UNLIMITED
        self.inodes = InodeTable()
        watcher = Watcher.opened() if udba is Mode.NOTIFY else None
        if udba is Mode.NOTIFY and watcher is None:
            udba = Mode.REVAL
        self._udba = Policy(udba, watcher)
        self._notifier = (Notifier(watcher, self.tree, self.numbers, self.inodes)
                          if watcher is not None else None)
        self.layers_changed(layers, [])
        self._changes = (Changes(self.tree, upper, self.numbers, index, partial_copies)
                         if upper else None)
        if self._changes:
            self._changes.on_dirs_copied = self._dirs_copied
        self._partials = PartialFiles(layers, upper, self.numbers) if upper else None
        self._open_files = OpenFiles(upper, self._partials, pagecache, self.backings)
        self._listings = Listings()
        self._handles = itertools.count(1)
        self._change_lock = trio.Lock()
        self._max_open = max_open
        self._live = LiveStack(layers, self.tree, self.numbers, self.inodes, self._open_files,
                               upper, self._partials, self._entry, self.layers_changed)
        #: set once the kernel has been answered its INIT (its waiters run
        #: after the answer is sent)
        self.initialized = trio.Event()

    def init(self):
        self.backings.enabled = self.enable_passthrough and pyfuse3.passthrough_enabled()
        self.initialized.set()

    def branches(self) -> list[Branch]:
        return [layer.branch for layer in self.tree.layers]

    async def change_branches(self, changes: list[Change], mountpoint: str,
                              workdir: str | None, force: bool = False) -> list[Branch]:
        """Change the branches of the live mount (``live.py``); the kernel
        is told after the change lock is released, before the caller is
        answered."""
        await trio.to_thread.run_sync(outside_the_mount, changes, mountpoint)
        async with self._change_lock:
            stack, stale = await self._live.change(changes, mountpoint, workdir, force)
        await self._live.tell_kernel(stale)
        return stack

    def close(self) -> None:
        """At the end: close the branches taken out while mounted."""
        self._live.close()

    def layers_changed(self, added: list[Layer], removed: list[Layer]) -> None:
        """After the stack changed at run time: the udba choice applies to
        the new branches (watched as they are looked into), the removed
        ones lose their watches."""
        for layer in added:
            self._udba.adopt(layer)
        for layer in removed:
            self._udba.retire(layer)

    async def watch_below(self) -> None:
        """With ``udba=notify``: act on changes to read-only branches until
        cancelled."""
        if self._notifier is not None:
            try:
                await self._notifier.run()
            finally:
                self._notifier.watcher.close()

    def recover(self) -> None:
        """Before the first request: finish or undo the changes a killed
        daemon left half done."""
        if self._changes is not None:
            self._changes.replay_intents()

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
        found = self._child(parent, name)
        if found is None:
            return self._negative_entry()
        return self._remember(parent_inode, name, *found)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.inodes.forget(ino, count)

    @_fuse_errors
    async def getattr(self, inode, ctx=None):
        return self._attributes(self.inodes[inode])

    @_fuse_errors
    @_changing
    async def setattr(self, inode, attr, fields, fh, ctx):
        node = self.inodes[inode]
        truncating = fields.update_size and attr.st_size == 0
        target = await self._target(node, with_data=not truncating)
        if fields.update_size:
            self._open_files.truncate(target.entry, fh, attr.st_size)
        if fields.update_uid or fields.update_gid:
            target.chown(self._owners.uids.stored(attr.st_uid) if fields.update_uid else -1,
                         self._owners.gids.stored(attr.st_gid) if fields.update_gid else -1)
        if fields.update_mode:
            target.chmod(stat.S_IMODE(attr.st_mode))
        if fields.update_atime or fields.update_mtime:
            if target.entry is not None and target.entry.marks.partial is not None:
                self._partials.times_set(target.entry.marks.partial)
            st = target.lstat()
            target.utime((attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                          attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns))
        return self._attributes(node)

    @_fuse_errors
    async def readlink(self, inode, ctx):
        top = self._entry(self.inodes[inode]).top
        return os.fsencode(top.layer.readlink(top.path))

    @_fuse_errors
    @_changing
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        if is_whiteout_device(mode, rdev):
            raise FUSEError(errno.EPERM)  # a whiteout, as overlayfs refuses
        parent, name = self._new_name(parent_inode, name)
        entry = self._writer.mknod(parent, name, mode, rdev, *self._owner_of_new(ctx))
        return self._remember_new(parent_inode, name, entry)

    @_fuse_errors
    @_changing
    async def mkdir(self, parent_inode, name, mode, ctx):
        parent, name = self._new_name(parent_inode, name)
        entry = self._writer.mkdir(parent, name, mode, *self._owner_of_new(ctx))
        return self._remember_new(parent_inode, name, entry)

    @_fuse_errors
    @_changing
    async def symlink(self, parent_inode, name, target, ctx):
        parent, name = self._new_name(parent_inode, name)
        entry = self._writer.symlink(parent, name, os.fsdecode(target),
                                     *self._owner_of_new(ctx))
        return self._remember_new(parent_inode, name, entry)

    @_fuse_errors
    @_changing
    async def link(self, inode, new_parent_inode, new_name, ctx):
        new_parent, new_name = self._new_name(new_parent_inode, new_name)
        node = self.inodes[inode]
        old, new = await self._writer.link(self._entry(node), new_parent, new_name)
        self._moved_up(node, old)
        return self._remember_new(new_parent_inode, new_name, new)

    @_fuse_errors
    @_changing
    async def unlink(self, parent_inode, name, ctx):
        await self._remove(parent_inode, os.fsdecode(name))

    @_fuse_errors
    @_changing
    async def rmdir(self, parent_inode, name, ctx):
        await self._remove(parent_inode, os.fsdecode(name))

    @_fuse_errors
    @_changing
    async def rename(self, old_parent_inode, old_name, new_parent_inode, new_name, flags, ctx):
        old_name, new_name = os.fsdecode(old_name), os.fsdecode(new_name)
        if is_reserved(new_name):
            raise FUSEError(errno.EPERM)
        old_parent = self._entry(self.inodes[old_parent_inode])
        new_parent = self._entry(self.inodes[new_parent_inode])
        src = self._child_or_enoent(old_parent, old_name)
        dst = self.tree.lookup(new_parent, new_name)
        src_ino = self.numbers.of(*src)
        dst_ino = self.numbers.of(*dst) if dst else None
        if src_ino == dst_ino and not flags & pyfuse3.RENAME_EXCHANGE:
            return  # two names of one file: rename(2) does nothing
        replaced = None if dst is None or flags & pyfuse3.RENAME_EXCHANGE \
            else self._hold_if_last(dst_ino, *dst)
        try:
            await self._writer.rename(old_parent, old_name, src[0], new_parent, new_name,
                                      dst[0] if dst else None, flags)
        except BaseException:
            _close(replaced)
            raise
        moved = (old_parent_inode, old_name), (new_parent_inode, new_name)
        self._relink(src_ino, *moved)
        renamed = [src_ino]
        if dst is not None:
            if flags & pyfuse3.RENAME_EXCHANGE:
                self._relink(dst_ino, *reversed(moved))
                renamed.append(dst_ino)
            elif (node := self.inodes.find(dst_ino)) is not None:
                self.inodes.unlink(node, new_parent_inode, new_name, replaced)
        if any(stat.S_ISDIR(st.st_mode) for _, st in filter(None, (src, dst))):
            self.inodes.new_epoch()  # before anything is resolved again
        for ino in renamed:  # a rename copies up: open files follow
            if (node := self.inodes.find(ino)) is not None and node.fds:
                self._moved_up(node, self._entry(node))

    # -- files -----------------------------------------------------------

    @_fuse_errors
    async def open(self, inode, flags, ctx):
        node = self.inodes[inode]
        self._check_open_room()
        if flags & os.O_ACCMODE == os.O_RDONLY and not flags & os.O_TRUNC:
            return await self._open_files.open(node, self._entry(node), flags)
        async with self._change_lock:
            entry = await self._copied_up(node, with_data=not flags & os.O_TRUNC)
            info = await self._open_files.open(node, entry, flags)
        if flags & (os.O_SYNC | os.O_DSYNC):  # every write is an fsync
            self._flush_names(node)
        return info

    @_fuse_errors
    @_changing
    async def create(self, parent_inode, name, mode, flags, ctx):
        self._check_open_room()
        parent, name = self._new_name(parent_inode, name)
        fd, entry = self._writer.create(parent, name, mode, flags & OPEN_FLAGS_KEPT,
                                        *self._owner_of_new(ctx))
        attrs = self._remember_new(parent_inode, name, entry)
        return self._open_files.adopt(self.inodes[attrs.st_ino], fd, entry, flags), attrs

    @_fuse_errors
    async def read(self, fh, off, size):
        return await self._open_files.read(fh, off, size)

    @_fuse_errors
    async def write(self, fh, off, buf):
        return self._open_files.write(fh, off, buf)

    async def flush(self, fh):
        """Writes go straight to the branch, so a close has nothing to
        flush: ENOSYS tells the kernel to stop asking, which saves every
        later close a round trip."""
        raise FUSEError(errno.ENOSYS)

    @_fuse_errors
    async def fsync(self, fh, datasync):
        self._open_files.fsync(fh, datasync)
        self._flush_names(self._open_files.node(fh))

    @_fuse_errors
    async def release(self, fh):
        self._open_files.release(fh)

    # -- directories -----------------------------------------------------

    @_fuse_errors
    async def opendir(self, inode, ctx):
        """Where the kernel may keep every listing (``udba=none``), it is
        told to open directories itself (ENOSYS, once for the mount): no
        round trips per directory opened.  Elsewhere the handle is the
        inode, as the kernel's own opens give it to ``readdir``."""
        if self._udba.keeps_every_listing():
            raise FUSEError(errno.ENOSYS)
        try:
            entry = self._entry(self.inodes[inode])  # it must still exist
        except OSError as exc:  # a branch's ENOSYS must not hand opening over for good
            raise FUSEError(errno.EIO if exc.errno in (None, errno.ENOSYS) else exc.errno) from None
        info = pyfuse3.FileInfo(fh=inode)
        info.cache_readdir = True
        info.keep_cache = self._udba.keeps_listing(entry.path)
        return info

    @_fuse_errors
    async def readdir(self, ino, offset, token):
        """Names come from a listing taken when reading starts at offset 0
        (after an open or rewinddir), in an order their offsets keep
        (``listings.py``): a continued listing neither repeats nor skips.
        Each name is looked up in the directory as it is now, wherever it
        has moved since; a directory removed since lists nothing more.
        Plain READDIR (not ``token.plus``) gives the kernel no entries, so
        it looks nothing up, and takes a lower file's number and type from
        the listing (``_listed_attributes``)."""
        node = self.inodes[ino]
        try:
            directory = self._entry(node)
        except OSError:
            return  # removed
        if offset == END:
            return  # its last name was given
        taken = self._listings.get(ino) if offset else None
        if taken is None:
            taken = listing(directory, (ino, self._parent_of(node).ino),
                            self.tree.listdir(directory))
            self._listings.keep(ino, taken)
        moved = directory != taken.entry
        given = None  # the index of the last name given
        for index in range(taken.after(offset), len(taken.names)):
            name, where = taken.names[index]
            if isinstance(where, int):  # "." or ".."
                attrs, entry = self._attributes(self.inodes[where]), None
            elif not (token.plus or moved) and (attrs := _listed_attributes(where, self.numbers)):
                entry = None
            else:
                found = (self.tree.lookup(directory, name) if moved
                         else self.tree.entry_at(directory, name, where.location))
                if found is None:
                    continue  # removed since the listing
                entry, st = found
                attrs = self._attributes_from(st, self.numbers.of(entry, st), entry)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attrs, taken.offset(index)):
                return
            given = index
            if entry is not None and token.plus:
                child = self.inodes.remember(attrs.st_ino, ino, name)
                self.inodes.cache_entry(child, entry)
                self._told(child, entry, st)
        if given is None or given == len(taken.names) - 1:
            self._listings.ended(ino, taken)  # else the last names went: read on to see it

    @_fuse_errors
    async def releasedir(self, ino):
        """Nothing is held per open directory."""

    @_fuse_errors
    async def fsyncdir(self, ino, datasync):
        try:
            top = self._entry(self.inodes[ino]).top
        except OSError:
            return  # removed: nothing of it is left to flush
        if top.layer.writable:
            fd = top.layer.open(top.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                durable.fsync(fd)
            finally:
                os.close(fd)

    # -- the rest --------------------------------------------------------

    @_fuse_errors
    async def statfs(self, ctx):
        """The writable branch's file system (as its quota shows it), or
        the top branch's; ``f_namemax`` too, since a long name's whiteout
        is a device of that name."""
        layers = self.tree.layers
        source = next((l for l in layers if l.writable), layers[0])
        out = pyfuse3.StatvfsData()
        for field, value in self._quota.statvfs(source.statvfs()).items():
            setattr(out, field, value)
        return out

    @_fuse_errors
    async def getxattr(self, inode, name, ctx):
        name = os.fsdecode(name)
        if is_private_xattr(name):
            raise FUSEError(pyfuse3.ENOATTR)
        node = self.inodes[inode]
        if (fd := self._nameless(node)) is not None:
            value = os.getxattr(f"/proc/self/fd/{fd}", name)
        else:
            top = self._entry(node).top
            value = top.layer.getxattr(top.path, name)
        return self._owners.in_acl(name, value, to_shown=True)

    @_fuse_errors
    async def listxattr(self, inode, ctx):
        node = self.inodes[inode]
        if (fd := self._nameless(node)) is not None:
            names = os.listxattr(f"/proc/self/fd/{fd}")
        else:
            top = self._entry(node).top
            names = top.layer.listxattr(top.path)
        return [os.fsencode(n) for n in names if not is_private_xattr(n)]

    @_fuse_errors
    async def setxattr(self, inode, name, value, ctx):
        if os.fsdecode(name) == FLATTEN_XATTR:
            # Cached entries of a finished file carry its old marks.
            self._writer  # noqa: B018 - EROFS on a read-only union
            for entry in self._names_of(self.inodes[inode]):
                await self._partials.flatten(entry, self.inodes.new_epoch, self._dirs_copied,
                                             self._copied_by_flatten, self._change_lock)
            return
        value = self._owners.in_acl(os.fsdecode(name), value, to_shown=False)
        async with self._change_lock:
            await self._change_xattr(inode, name,
                                     lambda target: target.setxattr(os.fsdecode(name), value))

    @_fuse_errors
    @_changing
    async def removexattr(self, inode, name, ctx):
        await self.getxattr(inode, name, ctx)  # no copy-up to remove nothing
        await self._change_xattr(inode, name,
                                 lambda target: target.removexattr(os.fsdecode(name)))

    async def flatten_all(self) -> None:
        """Complete every partial copy (at unmount, with ``-o flatten``)."""
        if self._partials is not None:
            await self._partials.flatten(self.tree.root(), lambda: None)

    # -- helpers ---------------------------------------------------------

    @property
    def _writer(self) -> Changes:
        if self._changes is None or not self.tree.layers[0].writable:
            raise FUSEError(errno.EROFS)
        return self._changes

    def _entry(self, node: Node) -> Entry:
        """Where ``node`` lives: resolved down from its nearest ancestor
        whose entry is cached (without recursion: trees may be deep)."""
        below: list[tuple[Node, str]] = []
        entry = self.inodes.cached_entry(node)
        while entry is None and node.ino != ROOT_INODE:
            parent, name = self.inodes.parent_link(node)
            below.append((node, name))
            if len(below) > len(self.inodes):
                raise OSError(errno.ESTALE, "inode is its own ancestor")
            node = parent
            entry = self.inodes.cached_entry(node)
        if entry is None:
            entry = self.tree.root()
            self.inodes.cache_entry(node, entry)
        for node, name in reversed(below):
            entry = self._child_or_enoent(entry, name)[0]
            self.inodes.cache_entry(node, entry)
        return entry

    def _names_of(self, node: Node) -> list[Entry]:
        """The entry of every name the kernel knows ``node`` by: a request
        on a hard-linked file does not say which of its names it came by."""
        entries = []
        for parent_ino, name in list(node.links):
            if (parent := self.inodes.find(parent_ino)) is not None:
                with contextlib.suppress(OSError):
                    entries.append(self._child_or_enoent(self._entry(parent), name)[0])
        return entries or [self._entry(node)]

    def _child(self, parent: Node, name: str):
        if is_reserved(name):
            raise FUSEError(errno.EPERM)
        return self.tree.lookup(self._entry(parent), name)

    def _child_or_enoent(self, parent: Entry, name: str):
        found = self.tree.lookup(parent, name)
        if found is None:
            raise OSError(errno.ENOENT, "no such name")
        return found

    def _new_name(self, parent_inode: int, name: bytes) -> tuple[Entry, str]:
        """The parent entry and decoded name for an entry about to be made."""
        name = os.fsdecode(name)
        parent = self.inodes[parent_inode]
        if self._child(parent, name) is not None:
            raise FUSEError(errno.EEXIST)
        return self._entry(parent), name

    def _check_open_room(self) -> None:
        """Refuse a new file handle past ``max_open``."""
        if self._max_open is not None and len(self._open_files) >= self._max_open:
            raise FUSEError(errno.EMFILE)

    def _parent_of(self, node: Node) -> Node:
        if node.ino == ROOT_INODE:
            return node
        return self.inodes.parent_link(node)[0]

    async def _remove(self, parent_inode: int, name: str) -> None:
        parent = self._entry(self.inodes[parent_inode])
        entry, st = self._child_or_enoent(parent, name)
        ino = self.numbers.of(entry, st)
        removed = self._hold_if_last(ino, entry, st)
        try:
            await self._writer.remove(parent, name, entry)
        except BaseException:
            _close(removed)
            raise
        if (node := self.inodes.find(ino)) is not None:
            self.inodes.unlink(node, parent_inode, name, removed)

    def _hold_if_last(self, ino: int, entry: Entry, st: os.stat_result) -> Held | None:
        """Before a name is removed: if it is the last of a file the kernel
        holds, a descriptor of the file for the inode table (see ``inodes``)."""
        if self.inodes.find(ino) is None:
            return None
        if not stat.S_ISDIR(st.st_mode) and self._link_count(entry, st) > 1:
            return None
        return Held(entry.top.layer.open(entry.top.path, os.O_PATH), entry.top.layer.writable)

    def _relink(self, ino: int, old: tuple[int, str], new: tuple[int, str]) -> None:
        node = self.inodes.find(ino)
        if node is not None:
            self.inodes.unlink(node, *old)
            self.inodes.link(node, *new)

    async def _copied_up(self, node: Node, with_data: bool = True) -> Entry:
        """``node``'s entry, copied into the writable branch first if needed
        (the caller holds the change lock)."""
        entry = self._entry(node)
        if not entry.in_upper:
            entry = await self._writer.copy_up(entry, with_data)
            self._moved_up(node, entry)
        return entry

    def _dirs_copied(self, numbers: list[int]) -> None:
        """Directories got a copy in the writable branch: entries cached
        below them may lead elsewhere now, and the kernel's attributes of
        them are stale (a merged directory's link count is 1).  Attributes
        are invalidated at once, on the loop: that waits for nothing the
        loop must answer (pages would)."""
        self.inodes.new_epoch()
        for ino in numbers:
            with contextlib.suppress(OSError):  # not known to the kernel
                pyfuse3.invalidate_inode(ino, attr_only=True)

    def _flush_names(self, node: Node) -> None:
        """A copy-up is the daemon's doing: so is making the names it made
        durable, when the file's data is flushed."""
        if node.names_unflushed and self._nameless(node) is None:
            self._writer.flush_names(self._entry(node))
            node.names_unflushed = False

    def _copied_by_flatten(self, ino: int, entry: Entry) -> None:
        """After flatten copied ``entry`` up: open files follow it."""
        if (node := self.inodes.find(ino)) is not None:
            self._moved_up(node, entry)

    def _moved_up(self, node: Node, entry: Entry) -> None:
        """After a copy-up: cache the new entry; open files follow it."""
        self.inodes.cache_entry(node, entry)
        node.names_unflushed = True
        self._open_files.moved_up(node, entry)

    async def _change_xattr(self, inode: int, name: bytes, change) -> None:
        if is_private_xattr(os.fsdecode(name)):
            raise FUSEError(errno.EPERM)
        change(await self._target(self.inodes[inode]))

    async def _target(self, node: Node, with_data: bool = True) -> Target:
        """What a change to ``node``'s attributes acts on: its entry, copied
        up first; or, for an open file with no name left, a descriptor."""
        self._writer  # noqa: B018 - EROFS on a read-only union
        if self._nameless(node) is None:
            return Target(await self._copied_up(node, with_data), quota=self._quota)
        if node.fds:
            return Target(None, self._open_files.unnamed(node), self._quota)
        if not node.removed.writable:  # a removed directory, still open
            copy = Held(private_copy(node.removed.fd, self._writer.upper), True)
            os.close(node.removed.fd)
            node.removed = copy
        return Target(None, node.removed.fd, self._quota)

    def _nameless(self, node: Node) -> int | None:
        """For a file with no name left (open, then unlinked; a removed
        directory still open or someone's cwd): a descriptor to read it by."""
        if node.links or node.ino == ROOT_INODE:
            return None
        if node.fds:
            return self._open_files.descriptor(node)
        return node.removed.fd if node.removed is not None else None

    def _remember(self, parent_inode: int, name: str, entry: Entry,
                  st: os.stat_result) -> EntryAttributes:
        attrs = self._attributes_from(st, self.numbers.of(entry, st), entry)
        node = self.inodes.remember(attrs.st_ino, parent_inode, name)
        self.inodes.cache_entry(node, entry)
        self._told(node, entry, st)
        return attrs

    def _remember_new(self, parent_inode: int, name: str, entry: Entry) -> EntryAttributes:
        return self._remember(parent_inode, name, entry, entry.top.layer.lstat(entry.top.path))

    def _attributes(self, node: Node) -> EntryAttributes:
        if (fd := self._nameless(node)) is not None:
            # Removed, but still open or someone's cwd: as it is, with no names.
            attrs = self._attributes_from(os.fstat(fd), node.ino, None)
            if node.removed is not None:
                attrs.st_nlink = 0
            return attrs
        entry = self._entry(node)
        st = entry.top.layer.lstat(entry.top.path)
        if not entry.top.layer.writable:
            check_identity(node.told, st)
        self._told(node, entry, st)
        return self._attributes_from(st, node.ino, entry)

    @staticmethod
    def _told(node: Node, entry: Entry, st: os.stat_result) -> None:
        """Keep what the kernel is told of a lower file (``udba.py``)."""
        node.told = None if entry.top.layer.writable else seen(st)

    def _attributes_from(self, st: os.stat_result, ino: int,
                         entry: Entry | None) -> EntryAttributes:
        attrs = EntryAttributes()
        for field in _STAT_FIELDS:
            setattr(attrs, field, getattr(st, field))
        attrs.st_uid = self._owners.uids.shown(st.st_uid)
        attrs.st_gid = self._owners.gids.shown(st.st_gid)
        attrs.st_ino = ino
        attrs.entry_timeout = attrs.attr_timeout = self._udba.timeout(
            None if entry is None else split(entry.path)[0])
        if entry is not None:
            attrs.st_nlink = self._link_count(entry, st)
        return attrs

    def _link_count(self, entry: Entry, st: os.stat_result) -> int:
        if entry.merged and stat.S_ISDIR(st.st_mode):
            return 1  # as overlayfs: a merged directory's count is unknown
        if entry.marks.nlink is not None:
            return read_marks(entry.top).nlink or st.st_nlink  # kept by the index
        return st.st_nlink

    def _owner_of_new(self, ctx) -> tuple[int, int]:
        """The owner a new entry is stored with: its maker's (``owners.py``)."""
        return self._owners.uids.stored(ctx.uid), self._owners.gids.stored(ctx.gid)

    def _negative_entry(self) -> EntryAttributes:
        """A 'no such name' answer the kernel may cache (``udba.py``)."""
        attrs = EntryAttributes()
        attrs.st_ino = 0
        attrs.entry_timeout = self._udba.negative_timeout()
        return attrs
