"""Directory listings being read: each directory's names in a fixed order,
found again by the offsets the kernel hands back.

The daemon keeps no state per open directory (the kernel opens them
itself where it may keep their listings, ``fs.opendir``), so an offset
must say where to read on by itself.  Names are ordered by a cookie made
from the name (as ext4 orders them by hash), and the offset given with a
name is its cookie: reading on from it means the first name with a larger
cookie, in whatever listing of the directory is at hand.  So a reader
neither repeats nor skips a name that stayed, whether it reads on in the
listing it started in, in one taken since by another reader (a listing
is taken afresh at each read from the start), or in a fresh one after its
own was dropped; names added or removed meanwhile may show or not, as
POSIX allows.  (Names whose cookies collide take the next free ones, in
name order; one of them may move when another of them comes or goes.)
Cookies fit in 31 bits, so 32-bit programs can use the offsets too.

A listing is kept while it is read, and goes once its last name is
given: that name's offset is :data:`END`, so the read the kernel makes
after it (which ends the listing) needs nothing kept.  (Nothing else is
kept per directory: small objects left behind by each listing would pin
the daemon's memory pages long after.)  Listings are bounded
(:data:`KEPT`, :data:`KEPT_NAMES`), the least recently used going first.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import OrderedDict

from .tree import Entry, Listed

#: at most this many listings, and names in all of them, are kept
KEPT = 64
KEPT_NAMES = 100_000
#: the offsets of "." and "..", then the cookies' range: room is left above
#: it for the names whose cookies collide (each takes the next free one)
_DOT, _DOTDOT, _FIRST = 1, 2, 3
_SPAN = (1 << 31) - (1 << 20) - _FIRST
#: the offset of a listing's last name: nothing comes after it
END = (1 << 31) - 1


@dataclasses.dataclass
class Listing:
    """A directory's names as listed at one time, and its entry then.
    Each name maps to where it was listed, or, for "." and "..", an inode."""

    entry: Entry
    names: list[tuple[str, Listed | int]]
    #: each name's offset, ascending
    cookies: list[int]

    def after(self, offset: int) -> int:
        """The index of the first name to give after ``offset``."""
        return bisect.bisect_right(self.cookies, offset)

    def offset(self, index: int) -> int:
        """The offset given with name ``index``."""
        return END if index == len(self.names) - 1 else self.cookies[index]


def listing(entry: Entry, dots: tuple[int, int], names: dict[str, Listed]) -> Listing:
    """``names`` of the directory ``entry`` in cookie order, after "." and
    ".." (the inodes ``dots``)."""
    # A name's cookie: stable for the daemon's life (str hashes are, in one process).
    ordered = sorted((_FIRST + hash(name) % _SPAN, name, where) for name, where in names.items())
    cookies, last = [_DOT, _DOTDOT], _DOTDOT
    for cookie, _, _ in ordered:
        last = cookie if cookie > last else last + 1
        cookies.append(last)
    return Listing(entry, [(".", dots[0]), ("..", dots[1]),
                           *((name, where) for _, name, where in ordered)], cookies)


class Listings:
    """The kept listings, by directory inode (see the module's docstring)."""

    def __init__(self):
        self._kept: OrderedDict[int, Listing] = OrderedDict()
        self._names = 0

    def get(self, ino: int) -> Listing | None:
        found = self._kept.get(ino)
        if found is not None:
            self._kept.move_to_end(ino)
        return found

    def keep(self, ino: int, taken: Listing) -> None:
        """``taken`` is directory ``ino``'s listing from now on."""
        self._drop(ino)
        self._kept[ino] = taken
        self._names += len(taken.names)
        while len(self._kept) > 1 and (len(self._kept) > KEPT or self._names > KEPT_NAMES):
            self._drop(next(iter(self._kept)))

    def ended(self, ino: int, taken: Listing) -> None:
        """``taken`` was read to its end."""
        if self._kept.get(ino) is taken:
            self._drop(ino)

    def _drop(self, ino: int) -> None:
        if ino in self._kept:
            self._names -= len(self._kept.pop(ino).names)
