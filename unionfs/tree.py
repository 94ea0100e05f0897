"""Name resolution across the stack: which real entries a union name stands for.

The rules are aufs's and overlayfs's:

* A name is looked for top-down.  The first branch that holds it gives the
  entry; a whiteout ``.wh.NAME`` in a branch hides NAME in all branches
  below it.
* A directory merges with directories of the same name below it, until a
  branch holds a non-directory under that name, a whiteout of it, or the
  directory is marked opaque (``.wh..wh..opq``); whatever lies below that
  is hidden.
* A non-directory hides everything of the same name below it.

An :class:`Entry` records where a union name lives (its locations, topmost
first); it holds no attributes, so it stays right while the file changes.
This module reads branches only, never writes them.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import NamedTuple

from .layer import ROOT, Layer, child
from .whiteout import OPAQUE, hidden_by, is_reserved, whiteout_for


class Location(NamedTuple):
    layer: Layer
    path: str


@dataclass(frozen=True)
class Entry:
    """The real entries behind one union name, topmost first.

    Only a merged directory has more than one location.
    """

    locations: tuple[Location, ...]

    @property
    def top(self) -> Location:
        return self.locations[0]

    @property
    def merged(self) -> bool:
        return len(self.locations) > 1


class Tree:
    """Resolves union names over a fixed list of layers (index 0 on top)."""

    def __init__(self, layers: list[Layer]):
        self.layers = layers

    def root(self) -> Entry:
        locations = []
        for layer in self.layers:
            locations.append(Location(layer, ROOT))
            if _is_opaque(layer, ROOT):
                break
        return Entry(tuple(locations))

    def lookup(self, parent: Entry, name: str):
        """Resolve ``name`` in the directory ``parent``.

        Returns ``(entry, stat of its top)``, or None when the name does not
        exist in the union.
        """
        found: list[Location] = []
        top_stat = None
        for layer, dir_path in parent.locations:
            path = child(dir_path, name)
            st = layer.lstat_or_none(path)
            if st is None:
                if layer.lstat_or_none(child(dir_path, whiteout_for(name))):
                    break
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if found and not is_dir:
                break
            found.append(Location(layer, path))
            top_stat = top_stat or st
            if not is_dir or _is_opaque(layer, path):
                break
        return (Entry(tuple(found)), top_stat) if found else None

    def listdir(self, directory: Entry) -> dict[str, Location]:
        """The visible names of a directory, each with its topmost location.

        Names come in branch order (top branch first), each once.
        """
        visible: dict[str, Location] = {}
        hidden: set[str] = set()
        for layer, dir_path in directory.locations:
            whiteouts = set()
            for name in layer.listdir(dir_path):
                if is_reserved(name):
                    if name != OPAQUE:
                        whiteouts.add(hidden_by(name))
                elif name not in visible and name not in hidden:
                    visible[name] = Location(layer, child(dir_path, name))
            hidden |= whiteouts
        return visible


def _is_opaque(layer: Layer, dir_path: str) -> bool:
    return layer.lstat_or_none(child(dir_path, OPAQUE)) is not None
