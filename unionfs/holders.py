"""Where a name first lies among the read-only parts of a directory merged
from many branches: a lookup asks one dict, instead of each branch's kept
names in turn (a new name under 64 branches cost 1.4 times one under one).

An index is made for a directory whose read-only parts are at least
:data:`DEEP`, from those branches' kept names (``Layer.kept_names``), where
the mount trusts them as read (``udba=none``: no branch checks or watches
its directories).  It holds, for every name and every name a whiteout
hides, the first read-only part that has it: the parts above that one
need no look.  Any change of kept names (``Layer.names_generation``: a
live change of the stack) drops every index.  Indexes are bounded
(:data:`KEPT`, :data:`KEPT_NAMES`), the least recently used going first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from .layer import Layer
from .whiteout import PREFIX, hidden_by

#: read-only parts from which a directory gets an index
DEEP = 8
#: at most this many indexes, and names in all of them, are kept
KEPT = 256
KEPT_NAMES = 200_000


class _Index(NamedTuple):
    locations: tuple  # the directory's locations (``tree.Location``) it was made for
    generation: int
    lower: int  # where the run of read-only parts at the bottom starts
    first: dict[str, int] | None  # None: too few of them, or not trusted as read


class Holders:
    """The indexes of a mount's deep directories (see the module's docstring)."""

    def __init__(self):
        #: by the directory's path and its number of parts (``lookup_below``
        #: asks about a directory without its writable part)
        self._kept: OrderedDict[tuple[str, int], _Index] = OrderedDict()
        self._names = 0

    def skipped(self, path: str, locations: tuple, name: str) -> tuple[int, int]:
        """The positions ``[start, end)`` of ``locations`` (the parts of
        the union directory ``path``) that surely hold neither ``name`` nor
        its whiteout: a lookup may pass them by.  ``(0, 0)`` where there is
        no index."""
        if len(locations) < DEEP:
            return 0, 0
        index = self._index(path, locations)
        if index.first is None:
            return 0, 0
        return index.lower, index.first.get(name, len(locations))

    def _index(self, path: str, locations: tuple) -> _Index:
        key = (path, len(locations))
        index = self._kept.get(key)
        if index is not None and index.generation == Layer.names_generation and (
                index.locations is locations or index.locations == locations):
            self._kept.move_to_end(key)
            return index
        if index is not None:
            self._drop(key)
        lower = _read_only_from(locations)
        first = _first_holders(locations, lower) if len(locations) - lower >= DEEP else None
        index = _Index(locations, Layer.names_generation, lower, first)
        self._kept[key] = index
        self._names += len(index.first or ())
        while len(self._kept) > 1 and (len(self._kept) > KEPT or self._names > KEPT_NAMES):
            self._drop(next(iter(self._kept)))
        return index

    def _drop(self, key: tuple[str, int]) -> None:
        self._names -= len(self._kept.pop(key).first or ())


def _read_only_from(locations: tuple) -> int:
    """Where the run of read-only parts at the bottom of ``locations`` starts."""
    start = len(locations)
    while start and not locations[start - 1].layer.writable:
        start -= 1
    return start


def _first_holders(locations: tuple, lower: int) -> dict[str, int] | None:
    """Each name in the read-only parts ``locations[lower:]``, and each
    name a whiteout there hides, with the first part that has it; None if
    any of those branches checks or watches its directories."""
    if any(layer.check_dirs or layer.watch is not None for layer, _ in locations[lower:]):
        return None
    first: dict[str, int] = {}
    for position in range(len(locations) - 1, lower - 1, -1):  # the topmost last, so it stays
        layer, dir_path = locations[position]
        for name in layer.kept_names(dir_path):
            first[name] = position
            if name.startswith(PREFIX):
                first[hidden_by(name)] = position
    return first
