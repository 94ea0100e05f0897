"""Directory listings being read: the names a directory had when a reader
started at its beginning, in a fixed order, found again by the offset the
kernel hands back.

The daemon keeps no state per open directory (the kernel opens them
itself where it may keep their listings, ``fs.opendir``), so a listing
cannot hang on a handle.  Instead every offset given out names its
snapshot and a place in it: ``snapshot << 32 | index``.  A listing read on
from the middle reads on in its own snapshot, so it neither repeats nor
skips a name, however many readers list the same directory at once.

Snapshots are bounded (:data:`KEPT`, :data:`KEPT_NAMES`): the oldest goes
first, and a snapshot read to its end goes at once (its last name's offset,
:data:`_END`, needs nothing, nor does a reader answered with no names).  A
reader coming back to a snapshot that went gets a fresh one, read from the
same index.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import OrderedDict

from .tree import Entry, Listed

#: at most this many snapshots, and names in all of them, are kept
KEPT = 64
KEPT_NAMES = 100_000
_INDEX_BITS = 32
_END = (1 << _INDEX_BITS) - 1


@dataclasses.dataclass
class Listing:
    """A directory's names when read from its start, and its entry then.
    Each name maps to where it was listed, or, for "." and "..", an inode."""

    ino: int
    entry: Entry
    names: list[tuple[str, Listed | int]]
    snapshot: int

    def offset_after(self, index: int) -> int:
        """The offset at which reading resumes after name ``index``."""
        after = index + 1 if index + 1 < len(self.names) else _END
        return self.snapshot << _INDEX_BITS | after

    @staticmethod
    def at_end(offset: int) -> bool:
        """Whether ``offset`` is a listing's last (reading on gives nothing)."""
        return offset & _END == _END


class Listings:
    """The snapshots of the listings being read (see the module's docstring)."""

    def __init__(self):
        self._kept: OrderedDict[int, Listing] = OrderedDict()
        self._names = 0
        self._numbers = itertools.count(1)

    def resume(self, ino: int, offset: int) -> tuple[Listing | None, int]:
        """The snapshot of directory ``ino`` that ``offset`` reads on in,
        if it is kept, and the index to read on from (None, -1 at the end
        of a listing)."""
        snapshot, index = offset >> _INDEX_BITS, offset & _END
        if index == _END:
            return None, -1
        listing = self._kept.get(snapshot)
        if listing is None or listing.ino != ino:
            return None, index
        self._kept.move_to_end(snapshot)
        return listing, index

    def start(self, ino: int, entry: Entry, names: list[tuple[str, Listed | int]]) -> Listing:
        """A new snapshot of directory ``ino``, kept until read to its end
        or pushed out by newer ones."""
        listing = Listing(ino, entry, names, next(self._numbers))
        self._kept[listing.snapshot] = listing
        self._names += len(names)
        while len(self._kept) > 1 and (len(self._kept) > KEPT or self._names > KEPT_NAMES):
            self._drop(next(iter(self._kept)))
        return listing

    def ended(self, listing: Listing) -> None:
        """``listing`` was read to its end: its last offset needs nothing."""
        if listing.snapshot in self._kept:
            self._drop(listing.snapshot)

    def _drop(self, snapshot: int) -> None:
        self._names -= len(self._kept.pop(snapshot).names)
