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
from pathlib import Path

import pytest

from stacks import (NAMES, WHITEOUT_PREFIX, Shape, describe, generate_stack, materialize,
                    mount_overlay, unmount_overlay)

SEEDS = range(20)

# One line per entry; %P is the path relative to the mount ("" for its root).
# Nothing is left out: directory sizes match because both copies of a layer
# hold the same directories, each small enough for one ext4 block, whiteout
# files or not; merged directories report one link in both.
FIND_FORMAT = r"%P\t%y\t%m\t%s\t%n\t%l\t%U\t%G\t%T@\n"


def _link_target(rng: random.Random, path: str) -> str:
    # Relative; its "../" never climb above the layer's root.
    ups = "../" * rng.randint(0, path.count("/"))
    return ups + "/".join(rng.choice(NAMES + "xyz") for _ in range(rng.randint(1, 2)))


# 3-5 layers, with more whiteouts and opaque directories than the write test's.
SHAPE = Shape(layers=(3, 5), entries=(4, 14), weights=(4, 3, 2, 2), parent_opaque=0.2,
              dir_opaque=0.3, body_max=24, link_target=_link_target)


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


# -- the test -----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
def test_read_path_matches_overlayfs(seed, tmp_path, unions):
    stack = generate_stack(random.Random(seed), SHAPE)
    aufs = [materialize(layer, tmp_path / "aufs" / f"L{i}", overlay=False)
            for i, layer in enumerate(stack)]
    ovl = [materialize(layer, tmp_path / "ovl" / f"L{i}", overlay=True)
           for i, layer in enumerate(stack)]

    # Every name any layer holds, visible in the union or not.
    probes = sorted({path for layer in stack for path in layer if path})

    union_mnt = unions.mount(aufs)
    union_seen = _observe(union_mnt, probes)

    overlay_mnt = tmp_path / "overlay"
    try:
        overlay_mnt.mkdir()
        mount_overlay(overlay_mnt, "lowerdir=" + ":".join(str(layer) for layer in ovl))
        overlay_seen = _observe(overlay_mnt, probes)
    finally:
        unmount_overlay(overlay_mnt)

    layers = describe(stack)
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
