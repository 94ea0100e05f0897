"""Trees too deep or too long for absolute paths: built and removed
relative to directory descriptors."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path


def make_chain(root: Path | int, names: list[str]) -> None:
    """Make the directories ``root/names[0]/names[1]/...``, one level at a
    time, so that no path handed to the kernel is longer than one name."""
    fd = root if isinstance(root, int) else os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            below = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            if fd != root:
                os.close(fd)
            fd = below
    finally:
        if fd != root:
            os.close(fd)


def remove_tree(path: Path) -> None:
    """``rm -rf``, which (unlike Python's ``shutil.rmtree``) takes any depth."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=True, timeout=600)


def fingerprint(root: Path) -> dict[str, tuple]:
    """What a write could change in a tree of long paths (mode, owner, size,
    mtime, ctime, data, xattrs per relative path), read relative to
    directory descriptors; for trees no deeper than the recursion limit."""
    found = {}
    for dir_path, dir_names, file_names, dir_fd in os.fwalk(root):
        for name in [*dir_names, *file_names]:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            data = b""
            if stat.S_ISREG(st.st_mode):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
                with os.fdopen(fd, "rb") as f:
                    data = f.read()
            xattrs = sorted(os.listxattr(f"/proc/self/fd/{dir_fd}/{name}", follow_symlinks=False))
            found[os.path.join(os.path.relpath(dir_path, root), name)] = (
                st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                data, xattrs)
    return found
