"""Partially copied-up files: the upper file holds the chunks written so
far (the rest is a hole), and the lower file still gives the others.

A copy-up of a big lower file copies no data at all: it makes a sparse
upper file of the same size, with the owner, mode, times and xattrs, and a
chunk map (:mod:`unionfs.chunkmap`) in which no chunk is present yet.  A
metadata change (chmod, chown, utimes, setxattr) stops there; a write
brings in only the chunks it touches.

The order of steps keeps every write all-or-nothing, as far as the map
goes, for a daemon killed at any point (a kill inside one ``pwrite`` may
still cut it short, as on any file):

* a write that covers every chunk it touches completely, all of them still
  below, writes its data into the holes and then marks the chunks present
  (killed before the mark: the old data shows);
* any other write first copies the chunks it touches that are still below
  into the upper file and marks them (the file still shows the old data),
  then writes in place;
* a truncate shrinks the upper file, then the map's limit (a limit larger
  than the file is capped when the map is loaded).

``fsync`` flushes the upper file and the map.  :meth:`PartialFile.complete`
copies whatever is still below (holes stay holes, times stay as they
were), after which the caller drops the marks and the map and the upper
file is an ordinary file.

Reads and writes run on the event loop and touch at most the chunks of one
request; completing a file runs in a thread.  A lock per file keeps the two
apart.

Under a quota (``quota.py``), a write needs room for the holes in the
chunks it touches (what it may bring up), a completion step keeps room
for the chunks it brings up, and both are measured (the upper file and
the map); a partial file's descriptors are holders of their files.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import stat
import threading
from typing import Callable

import trio

from . import durable
from .chunkmap import ChunkMap, Source
from .copyup import copy_range, data_extents
from .flatten import Flattening
from .inodes import InodeNumbers
from .layer import ROOT, Layer, child
from .quota import UNLIMITED, Quota, Unlimited
from .tree import Entry, Location, read_marks
from .upper import Upper
from .whiteout import META_DIR, XATTR, Marks

log = logging.getLogger(__name__)

_COMPLETE_STEP = 64  # chunks copied per hold of the lock while completing
_PUNCH_HOLE = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
_libc = ctypes.CDLL(None, use_errno=True)


class PartialFile:
    def __init__(self, map_id: str, upper_fd: int, lower_fd: int, chunk_map: ChunkMap,
                 quota: Quota | Unlimited = UNLIMITED, lower_layer: Layer | None = None):
        self.map_id = map_id
        #: the branch its absent chunks come from
        self.lower_layer = lower_layer
        self.upper_fd = upper_fd
        self._lower_fd = lower_fd
        self._map = chunk_map
        self._quota = quota
        self._lock = threading.Lock()
        self.users = 0
        #: set by every write and truncate (a completion keeps the times
        #: only if nothing else changed the file meanwhile)
        self.changed = False

    def close(self) -> None:
        for fd in (self.upper_fd, self._lower_fd):
            os.close(fd)
        self._map.close()

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            data = os.pread(self.upper_fd, size, offset)
            end = offset + len(data)
            runs = _runs(self._map.absent(offset, min(end, self._map.limit)))
            if not runs:
                return data
            out = bytearray(data)
            for first, last in runs:
                start = max(self._map.span(first)[0], offset)
                stop = min(self._map.span(last)[1], end)
                if start < stop:  # not so when reading past the limit in its chunk
                    below = os.pread(self._lower_fd, stop - start, start)
                    out[start - offset:start - offset + len(below)] = below
            return bytes(out)

    @property
    def held_fds(self) -> tuple[int, int]:
        """Its descriptors of files of the writable branch."""
        return self.upper_fd, self._map.fd

    def write(self, offset: int, data: bytes) -> int:
        with self._lock, self._quota.measured(*self.held_fds):
            end = offset + len(data)
            touched = self._map.chunks(offset, end)
            self._quota.room_for(self.upper_fd, touched.start * self._map.chunk,
                                 touched.stop * self._map.chunk)
            absent = self._map.absent(offset, end)
            whole = [i for i in absent if offset <= self._map.span(i)[0]
                     and self._map.span(i)[1] <= end]
            self.changed = True
            if absent and len(whole) == len(touched):
                return self._write_into_holes(offset, data, whole)
            self._bring_up(absent)
            return os.pwrite(self.upper_fd, data, offset)

    def _write_into_holes(self, offset: int, data: bytes, chunks: list[int]) -> int:
        """Write whole chunks that are still below, then mark them; a short
        write (a full disk) counts only the chunks it completed."""
        end = offset + os.pwrite(self.upper_fd, data, offset)
        done = [i for i in chunks if self._map.span(i)[1] <= end]
        self._map.mark_present(done)
        if len(done) < len(chunks):  # what the first unfinished chunk got is not there
            end = self._map.span(chunks[len(done)])[0]
            if end == offset:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return end - offset

    def mark_changed(self) -> None:
        with self._lock:
            self.changed = True

    def truncate(self, size: int) -> None:
        with self._lock, self._quota.measured(*self.held_fds):
            self.changed = True
            os.ftruncate(self.upper_fd, size)
            self._map.shrink(size)

    def fsync(self, datasync: bool) -> None:
        durable.fsync(self.upper_fd, datasync)
        self._map.fsync()

    def complete(self) -> None:
        """Copy every chunk still below into the upper file, and flush it."""
        with self._lock:
            before = os.fstat(self.upper_fd)
            self.changed = False
        total = len(self._map.chunks(0, self._map.limit))
        for first in range(0, total, _COMPLETE_STEP):
            with self._lock:
                absent = [i for i in range(first, first + _COMPLETE_STEP)
                          if self._map.is_absent(i)]
                size = sum(self._map.span(i)[1] - self._map.span(i)[0] for i in absent)
                with self._quota.reserved(size), \
                        self._quota.measured(*self.held_fds, long=True):
                    self._bring_up(absent)
        with self._lock:
            if not self.changed:  # the copying is no change to the file
                os.utime(self.upper_fd, ns=(before.st_atime_ns, before.st_mtime_ns))
        durable.fsync(self.upper_fd)

    def _bring_up(self, absent: list[int]) -> None:
        """Copy the given chunks from below and mark them present."""
        for first, last in _runs(absent):
            start, stop = self._map.span(first)[0], self._map.span(last)[1]
            # Clear what a write the daemon did not live to mark left there,
            # then copy the data below; its holes stay holes.
            _punch_hole(self.upper_fd, start, stop)
            for data_start, data_stop in data_extents(self._lower_fd, start, stop):
                copy_range(self._lower_fd, self.upper_fd, data_start, data_stop - data_start)
        self._map.mark_present(absent)


def _partial_files(top: Location) -> list[tuple[Location, Marks]]:
    """The partially copied-up files at or below ``top`` (writable branch)."""
    layer = top.layer
    if not stat.S_ISDIR(layer.lstat(top.path).st_mode):
        candidates = [top.path]
    else:
        candidates = []
        for dir_path, dir_names, file_names in layer.walk(top.path):
            if dir_path == ROOT and META_DIR in dir_names:
                dir_names.remove(META_DIR)
            candidates += [child(dir_path, n) for n in file_names]
    found: dict[str, tuple[Location, Marks]] = {}  # a file with two names, once
    for path in candidates:
        location = Location(layer, path)
        marks = _marks_now(location)
        if marks is not None and marks.partial is not None:
            found.setdefault(marks.partial, (location, marks))
    return list(found.values())


def _marks_now(location: Location) -> Marks | None:
    """The marks of a regular file, or None if it is gone or is no file."""
    st = location.layer.lstat_or_none(location.path)
    if st is None or not stat.S_ISREG(st.st_mode):
        return None
    try:
        return read_marks(location)
    except FileNotFoundError:
        return None


def _punch_hole(fd: int, start: int, stop: int) -> None:
    """Make bytes ``start`` to ``stop`` a hole (zeros where a file system
    cannot punch one)."""
    if _libc.fallocate(fd, _PUNCH_HOLE, ctypes.c_long(start), ctypes.c_long(stop - start)) == 0:
        return
    if ctypes.get_errno() != errno.EOPNOTSUPP:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    zeros = bytes(min(stop - start, 1 << 20))
    for at in range(start, stop, len(zeros)):
        os.pwrite(fd, zeros[:stop - at], at)


def _runs(indexes: list[int]) -> list[tuple[int, int]]:
    """Consecutive chunk indexes as (first, last) pairs."""
    runs: list[tuple[int, int]] = []
    for i in indexes:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


class PartialFiles:
    """The partial files in use, one :class:`PartialFile` per map, shared by
    every open handle of the file (and by a flatten in progress)."""

    def __init__(self, layers: list[Layer], upper: Upper, numbers: InodeNumbers):
        self._layers = layers
        self._upper = upper
        self._quota = upper.quota
        self._numbers = numbers
        self._open: dict[str, PartialFile] = {}

    async def flatten(self, entry: Entry, on_changed: Callable[[], None],
                      on_dirs_copied: Callable[[list[int]], None] = lambda numbers: None,
                      on_copied_up: Callable[[int, Entry], None] = lambda ino, entry: None,
                      change_lock: trio.Lock | None = None) -> None:
        """Make the writable branch at or below ``entry`` a plain layer
        (:class:`unionfs.flatten.Flattening` says what the callbacks get;
        ``change_lock`` is the mount's, none when nothing else changes it)."""
        await Flattening(self._layers, self._upper, self._numbers, self, on_changed,
                         on_dirs_copied, on_copied_up, change_lock or trio.Lock()).run(entry)

    async def complete_below(self, top: Location, on_finished: Callable[[], None]) -> None:
        """Complete every partial copy at or below ``top`` (writable
        branch), so the branch holds all of their data.  ``on_finished``
        runs after each file is done (its marks changed)."""
        found = await trio.to_thread.run_sync(_partial_files, top)
        for location, marks in found:
            # The walk ran while the mount served others: take the file only
            # if it is still the one found (nothing awaits from here to open).
            if _marks_now(location) != marks:
                continue
            partial = self.acquire(location, marks)
            try:
                await trio.to_thread.run_sync(partial.complete)
                self.finish(partial, marks)
                on_finished()
            finally:
                self.release(partial)

    def acquire(self, top: Location, marks: Marks) -> PartialFile:
        found = self._open.get(marks.partial)
        if found is None:
            found = self._open[marks.partial] = self._load(top, marks)
        found.users += 1
        return found

    def times_set(self, map_id: str) -> None:
        """Before a partial file's times are set: a completion under way
        must not put back the ones it found."""
        partial = self._open.get(map_id)
        if partial is not None:
            partial.mark_changed()

    def release(self, partial: PartialFile) -> None:
        partial.users -= 1
        if partial.users == 0:
            del self._open[partial.map_id]
            for fd in partial.held_fds:
                self._quota.let_go(fd)
            partial.close()

    def finish(self, partial: PartialFile, marks: Marks) -> None:
        """After :meth:`PartialFile.complete`: the file is an ordinary one."""
        with self._quota.measured(partial.upper_fd):
            os.setxattr(partial.upper_fd, XATTR,
                        dataclasses.replace(marks, partial=None).encode())
        self._upper.remove_chunk_map(partial.map_id)

    def _load(self, top: Location, marks: Marks) -> PartialFile:
        upper = top.layer.open(top.path, os.O_RDWR)
        try:
            chunk_map = ChunkMap.load(self._upper.chunks_fd, marks.partial, os.fstat(upper).st_size)
        except BaseException:
            os.close(upper)
            raise
        try:
            lower_layer, lower = self._open_lower(chunk_map.source, marks.origin, top.path)
        except BaseException:
            os.close(upper)
            chunk_map.close()
            raise
        partial = PartialFile(marks.partial, upper, lower, chunk_map, self._quota, lower_layer)
        for fd in partial.held_fds:
            self._quota.hold(fd)
        return partial

    def _open_lower(self, source: Source, origin: int, path: str) -> tuple[Layer, int]:
        """The lower file and its branch, checked to be the one the copy was
        made from (a remount over other branches must not mix in another
        file's data).  The map names the branch by its place in the stack
        then; branches added or removed since move it, so the others are
        asked too."""
        recorded = self._layers[source.layer:source.layer + 1]
        for layer in recorded + [l for l in self._layers if l not in recorded and not l.writable]:
            try:
                fd = layer.open(source.path, os.O_RDONLY)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if self._numbers(os.fstat(fd)) == origin:
                return layer, fd
            os.close(fd)
        # A read-only branch changed under the mount (``udba.py``): the
        # user only gets EIO, the log says why.
        message = f"the lower data of {path} is gone from {source.path}"
        log.error("%s: reads of it fail with EIO", message)
        raise OSError(errno.EIO, message)
