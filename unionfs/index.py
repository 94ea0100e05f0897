"""The hard-link index (overlayfs's ``index=on``): a lower file with several
names keeps one inode across copy-up.

When such a file is copied up, the copy is also linked into
``.wh..wh.pyunion/index/NUMBER`` of the writable branch (of ``workdir=``
with the overlay format: ``Upper.meta``), NUMBER being its union inode
number.  Its other names, still only below, resolve to that
index entry, so they read and write the same data; copying one of them up
is a plain ``link`` of the index entry into place.  The copy's marks carry
the union's link count (``nlink``), kept as names are added and removed,
since no real count says how many of the lower names are still visible.
Once every name is a link in the branch, the index entry is no longer
needed: ``flatten`` drops the count and then the entry.
"""

from __future__ import annotations

import contextlib
import os

from .layer import Layer, child
from .tree import Location
from .whiteout import META_DIR

INDEX_DIR = child(META_DIR, "index")


class Index:
    def __init__(self, layer: Layer, number_of):
        self.layer = layer
        self._number_of = number_of

    def find(self, lower_st: os.stat_result) -> Location | None:
        """The index entry of a lower file with several names, if it has one."""
        location = self.location(self._number_of(lower_st))
        return location if self.layer.lstat_or_none(location.path) else None

    def location(self, number: int) -> Location:
        return Location(self.layer, child(INDEX_DIR, str(number)))

    def add(self, dir_fd: int, name: str, number: int) -> None:
        """Link ``name`` (in ``dir_fd``) into the index as ``number``."""
        for directory in (META_DIR, INDEX_DIR):
            with contextlib.suppress(FileExistsError):
                self.layer.mkdir(directory, 0o700)
        self.layer.link_in(dir_fd, name, self.location(number).path)

    def remove(self, number: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.layer.unlink(self.location(number).path)

    def numbers(self) -> list[int]:
        """The numbers of the files in the index."""
        try:
            return [int(name) for name in self.layer.listdir(INDEX_DIR)]
        except FileNotFoundError:
            return []
