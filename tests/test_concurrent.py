"""Randomized tests of the write path: against a model, and under concurrency.

Both run on the same stack: an empty writable branch over two read-only
branches whose names clash (a directory in both, a file hiding another, a
whiteout, an opaque directory), with files of several sizes (some larger
than the 64 KiB chunks of a partial copy-up), a file with two hard links,
symlinks and ``user.*`` xattrs.  Each test runs with ``copyup=partial`` and
``copyup=full``.

``test_model``
    One process applies a seeded random sequence of operations (create,
    write, read, truncate, chmod, utime, set/get/removexattr, link, rename
    with and without RENAME_NOREPLACE / RENAME_EXCHANGE, unlink, rmdir,
    mkdir, symlink, stat, listdir, readlink, and descriptors kept open across
    renames and unlinks: fstat, ftruncate, fchmod, fsetxattr, pwrite, pread,
    fsync, listdir of a directory descriptor) to the union and, in lockstep,
    to a plain ext4 directory holding the same merged tree (the model).
    Every outcome (value or errno name) must be the same; the whole views
    are compared every ``CHECK_EVERY`` operations, at the end, and once more
    after an unmount and a mount of the same branches.

``test_concurrent``
    ``WORKERS`` processes, each with its own seeded RNG, hammer one small
    name space at once (the same operations), plus one process that only
    walks and reads.  Each worker also *owns* a few files (a lower one, a
    lower one with two names for worker 0, and one it creates): only it
    writes to them, through descriptors it keeps open, reopens through
    ``/proc/self/fd``, and by path after looking them up, while the others
    rename the directories holding them.  Checked: no errno that ext4 would
    not give (EIO, ESTALE, ENOTCONN, EXDEV, ...); a read through the owner's
    descriptor always returns what it wrote; at the end every owned file is
    found once, with its inode number, and with the data, mode and xattr of
    every change acknowledged to its owner; the live view equals the view
    after an unmount and a mount of the same branches.
    ``test_concurrent_control_ext4`` runs the same workload on a plain ext4
    directory, to show the checks themselves hold on a real file system.

A failure names the seed and shows the tail of the operation log.  The
default run is short; ``-m long`` (or ``PYUNION_LONG=1``) runs many more
seeds and operations.  ``PYUNION_SEEDS=7,8`` picks the seeds of a default run.
"""

from __future__ import annotations

import ctypes
import difflib
import errno
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import stat
import time
import traceback
from collections import defaultdict
from pathlib import Path

import pytest

from helpers import DIR, Symlink, build, mounted, process_gone, pyunion, wait_for
from unionfs import daemon

LONG = os.environ.get("PYUNION_LONG") == "1"


def _seeds(default):
    given = os.environ.get("PYUNION_SEEDS")
    return [int(s) for s in given.split(",")] if given else list(default)


MODEL_SEEDS = _seeds(range(3))
MODEL_OPS = 300
LONG_MODEL_SEEDS = range(100, 140)
LONG_MODEL_OPS = 1500
CHECK_EVERY = 50

CONCURRENT_SEEDS = _seeds(range(2))
CONCURRENT_OPS = 400          # per worker
LONG_CONCURRENT_SEEDS = range(100, 120)
LONG_CONCURRENT_OPS = 3000
WORKERS = 4
WORKER_SECONDS = 15           # a worker stops early after this long
HANG_SECONDS = 120            # a worker still running after this long is hung

COPYUP_MODES = ["partial", "full"]

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]

KIB = 1024
CHUNK = 64 * KIB

# Errnos that ext4 gives for these operations on a racing name space.  Any
# other (EIO, ESTALE, ENOTCONN, EXDEV, EBADF, ...) is a failure.
ALLOWED_ERRNOS = {"ENOENT", "EEXIST", "ENOTEMPTY", "EISDIR", "ENOTDIR", "EINVAL", "ENODATA",
                  "ELOOP"}
ALLOWED_FOR = {"link": {"EPERM"}}  # link(2) of a directory

# Names the random operations use: they clash with the lower trees a lot.
VOCAB = ["A", "B", "C", "D", "E", "m", "f", "g", "h", "n", "big", "l", "s", "x"]
XATTRS = ["user.a", "user.b", "user.x"]
FILE_MODES = (0o644, 0o600, 0o755, 0o700, 0o444, 0o640)
DIR_MODES = (0o755, 0o700, 0o750, 0o555)


# -- the branches -------------------------------------------------------------


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


OWNED_LOWER = {  # worker -> (its lower file, ...) with their initial data
    0: "A/own0a", 1: "A/C/E/own1a", 2: "A/C/own2a", 3: "own3a",
}
OWNED_HARDLINK = ("A/own0h", "B/own0h2")  # one lower inode, owned by worker 0

# Bottom branch (L1), then the middle one (L0).  Values: DIR, bytes, Symlink.
LOWER1 = {
    "A": DIR, "A/f": b"lower1 A/f\n", "A/big": _blob(1, 200 * KIB + 123),
    "A/C": DIR, "A/C/g": _blob(2, 70 * KIB), "A/C/l": Symlink("../f"), "A/C/E": DIR,
    "B": DIR, "B/f": b"x", "B/D": DIR, "B/D/g": b"lower1 B/D/g",
    "f": _blob(3, 130 * KIB + 7), "h": b"hard-linked lower file\n", "s": Symlink("A"),
    "dangling": Symlink("nowhere"),
    **{path: _blob(10 + w, 100 * KIB + 33 * w) for w, path in OWNED_LOWER.items()},
    OWNED_HARDLINK[0]: _blob(20, 80 * KIB + 5),
}
LOWER1_LINKS = [("h", "B/h"), (OWNED_HARDLINK[0], OWNED_HARDLINK[1])]  # (existing, new name)
LOWER0 = {
    "A": DIR, "A/f": b"lower0 A/f hides lower1's\n", "A/n": _blob(4, 66 * KIB),
    "A/C": DIR, "A/C/.wh.l": b"",
    "B": DIR, "B/D": DIR, "B/D/.wh..wh..opq": b"", "B/D/x": b"only in lower0",
    "g": _blob(5, 90 * KIB), "m": DIR, "m/f": b"m/f\n", "m/E": DIR,
}
XATTRS_OF = {  # (branch index: 0 = L0, 1 = L1) -> {path: {name: value}}
    1: {"A/f": {"user.x": b"1"}, "A/C": {"user.x": b"c"}, "f": {"user.x": b"f"},
        "h": {"user.h": b"h"}},
    0: {"A/f": {"user.y": b"0"}, "m": {"user.m": b"m"}},
}
MODES_OF = {1: {"A/C": 0o750, "f": 0o600, "B/f": 0o755}, 0: {"g": 0o640}}


def _make_branch(root: Path, index: int) -> Path:
    spec = LOWER1 if index == 1 else LOWER0
    build(root, spec)
    if index == 1:
        for existing, new in LOWER1_LINKS:
            os.link(root / existing, root / new)
    for rel, attrs in XATTRS_OF[index].items():
        for name, value in attrs.items():
            os.setxattr(root / rel, name, value)
    for rel, mode in MODES_OF[index].items():
        os.chmod(root / rel, mode)
    return root


def _make_model(root: Path) -> Path:
    """A plain directory holding what the union of L0 over L1 shows."""
    merged: dict[str, object] = {}
    xattrs: dict[str, dict] = {}
    modes: dict[str, int] = {}
    for index, spec in ((1, LOWER1), (0, LOWER0)):
        for rel in sorted(spec):
            parent, _, name = rel.rpartition("/")
            if name == ".wh..wh..opq" or name.startswith(".wh."):
                gone = parent if name == ".wh..wh..opq" else f"{parent}/{name[4:]}".lstrip("/")
                for other in [p for p in merged if p.startswith(gone + "/")
                              or (p == gone and name != ".wh..wh..opq")]:
                    del merged[other]
                    xattrs.pop(other, None), modes.pop(other, None)
        for rel in sorted(spec):
            if rel.rpartition("/")[2].startswith(".wh."):
                continue
            merged[rel] = spec[rel]
            xattrs.pop(rel, None), modes.pop(rel, None)
        xattrs.update(XATTRS_OF[index])
        modes.update(MODES_OF[index])
    build(root, merged)
    for existing, new in LOWER1_LINKS:
        if existing in merged:
            os.link(root / existing, root / new)
    for rel, attrs in xattrs.items():
        for name, value in attrs.items():
            os.setxattr(root / rel, name, value)
    for rel, mode in modes.items():
        os.chmod(root / rel, mode)
    return root


@pytest.fixture
def stack(tmp_path):
    up = tmp_path / "upper"
    up.mkdir()
    return [up, _make_branch(tmp_path / "L0", 0), _make_branch(tmp_path / "L1", 1)]


def _mount(unions, branches, copyup: str) -> Path:
    return unions.mount(branches, f"copyup={copyup}", rw=True)


def _unmount(mnt: Path) -> None:
    pid = daemon.pid_of(str(mnt.resolve()))
    pyunion("umount", str(mnt))
    assert not mounted(mnt)
    assert pid is None or wait_for(lambda: process_gone(pid)), f"daemon {pid} outlived {mnt}"


# -- looking at a tree --------------------------------------------------------


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno, str(exc.errno))


def _digest(data: bytes) -> str:
    return f"{len(data)}:{hashlib.sha256(data).hexdigest()[:16]}"


def _read_fd(fd: int) -> bytes:
    parts, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)
        offset += len(chunk)


def _user_xattrs(target, follow=True) -> tuple:
    return tuple(sorted((n, os.getxattr(target, n, follow_symlinks=follow).hex())
                        for n in os.listxattr(target, follow_symlinks=follow)
                        if n.startswith("user.")))


def _view(root: Path) -> tuple[dict, frozenset, dict]:
    """What a reader sees: relative path -> description; the hard-link
    groups (paths of one st_ino); and each path's st_ino."""
    entries: dict[str, tuple] = {}
    inos: dict[str, int] = {}

    def walk(rel: str) -> None:
        try:
            names = sorted(os.listdir(root / rel) if rel else os.listdir(root))
        except OSError as exc:
            entries[rel + "/"] = ("listdir error", _errname(exc))
            return
        for name in names:
            sub = f"{rel}/{name}" if rel else name
            path = root / sub
            try:
                st = os.lstat(path)
                inos[sub] = st.st_ino
                if stat.S_ISDIR(st.st_mode):
                    entries[sub] = ("dir", oct(st.st_mode), _user_xattrs(path))
                    walk(sub)
                elif stat.S_ISLNK(st.st_mode):
                    entries[sub] = ("symlink", os.readlink(path))
                elif stat.S_ISREG(st.st_mode):
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        data = _read_fd(fd)
                    finally:
                        os.close(fd)
                    entries[sub] = ("file", oct(st.st_mode), st.st_size, st.st_nlink,
                                    _digest(data), _user_xattrs(path))
                else:
                    entries[sub] = ("other", oct(st.st_mode))
            except OSError as exc:
                entries[sub] = ("error", _errname(exc))

    walk("")
    by_ino = defaultdict(list)
    for rel, ino in inos.items():
        if entries.get(rel, ("dir",))[0] not in ("dir", "error"):
            by_ino[ino].append(rel)
    groups = frozenset(frozenset(paths) for paths in by_ino.values() if len(paths) > 1)
    return entries, groups, inos


def _view_lines(view) -> list[str]:
    entries, groups, _ = view
    lines = [f"{rel}\t{desc}" for rel, desc in sorted(entries.items())]
    lines += [f"hardlinks\t{sorted(g)}" for g in sorted(groups, key=sorted)]
    return lines


def _view_diff(a, b, a_name: str, b_name: str) -> str:
    diff = difflib.unified_diff(_view_lines(a), _view_lines(b), a_name, b_name, n=1,
                                lineterm="")
    return "\n".join(list(diff)[:80])


# -- the operations -----------------------------------------------------------


def _renameat2(src: str, dst: str, flags: int) -> None:
    if flags == 0:
        os.rename(src, dst)
        return
    if _libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags):
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), src)


def _kind(st: os.stat_result) -> str:
    return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}.get(
        stat.S_IFMT(st.st_mode), "other")


def _describe_stat(st: os.stat_result) -> tuple:
    if stat.S_ISDIR(st.st_mode):
        return ("dir", oct(st.st_mode))
    return (_kind(st), oct(st.st_mode), st.st_size, st.st_nlink)


class Slots:
    """Descriptors kept open across operations, by slot number."""

    def __init__(self):
        self.fds: dict[int, int] = {}

    def close_all(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


def _apply(root: str, op: tuple, slots: Slots):
    """Run ``op`` under ``root``; its outcome as ("ok", value) or ("err", ERRNO)."""
    kind, args = op[0], op[1:]
    if kind in _FD_OPS and kind != "open":
        fd = slots.fds.get(args[0])
        if fd is None:
            return ("ok", "no descriptor")
        args = (fd, *args[1:])
    try:
        return ("ok", _OPS[kind](root, slots, *args))
    except OSError as exc:
        return ("err", _errname(exc))


def _at(root: str, rel: str) -> str:
    return os.path.join(root, rel) if rel else root


def _op_write(root, slots, rel, flags, offset, size, dseed, mode):
    fd = os.open(_at(root, rel), os.O_WRONLY | flags, mode)
    try:
        written = os.pwrite(fd, _blob(dseed, size), offset)
        os.fsync(fd)
        return written
    finally:
        os.close(fd)


def _op_read(root, slots, rel):
    fd = os.open(_at(root, rel), os.O_RDONLY)
    try:
        return _digest(_read_fd(fd))
    finally:
        os.close(fd)


def _op_create(root, slots, rel, mode):
    os.close(os.open(_at(root, rel), os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode))


def _op_utime(root, slots, rel, ns):
    os.utime(_at(root, rel), ns=(ns, ns))
    return os.stat(_at(root, rel)).st_mtime_ns


def _op_getxattrs(root, slots, rel):
    return _user_xattrs(_at(root, rel))


def _op_listdir(root, slots, rel):
    return sorted(os.listdir(_at(root, rel)))


def _op_open(root, slots, slot, rel, flags):
    old = slots.fds.pop(slot, None)
    if old is not None:
        os.close(old)
    slots.fds[slot] = os.open(_at(root, rel), flags)
    return _describe_stat(os.fstat(slots.fds[slot]))


def _op_close(root, slots, fd):
    for slot, held in list(slots.fds.items()):
        if held == fd:
            del slots.fds[slot]
    os.close(fd)


def _op_flistdir(root, slots, fd):
    # rewinddir() first: POSIX leaves entries added or removed since the
    # opendir() or the last rewinddir() unspecified, but not after it.
    os.lseek(fd, 0, os.SEEK_SET)
    dup = os.dup(fd)  # os.listdir(fd) reads (and closes) a dup of its own
    try:
        return sorted(os.listdir(dup))
    finally:
        os.close(dup)


_OPS = {
    "write": _op_write,
    "read": _op_read,
    "create": _op_create,
    "truncate": lambda root, slots, rel, size: os.truncate(_at(root, rel), size),
    "chmod": lambda root, slots, rel, mode: os.chmod(_at(root, rel), mode),
    "utime": _op_utime,
    "setxattr": lambda root, slots, rel, name, value: os.setxattr(_at(root, rel), name, value),
    "getxattrs": _op_getxattrs,
    "removexattr": lambda root, slots, rel, name: os.removexattr(_at(root, rel), name),
    "link": lambda root, slots, src, dst: os.link(_at(root, src), _at(root, dst)),
    "rename": lambda root, slots, src, dst, flags: _renameat2(_at(root, src), _at(root, dst),
                                                            flags),
    "unlink": lambda root, slots, rel: os.unlink(_at(root, rel)),
    "rmdir": lambda root, slots, rel: os.rmdir(_at(root, rel)),
    "mkdir": lambda root, slots, rel, mode: os.mkdir(_at(root, rel), mode),
    "symlink": lambda root, slots, target, rel: os.symlink(target, _at(root, rel)),
    "stat": lambda root, slots, rel: _describe_stat(os.lstat(_at(root, rel))),
    "listdir": _op_listdir,
    "readlink": lambda root, slots, rel: os.readlink(_at(root, rel)),
    # on a descriptor kept open (the slot's number is replaced by its fd)
    "open": _op_open,
    "fstat": lambda root, slots, fd: _describe_stat(os.fstat(fd)),
    "ftruncate": lambda root, slots, fd, size: os.ftruncate(fd, size),
    "fchmod": lambda root, slots, fd, mode: os.fchmod(fd, mode),
    "fsetxattr": lambda root, slots, fd, name, value: os.setxattr(fd, name, value),
    "fgetxattrs": lambda root, slots, fd: _user_xattrs(fd),
    "pwrite": lambda root, slots, fd, offset, size, dseed: os.pwrite(fd, _blob(dseed, size),
                                                                    offset),
    "pread": lambda root, slots, fd: _digest(_read_fd(fd)),
    "fsync": lambda root, slots, fd: os.fsync(fd),
    "flistdir": _op_flistdir,
    "close": _op_close,
}
_FD_OPS = {"open", "fstat", "ftruncate", "fchmod", "fsetxattr", "fgetxattrs", "pwrite",
           "pread", "fsync", "flistdir", "close"}
MUTATING = {"write", "create", "truncate", "chmod", "utime", "setxattr", "removexattr", "link",
            "rename", "unlink", "rmdir", "mkdir", "symlink", "ftruncate", "fchmod",
            "fsetxattr", "pwrite"}

_WEIGHTS = {
    "write": 10, "read": 5, "create": 4, "truncate": 4, "chmod": 3, "utime": 2,
    "setxattr": 4, "getxattrs": 2, "removexattr": 2, "link": 5, "rename": 14, "unlink": 6,
    "rmdir": 4, "mkdir": 6, "symlink": 3, "stat": 3, "listdir": 3, "readlink": 1,
    "open": 8, "fstat": 3, "ftruncate": 3, "fchmod": 2, "fsetxattr": 3, "fgetxattrs": 1,
    "pwrite": 5, "pread": 3, "fsync": 1, "flistdir": 4, "close": 2,
}
_KINDS = list(_WEIGHTS)
_KIND_WEIGHTS = [_WEIGHTS[k] for k in _KINDS]
SLOTS = 4


def _size(rng: random.Random) -> int:
    r = rng.random()
    if r < 0.55:
        return rng.randint(0, 200)
    if r < 0.85:
        return rng.choice([CHUNK - 1, CHUNK, CHUNK + 1, rng.randint(1, 3 * CHUNK)])
    return rng.randint(0, 5 * CHUNK)


def _offset(rng: random.Random) -> int:
    return rng.choice([0, 0, rng.randint(0, 300), rng.randint(0, 4 * CHUNK),
                       CHUNK * rng.randint(1, 3) - rng.randint(0, 2)])


def _random_path(rng: random.Random) -> str:
    return "/".join(rng.choice(VOCAB) for _ in range(rng.choice((1, 1, 2, 2, 3))))


class Picker:
    """Paths for the operations: mostly names that exist (from the last
    walk), some from the vocabulary; new names in existing directories."""

    def __init__(self, rng: random.Random, exclude=lambda rel: False):
        self.rng = rng
        self.exclude = exclude
        self.paths: list[str] = []
        self.dirs: list[str] = [""]

    def refresh(self, root: str) -> None:
        paths, dirs = [], [""]
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            rel = "" if rel == "." else rel
            for name in sorted(dirnames) + sorted(filenames):
                sub = f"{rel}/{name}" if rel else name
                if not self.exclude(sub):
                    paths.append(sub)
            dirnames.sort()
            dirs += [f"{rel}/{d}" if rel else d for d in dirnames
                     if not os.path.islink(os.path.join(dirpath, d))]
        self.paths, self.dirs = paths, dirs

    def existing(self) -> str:
        if self.paths and self.rng.random() < 0.75:
            return self.rng.choice(self.paths)
        return _random_path(self.rng)

    def new(self) -> str:
        if self.rng.random() < 0.8:
            parent = self.rng.choice(self.dirs)
            name = self.rng.choice(VOCAB)
            return f"{parent}/{name}" if parent else name
        return _random_path(self.rng)

    def dir(self) -> str:
        return self.rng.choice(self.dirs[1:] or [""]) if self.rng.random() < 0.8 else \
            _random_path(self.rng)


def _generate(rng: random.Random, pick: Picker, slot_dirs: dict[int, bool] | None = None):
    """One random operation.  ``slot_dirs`` (slot -> is a directory), when
    given, keeps descriptor operations to those that make sense for the
    descriptor (the concurrent workers need that: they cannot compare with a
    model, so a kernel-made EBADF must not happen)."""
    kind = rng.choices(_KINDS, _KIND_WEIGHTS)[0]
    slot = rng.randrange(SLOTS)
    if kind == "write":
        flags = rng.choice([0, 0, os.O_TRUNC, os.O_CREAT, os.O_CREAT | os.O_TRUNC, os.O_APPEND])
        return ("write", pick.existing() if rng.random() < 0.8 else pick.new(), flags,
                _offset(rng), _size(rng), rng.randrange(1 << 30), rng.choice(FILE_MODES))
    if kind in ("read", "unlink", "stat", "getxattrs", "readlink"):
        return (kind, pick.existing())
    if kind == "create":
        return ("create", pick.new(), rng.choice(FILE_MODES))
    if kind == "truncate":
        return ("truncate", pick.existing(), rng.choice([0, rng.randint(0, 300), _offset(rng)]))
    if kind == "chmod":
        return ("chmod", pick.existing(), rng.choice(FILE_MODES + DIR_MODES))
    if kind == "utime":
        return ("utime", pick.existing(), rng.randrange(10**18, 1_500_000_000 * 10**9))
    if kind == "setxattr":
        return ("setxattr", pick.existing(), rng.choice(XATTRS), rng.randbytes(rng.randint(0, 8)))
    if kind == "removexattr":
        return ("removexattr", pick.existing(), rng.choice(XATTRS))
    if kind == "link":
        return ("link", pick.existing(), pick.new())
    if kind == "rename":
        src = pick.dir() if rng.random() < 0.5 else pick.existing()
        dst = pick.new() if rng.random() < 0.6 else pick.existing()
        return ("rename", src, dst, rng.choice([0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
    if kind == "rmdir":
        return ("rmdir", pick.dir())
    if kind == "mkdir":
        return ("mkdir", pick.new(), rng.choice(DIR_MODES))
    if kind == "symlink":
        return ("symlink", rng.choice(["f", "../f", "A", "../B/h", "nowhere", pick.existing()]),
                pick.new())
    if kind == "listdir":
        return ("listdir", pick.dir())
    if kind == "open":
        if slot_dirs is not None:
            return ("open", slot, pick.existing(), None)  # the worker picks the flags
        flags = rng.choice([os.O_RDONLY, os.O_RDWR, os.O_RDWR, os.O_RDONLY | os.O_DIRECTORY])
        return ("open", slot, pick.dir() if flags & os.O_DIRECTORY else pick.existing(), flags)
    is_dir = slot_dirs.get(slot) if slot_dirs is not None else None
    if slot_dirs is not None and slot not in slot_dirs:
        kind = "fstat"
    if is_dir and kind in ("ftruncate", "pwrite", "pread"):
        kind = "flistdir"
    if is_dir is False and kind == "flistdir":
        kind = "pread"
    if kind == "ftruncate":
        return ("ftruncate", slot, rng.choice([0, rng.randint(0, 300), _offset(rng)]))
    if kind == "fchmod":
        return ("fchmod", slot, rng.choice(FILE_MODES + DIR_MODES))
    if kind == "fsetxattr":
        return ("fsetxattr", slot, rng.choice(XATTRS), rng.randbytes(rng.randint(0, 8)))
    if kind == "pwrite":
        return ("pwrite", slot, _offset(rng), _size(rng), rng.randrange(1 << 30))
    return (kind, slot)


def _same(op: tuple, got, want) -> bool:
    if got == want:
        return True
    # POSIX lets rmdir and rename over a non-empty directory say either.
    return (op[0] in ("rmdir", "rename") and got[0] == want[0] == "err"
            and {got[1], want[1]} == {"ENOTEMPTY", "EEXIST"})


# -- the model test -----------------------------------------------------------


def _lockstep(ops, mnt: Path, model: str, union_slots: Slots, model_slots: Slots, log=None,
              generate=None):
    """Apply each operation to the model, then to the union; the index of
    the first whose outcomes differ (with both), else None.  With
    ``generate`` (index -> op), operations are made as they go."""
    for i in range(len(ops) if generate is None else generate.count):
        op = ops[i] if generate is None else generate(i)
        want = _apply(model, op, model_slots)
        got = _apply(str(mnt), op, union_slots)
        if log is not None:
            log.append((op, got))
        if not _same(op, got, want):
            return i, got, want
    return None


def _replay(ops: list[tuple], copyup: str, base: Path) -> str | None:
    """Run ``ops`` on fresh branches and a fresh model (mounted here, not by
    the fixture, so the branches can go at once); how it fails, or None."""
    base.mkdir()
    up = base / "upper"
    up.mkdir()
    branches = [up, _make_branch(base / "L0", 0), _make_branch(base / "L1", 1)]
    model = str(_make_model(base / "model"))
    mnt = base / "mnt"
    mnt.mkdir()
    br = ":".join(f"{b}={'rw' if i == 0 else 'ro'}" for i, b in enumerate(branches))
    pyunion("mount", "-o", f"br={br},copyup={copyup}", str(mnt))
    union_slots, model_slots = Slots(), Slots()
    try:
        found = _lockstep(ops, mnt, model, union_slots, model_slots)
        if found:
            return f"op {found[0]} {ops[found[0]][0]}"
        union_slots.close_all()
        model_slots.close_all()
        if _view(mnt)[:2] != _view(Path(model))[:2]:
            return "view"
        _unmount(mnt)
        br_mnt = mnt
        pyunion("mount", "-o", f"br={br},copyup={copyup}", str(br_mnt))
        if _view(br_mnt)[:2] != _view(Path(model))[:2]:
            return "view after remount"
        return None
    finally:
        union_slots.close_all()
        model_slots.close_all()
        if mounted(mnt):
            _unmount(mnt)
        shutil.rmtree(base)


def _shrink(ops: list[tuple], copyup: str, tmp_path: Path) -> list[tuple]:
    """A shorter list of operations that still fails the same way (ddmin,
    greedily); for PYUNION_SHRINK=1."""
    runs = iter(range(10**6))
    target = _replay(ops, copyup, tmp_path / f"shrink{next(runs)}")
    if target is None:
        return ops
    kind = target.split()[-1]

    def fails(candidate):
        how = _replay(candidate, copyup, tmp_path / f"shrink{next(runs)}")
        return how is not None and how.split()[-1] == kind

    chunk = max(1, len(ops) // 2)
    while chunk >= 1:
        i = 0
        while i < len(ops):
            candidate = ops[:i] + ops[i + chunk:]
            if candidate and fails(candidate):
                ops = candidate
            else:
                i += chunk
        chunk //= 2
    return ops


def _run_model(seed: int, ops: int, copyup: str, tmp_path: Path, unions, stack) -> None:
    model = str(_make_model(tmp_path / "model"))
    mnt = _mount(unions, stack, copyup)
    rng = random.Random(seed)
    pick = Picker(rng)
    union_slots, model_slots = Slots(), Slots()
    log: list[tuple] = []

    def fail(message: str) -> None:
        union_slots.close_all()
        model_slots.close_all()
        done = [op for op, _ in log]
        (tmp_path / "ops.py").write_text("OPS = [\n" + "".join(f"    {op!r},\n" for op in done)
                                         + "]\n")
        tail = "\n".join(f"{i}\t{op!r}\t{got!r}" for i, (op, got) in enumerate(log)
                         if i >= len(log) - 25)
        shrunk = ""
        if os.environ.get("PYUNION_SHRINK") == "1":
            small = _shrink(done, copyup, tmp_path)
            shrunk = ("\nshrunk to (rerun with _replay(OPS, copyup, dir)):\n"
                      + "\n".join(repr(op) for op in small))
        pytest.fail(f"seed {seed} (copyup={copyup}): {message}\nall operations: "
                    f"{tmp_path / 'ops.py'}\nlast operations (index, op, union outcome):\n"
                    f"{tail}{shrunk}", pytrace=False)

    def compare_views(when: str, root=mnt) -> None:
        got, want = _view(root), _view(Path(model))
        if got[:2] != want[:2]:
            fail(f"views differ {when}:\n{_view_diff(want, got, 'model (ext4)', 'pyunion')}")

    compare_views("at the start")
    done = 0
    while done < ops:
        batch = min(CHECK_EVERY, ops - done)

        def generate(i, base=done):
            if (base + i) % 10 == 0:
                pick.refresh(model)
            return _generate(rng, pick)
        generate.count = batch
        found = _lockstep(None, mnt, model, union_slots, model_slots, log, generate)
        if found:
            i, got, want = found
            fail(f"operation {done + i} {log[-1][0]!r}: pyunion gave {got!r}, ext4 gave "
                 f"{want!r}")
        done += batch
        compare_views(f"after operation {done - 1}")
    union_slots.close_all()
    model_slots.close_all()
    compare_views("at the end")
    live = _view(mnt)
    _unmount(mnt)
    again = _mount(unions, stack, copyup)
    compare_views("after a remount", again)
    after = _view(again)
    moved = {rel: (ino, after[2].get(rel)) for rel, ino in live[2].items()
             if after[2].get(rel) != ino}
    if moved:
        fail(f"st_ino changed across a remount (path: before, after): "
             f"{dict(list(moved.items())[:10])}")


@pytest.mark.parametrize("copyup", COPYUP_MODES)
@pytest.mark.parametrize("seed", MODEL_SEEDS, ids=lambda s: f"seed{s}")
def test_model(seed, copyup, tmp_path, unions, stack):
    _run_model(seed, MODEL_OPS, copyup, tmp_path, unions, stack)


@pytest.mark.long
@pytest.mark.parametrize("copyup", COPYUP_MODES)
@pytest.mark.parametrize("seed", LONG_MODEL_SEEDS, ids=lambda s: f"seed{s}")
def test_model_long(seed, copyup, tmp_path, unions, stack, long_run):
    _run_model(seed, LONG_MODEL_OPS, copyup, tmp_path, unions, stack)


# -- the concurrent test ------------------------------------------------------


def _owned_name(rel: str) -> bool:
    return rel.rpartition("/")[2].startswith("own")


def _find(root: str, name: str, tries: int = 4) -> str | None:
    """The path of the one entry called ``name`` (others move it around)."""
    for _ in range(tries):
        todo = [""]
        while todo:
            rel = todo.pop()
            try:
                with os.scandir(_at(root, rel)) as it:
                    for entry in it:
                        sub = f"{rel}/{entry.name}" if rel else entry.name
                        if entry.name == name:
                            return sub
                        try:
                            if entry.is_dir(follow_symlinks=False):
                                todo.append(sub)
                        except OSError:
                            pass
            except OSError:
                pass
    return None


class Owned:
    """A file only one worker writes: what it must hold now."""

    def __init__(self, names: list[str], data: bytes, mode: int, ino: int | None):
        self.names = names          # its names (two for the hard-linked one)
        self.data = bytearray(data)
        self.mode = mode
        self.xattr: bytes | None = None  # user.v
        self.ino = ino
        self.fd: int | None = None
        self.uncertain: str | None = None  # why its state is unknown
        self.misread = False  # a read already differed (reported once)

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return  # a write of nothing extends nothing (POSIX)
        if offset > len(self.data):
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset:offset + len(data)] = data

    def truncate(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))

    def summary(self) -> dict:
        return {"names": self.names, "digest": _digest(bytes(self.data)), "mode": self.mode,
                "xattr": None if self.xattr is None else self.xattr.hex(), "ino": self.ino,
                "uncertain": self.uncertain}


class Worker:
    def __init__(self, index: int, seed: int, root: str, ops: int, logdir: Path,
                 owned: list[Owned]):
        self.index = index
        self.rng = random.Random(seed * 1000 + index)
        self.root = root
        self.ops = ops
        self.log = open(logdir / f"worker{index}.log", "w")
        self.logdir = logdir
        self.owned = owned
        self.slots = Slots()
        self.slot_dirs: dict[int, bool] = {}
        self.pick = Picker(self.rng, exclude=_owned_name)
        self.problems: list[str] = []
        self.count = 0

    def record(self, op, outcome) -> None:
        self.count += 1
        self.log.write(json.dumps([self.index, self.count, time.monotonic(), repr(op),
                                   repr(outcome)]) + "\n")
        self.log.flush()
        if outcome[0] == "err":
            allowed = ALLOWED_ERRNOS | ALLOWED_FOR.get(op[0], set())
            if outcome[1] not in allowed:
                self.problems.append(f"worker {self.index} op {self.count} {op!r}: {outcome[1]}")

    def attempt(self, op, call, show=lambda value: value):
        try:
            outcome = ("ok", call())
        except OSError as exc:
            outcome = ("err", _errname(exc))
        self.record(op, outcome if outcome[0] == "err" else ("ok", show(outcome[1])))
        return outcome

    # -- shared names: structural and data operations, no model
    def shared_op(self) -> None:
        op = _generate(self.rng, self.pick, self.slot_dirs)
        if op[0] == "open":
            slot, rel = op[1], op[2]
            outcome = _apply(self.root, ("open", slot, rel, os.O_RDWR), self.slots)
            if outcome == ("err", "EISDIR"):
                outcome = _apply(self.root, ("open", slot, rel, os.O_RDONLY | os.O_DIRECTORY),
                                 self.slots)
            if outcome[0] == "ok":
                self.slot_dirs[slot] = outcome[1][0] == "dir"
            elif slot not in self.slots.fds:
                self.slot_dirs.pop(slot, None)
            self.record(op, outcome)
            return
        outcome = _apply(self.root, op, self.slots)
        if op[0] == "close":
            self.slot_dirs.pop(op[1], None)
        self.record(op, outcome)

    # -- owned files: data through kept descriptors, checked on every read
    def owned_op(self) -> None:
        rng = self.rng
        own = rng.choice(self.owned)
        name = own.names[0]
        if own.fd is None or rng.random() < 0.08:
            self.reopen(own, by_path=own.fd is None or rng.random() < 0.7)
            return
        r = rng.random()
        if r < 0.35:
            offset, data = _offset(rng), _blob(rng.randrange(1 << 30), _size(rng))
            op = ("owned pwrite", name, offset, len(data))
            if self.attempt(op, lambda: os.pwrite(own.fd, data, offset))[0] == "ok":
                own.write(offset, data)
            else:
                own.uncertain = own.uncertain or f"{op!r} failed"
        elif r < 0.45:
            size = rng.choice([0, rng.randint(0, 300), _offset(rng), len(own.data) + 10])
            op = ("owned ftruncate", name, size)
            if self.attempt(op, lambda: os.ftruncate(own.fd, size))[0] == "ok":
                own.truncate(size)
            else:
                own.uncertain = own.uncertain or f"{op!r} failed"
        elif r < 0.52:
            self.attempt(("owned fsync", name), lambda: os.fsync(own.fd))
        elif r < 0.58:
            mode = rng.choice(FILE_MODES)
            if self.attempt(("owned fchmod", name, oct(mode)),
                            lambda: os.fchmod(own.fd, mode))[0] == "ok":
                own.mode = mode
            else:
                own.uncertain = own.uncertain or "fchmod failed"
        elif r < 0.64:
            value = rng.randbytes(6)
            if self.attempt(("owned fsetxattr", name, value.hex()),
                            lambda: os.setxattr(own.fd, "user.v", value))[0] == "ok":
                own.xattr = value
            else:
                own.uncertain = own.uncertain or "fsetxattr failed"
        elif r < 0.80:
            self.check_read(own)
        else:
            self.by_path(own)

    def check_read(self, own: Owned) -> None:
        name = own.names[0]
        outcome = self.attempt(("owned pread+fstat", name),
                               lambda: (_read_fd(own.fd), os.fstat(own.fd)),
                               lambda got: (_digest(got[0]), got[1].st_ino, oct(got[1].st_mode)))
        if outcome[0] != "ok" or own.uncertain or own.misread:
            return
        data, st = outcome[1]
        if data != own.data:
            at = next((i for i, (a, b) in enumerate(zip(data, own.data)) if a != b),
                      min(len(data), len(own.data)))
            self.problems.append(
                f"worker {self.index} op {self.count}: read of its own {name} through its "
                f"descriptor gave {_digest(data)}, it wrote {_digest(bytes(own.data))} "
                f"(first difference at byte {at})")
            own.misread = True  # said once; what it holds at the end is checked still
        elif st.st_ino != own.ino or stat.S_IMODE(st.st_mode) != own.mode:
            self.problems.append(
                f"worker {self.index} op {self.count}: fstat of its own {name}: ino "
                f"{st.st_ino} mode {st.st_mode:o}, expected ino {own.ino} mode {own.mode:o}")
            own.misread = True

    def reopen(self, own: Owned, by_path: bool) -> None:
        """Open it again: by a path looked up now (others are renaming its
        directory meanwhile), or through /proc/self/fd of the old one."""
        name = self.rng.choice(own.names)
        if by_path or own.fd is None:
            rel = _find(self.root, name)
            if rel is None:
                self.record(("owned find", name), ("ok", "not found"))
                return
            target = _at(self.root, rel)
        else:
            target = f"/proc/self/fd/{own.fd}"
            rel = target
        outcome = self.attempt(("owned open", name, rel), lambda: os.open(target, os.O_RDWR))
        if outcome[0] == "ok":
            if own.fd is not None:
                os.close(own.fd)
            own.fd = outcome[1]
            self.check_read(own)

    def by_path(self, own: Owned) -> None:
        rng = self.rng
        name = rng.choice(own.names)
        rel = _find(self.root, name)
        if rel is None:
            self.record(("owned find", name), ("ok", "not found"))
            return
        path = _at(self.root, rel)
        r = rng.random()
        if r < 0.35:
            offset, data = _offset(rng), _blob(rng.randrange(1 << 30), _size(rng))

            def write():
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, offset)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            op = ("owned write by path", rel, offset, len(data))
            outcome = self.attempt(op, write)
            if outcome[0] == "ok":
                own.write(offset, data)
            elif outcome[1] != "ENOENT":  # moved meanwhile: nothing was written
                own.uncertain = own.uncertain or f"{op!r} failed"
        elif r < 0.55:
            size = rng.choice([0, rng.randint(0, 300), _offset(rng)])
            outcome = self.attempt(("owned truncate", rel, size), lambda: os.truncate(path, size))
            if outcome[0] == "ok":
                own.truncate(size)
            elif outcome[1] != "ENOENT":
                own.uncertain = own.uncertain or "truncate failed"
        elif r < 0.7:
            mode = rng.choice(FILE_MODES)
            outcome = self.attempt(("owned chmod", rel, oct(mode)), lambda: os.chmod(path, mode))
            if outcome[0] == "ok":
                own.mode = mode
            elif outcome[1] != "ENOENT":
                own.uncertain = own.uncertain or "chmod failed"
        elif r < 0.85:
            value = rng.randbytes(6)
            outcome = self.attempt(("owned setxattr", rel, value.hex()),
                                   lambda: os.setxattr(path, "user.v", value))
            if outcome[0] == "ok":
                own.xattr = value
            elif outcome[1] != "ENOENT":
                own.uncertain = own.uncertain or "setxattr failed"
        else:
            outcome = self.attempt(("owned read by path", rel), lambda: _op_read(path, None, ""))
            if (outcome[0] == "ok" and not own.uncertain and not own.misread
                    and outcome[1] != _digest(bytes(own.data))):
                self.problems.append(f"worker {self.index} op {self.count}: read of its own "
                                     f"{rel} gave {outcome[1]}, it wrote "
                                     f"{_digest(bytes(own.data))}")
                own.misread = True

    def run(self, deadline: float) -> None:
        # The file this worker makes itself, in a directory others move.
        mine = f"own{self.index}n"
        for parent in ("A/C", "B", "m", "A", ""):
            rel = f"{parent}/{mine}" if parent else mine
            outcome = self.attempt(("owned create", rel), lambda: os.open(
                _at(self.root, rel), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644))
            if outcome[0] == "ok":
                new = Owned([mine], b"", 0o644, os.fstat(outcome[1]).st_ino)
                new.fd = outcome[1]
                self.owned.append(new)
                break
        for i in range(self.ops):
            if time.monotonic() > deadline:
                break
            if i % 15 == 0:
                self.pick.refresh(self.root)
            if self.rng.random() < 0.35:
                self.owned_op()
            else:
                self.shared_op()
        for own in self.owned:
            if own.fd is not None:
                self.check_read(own)
                os.close(own.fd)
                own.fd = None
        self.slots.close_all()


def _worker_main(index, seed, root, ops, logdir, owned, deadline):
    worker = Worker(index, seed, root, ops, logdir, owned)
    result = {"problems": worker.problems, "owned": [], "ops": 0}
    try:
        worker.run(deadline)
    except BaseException:
        worker.problems.append(f"worker {index} crashed:\n{traceback.format_exc()}")
    result["owned"] = [own.summary() for own in worker.owned]
    result["ops"] = worker.count
    (logdir / f"worker{index}.json").write_text(json.dumps(result))
    os._exit(0)


def _walker_main(root, logdir, stop_at):
    """Walks and reads everything, over and over, until told to stop."""
    problems, count = [], 0
    while time.monotonic() < stop_at and not (logdir / "stop").exists():
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: (
                _errname(e) not in ALLOWED_ERRNOS and problems.append(f"walk: {e!r}"))):
            for name in dirnames + filenames:
                path = os.path.join(dirpath, name)
                count += 1
                try:
                    st = os.lstat(path)
                    if stat.S_ISREG(st.st_mode):
                        with open(path, "rb") as f:
                            f.read(8192)
                    elif stat.S_ISLNK(st.st_mode):
                        os.readlink(path)
                    os.listxattr(path, follow_symlinks=False)
                except OSError as exc:
                    if _errname(exc) not in ALLOWED_ERRNOS:
                        problems.append(f"walker: {name} at {path}: {exc!r}")
    (logdir / "walker.json").write_text(json.dumps({"problems": problems[:50], "ops": count}))
    os._exit(0)


def _initial_owned(root: str) -> dict[int, list[Owned]]:
    merged = {**LOWER1, **LOWER0}
    owned = {}
    for w, rel in OWNED_LOWER.items():
        st = os.stat(_at(root, rel))
        owned[w] = [Owned([rel.rpartition("/")[2]], merged[rel], stat.S_IMODE(st.st_mode),
                          st.st_ino)]
    st = os.stat(_at(root, OWNED_HARDLINK[0]))
    owned[0].append(Owned([p.rpartition("/")[2] for p in OWNED_HARDLINK],
                          merged[OWNED_HARDLINK[0]], stat.S_IMODE(st.st_mode), st.st_ino))
    return owned


def _abort_fuse(mnt: Path) -> None:
    """A hung mount: abort its FUSE connection so nothing stays stuck."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == os.path.realpath(mnt):
                minor = fields[2].split(":")[1]
                try:
                    Path(f"/sys/fs/fuse/connections/{minor}/abort").write_text("1")
                except OSError:
                    pass


def _log_tail(logdir: Path, n: int = 12) -> str:
    out = []
    for path in sorted(logdir.glob("worker*.log")):
        lines = path.read_text().splitlines()[-n:]
        out.append(f"--- {path.name} (last {len(lines)}):")
        for line in lines:
            try:
                fields = json.loads(line)
                out.append(f"  {fields[1]} {fields[3]} {fields[4]}")
            except ValueError:
                out.append(f"  (cut short) {line}")
    return "\n".join(out)


def _check_owned(view, summaries: list[dict]) -> list[str]:
    entries, groups, inos = view
    problems = []
    for s in summaries:
        found = {name: [rel for rel in entries if rel.rpartition("/")[2] == name]
                 for name in s["names"]}
        for name, rels in found.items():
            if len(rels) != 1:
                problems.append(f"owned {name}: found at {rels or 'no path'}")
                continue
            desc, ino = entries[rels[0]], inos[rels[0]]
            if desc[0] != "file":
                problems.append(f"owned {name} at {rels[0]}: {desc}")
                continue
            if s["uncertain"]:
                continue
            xattrs = dict(desc[5])
            want_x = s["xattr"]
            if desc[4] != s["digest"]:
                problems.append(f"owned {name} at {rels[0]}: data {desc[4]}, acknowledged "
                                f"{s['digest']}")
            if desc[1] != oct(stat.S_IFREG | s["mode"]):
                problems.append(f"owned {name} at {rels[0]}: mode {desc[1]}, acknowledged "
                                f"{oct(stat.S_IFREG | s['mode'])}")
            if want_x is not None and xattrs.get("user.v") != want_x:
                problems.append(f"owned {name} at {rels[0]}: user.v {xattrs.get('user.v')}, "
                                f"acknowledged {want_x}")
            if ino != s["ino"]:
                problems.append(f"owned {name} at {rels[0]}: st_ino {ino}, was {s['ino']}")
            if len(s["names"]) > 1 and desc[3] != len(s["names"]):
                problems.append(f"owned {name} at {rels[0]}: {desc[3]} links, expected "
                                f"{len(s['names'])}")
    return problems


def _run_concurrent(seed: int, ops: int, root: Path, logdir: Path) -> tuple[list[str], list]:
    """Run the workers on ``root``; problems found while running, and the
    owned files' summaries."""
    logdir.mkdir()
    owned = _initial_owned(str(root))
    ctx = multiprocessing.get_context("fork")
    deadline = time.monotonic() + WORKER_SECONDS * (10 if ops > CONCURRENT_OPS else 1)
    procs = [ctx.Process(target=_worker_main,
                         args=(w, seed, str(root), ops, logdir, owned.get(w, []), deadline))
             for w in range(WORKERS)]
    procs.append(ctx.Process(target=_walker_main, args=(str(root), logdir, deadline)))
    for p in procs:
        p.start()
    problems, hung = [], []
    give_up = deadline + HANG_SECONDS
    for p in procs[:-1]:
        p.join(max(0.0, give_up - time.monotonic()))
    (logdir / "stop").touch()
    procs[-1].join(max(5.0, give_up - time.monotonic()))
    for i, p in enumerate(procs):
        if p.is_alive():
            hung.append(i)
    if hung:
        problems.append(f"processes {hung} hung (still running {HANG_SECONDS} s after their "
                        f"deadline)")
        _abort_fuse(root)
        for i in hung:
            os.kill(procs[i].pid, signal.SIGKILL)
        for i in hung:
            procs[i].join(10)
    summaries = []
    total = 0
    for name in [f"worker{w}.json" for w in range(WORKERS)] + ["walker.json"]:
        path = logdir / name
        if not path.exists():
            problems.append(f"{name}: no result")
            continue
        result = json.loads(path.read_text())
        problems += result["problems"]
        summaries += result.get("owned", [])
        total += result["ops"]
    print(f"seed {seed}: {total} operations on {root}")
    return problems, summaries


def _concurrent(seed: int, ops: int, copyup: str, tmp_path: Path, unions, stack) -> None:
    mnt = _mount(unions, stack, copyup)
    problems, summaries = _run_concurrent(seed, ops, mnt, tmp_path / "logs")
    live = _view(mnt)
    problems += [f"live view: {p}" for p in _check_owned(live, summaries)]
    problems += [f"live view: {rel}: {desc}" for rel, desc in live[0].items()
                 if desc[0] in ("error", "listdir error")]
    _unmount(mnt)
    again = _mount(unions, stack, copyup)
    after = _view(again)
    problems += [f"after remount: {p}" for p in _check_owned(after, summaries)]
    if live[:2] != after[:2]:
        problems.append("the live view differs from the view after a remount:\n"
                        + _view_diff(live, after, "live", "after remount"))
    moved = {rel: (ino, after[2].get(rel)) for rel, ino in live[2].items()
             if rel in after[2] and after[2][rel] != ino}
    if moved:
        problems.append(f"st_ino changed across the remount (path: before, after): "
                        f"{dict(list(moved.items())[:10])}")
    if problems:
        shown = "\n".join(problems[:40])
        pytest.fail(f"seed {seed} (copyup={copyup}), {len(problems)} problems:\n{shown}\n"
                    f"operation log tails:\n{_log_tail(tmp_path / 'logs')}", pytrace=False)


@pytest.mark.parametrize("copyup", COPYUP_MODES)
@pytest.mark.parametrize("seed", CONCURRENT_SEEDS, ids=lambda s: f"seed{s}")
def test_concurrent(seed, copyup, tmp_path, unions, stack):
    _concurrent(seed, CONCURRENT_OPS, copyup, tmp_path, unions, stack)


@pytest.mark.long
@pytest.mark.parametrize("copyup", COPYUP_MODES)
@pytest.mark.parametrize("seed", LONG_CONCURRENT_SEEDS, ids=lambda s: f"seed{s}")
def test_concurrent_long(seed, copyup, tmp_path, unions, stack, long_run):
    _concurrent(seed, LONG_CONCURRENT_OPS, copyup, tmp_path, unions, stack)


@pytest.mark.parametrize("seed", CONCURRENT_SEEDS, ids=lambda s: f"seed{s}")
def test_concurrent_control_ext4(seed, tmp_path):
    """The same workload on plain ext4 passes every check: what the union
    test reports is the union's, not the test's."""
    root = _make_model(tmp_path / "ext4")
    problems, summaries = _run_concurrent(seed, CONCURRENT_OPS, root, tmp_path / "logs")
    problems += _check_owned(_view(root), summaries)
    assert not problems, "\n".join(problems[:40]) + "\n" + _log_tail(tmp_path / "logs")
