"""The read path, checked against the kernel's overlayfs.

Each seed generates a random stack of layers (files, directories, symlinks,
whiteouts, opaque directories, with names that clash across layers a lot) and
writes it twice: in the aufs format for pyunion (``.wh.NAME``,
``.wh..wh..opq``) and in the overlayfs format for the kernel (a 0/0
character device, the ``trusted.overlay.opaque`` xattr).  Both are mounted
read-only, and everything a reader sees (names, types, modes, sizes, link
counts, owners, mtimes, link targets, file contents) must be the same;
names that the listings hide are looked up directly as well.

A whiteout never shares a layer with the name it hides: overlayfs cannot
express that (both would be the same directory entry), though aufs can.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import random
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import mounted

SEEDS = range(20)

NAMES = "abcd"
MAX_DEPTH = 3
FILE_MODES = (0o600, 0o644, 0o755, 0o640, 0o444)
DIR_MODES = (0o755, 0o700, 0o750, 0o555, 0o711)
WHITEOUT_PREFIX = ".wh."
AUFS_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_ORIGIN_XATTR = "trusted.overlay.origin"

# One line per entry; %P is the path relative to the mount ("" for its root).
# Nothing is left out: directory sizes match because both copies of a layer
# hold the same directories, each small enough for one ext4 block, whiteout
# files or not; merged directories report one link in both.
FIND_FORMAT = r"%P\t%y\t%m\t%s\t%n\t%l\t%U\t%G\t%T@\n"
BASE_MTIME_NS = 1_600_000_000 * 10**9


# -- the random stack ---------------------------------------------------------


@dataclass(frozen=True)
class File:
    content: bytes
    mode: int
    mtime_ns: int


@dataclass(frozen=True)
class Dir:
    mode: int
    opaque: bool
    mtime_ns: int


@dataclass(frozen=True)
class Link:
    target: str
    mtime_ns: int


@dataclass(frozen=True)
class Whiteout:
    mtime_ns: int


Layer = dict  # relative path -> File | Dir | Link | Whiteout; "" is the root Dir


def _generate_stack(seed: int) -> list[Layer]:
    """3-5 layers, top first.  Within a layer a path has one kind, and the
    parents of every entry are directories of that same layer."""
    rng = random.Random(seed)
    stack = []
    for index in range(rng.randint(3, 5)):
        # Distinct mtimes per layer and entry, so attributes taken from the
        # wrong layer show up in the comparison.
        clock = iter(range(BASE_MTIME_NS + index * 10**12 + rng.randrange(10**9), 2**63, 10**9 + 7))
        layer: Layer = {"": Dir(rng.choice(DIR_MODES), False, 0)}  # root mtime set last
        for _ in range(rng.randint(4, 14)):
            depth = rng.randint(1, MAX_DEPTH)
            path = "/".join(rng.choice(NAMES) for _ in range(depth))
            kind = rng.choices(("file", "dir", "link", "whiteout"), weights=(4, 3, 2, 2))[0]
            _add(layer, path, kind, rng, clock, index)
        layer[""] = Dir(layer[""].mode, False, next(clock))
        stack.append(layer)
    return stack


def _add(layer: Layer, path: str, kind: str, rng: random.Random, clock, index: int) -> None:
    parts = path.split("/")
    parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
    if path in layer or any(p in layer and not isinstance(layer[p], Dir) for p in parents):
        return  # would conflict with what this layer already holds
    for parent in parents:
        if parent not in layer:
            layer[parent] = Dir(rng.choice(DIR_MODES), rng.random() < 0.2, next(clock))
    if kind == "file":
        body = f"L{index}:{path}:".encode() + rng.randbytes(rng.randint(0, 24))
        layer[path] = File(body, rng.choice(FILE_MODES), next(clock))
    elif kind == "dir":
        layer[path] = Dir(rng.choice(DIR_MODES), rng.random() < 0.3, next(clock))
    elif kind == "link":
        ups = "../" * rng.randint(0, len(parents))
        target = ups + "/".join(rng.choice(NAMES + "xyz") for _ in range(rng.randint(1, 2)))
        layer[path] = Link(target, next(clock))
    else:
        layer[path] = Whiteout(next(clock))


def _describe(stack: list[Layer]) -> str:
    lines = []
    for index, layer in enumerate(stack):
        for path, what in sorted(layer.items()):
            shown = path or "."
            if isinstance(what, File):
                lines.append(f"L{index} {shown} file {what.mode:o} {what.content!r}")
            elif isinstance(what, Dir):
                lines.append(f"L{index} {shown}/ dir {what.mode:o}{' opaque' if what.opaque else ''}")
            elif isinstance(what, Link):
                lines.append(f"L{index} {shown} -> {what.target}")
            else:
                lines.append(f"L{index} {shown} whiteout")
    return "\n".join(lines)


# -- writing it out -----------------------------------------------------------


def _materialize(layer: Layer, root: Path, overlay: bool) -> Path:
    """Write ``layer`` at ``root`` in the overlayfs format or the aufs one."""
    root.mkdir(parents=True)
    # Parents sort before their children.
    for path, what in sorted(layer.items(), key=lambda item: item[0].count("/") if item[0] else -1):
        target = root / path if path else root
        if isinstance(what, Dir):
            if path:
                target.mkdir()
            os.chmod(target, what.mode)
            if what.opaque:
                if overlay:
                    os.setxattr(target, OVERLAY_OPAQUE_XATTR, b"y")
                else:
                    (target / AUFS_OPAQUE).touch()
        elif isinstance(what, File):
            target.write_bytes(what.content)
            os.chmod(target, what.mode)
        elif isinstance(what, Link):
            os.symlink(what.target, target)
        elif overlay:
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            # overlayfs lists a directory that merges with nothing below
            # straight from its layer, whiteouts included, unless the
            # directory is marked as one that may hold whiteouts: an origin
            # xattr, whose empty value means "copied up, origin unknown"
            # (fs/overlayfs: ovl_dir_is_real, OVL_WHITEOUTS).  aufs hides
            # whiteouts everywhere, so the overlayfs copy carries the mark.
            os.setxattr(target.parent, OVERLAY_ORIGIN_XATTR, b"")
        else:
            (target.parent / (WHITEOUT_PREFIX + target.name)).touch()
    # Deepest first, so setting a child's time cannot disturb its parent's.
    for path, what in sorted(layer.items(), key=lambda item: -item[0].count("/") if item[0] else 1):
        if isinstance(what, Whiteout) and not overlay:
            target = root / os.path.dirname(path) / (WHITEOUT_PREFIX + os.path.basename(path))
        else:
            target = root / path if path else root
        os.utime(target, ns=(what.mtime_ns, what.mtime_ns), follow_symlinks=False)
    return root


# -- looking at a mount -------------------------------------------------------


def _observe(mnt: Path, probes: list[str]) -> list[str]:
    """Everything a reader of ``mnt`` can see, as sorted text lines; then
    ``lstat`` of each path in ``probes``, so names hidden from the listings
    are looked up too."""
    found = subprocess.run(["find", str(mnt), "-printf", FIND_FORMAT],
                           capture_output=True, text=True, timeout=60)
    # Sorted here rather than by sort(1): the same order, without a locale.
    lines = sorted(f"find\t{line}" for line in found.stdout.splitlines())
    if found.returncode or found.stderr:
        lines.append(f"find failed ({found.returncode}): {found.stderr.replace(str(mnt), 'MNT')}")

    def walk(rel: str) -> None:
        try:
            names = sorted(os.listdir(mnt / rel))
        except OSError as exc:
            lines.append(f"listdir\t{rel}\terror {exc.strerror}")
            return
        lines.append(f"listdir\t{rel}\t{' '.join(names)}")
        for name in names:
            sub = f"{rel}/{name}" if rel else name
            path = mnt / sub
            try:
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):
                    walk(sub)
                elif stat.S_ISLNK(st.st_mode):
                    lines.append(f"readlink\t{sub}\t{os.readlink(path)}")
                elif stat.S_ISREG(st.st_mode):
                    with open(path, "rb") as f:
                        lines.append(f"content\t{sub}\t{hashlib.sha256(f.read()).hexdigest()}")
                else:
                    lines.append(f"special\t{sub}\t{st.st_mode:o} rdev={st.st_rdev}")
            except OSError as exc:
                lines.append(f"error\t{sub}\t{exc.strerror}")

    walk("")
    for rel in probes:
        try:
            st = os.lstat(mnt / rel)
        except OSError as exc:
            lines.append(f"probe\t{rel}\t{errno.errorcode[exc.errno]}")
        else:
            lines.append(f"probe\t{rel}\t{stat.filemode(st.st_mode)} {st.st_size} {st.st_nlink} "
                         f"{st.st_uid} {st.st_gid} {st.st_mtime_ns}")
    return lines


def _reserved_names(lines: list[str]) -> list[str]:
    bad = []
    for line in lines:
        kind, rel, rest = (line.split("\t", 2) + ["", ""])[:3]
        names = rel.split("/") + (rest.split(" ") if kind == "listdir" else [])
        if any(n.startswith(WHITEOUT_PREFIX) for n in names):
            bad.append(line)
    return bad


def _mount_overlay(layers: list[Path], mnt: Path) -> None:
    mnt.mkdir()
    lowerdir = ":".join(str(layer) for layer in layers)
    result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}",
                             str(mnt)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"mount -t overlay failed: {result.stderr}"
    assert mounted(mnt, "overlay")


def _unmount_overlay(mnt: Path) -> None:
    if mounted(mnt):
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
    for _ in range(20):  # busy: detach it rather than leave it behind
        if not mounted(mnt):
            return
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
    assert not mounted(mnt), f"overlayfs at {mnt} would not unmount"


# -- the test -----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
def test_read_path_matches_overlayfs(seed, tmp_path, unions):
    stack = _generate_stack(seed)
    aufs = [_materialize(layer, tmp_path / "aufs" / f"L{i}", overlay=False)
            for i, layer in enumerate(stack)]
    ovl = [_materialize(layer, tmp_path / "ovl" / f"L{i}", overlay=True)
           for i, layer in enumerate(stack)]

    # Every name any layer holds, visible in the union or not.
    probes = sorted({path for layer in stack for path in layer if path})

    union_mnt = unions.mount(aufs)
    union_seen = _observe(union_mnt, probes)

    overlay_mnt = tmp_path / "overlay"
    try:
        _mount_overlay(ovl, overlay_mnt)
        overlay_seen = _observe(overlay_mnt, probes)
    finally:
        _unmount_overlay(overlay_mnt)

    layers = _describe(stack)
    assert not _reserved_names(union_seen), (
        f"seed {seed}: reserved names show in pyunion:\n" + "\n".join(_reserved_names(union_seen))
        + f"\nlayers (L0 on top):\n{layers}")
    assert not _reserved_names(overlay_seen), (
        f"seed {seed}: reserved names show in overlayfs:\n"
        + "\n".join(_reserved_names(overlay_seen)) + f"\nlayers (L0 on top):\n{layers}")
    if union_seen != overlay_seen:
        diff = "\n".join(difflib.unified_diff(overlay_seen, union_seen, "overlayfs", "pyunion",
                                              n=1, lineterm=""))
        pytest.fail(f"seed {seed}: pyunion differs from overlayfs\n{diff}\n"
                    f"layers (L0 on top):\n{layers}", pytrace=False)
