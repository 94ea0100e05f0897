"""Trees too deep or too long for absolute paths: built and removed
relative to directory descriptors."""

from __future__ import annotations

import os
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


def fingerprint(root: Path) -> list[str]:
    """What a write could change in a tree (every change moves a ctime), by
    ``find``, which takes any depth and length."""
    listed = subprocess.run(["find", str(root), "-printf", r"%P\t%y\t%m\t%U\t%G\t%s\t%T@\t%C@\n"],
                            capture_output=True, check=True, timeout=600)
    return sorted(listed.stdout.decode(errors="surrogateescape").splitlines())
