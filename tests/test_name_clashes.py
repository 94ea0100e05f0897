"""Names that clash across many branches, through a real mount.

One hand-made stack of four read-only layers (L0 on top) under a writable
branch holds every kind of clash: a file over a directory over a file, a
directory over a file over a directory, symlinks over both, whiteouts at
three levels (and names made again above them), opaque directories in the
middle, names that differ only in case.  The stack is written in the aufs
format for pyunion and in the overlayfs format for the kernel; both mounts
must show the same tree, before and after the same writes, and pyunion's
must match the rules written out below (which branch each name comes from).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from pathlib import Path

import pytest

from helpers import DIR, build, pyunion
from unionfs.layer import renameat2
from stacks import BASE_MTIME_NS, WHITEOUT_PREFIX, Dir, File, Link, Whiteout
from test_writes_against_overlayfs import Pair

T = BASE_MTIME_NS
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _layer(index: int, spec: dict) -> dict:
    """A layer from {path: "f" | "d" | "o" (opaque dir) | "w" | Link}; each
    file's content names its layer and path, so where it came from shows."""
    made = {"": Dir(0o755, False, T)}
    for path, kind in spec.items():
        made[path] = kind if isinstance(kind, Link) else {
            "f": lambda: File(f"L{index}:{path}".encode(), 0o644, T),
            "d": lambda: Dir(0o755, False, T), "o": lambda: Dir(0o755, True, T),
            "w": lambda: Whiteout(T)}[kind]()
    return made


STACK = [_layer(i, spec) for i, spec in enumerate([
    {  # L0
        "n": "f", "alt": "d", "alt/a0": "f", "merge": "d", "merge/m0": "f", "merge/sub": "d",
        "merge/sub/s0": "f", "opq": "d", "opq/o0": "f", "rebornd": "d", "rebornd/r0": "f",
        "sym": Link("alt", T), "dsym": "d", "dsym/z0": "f", "Case": "f", "mid": "f",
        "top": "w", "deep": "d", "deep/k0": "f", "deep/sub": "d", "deep/sub/s0": "f",
    },
    {  # L1
        "n": "d", "n/inner": "f", "alt": "f", "dfd": "d", "dfd/b1": "f", "merge": "d",
        "merge/m1": "f", "opq": "o", "opq/o1": "f", "reborn": "f", "rebornd": "d",
        "rebornd/r1": "f", "sym": "d", "sym/s1": "f", "dsym": Link("n", T), "fsym": "f",
        "case": "d", "case/c1": "f", "mid": "w", "deep": "d", "deep/k1": "f",
        "deep/sub": "o", "deep/sub/s1": "f", "n2": "f",
    },
    {  # L2: every whiteout here may be a character device (see the chardev case)
        "n": "f", "alt": "d", "alt/c2": "f", "dfd": "f", "merge": "d", "merge/m2": "f",
        "merge/shared": "f", "opq": "d", "opq/o2": "f", "reborn": "w", "rebornd": "w",
        "gone": "w", "gonedir": "w", "sym": "f", "dsym": "d", "dsym/y2": "f",
        "fsym": Link("n", T), "CASE": Link("Case", T), "mid": "f", "deep": "d", "deep/k2": "f",
        "deep/k4": "w", "top": "d", "top/t2": "f",
    },
    {  # L3
        "n": "d", "n/deep": "f", "alt": "f", "dfd": "d", "dfd/d3": "f", "merge": "d",
        "merge/m3": "f", "merge/shared": "f", "merge/sub": "d", "merge/sub/s3": "f",
        "opq": "d", "opq/o3": "f", "reborn": "f", "rebornd": "d", "rebornd/r3": "f",
        "gone": "f", "gonedir": "d", "gonedir/g3": "f", "cAse": "f", "mid": "f",
        "deep": "d", "deep/k4": "f", "deep/k5": "f", "deep/sub": "d", "deep/sub/s3": "f",
        "n2": "d", "n2/under": "f",
    },
])]

# What the union shows: path -> (kind, layer of its topmost entry); a file's
# content is "L{layer}:{path}", a symlink's target is the stack's.
EXPECTED = {
    "n": ("f", 0),  # file over dir over file over dir
    "alt": ("d", 0), "alt/a0": ("f", 0),  # dir over file over dir over file
    "dfd": ("d", 1), "dfd/b1": ("f", 1),  # the same, from one layer down
    "merge": ("d", 0), "merge/m0": ("f", 0), "merge/m1": ("f", 1), "merge/m2": ("f", 2),
    "merge/m3": ("f", 3), "merge/shared": ("f", 2),
    "merge/sub": ("d", 0), "merge/sub/s0": ("f", 0), "merge/sub/s3": ("f", 3),  # skips two
    "opq": ("d", 0), "opq/o0": ("f", 0), "opq/o1": ("f", 1),  # merges down to the opaque one
    "reborn": ("f", 1),  # made again above a whiteout
    "rebornd": ("d", 0), "rebornd/r0": ("f", 0), "rebornd/r1": ("f", 1),  # not r3
    "sym": ("l", 0),  # a symlink over a dir over a file
    "dsym": ("d", 0), "dsym/z0": ("f", 0),  # a symlink below ends the merge
    "fsym": ("f", 1),
    "Case": ("f", 0), "case": ("d", 1), "case/c1": ("f", 1), "CASE": ("l", 2), "cAse": ("f", 3),
    "mid": ("f", 0),  # over a whiteout, over files
    "deep": ("d", 0), "deep/k0": ("f", 0), "deep/k1": ("f", 1), "deep/k2": ("f", 2),
    "deep/k5": ("f", 3), "deep/sub": ("d", 0), "deep/sub/s0": ("f", 0), "deep/sub/s1": ("f", 1),
    "n2": ("f", 1),
}
HIDDEN = ["gone", "gonedir", "gonedir/g3", "top", "top/t2", "deep/k4", "n/inner", "n/deep",
          "alt/c2", "dfd/d3", "opq/o2", "opq/o3", "rebornd/r3", "dsym/y2", "sym/s1",
          "deep/sub/s3", "n2/under"]


def _kind(mode: int) -> str:
    return "d" if stat.S_ISDIR(mode) else "l" if stat.S_ISLNK(mode) else "f" if stat.S_ISREG(
        mode) else oct(mode)


def view(mnt: Path) -> dict[str, tuple]:
    """Each visible path: (kind, content or link target).  Checks on the
    way that a listing holds each name once and that its d_type and d_ino
    are those lstat gives."""
    seen = {}

    def walk(rel: str) -> None:
        entries = list(os.scandir(mnt / rel if rel else mnt))
        names = [e.name for e in entries]
        assert len(names) == len(set(names)), f"{rel or '.'} lists a name twice: {sorted(names)}"
        for e in entries:
            path = f"{rel}/{e.name}" if rel else e.name
            st = os.lstat(e.path)
            dtype = "d" if e.is_dir(follow_symlinks=False) else "l" if e.is_symlink() else "f"
            assert dtype == _kind(st.st_mode), f"{path}: d_type {dtype}, lstat {_kind(st.st_mode)}"
            assert e.inode() == st.st_ino, f"{path}: d_ino {e.inode()}, st_ino {st.st_ino}"
            kind = _kind(st.st_mode)
            seen[path] = (kind, os.readlink(e.path) if kind == "l" else
                          Path(e.path).read_text() if kind == "f" else None)
            if kind == "d":
                walk(path)

    walk("")
    return seen


def expected_view() -> dict[str, tuple]:
    return {path: (kind, STACK[layer][path].target if kind == "l"
                   else f"L{layer}:{path}" if kind == "f" else None)
            for path, (kind, layer) in EXPECTED.items()}


def _errno_of(path: Path) -> str:
    try:
        os.lstat(path)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "found"


def _as_device_whiteouts(layer: Path) -> None:
    """Turn the layer's ``.wh.NAME`` files into overlayfs's whiteouts."""
    for marker in list(layer.rglob(WHITEOUT_PREFIX + "*")):
        marker.unlink()
        os.mknod(marker.with_name(marker.name.removeprefix(WHITEOUT_PREFIX)), stat.S_IFCHR, 0)


@pytest.fixture(params=["aufs", "chardev"])
def pair(request, tmp_path, unions):
    """The stack mounted by pyunion (with L2's whiteouts as ``.wh.`` files,
    or as 0/0 character devices) and by overlayfs."""
    made = Pair(STACK, tmp_path, unions)
    if request.param == "chardev":
        _as_device_whiteouts(made.union_lowers[2])
    with made:
        yield made


def test_each_name_comes_from_its_topmost_branch(pair):
    seen = view(pair.union)
    assert seen == expected_view()
    assert view(pair.ovl) == seen
    for rel in HIDDEN:
        assert _errno_of(pair.union / rel) in ("ENOENT", "ENOTDIR"), rel
        assert _errno_of(pair.union / rel) == _errno_of(pair.ovl / rel), rel


def test_st_ino_is_the_topmost_entrys(pair):
    for path, (kind, layer) in EXPECTED.items():
        real = os.lstat(pair.union_lowers[layer] / path).st_ino
        assert os.lstat(pair.union / path).st_ino == real, path


def _writes(mnt: Path) -> list[str]:
    """Writes over clashing names; each one's outcome (errno name or "ok")."""
    def attempt(change) -> str:
        try:
            change()
        except OSError as exc:
            return errno.errorcode[exc.errno]
        return "ok"

    def append(rel):
        with open(mnt / rel, "a") as f:
            f.write("+")

    return [
        # copy-up of a file (L1) that is a directory below (L3)
        attempt(lambda: append("n2")),
        # rm -rf of merged directories, then mkdir: nothing from below comes back
        attempt(lambda: shutil.rmtree(mnt / "merge")), attempt(lambda: (mnt / "merge").mkdir()),
        attempt(lambda: shutil.rmtree(mnt / "opq")), attempt(lambda: (mnt / "opq").mkdir()),
        # a file renamed over a file that has directories below, then removed
        attempt(lambda: os.rename(mnt / "fsym", mnt / "n")),
        attempt(lambda: os.unlink(mnt / "n")),
        # a directory onto a whited-out name whose directory below has content
        attempt(lambda: os.rename(mnt / "dfd", mnt / "gonedir")),
        # a merged directory to a new name, and its old name made again
        attempt(lambda: os.rename(mnt / "rebornd", mnt / "fresh")),
        attempt(lambda: (mnt / "rebornd").mkdir()),
        # refused: a file over a directory, a directory over a file or symlink
        attempt(lambda: os.rename(mnt / "Case", mnt / "case")),
        attempt(lambda: os.rename(mnt / "alt", mnt / "mid")),
        attempt(lambda: os.rename(mnt / "deep", mnt / "sym")),
        # a symlink over a file; names made again over whiteouts at L0 and L2
        attempt(lambda: os.rename(mnt / "CASE", mnt / "cAse")),
        attempt(lambda: (mnt / "gone").write_text("new")),
        attempt(lambda: (mnt / "top").mkdir()),
        # the merged directory "deep/sub" (opaque in L1) to another directory
        attempt(lambda: os.rename(mnt / "deep/sub", mnt / "alt/sub")),
        # in a merged directory with a whiteout in L2: a name made over it by rename
        attempt(lambda: (mnt / "deep/new").write_text("new")),
        attempt(lambda: os.rename(mnt / "deep/k5", mnt / "deep/k4")),
        # a name over a whiteout over a file, removed
        attempt(lambda: os.unlink(mnt / "reborn")),
        # a directory (over a file, over a directory) swapped with a copied-up file
        attempt(lambda: renameat2(AT_FDCWD, str(mnt / "alt"), AT_FDCWD, str(mnt / "n2"),
                                  RENAME_EXCHANGE)),
    ]


def test_writes_over_clashes_match_overlayfs_and_the_rules(pair, unions):
    n2_ino = os.stat(pair.union / "n2").st_ino
    fresh_ino = os.stat(pair.union / "rebornd").st_ino
    outcomes = _writes(pair.union)
    assert outcomes == _writes(pair.ovl)
    assert set(outcomes) == {"ok", "EISDIR", "ENOTDIR"}
    assert outcomes[10:13] == ["EISDIR", "ENOTDIR", "ENOTDIR"]
    seen = view(pair.union)
    assert view(pair.ovl) == seen

    want = expected_view()
    for gone in ("n", "fsym", "dfd", "dfd/b1", "CASE", "rebornd/r0", "rebornd/r1"):
        del want[gone]
    for rel in [p for p in want if p.startswith(("merge/", "opq/", "deep/sub"))]:
        del want[rel]
    want.update({
        "n2": ("f", "L1:n2+"), "merge": ("d", None), "opq": ("d", None), "rebornd": ("d", None),
        "gonedir": ("d", None), "gonedir/b1": ("f", "L1:dfd/b1"),
        "fresh": ("d", None), "fresh/r0": ("f", "L0:rebornd/r0"),
        "fresh/r1": ("f", "L1:rebornd/r1"),
        "case": ("d", None), "case/c1": ("f", "L1:case/c1"), "cAse": ("l", "Case"),
        "gone": ("f", "new"), "top": ("d", None),
        "alt/sub": ("d", None), "alt/sub/s0": ("f", "L0:deep/sub/s0"),
        "alt/sub/s1": ("f", "L1:deep/sub/s1"),
        "deep/new": ("f", "new"), "deep/k4": want.pop("deep/k5"),
    })
    del want["reborn"]
    want = {_swapped(path): what for path, what in want.items()}
    assert seen == want
    for rel in AFTER_WRITES_HIDDEN:
        assert _errno_of(pair.union / rel) in ("ENOENT", "ENOTDIR"), rel
        assert _errno_of(pair.union / rel) == _errno_of(pair.ovl / rel), rel
    assert os.stat(pair.union / "alt").st_ino == n2_ino
    assert os.stat(pair.union / "fresh").st_ino == fresh_ino

    numbers = {path: os.lstat(pair.union / path).st_ino for path in seen}
    pyunion("umount", str(pair.union))
    unions.mount([pair.union_upper, *pair.union_lowers], rw=True, mnt=pair.union)
    assert view(pair.union) == seen
    assert {path: os.lstat(pair.union / path).st_ino for path in seen} == numbers


AFTER_WRITES_HIDDEN = ["merge/m3", "opq/o2", "reborn", "top/t2", "gonedir/g3", "gonedir/d3",
                       "rebornd/r0", "fresh/r3", "deep/k5", "n", "n/inner", "n/deep", "alt/c2",
                       "n2/c2", "alt/under", "n2/under"]


def _swapped(path: str) -> str:
    """Where ``path`` is once "alt" and "n2" have been exchanged."""
    top, sep, rest = path.partition("/")
    return {"alt": "n2", "n2": "alt"}.get(top, top) + sep + rest


def test_a_whiteout_beside_a_directory_stops_the_merge_below(tmp_path, unions):
    """``.wh.d`` and a directory ``d`` in one branch (an OCI layer may hold
    both): the whiteout hides what lies below, not its own branch's ``d``,
    so ``d`` does not merge with a ``d`` further down."""
    top = build(tmp_path / "top", {"d/mine": "m", ".wh.d": "", "f": "top f", ".wh.f": ""})
    low = build(tmp_path / "low", {"d/theirs": "t", "d/sub/x": "x", "f": DIR})
    mnt = unions.mount([build(tmp_path / "up", {}), top, low], rw=True)
    assert sorted(os.listdir(mnt)) == ["d", "f"]  # found by the listing first
    assert sorted(os.listdir(mnt / "d")) == ["mine"]
    assert os.stat(mnt / "d").st_nlink == 2  # not a merged directory
    assert not (mnt / "d/theirs").exists()
    assert (mnt / "f").read_text() == "top f"
    shutil.rmtree(mnt / "d")
    (mnt / "d").mkdir()
    assert os.listdir(mnt / "d") == []
