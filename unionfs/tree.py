"""Name resolution across the stack: which real entries a union name stands for.

The rules are aufs's and overlayfs's:

* A name is looked for top-down.  The first branch that holds it gives the
  entry; a whiteout (``.wh.NAME``, or NAME as a character device 0/0) in a
  branch hides NAME in all branches below it.
* A directory merges with directories of the same name below it, until a
  branch holds a non-directory under that name, a whiteout of it, or the
  directory is marked opaque (``.wh..wh..opq``, or overlay's xattr);
  whatever lies below that is hidden.
* A non-directory hides everything of the same name below it.
* A directory that was renamed carries a redirect: its lower parts are
  found at the redirect path in the branches below it, not under its own
  name (overlayfs's ``redirect_dir``).  pyunion's own (``trusted.pyunion``)
  is read on the top directory of a name, overlay's on any.

An :class:`Entry` records where a union name lives (its locations, topmost
first); it holds no attributes, so it stays right while the file changes.
This module reads branches only, never writes them.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from .holders import Holders
from .layer import ROOT, Layer, child, split
from .whiteout import (OPAQUE, XATTR, Marks, hidden_by, is_reserved, is_whiteout_device,
                       named_whiteout)

NO_MARKS = Marks()


class Location(NamedTuple):
    layer: Layer
    path: str


class Listed(NamedTuple):
    """A visible name of a directory (``Tree.listdir``): its topmost
    location, and its ``d_ino`` and type there."""

    location: Location
    ino: int
    kind: int


@dataclass(frozen=True)
class Entry:
    """The real entries behind one union name, topmost first.

    ``path`` is the name's path in the union, which is also its path in the
    writable branch.  Only a merged directory has more than one location.
    """

    path: str
    locations: tuple[Location, ...]
    marks: Marks = NO_MARKS

    @property
    def top(self) -> Location:
        return self.locations[0]

    @property
    def merged(self) -> bool:
        return len(self.locations) > 1

    @property
    def in_upper(self) -> bool:
        """True when the name itself is in the writable branch (not only
        its data, in the hard-link index)."""
        return self.top.layer.writable and self.top.path == self.path

    @property
    def lower(self) -> tuple[Location, ...]:
        """The locations in read-only branches."""
        return tuple(loc for loc in self.locations if not loc.layer.writable)


class Tree:
    """Resolves union names over a fixed list of layers (index 0 on top)."""

    def __init__(self, layers: list[Layer], index=None):
        self.layers = layers
        #: the hard-link index (``index.py``), where copied-up lower files
        #: with several names are found
        self.index = index
        self._holders = Holders()

    def root(self) -> Entry:
        return Entry(ROOT, _stack_roots(self.layers))

    def resolve(self, path: str) -> Entry:
        """The entry of a union path, looked up from the root."""
        return _walk(self.lookup, self.root(), path)

    def lookup(self, parent: Entry, name: str):
        """Resolve ``name`` in the directory ``parent``.

        Returns ``(entry, stat of its top)``, or None when the name does not
        exist in the union.
        """
        locations = parent.locations
        start, end = self._holders.skipped(parent.path, locations, name)
        if end > start:  # parts that hold nothing of the name
            locations = locations[:start] + locations[end:]
        matches = _matches(locations, name)
        first = next(matches, None)
        if first is None:
            return None
        return self._complete(child(parent.path, name), first, matches)

    def lookup_below(self, parent: Entry, name: str):
        """Like :meth:`lookup`, in the read-only branches of ``parent`` only:
        what the name would show if the writable branch did not hold it."""
        return self.lookup(Entry(parent.path, parent.lower), name)

    def entry_at(self, parent: Entry, name: str, top: Location):
        """The entry of a name whose top location is already known (from
        :meth:`listdir`), or None if it went away since."""
        layers = [location.layer for location in parent.locations]
        matches = _matches(parent.locations[layers.index(top.layer):], name)
        first = next(matches, None)
        if first is None or first[0] != top:
            return None
        return self._complete(child(parent.path, name), first, matches)

    def listdir(self, directory: Entry) -> dict[str, Listed]:
        """The visible names of a directory, each with its topmost location.

        Names come in branch order (top branch first), each once.
        """
        visible: dict[str, Listed] = {}
        hidden: set[str] = set()
        for layer, dir_path in directory.locations:
            whiteouts = set()
            for name, ino, kind, special in layer.scandir(dir_path):
                if is_reserved(name):
                    if name != OPAQUE:
                        whiteouts.add(hidden_by(name))
                elif special and is_whiteout_device(special.st_mode, special.st_rdev):
                    whiteouts.add(name)
                elif name not in visible and name not in hidden:
                    visible[name] = Listed(Location(layer, child(dir_path, name)), ino, kind)
            hidden |= whiteouts
        return visible

    def _complete(self, path: str, first, matches: Iterator):
        top, st = first
        if st.st_nlink > 1 and self.index and not top.layer.writable and not stat.S_ISDIR(st.st_mode):
            indexed = self.index.find(st)
            if indexed is not None:
                top, st = indexed, indexed.layer.lstat(indexed.path)
        marks = read_marks(top) if top.layer.keeps_marks else NO_MARKS
        locations = [top]
        if stat.S_ISDIR(st.st_mode):
            redirect, location = marks.redirect, top
            while True:
                dir_marks = location.layer.dir_marks(location.path)
                if dir_marks.opaque or _holds_opaque_file(location):
                    break
                if redirect is None and dir_marks.redirect is not None:
                    redirect = _overlay_redirect(dir_marks.redirect, location.path)
                if redirect is not None:
                    locations += self._redirected(redirect, location.layer)
                    break
                below = next(matches, None)
                if below is None or not stat.S_ISDIR(below[1].st_mode):
                    break
                location = below[0]
                locations.append(location)
        return Entry(path, tuple(locations), marks), st

    def _redirected(self, path: str, above: Layer) -> tuple[Location, ...]:
        """The directory at ``path`` in the branches below ``above``."""
        roots = Entry(ROOT, _stack_roots(self.layers[self.layers.index(above) + 1:]))
        try:
            found = _walk(self.lookup, roots, path)
        except (FileNotFoundError, NotADirectoryError):
            return ()
        top = found.top
        return found.locations if stat.S_ISDIR(top.layer.lstat(top.path).st_mode) else ()


def _walk(lookup, start: Entry, path: str) -> Entry:
    entry = start
    if path == ROOT:
        return entry
    for name in path.split("/"):
        found = lookup(entry, name) if entry.locations else None
        if found is None:
            raise FileNotFoundError(path)
        entry = found[0]
    return entry


def read_marks(location: Location) -> Marks:
    try:
        return Marks.decode(location.layer.getxattr(location.path, XATTR))
    except OSError as exc:
        if exc.errno in (errno.ENODATA, errno.ENOTSUP):
            return NO_MARKS
        raise


def _matches(directories, name: str) -> Iterator[tuple[Location, object]]:
    """Each branch's ``name`` in ``directories``, top-down, until a whiteout
    (which may sit beside the name in the branch that ends the descent)."""
    whiteout = named_whiteout(name)
    for layer, dir_path in directories:
        names = layer.kept_names(dir_path)
        if names is None or name in names:
            path = child(dir_path, name)
            st = layer.lstat_or_none(path)
            if st is not None:
                if is_whiteout_device(st.st_mode, st.st_rdev):
                    return
                yield Location(layer, path), st
        # A whiteout beside the name hides what lies below it, not the name.
        if whiteout and (names is None or whiteout in names) and layer.lstat_or_none(
                child(dir_path, whiteout)):
            return


def _stack_roots(layers: list[Layer]) -> tuple[Location, ...]:
    locations = []
    for layer in layers:
        locations.append(Location(layer, ROOT))
        if is_opaque(locations[-1]):
            break
    return tuple(locations)


def is_opaque(location: Location) -> bool:
    """True for a directory that hides what lies below it, in either format."""
    return location.layer.dir_marks(location.path).opaque or _holds_opaque_file(location)


def _holds_opaque_file(location: Location) -> bool:
    layer, path = location
    return layer.may_hold(path, OPAQUE) and layer.lstat_or_none(child(path, OPAQUE)) is not None


def _overlay_redirect(redirect: str, dir_path: str) -> str:
    """The path (in the layers below) that overlay's redirect of the
    directory ``dir_path`` names: absolute from the layer's root, or a name
    in the same parent."""
    if redirect.startswith("/"):
        return redirect.strip("/") or ROOT
    return child(split(dir_path)[0], redirect)
