"""A crash at any system call of any change leaves the union old or new.

The stack is built in-process, without FUSE, as ``fs.UnionOperations`` and
``daemon.serve`` build it (``Layer``, ``Upper.prepare()``, ``InodeNumbers``,
``Index``, ``Tree``, ``Changes``, ``PartialFiles``).  ``os`` is replaced in
every unionfs module that touches the disk by a copy whose mutating calls
are counted (``Syscalls``), as ``test_partial.py`` does for one partial
file; so are the ctypes calls (``layer.renameat2``,
``partial._punch_hole``).  For each scenario (a setup, then one change):

* a crash-free run gives the call count ``N``, the call log, and the new
  view (after a restart);
* for every ``k`` in ``0..N-1`` a fresh writable branch gets the setup, the
  change is run with call ``k`` (0-based) raising :class:`Crash` (and every
  call after it: a killed daemon makes no more calls, not even cleanups),
  its descriptors are closed, and a fresh stack over the same branches (a
  restarted daemon: ``Upper.prepare`` cleans the work directory) shows the
  union view.

Three checks per scenario, one test each (they share one run):

``test_crash_leaves_old_or_new``
    the view after the crash and restart is the old view or the new one
    (at ``k == 0`` the old one).
``test_redo_after_crash_reaches_new``
    when the view is not the new one, doing the change again on the
    restarted stack (which may find part of it done) succeeds and gives
    the new view.
``test_no_leftovers_after_crash``
    once the view is the new one (by the crash, or by the redo), the
    writable branch holds no ``.wh.X`` beside an ``X`` it would matter
    for (a merging directory), the work directory
    is empty, every chunk map belongs to a partial file and every partial
    file has its map, every index entry is reached by a union name, and each
    non-directory's union link count equals the number of its names.

The union view (``union_view``) is what a client of the mount could see:
for every name (walked through ``Tree``) its type, mode, owner, union link
count of non-directories (the marks' ``nlink`` for indexed files, as
``fs._attributes_from``; a directory's count is left out: a merged one says
1, as in overlayfs, so a parent's copy-up alone changes it),
data (read through the top location, or ``PartialFile.read`` for a partial
copy), symlink target, device number, xattrs, the mtime of non-directories
when it is one the test set (otherwise just "recent": a crash-free run and
a crashed one happen at different times), and ``st_ino`` as
``InodeNumbers.of`` gives it, labelled by the lower file it comes from or by
the first union name that has it (upper-only inode numbers differ from run
to run).  Directory times are left out.

Finally, ``test_fsync_after_copy_up_makes_the_name_durable``: see there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import random
import shutil
import stat
import types
from pathlib import Path
from typing import Awaitable, Callable

import pytest
import trio

from unionfs import changes as changes_module
from unionfs import chunkmap as chunkmap_module
from unionfs import copyup as copyup_module
from unionfs import durable as durable_module
from unionfs import fs as fs_module
from unionfs import handles as handles_module
from unionfs import index as index_module
from unionfs import layer as layer_module
from unionfs import partial as partial_module
from unionfs import upper as upper_module
from unionfs.branches import Branch, Mode
from unionfs.changes import RENAME_EXCHANGE
from unionfs.fs import UnionOperations
from unionfs.index import INDEX_DIR
from unionfs.inodes import ROOT_INODE
from unionfs.layer import Layer, split
from unionfs.tree import read_marks
from unionfs.upper import Upper
from unionfs.whiteout import META_DIR, OPAQUE, PREFIX, XATTR, Marks, is_private_xattr

PATCHED_MODULES = (changes_module, upper_module, copyup_module, index_module, chunkmap_module,
                   partial_module, layer_module, fs_module, handles_module, durable_module)
BASE_NS = 1_600_000_000 * 10**9  # every lower entry's times
SET_NS = 1_500_000_000 * 10**9  # what the utime scenarios set
RECENT_NS = 1_650_000_000 * 10**9  # times after this are "recent" in a view
KiB = 1 << 10


class Crash(Exception):
    """The daemon was killed here."""


# -- counting the calls that change the disk ---------------------------------------

_WRITE_FLAGS = os.O_CREAT | os.O_WRONLY | os.O_RDWR | os.O_TRUNC
_MUTATING = ("mkdir", "mknod", "mkfifo", "symlink", "link", "rename", "replace", "unlink",
             "remove", "rmdir", "setxattr", "removexattr", "chown", "lchown", "fchown",
             "chmod", "lchmod", "fchmod", "utime", "truncate", "ftruncate", "pwrite", "write",
             "writev", "pwritev", "fsync", "fdatasync", "copy_file_range", "sendfile",
             "posix_fallocate", "dup2")
_FD_FIRST = {"fsync", "fdatasync", "ftruncate", "pwrite", "write", "writev", "pwritev",
             "fchown", "fchmod", "posix_fallocate", "copy_file_range", "sendfile",
             "_punch_hole"}
_ADDS_NAME = {"mkdir", "mknod", "mkfifo", "symlink", "link", "rename", "replace", "_renameat2"}


@dataclasses.dataclass
class Call:
    n: int
    name: str
    text: str
    #: (st_dev, st_ino) of the directory that got a new name, when traced
    adds_to: tuple | None = None
    #: (st_dev, st_ino, is_dir) of what an fsync flushed, when traced
    syncs: tuple | None = None
    #: (st_dev, st_ino) of a file opened with O_CREAT, when traced
    created: tuple | None = None


class Syscalls:
    """Counts (and logs) the mutating calls; with ``limit``, the call after
    the first ``limit`` raises :class:`Crash`, and so does every later one."""

    def __init__(self, limit: int | None = None, root: str = "", trace: bool = False):
        self.limit = limit
        self.log: list[Call] = []
        self.crashed = False
        self._root = root
        self._trace = trace

    @property
    def done(self) -> int:
        return len(self.log)

    # -- describing calls --------------------------------------------------

    def _fd_path(self, fd) -> str:
        if not isinstance(fd, int) or fd < 0:
            return repr(fd)
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return f"fd{fd}"
        return path.replace(self._root, "") or "/"

    def _arg(self, value) -> str:
        if isinstance(value, (bytes, bytearray)):
            return f"<{len(value)} bytes>"
        if isinstance(value, str) and value.startswith("/proc/self/fd/"):
            fd, _, rest = value[len("/proc/self/fd/"):].partition("/")
            return repr(f"{self._fd_path(int(fd))}/{rest}")
        return repr(value)

    def describe(self, name: str, args, kwargs) -> str:
        shown = []
        for i, value in enumerate(args):
            if (i == 0 and name in _FD_FIRST) or (i == 1 and name in ("copy_file_range",
                                                                       "sendfile")):
                shown.append(f"<{self._fd_path(value)}>")
            elif name == "_renameat2" and i in (0, 2):
                shown.append(f"<{self._fd_path(value)}>")
            elif name == "open" and i == 1:
                shown.append(_open_flags(value))
            else:
                shown.append(self._arg(value))
        for key, value in kwargs.items():
            if key.endswith("dir_fd"):
                shown.append(f"{key}=<{self._fd_path(value)}>")
            elif key != "follow_symlinks":
                shown.append(f"{key}={self._arg(value)}")
        return f"{name}({', '.join(shown)})"

    # -- tracing (for the fsync test) --------------------------------------

    def _dir_of(self, path, dir_fd) -> tuple:
        parent = os.path.dirname(path) or "."
        st = os.stat(parent, dir_fd=dir_fd if isinstance(dir_fd, int) else None)
        return st.st_dev, st.st_ino

    def _effects(self, call: Call, name: str, args, kwargs, result) -> None:
        if name in ("rename", "replace", "link"):
            call.adds_to = self._dir_of(args[1], kwargs.get("dst_dir_fd"))
        elif name == "_renameat2":
            call.adds_to = self._dir_of(args[3], args[2])
        elif name in _ADDS_NAME:
            path = args[1] if name == "symlink" else args[0]
            call.adds_to = self._dir_of(path, kwargs.get("dir_fd"))
        elif name == "open" and args[1] & os.O_CREAT:
            call.adds_to = self._dir_of(args[0], kwargs.get("dir_fd"))
            st = os.fstat(result)
            call.created = (st.st_dev, st.st_ino)
        elif name in ("fsync", "fdatasync"):
            st = os.fstat(args[0])
            call.syncs = (st.st_dev, st.st_ino, stat.S_ISDIR(st.st_mode))

    # -- the wrappers --------------------------------------------------------

    def wrap(self, name: str, real, counts=lambda *a, **k: True):
        def call(*args, **kwargs):
            if not counts(*args, **kwargs):
                return real(*args, **kwargs)
            text = self.describe(name, args, kwargs)
            if self.crashed or (self.limit is not None and self.done >= self.limit):
                if not self.crashed:
                    self.crashed = True
                    self.crashed_at = text
                raise Crash(text)
            result = real(*args, **kwargs)
            record = Call(self.done, name, text)
            if self._trace:
                self._effects(record, name, args, kwargs, result)
            self.log.append(record)
            return result
        return call

    @contextlib.contextmanager
    def installed(self):
        fake = types.SimpleNamespace(**vars(os))
        for name in _MUTATING:
            if hasattr(os, name):
                setattr(fake, name, self.wrap(name, getattr(os, name)))
        fake.open = self.wrap("open", os.open,
                              lambda path, flags, *a, **k: bool(flags & _WRITE_FLAGS))
        saved = [(m, "os", m.os) for m in PATCHED_MODULES]
        saved += [(layer_module, "renameat2", layer_module.renameat2),
                  (partial_module, "_punch_hole", partial_module._punch_hole)]
        try:
            for module in PATCHED_MODULES:
                module.os = fake
            layer_module.renameat2 = self.wrap("_renameat2", layer_module.renameat2)
            partial_module._punch_hole = self.wrap("_punch_hole", partial_module._punch_hole)
            yield self
        finally:
            for module, attr, value in saved:
                setattr(module, attr, value)


def _open_flags(flags: int) -> str:
    names = [n for n in ("O_WRONLY", "O_RDWR", "O_CREAT", "O_EXCL", "O_TRUNC", "O_DIRECTORY")
             if flags & getattr(os, n)]
    return "|".join(names) or "O_RDONLY"


# -- the stack, in-process ------------------------------------------------------------


class Stack:
    """What a (re)started daemon holds: built as ``daemon.serve`` and
    ``UnionOperations.__init__`` build it, without the FUSE mount."""

    def __init__(self, up: Path, low: Path, partial_copies: bool):
        self.low = low
        self.layers = [Layer(Branch(str(up), Mode.RW), 0), Layer(Branch(str(low), Mode.RO), 1)]
        self.upper = Upper(self.layers[0], None)
        self.ops = UnionOperations(self.layers, self.upper, partial_copies=partial_copies)
        self.upper.prepare()
        self.ops.recover()  # as the daemon does before serving
        self.tree = self.ops.tree
        self.changes = self.ops._changes
        self.numbers = self.ops.numbers
        self.partials = self.ops._partials

    def close(self) -> None:
        self.upper.close()
        for layer in self.layers:
            layer.close()

    def find(self, path: str):
        """(parent entry, name, entry or None) of a union path."""
        parent_path, name = split(path)
        parent = self.tree.resolve(parent_path)
        found = self.tree.lookup(parent, name)
        return parent, name, found[0] if found else None

    def entry(self, path: str):
        entry = self.find(path)[2]
        assert entry is not None, path
        return entry

    async def inode(self, path: str) -> int:
        """The FUSE inode of ``path``, looked up as the kernel would."""
        ino = ROOT_INODE
        for name in path.split("/"):
            attrs = await self.ops.lookup(ino, os.fsencode(name), None)
            assert attrs.st_ino, path
            ino = attrs.st_ino
        return ino


@contextlib.contextmanager
def stack_on(up: Path, low: Path, partial_copies: bool):
    stack = Stack(up, low, partial_copies)
    try:
        yield stack
    finally:
        stack.close()


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def close_fds_since(before: set[int]) -> None:
    """What the kernel does to a killed daemon's descriptors."""
    for fd in open_fds() - before:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the union view ----------------------------------------------------------------------


def _kind(mode: int) -> str:
    return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
            stat.S_IFIFO: "fifo", stat.S_IFCHR: "chardev", stat.S_IFBLK: "blockdev",
            stat.S_IFSOCK: "socket"}.get(stat.S_IFMT(mode), oct(mode))


def _data(stack: Stack, entry, st) -> str:
    top = entry.top
    if entry.marks.partial is not None:
        partial = stack.partials.acquire(top, entry.marks)
        try:
            data = partial.read(0, st.st_size + 1)
        finally:
            stack.partials.release(partial)
    else:
        fd = top.layer.open(top.path, os.O_RDONLY)
        try:
            data = b"".join(iter(functools.partial(os.read, fd, 1 << 20), b""))
        finally:
            os.close(fd)
    shown = data if len(data) <= 32 else hashlib.sha256(data).hexdigest()[:16]
    return f"{len(data)}:{shown!r}"


def _describe(stack: Stack, entry, st) -> dict:
    top = entry.top
    kind = _kind(st.st_mode)
    if kind == "dir":
        # A merged directory says 1 (as overlayfs), so copying a parent up
        # changes it; what a directory's count says is advisory anyway.
        nlink = None
    elif entry.marks.nlink is not None:
        nlink = read_marks(top).nlink or st.st_nlink
    else:
        nlink = st.st_nlink
    seen = {"type": kind, "mode": oct(stat.S_IMODE(st.st_mode)),
            "owner": (st.st_uid, st.st_gid), "nlink": nlink,
            "ino": stack.numbers.of(entry, st)}
    try:
        if kind == "file":
            seen["data"] = _data(stack, entry, st)
        elif kind == "symlink":
            seen["target"] = top.layer.readlink(top.path)
        elif kind in ("chardev", "blockdev"):
            seen["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        seen["xattrs"] = tuple(sorted(
            (n, top.layer.getxattr(top.path, n)) for n in top.layer.listxattr(top.path)
            if not is_private_xattr(n)))
    except OSError as exc:
        seen["error"] = f"{type(exc).__name__}: {exc}"
    if kind != "dir":
        seen["mtime"] = st.st_mtime_ns if st.st_mtime_ns < RECENT_NS else "recent"
    return seen


def union_view(stack: Stack) -> dict[str, dict]:
    """Every name of the union with what a client sees of it."""
    view: dict[str, dict] = {}
    root = stack.tree.root()
    view["."] = _describe(stack, root, root.top.layer.lstat(root.top.path))

    def walk(directory, path: str, depth: int) -> None:
        if depth > 16:
            view[path]["error"] = "too deep (a directory inside itself?)"
            return
        for name in sorted(stack.tree.listdir(directory)):
            here = name if path == "." else f"{path}/{name}"
            found = stack.tree.lookup(directory, name)
            if found is None:
                view[here] = {"error": "listed but not found"}
                continue
            entry, st = found
            view[here] = _describe(stack, entry, st)
            if stat.S_ISDIR(st.st_mode):
                walk(entry, here, depth + 1)

    walk(root, ".", 0)
    # Inode numbers: by the lower file they come from (stable), or by the
    # first union name that has them (upper-only ones differ run to run).
    lower = _lower_numbers(stack)
    first: dict[int, str] = {}
    for path, seen in view.items():
        if "ino" in seen:
            ino = seen["ino"]
            if ino in lower:
                seen["ino"] = f"lower:{lower[ino]}"
            else:
                seen["ino"] = f"as:{first.setdefault(ino, path)}"
    return view


def _lower_numbers(stack: Stack) -> dict[int, str]:
    numbers = {}
    for dirpath, dirnames, filenames in os.walk(stack.low):
        for name in [".", *dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            number = stack.numbers(os.lstat(path))
            rel = os.path.relpath(path, stack.low)
            numbers[number] = min(numbers.get(number, rel), rel)
    return numbers


def hides_nothing(entry: Path) -> bool:
    """A whiteout beside ``entry`` in its own branch changes nothing when
    ``entry`` hides all below it anyway: a non-directory, or an opaque
    directory.  (A change killed at its last step, the whiteout's removal,
    leaves one; see whiteout.py.)"""
    return not entry.is_dir() or entry.is_symlink() or (entry / OPAQUE).exists()


def leftovers(up: Path, stack: Stack, view: dict[str, dict]) -> list[str]:
    """What the writable branch should not hold in a settled state."""
    found = []
    partial_marks = set()
    for dirpath, dirnames, filenames in os.walk(up):
        rel = os.path.relpath(dirpath, up)
        names = set(dirnames) | set(filenames)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d != META_DIR]
        if not rel.startswith(META_DIR):
            for name in names:
                if name.startswith(PREFIX) and name != OPAQUE and name != META_DIR:
                    hidden = name[len(PREFIX):]
                    if hidden in names and not hides_nothing(Path(dirpath, hidden)):
                        found.append(f"{rel}/{name} beside {rel}/{hidden}")
        for name in filenames:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                with contextlib.suppress(OSError):
                    marks = Marks.decode(os.getxattr(path, XATTR))
                    if marks.partial:
                        partial_marks.add(marks.partial)
    index_dir = up / INDEX_DIR
    if index_dir.is_dir():
        for name in os.listdir(index_dir):
            path = index_dir / name
            with contextlib.suppress(OSError):
                marks = Marks.decode(os.getxattr(path, XATTR))
                if marks.partial:
                    partial_marks.add(marks.partial)
    work = up / META_DIR / "work"
    if work.is_dir() and os.listdir(work):
        found.append(f"work directory holds {sorted(os.listdir(work))}")
    chunks = up / META_DIR / "chunks"
    maps = set(os.listdir(chunks)) if chunks.is_dir() else set()
    if maps - partial_marks:
        found.append(f"chunk maps of no partial file: {sorted(maps - partial_marks)}")
    if partial_marks - maps:
        found.append(f"partial files without their chunk map: {sorted(partial_marks - maps)}")
    # Link counts: each non-directory's union count is its number of names.
    names_of: dict[str, list[str]] = {}
    for path, seen in view.items():
        if seen.get("type") not in (None, "dir"):
            names_of.setdefault(seen["ino"], []).append(path)
    for path, seen in view.items():
        if seen.get("type") not in (None, "dir"):
            count = len(names_of[seen["ino"]])
            if seen["nlink"] != count:
                found.append(f"{path}: union nlink {seen['nlink']} but {count} name(s) "
                             f"{names_of[seen['ino']]}")
    # Index entries: each is reached by a union name.
    if index_dir.is_dir():
        reached = {seen["ino"] for seen in view.values() if "ino" in seen}
        for name in os.listdir(index_dir):
            number = int(name)
            label = f"lower:{_lower_numbers(stack).get(number, '?')}"
            if label not in reached:
                found.append(f"index entry {name} ({label}) is reached by no union name")
    return found


# -- operations --------------------------------------------------------------------------

Op = Callable[[Stack], Awaitable[None]]


async def create(s: Stack, path: str) -> None:
    parent, name, _ = s.find(path)
    fd, _ = s.changes.create(parent, name, 0o640, os.O_WRONLY, 1000, 1000)
    os.close(fd)


async def mkdir(s: Stack, path: str) -> None:
    parent, name, _ = s.find(path)
    s.changes.mkdir(parent, name, 0o750, 1000, 1000)


async def mknod(s: Stack, path: str, mode: int, rdev: int = 0) -> None:
    parent, name, _ = s.find(path)
    s.changes.mknod(parent, name, mode, rdev, 1000, 1000)


async def symlink(s: Stack, path: str, target: str) -> None:
    parent, name, _ = s.find(path)
    s.changes.symlink(parent, name, target, 1000, 1000)


async def link(s: Stack, src: str, dst: str) -> None:
    parent, name, _ = s.find(dst)
    await s.changes.link(s.entry(src), parent, name)


async def remove(s: Stack, path: str) -> None:
    parent, name, entry = s.find(path)
    assert entry is not None, path
    await s.changes.remove(parent, name, entry)


async def rename(s: Stack, src: str, dst: str, flags: int = 0) -> None:
    old_parent, old_name, src_entry = s.find(src)
    new_parent, new_name, dst_entry = s.find(dst)
    await s.changes.rename(old_parent, old_name, src_entry, new_parent, new_name, dst_entry,
                           flags)


async def copy_up(s: Stack, path: str) -> None:
    await s.changes.copy_up(s.entry(path))


async def setattr_(s: Stack, path: str, **values) -> None:
    """``fs.setattr`` (copy-up, then the change), as the kernel calls it."""
    fields = types.SimpleNamespace(update_size=False, update_uid=False, update_gid=False,
                                   update_mode=False, update_atime=False, update_mtime=False,
                                   update_ctime=False)
    attr = types.SimpleNamespace(st_size=0, st_uid=0, st_gid=0, st_mode=0, st_atime_ns=0,
                                 st_mtime_ns=0)
    for key, value in values.items():
        setattr(attr, key, value)
        field = {"st_size": "update_size", "st_uid": "update_uid", "st_gid": "update_gid",
                 "st_mode": "update_mode", "st_atime_ns": "update_atime",
                 "st_mtime_ns": "update_mtime"}[key]
        setattr(fields, field, True)
    await s.ops.setattr(await s.inode(path), attr, fields, None, None)


async def write_at(s: Stack, path: str, offset: int, data: bytes) -> None:
    """open(O_WRONLY), pwrite, close through ``fs``: a first write copies up."""
    info = await s.ops.open(await s.inode(path), os.O_WRONLY, None)
    try:
        await s.ops.write(info.fh, offset, data)
    finally:
        await s.ops.release(info.fh)


async def setxattr(s: Stack, path: str, name: str, value: bytes) -> None:
    await s.ops.setxattr(await s.inode(path), name.encode(), value, None)


async def removexattr(s: Stack, path: str, name: str) -> None:
    await s.ops.removexattr(await s.inode(path), name.encode(), None)


class op:
    """One change, bound to its arguments; called with the stack."""

    def __init__(self, function, *args, **kwargs):
        self.function, self.args, self.kwargs = function, args, kwargs
        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        self.text = f"{function.__name__.rstrip('_')}({', '.join(shown)})"

    def __repr__(self) -> str:
        return self.text

    async def __call__(self, stack: Stack) -> None:
        await self.function(stack, *self.args, **self.kwargs)


@dataclasses.dataclass(frozen=True)
class Scenario:
    id: str
    change: Op
    setup: tuple[Op, ...] = ()
    partial: bool = True  # copyup=partial (the default) or full
    #: flushes skipped, as on a ``volatile`` mount (small files are copied whole)
    volatile: bool = False
    #: False for a copy-up alone, which the union does not show
    visible: bool = True


FIFO, CHR = stat.S_IFIFO | 0o644, stat.S_IFCHR | 0o666

SCENARIOS = [
    # new names
    Scenario("create", op(create, "new")),
    Scenario("create-in-lower-dir", op(create, "dir/sub/new")),
    Scenario("create-over-whiteout", op(create, "file"), (op(remove, "file"),)),
    Scenario("mkdir-in-lower-dir", op(mkdir, "dir/sub/newdir")),
    Scenario("mkdir-over-whiteout", op(mkdir, "other"),
             (op(remove, "other/o"), op(remove, "other"))),
    Scenario("mknod-fifo", op(mknod, "dir/fifo2", FIFO)),
    Scenario("mknod-chardev", op(mknod, "dir/null", CHR, os.makedev(1, 3))),
    Scenario("symlink", op(symlink, "dir/sl", "../file")),
    # hard links
    Scenario("link-lower-file-partial", op(link, "file", "dir/file2")),
    Scenario("link-lower-file-full", op(link, "file", "dir/file2"), partial=False),
    Scenario("link-hardlinked-lower", op(link, "hl1", "dir/hl3")),
    Scenario("link-hardlinked-lower-full", op(link, "hl1", "dir/hl3"), partial=False),
    Scenario("link-other-name-of-indexed", op(link, "hl2", "hl3"), (op(copy_up, "hl1"),)),
    Scenario("link-upper-file", op(link, "u", "u2"), (op(create, "u"),)),
    # removing names
    Scenario("unlink-lower", op(remove, "file")),
    Scenario("unlink-upper-only", op(remove, "u"), (op(create, "u"),)),
    Scenario("unlink-copied-up-partial", op(remove, "file"), (op(copy_up, "file"),)),
    Scenario("unlink-copied-up-full", op(remove, "file"), (op(copy_up, "file"),),
             partial=False),
    Scenario("unlink-hardlinked-lower", op(remove, "hl1")),
    Scenario("unlink-hardlinked-copied-up", op(remove, "hl1"), (op(copy_up, "hl1"),)),
    Scenario("unlink-other-name-of-indexed", op(remove, "hl2"), (op(copy_up, "hl1"),)),
    Scenario("unlink-lower-symlink", op(remove, "sym")),
    Scenario("rmdir-lower", op(remove, "empty")),
    Scenario("rmdir-upper-with-whiteouts", op(remove, "dir/sub"),
             (op(remove, "dir/sub/deep"),)),
    # rename
    Scenario("rename-lower-file-partial", op(rename, "file", "renamed")),
    Scenario("rename-lower-file-full", op(rename, "file", "renamed"), partial=False),
    Scenario("rename-file-over-lower-file", op(rename, "file", "dir/inner")),
    Scenario("rename-upper-over-upper", op(rename, "u", "v"), (op(create, "u"),
                                                               op(create, "v"))),
    Scenario("rename-over-partial-copy", op(rename, "file", "big"), (op(copy_up, "big"),)),
    Scenario("rename-hardlinked-lower", op(rename, "hl1", "dir/hlx")),
    Scenario("rename-file-over-hardlinked-lower", op(rename, "file", "hl1")),
    Scenario("rename-lower-dir", op(rename, "dir", "dir2")),
    Scenario("rename-nested-lower-dir", op(rename, "dir/sub", "sub2")),
    Scenario("rename-dir-over-lower-dir", op(rename, "dir", "empty")),
    Scenario("rename-dir-over-upper-dir", op(rename, "dir", "empty"), (op(copy_up, "empty"),)),
    Scenario("rename-upper-dir-over-upper-dir", op(rename, "a", "b"),
             (op(mkdir, "a"), op(create, "a/f"), op(mkdir, "b"))),
    Scenario("rename-new-dir-over-whited-out-name", op(rename, "a", "other"),
             (op(mkdir, "a"), op(remove, "other/o"), op(remove, "other"))),
    Scenario("exchange-files", op(rename, "file", "other/o", RENAME_EXCHANGE)),
    Scenario("exchange-file-and-dir", op(rename, "file", "dir", RENAME_EXCHANGE)),
    Scenario("exchange-dirs", op(rename, "dir", "other", RENAME_EXCHANGE)),
    # copy-up alone (no change the union shows)
    Scenario("copy-up-file-partial", op(copy_up, "big"), visible=False),
    Scenario("copy-up-file-full", op(copy_up, "big"), partial=False, visible=False),
    Scenario("copy-up-dir", op(copy_up, "dir/sub"), visible=False),
    Scenario("copy-up-symlink", op(copy_up, "sym"), visible=False),
    Scenario("copy-up-fifo", op(copy_up, "fifo"), visible=False),
    Scenario("copy-up-hardlinked", op(copy_up, "hl1"), visible=False),
    # what the FUSE layer does after a copy-up
    Scenario("chmod-partial", op(setattr_, "file", st_mode=0o600)),
    Scenario("chmod-full", op(setattr_, "file", st_mode=0o600), partial=False),
    Scenario("chmod-dir", op(setattr_, "dir/sub", st_mode=0o700)),
    Scenario("chmod-hardlinked", op(setattr_, "hl2", st_mode=0o600)),
    Scenario("chown-partial", op(setattr_, "big", st_uid=1000, st_gid=1000)),
    Scenario("chown-full", op(setattr_, "big", st_uid=1000, st_gid=1000), partial=False),
    Scenario("utime-partial", op(setattr_, "file", st_atime_ns=SET_NS, st_mtime_ns=SET_NS)),
    Scenario("utime-full", op(setattr_, "file", st_atime_ns=SET_NS, st_mtime_ns=SET_NS),
             partial=False),
    Scenario("truncate-partial", op(setattr_, "big", st_size=100 * KiB)),
    Scenario("truncate-full", op(setattr_, "big", st_size=100 * KiB), partial=False),
    Scenario("setxattr-partial", op(setxattr, "file", "user.new", b"v")),
    Scenario("setxattr-full", op(setxattr, "file", "user.new", b"v"), partial=False),
    Scenario("setxattr-dir", op(setxattr, "dir/sub", "user.new", b"v")),
    Scenario("setxattr-empty-lower-dir", op(setxattr, "empty", "user.new", b"v")),
    Scenario("removexattr-partial", op(removexattr, "file", "user.color")),
    # on a volatile mount a small file is copied whole (changes.SMALL_FILE)
    Scenario("first-write-small-volatile", op(write_at, "file", 3, b"L"), volatile=True),
    Scenario("chmod-small-volatile", op(setattr_, "file", st_mode=0o600), volatile=True),
]


# -- the lower branch ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def lower(tmp_path_factory) -> Path:
    """One read-only branch for every scenario (it is never written)."""
    low = tmp_path_factory.mktemp("crashes") / "low"
    low.mkdir()
    (low / "file").write_bytes(b"lower file\n")
    os.setxattr(low / "file", "user.color", b"blue")
    (low / "big").write_bytes(random.Random(3).randbytes(200 * KiB + 123))
    os.chmod(low / "big", 0o600)
    os.chown(low / "big", 123, 456)
    (low / "hl1").write_bytes(b"two names\n")
    os.link(low / "hl1", low / "hl2")
    os.symlink("file", low / "sym")
    os.mkfifo(low / "fifo", 0o640)
    (low / "dir/sub").mkdir(parents=True)
    os.chown(low / "dir", 123, 456)
    os.setxattr(low / "dir", "user.tag", b"d")
    (low / "dir/inner").write_bytes(b"inner\n")
    (low / "dir/sub/deep").write_bytes(b"deep\n")
    (low / "empty").mkdir()
    (low / "other").mkdir()
    (low / "other/o").write_bytes(b"other\n")
    for dirpath, dirnames, filenames in os.walk(low, topdown=False):
        for name in [*dirnames, *filenames]:
            os.utime(os.path.join(dirpath, name), ns=(BASE_NS, BASE_NS), follow_symlinks=False)
    os.utime(low, ns=(BASE_NS, BASE_NS))
    return low


# -- running a scenario at every crash point -----------------------------------------------


@dataclasses.dataclass
class Outcome:
    calls: list[Call]
    old: dict
    new: dict
    torn: list[str] = dataclasses.field(default_factory=list)
    redo: list[str] = dataclasses.field(default_factory=list)
    left: list[str] = dataclasses.field(default_factory=list)


_outcomes: dict[str, Outcome] = {}


def _run(stack: Stack, change: Op) -> None:
    trio.run(change, stack)


def _prepare(up: Path, low: Path, scenario: Scenario) -> None:
    up.mkdir(parents=True)
    with stack_on(up, low, scenario.partial) as stack:
        for step in scenario.setup:
            _run(stack, step)


def _view_after_restart(up: Path, low: Path, scenario: Scenario) -> dict:
    with stack_on(up, low, scenario.partial) as stack:
        return union_view(stack)


def _crashed_run(up: Path, low: Path, scenario: Scenario, limit: int | None) -> Syscalls:
    before = open_fds()
    stack = Stack(up, low, scenario.partial)
    calls = Syscalls(limit, root=str(up.parent))
    quiet = logging.getLogger("unionfs.fs")
    quiet.disabled = True
    try:
        with calls.installed():
            try:
                _run(stack, scenario.change)
            except Exception as exc:  # noqa: BLE001 - a crash, or a failure to report
                if not calls.crashed:
                    raise
                del exc
    finally:
        quiet.disabled = False
        close_fds_since(before)  # every descriptor of the killed daemon, the stack's too
    return calls


def _diff(old: dict, seen: dict, new: dict) -> str:
    lines = []
    for path in sorted(set(old) | set(seen) | set(new)):
        a, b, c = old.get(path), seen.get(path), new.get(path)
        if b != a or b != c:
            if b == a:
                lines.append(f"    {path}: as old {b}  (new: {c})")
            elif b == c:
                lines.append(f"    {path}: as new {b}  (old: {a})")
            else:
                lines.append(f"    {path}: SEEN {b}\n      old: {a}\n      new: {c}")
    return "\n".join(lines)


def _around(calls: list[Call], k: int) -> str:
    shown = []
    for call in calls[max(0, k - 3):k + 2]:
        mark = "  X " if call.n == k else "    "
        shown.append(f"{mark}#{call.n} {call.text}")
    if k >= len(calls):
        shown.append("  X (after the last call)")
    return "\n".join(shown)


def outcome_of(scenario: Scenario, low: Path, base: Path) -> Outcome:
    if scenario.id not in _outcomes:
        was = durable_module._volatile
        durable_module._volatile = scenario.volatile
        try:
            _outcomes[scenario.id] = _outcome(scenario, low, base)
        finally:
            durable_module._volatile = was
    return _outcomes[scenario.id]


def _outcome(scenario: Scenario, low: Path, base: Path) -> Outcome:
    root = base / scenario.id
    # old
    _prepare(root / "old", low, scenario)
    old = _view_after_restart(root / "old", low, scenario)
    # crash-free: the call log and the new view
    _prepare(root / "new", low, scenario)
    dry = _crashed_run(root / "new", low, scenario, None)
    new = _view_after_restart(root / "new", low, scenario)
    outcome = Outcome(dry.log, old, new)
    if scenario.visible:
        assert new != old, f"{scenario.id}: the change shows nothing"
    else:
        assert new == old, f"{scenario.id}: a copy-up changed the view:\n{_diff(old, new, new)}"
    assert dry.log, f"{scenario.id}: no counted call"
    with stack_on(root / "new", low, scenario.partial) as stack:
        if left := leftovers(root / "new", stack, new):
            outcome.left.append(f"crash-free run: {left}")
    shutil.rmtree(root / "old")
    shutil.rmtree(root / "new")
    for k in range(len(dry.log)):
        up = root / f"k{k}"
        _prepare(up, low, scenario)
        calls = _crashed_run(up, low, scenario, k)
        assert calls.crashed, f"{scenario.id}: k={k} ran to the end ({len(calls.log)} calls)"
        redone = False
        with stack_on(up, low, scenario.partial) as stack:
            seen = union_view(stack)
            where = f"k={k}, killed at call #{k}:\n{_around(dry.log, k)}\n"
            if seen != old and (k == 0 or seen != new):
                why = "changed before any call" if k == 0 else "neither old nor new"
                outcome.torn.append(f"{where}  view {why}:\n{_diff(old, seen, new)}")
            if seen != new:
                # restarted: the same change again (it may find part of it
                # done: that is "continuing") reaches the new view
                before = open_fds()
                try:
                    _run(stack, scenario.change)
                    redone = True
                except Exception as exc:  # noqa: BLE001
                    outcome.redo.append(f"{where}  redo failed: {exc!r}")
                finally:
                    close_fds_since(before)
        if redone:
            again = _view_after_restart(up, low, scenario)
            if again != new:
                outcome.redo.append(f"{where}  redo did not give the new view:\n"
                                    f"{_diff(old, again, new)}")
            else:
                with stack_on(up, low, scenario.partial) as stack:
                    if left := leftovers(up, stack, again):
                        outcome.left.append(f"{where}  after the redo: {left}")
        elif seen == new:
            with stack_on(up, low, scenario.partial) as stack:
                if left := leftovers(up, stack, seen):
                    outcome.left.append(f"{where}  {left}")
        shutil.rmtree(up)
    return outcome


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


def _report(scenario: Scenario, outcome: Outcome, found: list[str]) -> str:
    head = (f"{scenario.id}: {scenario.change.text} after {[s.text for s in scenario.setup]}"
            f" ({'partial' if scenario.partial else 'full'} copy-up), {len(outcome.calls)} calls;"
            f" {len(found)} bad crash point(s)\n")
    return head + "\n".join(found[:4]) + ("\n  ..." if len(found) > 4 else "")


IDS = [s.id for s in SCENARIOS]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=IDS)
def test_crash_leaves_old_or_new(scenario, lower, base):
    outcome = outcome_of(scenario, lower, base)
    assert not outcome.torn, _report(scenario, outcome, outcome.torn)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=IDS)
def test_redo_after_crash_reaches_new(scenario, lower, base):
    outcome = outcome_of(scenario, lower, base)
    assert not outcome.redo, _report(scenario, outcome, outcome.redo)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=IDS)
def test_no_leftovers_after_crash(scenario, lower, base):
    outcome = outcome_of(scenario, lower, base)
    assert not outcome.left, _report(scenario, outcome, outcome.left)


# -- a hard link's data after a crash in ln or rm ------------------------------------------


async def write_through(s: Stack, paths: tuple[str, ...], data: bytes) -> None:
    """open(O_WRONLY|O_TRUNC), write, close through ``fs``, by the first of
    ``paths`` that exists."""
    path = next(p for p in paths if s.find(p)[2] is not None)
    info = await s.ops.open(await s.inode(path), os.O_WRONLY | os.O_TRUNC, None)
    try:
        await s.ops.write(info.fh, 0, data)
    finally:
        await s.ops.release(info.fh)


@pytest.mark.parametrize("crashed, then, survivor", [
    (op(remove, "hl1"), [op(write_through, ("hl1", "hl2"), b"new data\n"), op(remove, "hl1")],
     "hl2"),
    (op(link, "hl1", "hl3"), [op(write_through, ("hl1",), b"new data\n"), op(remove, "hl1"),
                              op(remove, "hl3")], "hl2"),
], ids=["rm", "ln"])
def test_a_hard_link_keeps_its_data_after_a_crash(crashed, then, survivor, lower, tmp_path):
    """Killed at any call of ``crashed`` (a change to a file with two lower
    names), restarted; then the file is written through one name, and every
    name but ``survivor`` (still only below, reached through the index)
    goes: the survivor reads what was written.  (With a
    link count one short, the last ``rm`` but one drops the index entry,
    and the survivor falls back to the lower file's old bytes.)"""
    scenario = Scenario("survivor", crashed)
    _prepare(tmp_path / "dry", lower, scenario)
    total = len(_crashed_run(tmp_path / "dry", lower, scenario, None).log)
    wrong = []
    for k in range(total + 1):
        up = tmp_path / f"k{k}"
        _prepare(up, lower, scenario)
        _crashed_run(up, lower, scenario, k if k < total else None)
        with stack_on(up, lower, True) as stack:
            try:
                for step in then:
                    if step.function is remove and stack.find(step.args[0])[2] is None:
                        continue  # that name went with the crashed change
                    _run(stack, step)
            except Exception as exc:  # noqa: BLE001
                wrong.append(f"k={k}: {step.text} failed: {exc!r}")
                continue
        view = _view_after_restart(up, lower, scenario)
        names = sorted(p for p, seen in view.items() if seen.get("ino") == "lower:hl1")
        got = view.get(survivor, {}).get("data")
        if got != "9:b'new data\\n'" or names != [survivor] or view[survivor]["nlink"] != 1:
            wrong.append(f"k={k}: {survivor} shows {got}, nlink {view.get(survivor, {}).get('nlink')}"
                         f", names of the file {names}")
    assert not wrong, "\n".join(wrong)


# -- fsync makes a copied-up file's name durable -----------------------------------------------


@pytest.mark.parametrize("path, partial", [("dir/sub/deep", True), ("dir/sub/deep", False),
                                           ("hl1", False)],
                         ids=["partial-nested", "full-nested", "full-indexed"])
def test_fsync_after_copy_up_makes_the_name_durable(path, partial, lower, tmp_path):
    """A power loss keeps what ``fsync`` acknowledged only if every
    directory entry leading to the file is on disk, not only its data.

    Without a power cut to test with, the check is on the calls the daemon
    makes (traced through the same ``os`` replacement): a file is opened
    for writing through ``fs`` (a copy-up: its parents, its name, for a
    partial copy its chunk map, for a hard-linked file its index entry),
    written and fsynced through ``fs.fsync``.  Every directory outside the
    work directory that got a new name (``mkdir``/``rename``/``link``/
    ``O_CREAT``) in that time must be fsynced after its last new name and
    before ``fsync`` returns; so must the upper file and the chunk map.  A
    ``sync``/``syncfs`` would do too (not counted here: pyunion does not
    call them).  The work directory is left out: nothing stays there.
    """
    up = tmp_path / "up"
    up.mkdir()
    with stack_on(up, lower, partial) as stack:
        calls = Syscalls(None, root=str(tmp_path), trace=True)
        work = os.fstat(stack.upper.work_fd)
        work_id = (work.st_dev, work.st_ino)
        chunks = os.fstat(stack.upper.chunks_fd)
        chunks_id = (chunks.st_dev, chunks.st_ino)

        async def main():
            ino = await stack.inode(path)
            info = await stack.ops.open(ino, os.O_WRONLY, None)
            await stack.ops.write(info.fh, 1, b"!")
            await stack.ops.fsync(info.fh, False)
            await stack.ops.release(info.fh)

        with calls.installed():
            trio.run(main)
        fsync_done = len(calls.log)  # release makes no counted call
    log = calls.log
    upper_file = os.lstat(up / path)
    must_sync = {}
    for call in log:
        if call.adds_to is not None and call.adds_to != work_id:
            must_sync[call.adds_to] = call.n  # the last new name in it
    files = {(upper_file.st_dev, upper_file.st_ino): max(
        (c.n for c in log if c.name in ("pwrite", "write", "ftruncate", "copy_file_range",
                                        "sendfile", "setxattr")), default=0)}
    if partial:
        chunk_map = [c for c in log if c.created and c.adds_to == chunks_id]
        assert chunk_map, "no chunk map was made"
        files[chunk_map[-1].created] = chunk_map[-1].n
    synced = {}
    for call in log[:fsync_done]:
        if call.syncs is not None:
            synced.setdefault(call.syncs[:2], []).append(call.n)

    def name_of(identity):
        for dirpath, dirnames, filenames in os.walk(up):
            for name in [".", *dirnames, *filenames]:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) == identity:
                    return os.path.relpath(os.path.join(dirpath, name), up)
        return str(identity)

    missing = []
    for identity, last in {**must_sync, **files}.items():
        if not any(n > last for n in synced.get(identity, [])):
            missing.append(f"{name_of(identity)} (last change #{last})")
    trace = "\n".join(f"    #{c.n} {c.text}" for c in log)
    assert not missing, (f"fsync of {path} returned, but these were not fsynced after their last "
                         f"change: {missing}\n  calls:\n{trace}")
