"""Random layered stacks, for checking pyunion against the kernel's overlayfs.

Owns what ``test_against_overlayfs.py`` (the read path) and
``test_writes_against_overlayfs.py`` (the write path) share: the model of a
stack of layers (:class:`File`, :class:`Dir`, :class:`Link`,
:class:`Whiteout`), its seeded generation (each test picks the sizes and odds
in a :class:`Shape`), writing a layer out in the aufs format for pyunion or in
the overlayfs format for the kernel, and mounting and unmounting overlayfs.
How a mount is observed and compared stays with each test.
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from helpers import mounted

NAMES = "abcd"
MAX_DEPTH = 3  # of the generated trees
FILE_MODES = (0o600, 0o644, 0o755, 0o640, 0o444)
DIR_MODES = (0o755, 0o700, 0o750, 0o555, 0o711)
WHITEOUT_PREFIX = ".wh."
AUFS_OPAQUE = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_ORIGIN_XATTR = "trusted.overlay.origin"
BASE_MTIME_NS = 1_600_000_000 * 10**9

Xattrs = tuple[tuple[str, bytes], ...]


# -- the model ----------------------------------------------------------------


@dataclass(frozen=True)
class File:
    content: bytes
    mode: int
    mtime_ns: int
    xattrs: Xattrs = ()


@dataclass(frozen=True)
class Dir:
    mode: int
    opaque: bool
    mtime_ns: int
    xattrs: Xattrs = ()


@dataclass(frozen=True)
class Link:
    target: str
    mtime_ns: int


@dataclass(frozen=True)
class Whiteout:
    mtime_ns: int


Layer = dict  # relative path -> File | Dir | Link | Whiteout; "" is the root Dir


def no_xattrs(rng: random.Random) -> Xattrs:
    return ()


@dataclass(frozen=True)
class Shape:
    """How a test wants its random stacks."""

    layers: tuple[int, int]  # how many layers: fewest, most
    entries: tuple[int, int]  # how many paths each layer draws: fewest, most
    weights: tuple[int, int, int, int]  # odds of a file, dir, link, whiteout
    parent_opaque: float  # chance a directory made as a parent is opaque
    dir_opaque: float  # chance a directory drawn as such is opaque
    body_max: int  # most random bytes after a file's "L{index}:{path}:" tag
    link_target: Callable[[random.Random, str], str]  # (rng, the link's path) -> target
    xattrs: Callable[[random.Random], Xattrs] = no_xattrs  # drawn for each file and dir


# -- the random stack ---------------------------------------------------------


def generate_stack(rng: random.Random, shape: Shape) -> list[Layer]:
    """A stack drawn from ``rng``, top layer first.  Within a layer a path has
    one kind, and the parents of every entry are directories of that same
    layer."""
    stack = []
    for index in range(rng.randint(*shape.layers)):
        # Distinct mtimes per layer and entry, so attributes taken from the
        # wrong layer show up in the comparison.
        clock = iter(range(BASE_MTIME_NS + index * 10**12 + rng.randrange(10**9), 2**63, 10**9 + 7))
        layer: Layer = {"": Dir(rng.choice(DIR_MODES), False, 0)}  # root mtime set last
        for _ in range(rng.randint(*shape.entries)):
            path = "/".join(rng.choice(NAMES) for _ in range(rng.randint(1, MAX_DEPTH)))
            kind = rng.choices(("file", "dir", "link", "whiteout"), weights=shape.weights)[0]
            _add(layer, path, kind, rng, clock, index, shape)
        layer[""] = Dir(layer[""].mode, False, next(clock))
        stack.append(layer)
    return stack


def _add(layer: Layer, path: str, kind: str, rng: random.Random, clock, index: int,
         shape: Shape) -> None:
    parts = path.split("/")
    parents = ["/".join(parts[:i]) for i in range(1, len(parts))]
    if path in layer or any(p in layer and not isinstance(layer[p], Dir) for p in parents):
        return  # would conflict with what this layer already holds
    for parent in parents:
        if parent not in layer:
            layer[parent] = Dir(rng.choice(DIR_MODES), rng.random() < shape.parent_opaque,
                                next(clock), shape.xattrs(rng))
    if kind == "file":
        body = f"L{index}:{path}:".encode() + rng.randbytes(rng.randint(0, shape.body_max))
        layer[path] = File(body, rng.choice(FILE_MODES), next(clock), shape.xattrs(rng))
    elif kind == "dir":
        layer[path] = Dir(rng.choice(DIR_MODES), rng.random() < shape.dir_opaque, next(clock),
                          shape.xattrs(rng))
    elif kind == "link":
        layer[path] = Link(shape.link_target(rng, path), next(clock))
    else:
        layer[path] = Whiteout(next(clock))


def describe(stack: list[Layer]) -> str:
    """The stack as text, one line an entry, for failure messages."""
    lines = []
    for index, layer in enumerate(stack):
        for path, what in sorted(layer.items()):
            shown = path or "."
            if isinstance(what, File):
                lines.append(f"L{index} {shown} file {what.mode:o} {what.content!r}"
                             + (f" {what.xattrs}" if what.xattrs else ""))
            elif isinstance(what, Dir):
                lines.append(f"L{index} {shown}/ dir {what.mode:o}"
                             f"{' opaque' if what.opaque else ''}"
                             + (f" {what.xattrs}" if what.xattrs else ""))
            elif isinstance(what, Link):
                lines.append(f"L{index} {shown} -> {what.target}")
            else:
                lines.append(f"L{index} {shown} whiteout")
    return "\n".join(lines)


# -- writing it out -----------------------------------------------------------


def materialize(layer: Layer, root: Path, overlay: bool) -> Path:
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
        for name, value in getattr(what, "xattrs", ()):
            os.setxattr(target, name, value)
    # Deepest first, so setting a child's time cannot disturb its parent's.
    for path, what in sorted(layer.items(), key=lambda item: -item[0].count("/") if item[0] else 1):
        if isinstance(what, Whiteout) and not overlay:
            target = root / os.path.dirname(path) / (WHITEOUT_PREFIX + os.path.basename(path))
        else:
            target = root / path if path else root
        os.utime(target, ns=(what.mtime_ns, what.mtime_ns), follow_symlinks=False)
    return root


# -- overlayfs ----------------------------------------------------------------


def mount_overlay(mnt: Path, options: str) -> None:
    """``mount -t overlay -o OPTIONS`` at ``mnt``, which must exist."""
    result = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(mnt)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"mount -t overlay -o {options} failed: {result.stderr}"
    assert mounted(mnt, "overlay")


def unmount_overlay(mnt: Path) -> None:
    if mounted(mnt):
        subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
    for _ in range(20):  # busy: detach it rather than leave it behind
        if not mounted(mnt):
            return
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
    assert not mounted(mnt), f"overlayfs at {mnt} would not unmount"
