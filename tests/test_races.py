"""Two requests on one name, raced deterministically: the first is held in
the middle of its copy-up (its data copy, in a thread, waits for a signal),
the second is sent meanwhile, then the first is let go.

The handlers are called directly, in this process, without the kernel in
between: the kernel's own inode locks keep many of these pairs apart, but
not all (an open for writing holds none while the daemon copies), and the
daemon must be right whatever it is sent.  The outcome must be one of the
two serial orders: the same answers, and the same union on disk.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing
from pyfuse3 import ROOT_INODE, FUSEError

from helpers import DIR, build
from unionfs import changes as changes_module
from unionfs.branches import parse_br, validate
from unionfs.fs import UnionOperations
from unionfs.layer import Layer
from unionfs.tree import Tree, read_marks
from unionfs.upper import Upper
from unionfs.whiteout import PREFIX

CTX = SimpleNamespace(uid=0, gid=0, pid=os.getpid(), umask=0o022)
DATA = bytes(range(256)) * 800  # 200 KiB: copied in a thread
NEW = b"acknowledged " * 1000


class Union:
    """A union's handlers over fresh branches (lower: ``f``, hard links
    ``h1``/``h2``, ``d/x``, empty ``e``)."""

    def __init__(self, root: Path):
        lower = build(root / "lower", {"f": DATA, "h1": DATA, "d/x": DATA, "e": DIR})
        os.link(lower / "h1", lower / "h2")
        self.upper = build(root / "upper", {})
        stack = validate(parse_br(f"{self.upper}=rw:{lower}=ro"))
        self.layers = [Layer(b, i) for i, b in enumerate(stack.branches)]
        self._upper = Upper(self.layers[0], None)
        self._upper.prepare()
        self.ops = UnionOperations(self.layers, self._upper, partial_copies=False)

    def close(self) -> None:
        self._upper.close()
        for layer in self.layers:
            layer.close()

    async def inode(self, path: str) -> int:
        ino = ROOT_INODE
        for name in path.split("/"):
            ino = (await self.ops.lookup(ino, name.encode(), CTX)).st_ino
            if ino == 0:
                raise FUSEError(errno.ENOENT)
        return ino

    async def parent_and_name(self, path: str) -> tuple[int, bytes]:
        parent, _, name = path.rpartition("/")
        return (await self.inode(parent) if parent else ROOT_INODE), name.encode()


def _fields(**updates):
    names = ("update_atime", "update_mtime", "update_ctime", "update_mode",
             "update_uid", "update_gid", "update_size")
    return SimpleNamespace(**{n: n.removeprefix("update_") in updates for n in names})


async def write_open(u: Union, path: str):
    fh = (await u.ops.open(await u.inode(path), os.O_WRONLY, CTX)).fh
    try:
        await u.ops.write(fh, 0, NEW)
        await u.ops.fsync(fh, False)
    finally:
        await u.ops.release(fh)


async def truncate(u: Union, path: str):
    await u.ops.setattr(await u.inode(path), SimpleNamespace(st_size=3), _fields(size=1),
                        None, CTX)


async def chmod(u: Union, path: str):
    await u.ops.setattr(await u.inode(path), SimpleNamespace(st_mode=0o600),
                        _fields(mode=1), None, CTX)


async def setxattr(u: Union, path: str):
    await u.ops.setxattr(await u.inode(path), b"user.race", b"yes", CTX)


async def link(u: Union, path: str):
    await u.ops.link(await u.inode(path), ROOT_INODE, b"linked", CTX)


async def rename(u: Union, path: str):
    await u.ops.rename(*await u.parent_and_name(path), ROOT_INODE, b"moved", 0, CTX)


async def unlink(u: Union, path: str):
    await u.ops.unlink(*await u.parent_and_name(path), CTX)


async def rmdir(u: Union, path: str):
    await u.ops.rmdir(*await u.parent_and_name(path), CTX)


OPS = {f.__name__: f for f in (write_open, truncate, chmod, link, rename, unlink, rmdir,
                                setxattr)}
#: the first request copies up (so it can be held); the second is any
COPYING = ("write_open", "truncate", "chmod", "link", "rename", "setxattr")


async def answer(op, u: Union, path: str) -> str:
    try:
        await op(u, path)
    except FUSEError as exc:
        return errno.errorcode[exc.errno]
    return "ok"


class HeldCopy:
    """Holds the first data copy of a copy-up until :meth:`release`."""

    def __init__(self, monkeypatch):
        self.entered = threading.Event()
        self._go = threading.Event()
        real = changes_module.copyup.copy_entry

        def copy_entry(*args, **kwargs):
            if threading.current_thread() is not threading.main_thread() \
                    and not self.entered.is_set():
                self.entered.set()
                self._go.wait(10)
            return real(*args, **kwargs)

        monkeypatch.setattr(changes_module.copyup, "copy_entry", copy_entry)

    async def wait_entered(self) -> None:
        await trio.to_thread.run_sync(self.entered.wait, 10)
        assert self.entered.is_set(), "the first request never copied data"

    def release(self) -> None:
        self._go.set()


def view(u: Union) -> dict:
    """The union as a fresh mount would show it, and what the writable
    branch holds that no view shows (a name beside its own whiteout)."""
    tree = Tree(u.layers, u.ops.tree.index)
    shown = {}
    todo = [(tree.root(), "")]
    while todo:
        directory, prefix = todo.pop()
        for name in sorted(tree.listdir(directory)):
            entry, st = tree.lookup(directory, name)
            layer, path = entry.top
            kind = stat.S_IFMT(st.st_mode)
            data = b""
            if stat.S_ISREG(st.st_mode):
                fd = layer.open(path, os.O_RDONLY)
                data = os.read(fd, 1 << 20)
                os.close(fd)
            xattrs = sorted(n for n in layer.listxattr(path) if n.startswith("user."))
            nlink = read_marks(entry.top).nlink if entry.marks.nlink else st.st_nlink
            shown[prefix + name] = (kind, stat.S_IMODE(st.st_mode), hashlib.md5(data).hexdigest(),
                                    xattrs, None if stat.S_ISDIR(kind) else nlink)
            if stat.S_ISDIR(st.st_mode):
                todo.append((entry, prefix + name + "/"))
    clashes = []
    for dirpath, dirs, files in os.walk(u.upper):
        names = set(dirs) | set(files)
        clashes += [os.path.join(dirpath, n) for n in names
                    if not n.startswith(PREFIX) and PREFIX + n in names]
    return {"view": shown, "name beside its whiteout": clashes}


def serial(root: Path, first, second) -> tuple:
    u = Union(root)
    try:
        answers = trio.run(_one_after_the_other, u, first, second)
        return answers, view(u)
    finally:
        u.close()


async def _one_after_the_other(u, first, second):
    return await answer(OPS[first[0]], u, first[1]), await answer(OPS[second[0]], u, second[1])


def raced(root: Path, monkeypatch, first, second) -> tuple:
    u = Union(root)
    held = HeldCopy(monkeypatch)
    answers = {}

    async def run(which, op):
        answers[which] = await answer(OPS[op[0]], u, op[1])

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, 0, first)
            await held.wait_entered()
            nursery.start_soon(run, 1, second)
            await trio.testing.wait_all_tasks_blocked()
            held.release()

    try:
        trio.run(main)
        return (answers[0], answers[1]), view(u)
    finally:
        u.close()


# (The kernel sends rmdir for directories only.)
PAIRS = [((a, target), (b, target)) for a, b in itertools.product(COPYING, OPS)
         for target in ("f", "h1") if b != "rmdir"]
PAIRS += [((a, "d/x"), (b, "d")) for a in COPYING for b in ("rename", "rmdir")]


@pytest.mark.parametrize("first,second", PAIRS, ids=lambda p: f"{p[0]}:{p[1]}")
def test_a_request_during_a_copy_up_acts_on_what_is_there_after_it(
        tmp_path, monkeypatch, first, second):
    got = raced(tmp_path / "raced", monkeypatch, first, second)
    first_then_second = serial(tmp_path / "ab", first, second)
    (b_answer, a_answer), b_then_a_view = serial(tmp_path / "ba", second, first)
    second_then_first = ((a_answer, b_answer), b_then_a_view)
    assert got in (first_then_second, second_then_first), \
        f"neither {first} then {second}, nor the other way round"
