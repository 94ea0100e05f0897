"""The write path, checked against the kernel's overlayfs.

Each seed generates a small random stack of read-only layers (files,
directories, symlinks, a few whiteouts and opaque directories, some user.*
xattrs, names from a tiny alphabet so they clash across layers) and writes it
twice: in the aufs format for pyunion and in the overlayfs format for the
kernel, as ``test_against_overlayfs.py`` does.  Each copy gets an empty
writable upper branch and is mounted: pyunion with ``br=UP=rw:L0=ro:...``,
the kernel with ``mount -t overlay -o lowerdir=...,upperdir=...,workdir=...,
redirect_dir=on`` (so that renaming a directory that lives in a lower layer
moves it, as pyunion does, instead of failing with EXDEV).

Then a seeded random sequence of operations (create, write, truncate,
unlink, mkdir, mkfifo, rmdir, rename with and without RENAME_NOREPLACE and
RENAME_EXCHANGE, chmod, chown, symlink, link, setxattr, removexattr, utime,
reads, and descriptors used across a copy-up or an unlink) is applied to
both mounts in lockstep with plain ``os`` calls, targets picked from the
tree overlayfs shows at that moment.  Each operation runs on overlayfs
first; its outcome (what it returned, or the errno name) must be the same
on pyunion.  Should overlayfs refuse an operation with EXDEV, it is not run
on pyunion either.  Every ``CHECK_EVERY`` operations the whole visible trees
are compared (see :func:`_observe` for what is compared and what is not);
half-way and at the end both are also unmounted and mounted again over the
same branches and compared once more, so what was written to the upper
branch is checked without anything cached in the kernel or the daemon.

A failure names the seed, the operation's index, the operation, the
operations before it with their outcomes, the layers, and a diff of the
trees.  Operations are plain tuples: :func:`_replay` reruns a list of them
on fresh mounts (comparing after each), for narrowing a failure down.
"""

from __future__ import annotations

import ctypes
import difflib
import errno
import hashlib
import itertools
import os
import random
import stat
import time
from pathlib import Path

import pytest

from helpers import mounted, pyunion
from stacks import (BASE_MTIME_NS, MAX_DEPTH, NAMES, Dir, File, Layer, Shape, describe,
                    generate_stack, materialize, mount_overlay, unmount_overlay)

SEEDS = range(10)
OPS_PER_SEED = 400
CHECK_EVERY = 25

MAX_NEW_DEPTH = 4  # deepest directory a new name is made in
# Looked up directly at every comparison, listed or not.
PROBES = ["/".join(p) for depth in range(1, MAX_DEPTH + 1)
          for p in itertools.product(NAMES, repeat=depth)]
NEW_FILE_MODES = (0o644, 0o600, 0o755, 0o444, 0o4755, 0o2755, 0o000)
NEW_DIR_MODES = (0o755, 0o700, 0o555, 0o1777, 0o2775, 0o000)
OWNERS = (0, 1000, 1234)
XATTR_NAMES = ("user.a", "user.b", "user.c")

# Times in the lower layers (from BASE_MTIME_NS on), and times given to utime,
# all lie long before the test runs; times the file systems set themselves
# ("now") come after.
UTIME_RANGE_NS = (1_000_000_000 * 10**9, 1_500_000_000 * 10**9)

RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


# -- the random lower stack (made by stacks.py) -------------------------------


def _xattrs(rng: random.Random) -> tuple[tuple[str, bytes], ...]:
    if rng.random() < 0.7:
        return ()
    names = rng.sample(XATTR_NAMES, rng.randint(1, 2))
    return tuple((n, f"lower-{n}".encode() + rng.randbytes(rng.randint(0, 4)))
                 for n in sorted(names))


def _link_target(rng: random.Random) -> str:
    # Never "..", never absolute: following any chain of such links from
    # anywhere in the mount stays inside the mount, wherever a link is
    # moved to (both mounts sit in one directory, so an escape would let
    # one side see the other's writes).
    return "/".join(rng.choice(NAMES + "xy") for _ in range(rng.randint(1, 2)))


# 2-3 layers, a few whiteouts and opaque directories, some user.* xattrs.
SHAPE = Shape(layers=(2, 3), entries=(6, 16), weights=(5, 4, 2, 1), parent_opaque=0.15,
              dir_opaque=0.2, body_max=40, link_target=lambda rng, path: _link_target(rng),
              xattrs=_xattrs)


# -- operations ---------------------------------------------------------------
#
# An operation is a tuple (name, *arguments) of plain values; OPERATIONS[name]
# runs it under a mount's root and returns what it saw, as text.  Every open
# is O_NONBLOCK, so that opening a FIFO never waits for the other end.


def _at(root: str, rel: str) -> str:
    return os.path.join(root, rel) if rel else root


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _read_all(fd: int) -> bytes:
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _op_create(root, rel, mode, excl, data):
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | (os.O_EXCL if excl else 0)
    fd = os.open(_at(root, rel), flags, mode)
    try:
        return f"wrote {os.write(fd, data)}"
    finally:
        os.close(fd)


def _op_write(root, rel, how, offset, data):
    flags = {"pwrite": os.O_WRONLY, "rdwr": os.O_RDWR, "append": os.O_WRONLY | os.O_APPEND}[how]
    fd = os.open(_at(root, rel), flags | os.O_NONBLOCK)
    try:
        if how == "append":
            return f"wrote {os.write(fd, data)}"
        written = os.pwrite(fd, data, offset)
        if how == "rdwr":
            return f"wrote {written}, reads {_digest(_read_all(fd))}"
        return f"wrote {written}"
    finally:
        os.close(fd)


def _op_truncate(root, rel, how, length):
    if how == "path":
        os.truncate(_at(root, rel), length)
        return "ok"
    fd = os.open(_at(root, rel), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)
    return "ok"


def _op_read(root, rel):
    fd = os.open(_at(root, rel), os.O_RDONLY | os.O_NONBLOCK)
    try:
        return f"reads {_digest(_read_all(fd))}"
    finally:
        os.close(fd)


def _op_read_across_copy_up(root, rel, offset, data):
    """A descriptor opened for reading before a write elsewhere copies the
    file up must read the new data."""
    reader = os.open(_at(root, rel), os.O_RDONLY | os.O_NONBLOCK)
    try:
        before = _digest(_read_all(reader))
        writer = os.open(_at(root, rel), os.O_WRONLY | os.O_NONBLOCK)
        try:
            written = os.pwrite(writer, data, offset)
        finally:
            os.close(writer)
        return f"read {before}, wrote {written}, reads {_digest(_read_all(reader))}"
    finally:
        os.close(reader)


def _op_unlink_open(root, rel, offset, data):
    """A file unlinked while open stays usable through its descriptor."""
    fd = os.open(_at(root, rel), os.O_RDWR | os.O_NONBLOCK)
    try:
        os.unlink(_at(root, rel))
        written = os.pwrite(fd, data, offset)
        st = os.fstat(fd)
        return (f"wrote {written}, size {st.st_size}, nlink {st.st_nlink}, "
                f"reads {_digest(_read_all(fd))}")
    finally:
        os.close(fd)


def _op_unlink(root, rel):
    os.unlink(_at(root, rel))
    return "ok"


def _op_rmdir(root, rel):
    os.rmdir(_at(root, rel))
    return "ok"


def _op_mkdir(root, rel, mode):
    os.mkdir(_at(root, rel), mode)
    return "ok"


def _op_mkfifo(root, rel, mode):
    os.mkfifo(_at(root, rel), mode)
    return "ok"


def _op_rename(root, src, dst, flags):
    if not flags:
        os.rename(_at(root, src), _at(root, dst))
    elif _libc.renameat2(AT_FDCWD, os.fsencode(_at(root, src)), AT_FDCWD,
                         os.fsencode(_at(root, dst)), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return "ok"


def _op_chmod(root, rel, mode):
    os.chmod(_at(root, rel), mode)
    return "ok"


def _op_chown(root, rel, uid, gid, follow):
    os.chown(_at(root, rel), uid, gid, follow_symlinks=follow)
    return "ok"


def _op_symlink(root, target, rel):
    os.symlink(target, _at(root, rel))
    return "ok"


def _op_link(root, src, dst):
    os.link(_at(root, src), _at(root, dst), follow_symlinks=False)
    return "ok"


def _op_setxattr(root, rel, name, value, flags, follow):
    os.setxattr(_at(root, rel), name, value, flags, follow_symlinks=follow)
    return "ok"


def _op_removexattr(root, rel, name, follow):
    os.removexattr(_at(root, rel), name, follow_symlinks=follow)
    return "ok"


def _op_utime(root, rel, atime_ns, mtime_ns, follow):
    os.utime(_at(root, rel), ns=(atime_ns, mtime_ns), follow_symlinks=follow)
    return "ok"


OPERATIONS = {
    "create": _op_create, "write": _op_write, "truncate": _op_truncate, "read": _op_read,
    "read_across_copy_up": _op_read_across_copy_up, "unlink_open": _op_unlink_open,
    "unlink": _op_unlink, "rmdir": _op_rmdir,
    "mkdir": _op_mkdir, "mkfifo": _op_mkfifo, "rename": _op_rename, "chmod": _op_chmod,
    "chown": _op_chown, "symlink": _op_symlink, "link": _op_link, "setxattr": _op_setxattr,
    "removexattr": _op_removexattr, "utime": _op_utime,
}

WEIGHTS = {
    "create": 10, "write": 10, "truncate": 6, "read": 2, "read_across_copy_up": 2, "unlink_open": 2,
    "unlink": 8, "rmdir": 5, "mkdir": 8, "mkfifo": 1, "rename": 16, "chmod": 5, "chown": 3,
    "symlink": 5, "link": 5, "setxattr": 5, "removexattr": 3, "utime": 5,
}


def _run(root: str, op: tuple) -> str:
    try:
        return OPERATIONS[op[0]](root, *op[1:])
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


# Where an operation holds a mode, shown in octal.
_MODE_ARGUMENT = {"create": 2, "mkdir": 2, "mkfifo": 2, "chmod": 2}


def _show(op: tuple) -> str:
    args = []
    for position, arg in enumerate(op[1:], 1):
        if position == _MODE_ARGUMENT.get(op[0]):
            args.append(f"0o{arg:o}")
        elif isinstance(arg, bytes) and len(arg) > 12:
            args.append(f"{arg[:12]!r}...({len(arg)} bytes)")
        else:
            args.append(repr(arg))
    return f"{op[0]}({', '.join(args)})"


# -- picking the next operation -----------------------------------------------


def _visible(root: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every name the mount shows: relative path -> (d/f/l/p/?, its user.* xattrs)."""
    found = {"": ("d", _user_xattrs(root))}

    def walk(rel: str) -> None:
        with os.scandir(_at(root, rel)) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            sub = f"{rel}/{e.name}" if rel else e.name
            mode = e.stat(follow_symlinks=False).st_mode
            kind = ("d" if stat.S_ISDIR(mode) else "f" if stat.S_ISREG(mode)
                    else "l" if stat.S_ISLNK(mode) else "p" if stat.S_ISFIFO(mode) else "?")
            found[sub] = (kind, _user_xattrs(e.path))
            if kind == "d":
                walk(sub)

    walk("")
    return found


def _user_xattrs(path: str) -> tuple[str, ...]:
    names = os.listxattr(path, follow_symlinks=False)
    return tuple(sorted(n for n in names if n.startswith("user.")))


def _depth(rel: str) -> int:
    return rel.count("/") + 1 if rel else 0


def _next_op(rng: random.Random, visible: dict[str, tuple[str, tuple[str, ...]]]) -> tuple:
    tree = {path: kind for path, (kind, _) in visible.items()}
    paths = sorted(tree)
    entries = [p for p in paths if p]
    dirs = [p for p in paths if tree[p] == "d"]
    files = [p for p in paths if tree[p] == "f"]
    links = [p for p in paths if tree[p] == "l"]
    with_xattrs = [p for p in paths if visible[p][1]]
    empty_dirs = [d for d in dirs if d and not any(p.startswith(d + "/") for p in paths)]

    def pick(*pools, fallback=entries):
        pools = [p for p in pools if p]
        return rng.choice(rng.choice(pools)) if pools else rng.choice(fallback or [""])

    def some_path():  # now and then the root
        return "" if rng.random() < 0.03 else pick(entries)

    def new_name():
        roll = rng.random()
        if roll < 0.06 and links:
            parent = rng.choice(links)  # through a symlink (or ENOTDIR)
        elif roll < 0.10 and files:
            parent = rng.choice(files)  # ENOTDIR
        else:
            parent = rng.choice([d for d in dirs if _depth(d) < MAX_NEW_DEPTH])
        return f"{parent}/{rng.choice(NAMES)}" if parent else rng.choice(NAMES)

    def data():
        return rng.randbytes(rng.choice((1, 3, 17, 100, 700)))

    def target_file():
        return pick(files, files, files, links) if rng.random() < 0.9 else some_path()

    kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    if kind == "create":
        path = new_name() if rng.random() < 0.75 else target_file()
        return ("create", path, rng.choice(NEW_FILE_MODES), rng.random() < 0.3, data())
    if kind in ("write", "read_across_copy_up"):
        how = rng.choice(("pwrite", "rdwr", "append")) if kind == "write" else None
        offset = rng.choice((0, 0, 1, 5, 20, 60, 200))
        args = (how,) if kind == "write" else ()
        return (kind, target_file(), *args, offset, data())
    if kind == "truncate":
        return ("truncate", target_file(), rng.choice(("path", "fd")),
                rng.choice((0, 0, 1, 7, 30, 100, 5000)))
    if kind == "read":
        return ("read", target_file())
    if kind == "unlink_open":
        return ("unlink_open", target_file(), rng.choice((0, 3, 50)), data())
    if kind == "unlink":
        return ("unlink", pick(files, files, links, entries))
    if kind == "rmdir":
        return ("rmdir", pick(empty_dirs, empty_dirs, dirs[1:], entries))
    if kind == "mkdir":
        return ("mkdir", new_name(), rng.choice(NEW_DIR_MODES))
    if kind == "mkfifo":
        return ("mkfifo", new_name(), rng.choice((0o644, 0o600)))
    if kind == "rename":
        if not entries:  # renaming the root of the mount would be EXDEV (or EBUSY)
            return ("mkdir", new_name(), 0o755)
        return _next_rename(rng, entries, dirs, files, links, empty_dirs, new_name)
    if kind == "chmod":
        path = some_path()
        modes = NEW_DIR_MODES if tree.get(path) == "d" else NEW_FILE_MODES
        return ("chmod", path, rng.choice(modes))
    if kind == "chown":
        return ("chown", some_path(), rng.choice(OWNERS), rng.choice(OWNERS), rng.random() < 0.5)
    if kind == "symlink":
        return ("symlink", _link_target(rng), new_name())
    if kind == "link":
        return ("link", pick(files, files, links, entries), new_name())
    if kind == "setxattr":
        value = f"v{rng.randrange(100)}".encode() * rng.choice((1, 1, 30))
        path = some_path()
        have = visible[path][1] if path in visible else ()
        missing = [n for n in XATTR_NAMES if n not in have]
        # XATTR_CREATE and XATTR_REPLACE only where they succeed: overlayfs
        # copies an entry up before it finds out that one fails
        # (ovl_xattr_set), pyunion (pyfuse3 checks the flag with getxattr
        # first) does not, so a failing one would show as a different
        # directory link count (merged or not) with nothing wrong in pyunion.
        if rng.random() < 0.1 and missing:
            return ("setxattr", path, rng.choice(missing), value, os.XATTR_CREATE, False)
        if rng.random() < 0.1 and have:
            return ("setxattr", path, rng.choice(have), value, os.XATTR_REPLACE, False)
        return ("setxattr", path, rng.choice(XATTR_NAMES), value, 0, rng.random() < 0.7)
    if kind == "removexattr":
        if with_xattrs and rng.random() < 0.75:  # mostly one that is there
            path = rng.choice(with_xattrs)
            return ("removexattr", path, rng.choice(visible[path][1]), False)
        return ("removexattr", some_path(), rng.choice(XATTR_NAMES), rng.random() < 0.7)
    if kind == "utime":
        atime, mtime = rng.randrange(*UTIME_RANGE_NS), rng.randrange(*UTIME_RANGE_NS)
        return ("utime", some_path(), atime, mtime, rng.random() < 0.5)
    raise AssertionError(kind)


def _next_rename(rng, entries, dirs, files, links, empty_dirs, new_name) -> tuple:
    flags = rng.choices((0, RENAME_NOREPLACE, RENAME_EXCHANGE), weights=(16, 1, 2))[0]
    roll = rng.random()
    if roll < 0.35:  # a directory
        src = rng.choice(dirs[1:] or entries)
        if rng.random() < 0.4 and empty_dirs:
            dst = rng.choice(empty_dirs)  # over an empty directory
        else:
            dst = new_name()
    elif roll < 0.85:  # a file or a symlink
        src = rng.choice((files + links) or entries)
        if rng.random() < 0.35 and files:
            dst = rng.choice(files + links)  # over an existing one
        else:
            dst = new_name()
    else:  # anything over anything
        src, dst = rng.choice(entries), rng.choice(entries)
    return ("rename", src, dst, flags)


# -- looking at a mount -------------------------------------------------------


def _observe(root: str, since_ns: int) -> list[str]:
    """Everything compared between the two mounts, as text lines, in a
    fixed order (depth first, names sorted).

    Per name: type and permission bits, owner, size, link count, symlink
    target, a hash of a file's content, its user.* xattrs, and the mtime of
    a non-directory when it predates the test (a lower layer's, kept by
    copy-up, or one set with utime); a time the file system set itself
    ("now") shows as "new", as it differs between the two mounts.  Then
    every path of up to ``MAX_DEPTH`` names that the listings did not show
    is looked up, and must fail the same way.

    Not compared: st_ino, st_dev, atime and ctime; the mtime of directories
    (it moves with every name made in them, and each side makes its own
    private names in its upper branch: whiteout files, staging, opaque
    markers); the size of directories, for the same reason (on ext4 they
    happen to agree, a block each, but not on tmpfs, where the size counts
    entries).  The link count of directories is compared: both report 1 for
    a merged directory and the real count otherwise, so it differs exactly
    when one side has copied a directory up and the other has not.
    """
    lines = []

    def describe(rel: str, st: os.stat_result) -> str:
        shown = rel or "."
        mode = st.st_mode
        fields = [shown, stat.filemode(mode), f"{stat.S_IMODE(mode):04o}",
                  f"{st.st_uid}:{st.st_gid}"]
        if stat.S_ISDIR(mode):
            # 1 for a merged directory on both sides (overlayfs's
            # ovl_getattr, pyunion's _attributes_from), otherwise the real
            # count in the one branch that holds it, whose subdirectories
            # are the same on both sides.
            fields.append(f"nlink={st.st_nlink}")
        else:
            fields.append(f"size={st.st_size}")
            fields.append(f"nlink={st.st_nlink}")
            mtime = st.st_mtime_ns
            fields.append(f"mtime={mtime}" if mtime < since_ns else "mtime=new")
        path = _at(root, rel)
        if stat.S_ISLNK(mode):
            fields.append(f"-> {os.readlink(path)}")
        elif stat.S_ISREG(mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            try:
                fields.append(f"content={_digest(_read_all(fd))}")
            finally:
                os.close(fd)
        for name in sorted(os.listxattr(path, follow_symlinks=False)):
            if name.startswith("user."):
                fields.append(f"{name}={os.getxattr(path, name, follow_symlinks=False)!r}")
        return "  ".join(fields)

    def walk(rel: str) -> None:
        try:
            names = sorted(os.listdir(_at(root, rel)))
        except OSError as exc:
            lines.append(f"{rel or '.'}  listdir: {errno.errorcode[exc.errno]}")
            return
        for name in names:
            sub = f"{rel}/{name}" if rel else name
            try:
                st = os.lstat(_at(root, sub))
                lines.append(describe(sub, st))
            except OSError as exc:
                lines.append(f"{sub}  error: {errno.errorcode[exc.errno]}")
                continue
            if stat.S_ISDIR(st.st_mode):
                walk(sub)

    lines.append(describe("", os.lstat(root)))
    walk("")
    # Names the listings leave out are looked up directly too (a name that
    # is gone from its directory's listing must be gone for lookup as well).
    listed = {line.split("  ", 1)[0] for line in lines}
    for rel in PROBES:
        if rel not in listed:
            try:
                st = os.lstat(_at(root, rel))
                lines.append(f"{rel}  unlisted, but lookup finds {stat.filemode(st.st_mode)}")
            except OSError as exc:
                lines.append(f"{rel}  lookup: {errno.errorcode[exc.errno]}")
    return lines


# -- the two mounts -----------------------------------------------------------


def _mount_overlay(lowers: list[Path], upper: Path, work: Path, mnt: Path) -> None:
    options = (f"lowerdir={':'.join(map(str, lowers))},upperdir={upper},workdir={work},"
               "redirect_dir=on")
    mount_overlay(mnt, options)
    with open("/proc/self/mountinfo") as f:
        line = next(entry for entry in f if entry.split()[4] == os.path.realpath(mnt))
    assert "redirect_dir=on" in line, f"overlayfs ignored redirect_dir=on: {line}"


class Pair:
    """One stack, mounted by overlayfs (the reference) and by pyunion, each
    over an empty upper branch of its own.  Use as a context manager: the
    overlayfs mount is always undone; pyunion's is the ``unions`` fixture's
    to undo (which also checks that no read-only branch changed)."""

    def __init__(self, stack: list[Layer], base: Path, unions):
        self.unions = unions
        ovl = base / "overlayfs"
        self.ovl_lowers = [materialize(layer, ovl / "lower" / f"L{i}", overlay=True)
                           for i, layer in enumerate(stack)]
        self.ovl_upper, self.ovl_work, self.ovl = ovl / "upper", ovl / "work", ovl / "mnt"
        union = base / "pyunion"
        self.union_lowers = [materialize(layer, union / "lower" / f"L{i}", overlay=False)
                             for i, layer in enumerate(stack)]
        self.union_upper, self.union = union / "upper", union / "mnt"
        for d in (self.ovl_upper, self.ovl_work, self.ovl, self.union_upper, self.union):
            d.mkdir()

    def __enter__(self) -> Pair:
        try:
            self._mount()
        except BaseException:
            unmount_overlay(self.ovl)
            raise
        return self

    def __exit__(self, *exc) -> None:
        unmount_overlay(self.ovl)

    def _mount(self) -> None:
        self.unions.mount([self.union_upper, *self.union_lowers], rw=True, mnt=self.union)
        _mount_overlay(self.ovl_lowers, self.ovl_upper, self.ovl_work, self.ovl)

    def remount(self) -> None:
        """Unmount both and mount them again over the same branches: what
        was written to the upper branches must read back the same, with
        nothing cached by the kernel or the daemon."""
        unmount_overlay(self.ovl)
        pyunion("umount", str(self.union))
        assert not mounted(self.union), "pyunion umount left the mount behind"
        self._mount()


# -- running a sequence -------------------------------------------------------


class Disagreement(AssertionError):
    """args: (message, the operations run so far)."""


def _compare_trees(pair: Pair, since_ns: int) -> str | None:
    theirs, ours = _observe(str(pair.ovl), since_ns), _observe(str(pair.union), since_ns)
    if theirs == ours:
        return None
    return "\n".join(difflib.unified_diff(theirs, ours, "overlayfs", "pyunion", n=2, lineterm=""))


def _lockstep(pair: Pair, ops, count: int, since_ns: int, check_every: int = CHECK_EVERY,
              remount_at: tuple[int, ...] = ()) -> int:
    """Run ``count`` operations on both mounts: ``ops`` is a list of them, or
    a callable making the next one from what overlayfs shows.  The trees are
    compared every ``check_every`` operations and at the end; both sides are
    remounted after the operations numbered in ``remount_at``, and compared
    again.  Returns how many operations overlayfs refused with EXDEV;
    raises Disagreement at the first difference."""
    ovl, union = str(pair.ovl), str(pair.union)
    done: list[tuple] = []
    log: list[str] = []
    skipped = 0

    def fail(message: str, diff: str | None) -> None:
        earlier = f"  ({len(log) - 40} earlier ones not shown)\n" if len(log) > 40 else ""
        raise Disagreement(f"{message}\noperations (outcome on overlayfs / on pyunion if not the "
                           f"same):\n{earlier}" + "\n".join(log[-40:])
                           + "\ntrees (- overlayfs, + pyunion):\n" + (diff or "(no difference)"),
                           done)

    for index in range(count):
        op = ops[index] if isinstance(ops, list) else ops(_visible(ovl))
        done.append(op)
        theirs = _run(ovl, op)
        if theirs == "EXDEV":
            skipped += 1
            log.append(f"  #{index} {_show(op)} -> EXDEV on overlayfs: not run on pyunion")
            continue
        ours = _run(union, op)
        log.append(f"  #{index} {_show(op)} -> {theirs}" + ("" if ours == theirs else f" / {ours}"))
        if ours != theirs:
            fail(f"op #{index} {_show(op)}: overlayfs {theirs}, pyunion {ours}",
                 _compare_trees(pair, since_ns))
        if (index + 1) % check_every == 0 or index + 1 == count or index in remount_at:
            if diff := _compare_trees(pair, since_ns):
                fail(f"trees differ after op #{index} {_show(op)}", diff)
        if index in remount_at:
            pair.remount()
            log.append("  (both remounted)")
            if diff := _compare_trees(pair, since_ns):
                fail(f"trees differ after remounting, after op #{index} {_show(op)}", diff)
    return skipped


def _replay(stack: list[Layer], ops: list[tuple], base: Path, unions,
            remount_at: tuple[int, ...] = ()) -> None:
    """Run a fixed list of operations on fresh mounts of ``stack``, comparing
    the trees after each; raises Disagreement.  For narrowing a failure down:
    ``Disagreement.args[1]`` holds the operations a failed run made."""
    since = time.time_ns()
    with Pair(stack, base, unions) as pair:
        _lockstep(pair, ops, len(ops), since, check_every=1, remount_at=remount_at)


# -- the test -----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
def test_writes_match_overlayfs(seed, tmp_path, unions):
    stack = generate_stack(random.Random(f"lowers-{seed}"), SHAPE)
    rng = random.Random(f"ops-{seed}")
    since = time.time_ns()
    with Pair(stack, tmp_path, unions) as pair:
        assert _compare_trees(pair, since) is None, "the trees differ before any write"
        try:
            skipped = _lockstep(pair, lambda visible: _next_op(rng, visible), OPS_PER_SEED, since,
                                remount_at=(OPS_PER_SEED // 2 - 1, OPS_PER_SEED - 1))
        except Disagreement as failure:
            found = failure.args[0]
        else:
            found = None
    if found:
        pytest.fail(f"seed {seed}: pyunion differs from overlayfs at {found}\n"
                    f"layers (L0 on top):\n{describe(stack)}\n"
                    f"(the same seed makes the same operations: -k seed{seed} reruns it)",
                    pytrace=False)
    # With redirect_dir=on, overlayfs moves lower directories too.
    assert skipped <= OPS_PER_SEED // 20, f"seed {seed}: overlayfs refused {skipped} ops with EXDEV"


def test_failed_removexattr_changes_nothing(tmp_path, unions):
    """Removing an attribute an entry lacks fails with ENODATA and leaves
    the entry where it is, as overlayfs does (ovl_xattr_set looks at the
    lower entry before copying it up): a directory that lives in one lower
    layer only keeps its own link count rather than becoming a merged one
    (which reports 1), and so do its parents."""
    t = BASE_MTIME_NS
    stack = [{"": Dir(0o755, False, t), "a": Dir(0o755, False, t), "a/d": Dir(0o755, False, t),
              "a/d/e": Dir(0o755, False, t), "a/f": Dir(0o700, False, t),
              "a/f/g": File(b"g", 0o644, t)}]
    try:
        _replay(stack, [("removexattr", "a/d", "user.a", False),
                        ("removexattr", "a/f/g", "user.a", True)], tmp_path, unions)
    except Disagreement as failure:
        found = failure.args[0]
    else:
        return
    pytest.fail(found, pytrace=False)
