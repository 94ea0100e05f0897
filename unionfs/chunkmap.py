"""The on-disk map of a partially copied-up file: which chunks of its data
are in the upper file, and which still live in its lower file.

A map is one small file in the ``chunks`` directory next to the work
directory, named by the id the upper file's marks carry::

    magic (8) | header length (4) | limit (8) | header (JSON) | bitmap

* ``header`` names the lower file: ``{"layer": N, "path": P, "chunk": C,
  "origin": I}``: its branch's place in the stack then, its path there, and
  its union inode number.
* ``limit``: bytes below it that are in no present chunk come from the lower
  file; everything at or above it comes from the upper file.  It starts at
  the lower file's size and only ever shrinks (truncate).
* ``bitmap``: bit ``i`` set means chunk ``i`` (bytes ``i*C`` to
  ``(i+1)*C``) is in the upper file.  Bits past the file's end read as 0.

Every change is one ``pwrite`` of a few bytes, done after the data it
describes is in the upper file, so a daemon killed at any point leaves a map
that tells the truth (see :mod:`unionfs.partial` for the order of steps).

Why 64 KiB chunks: FUSE hands writes over in aligned pieces of 128 KiB or
more, so a sequential rewrite covers whole chunks and copies nothing from
below; a 1-byte write copies 64 KiB (tens of microseconds); and the map of a
1 GiB file is 2 KiB, read in one call.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import uuid
from dataclasses import dataclass

from . import durable

CHUNK = 64 * 1024
_MAGIC = b"pyuchk1\n"
_FIXED = struct.Struct("<8sIQ")  # magic, header length, limit
_LIMIT_AT = 12


@dataclass(frozen=True)
class Source:
    """Where the absent chunks live: a file of a read-only branch."""

    layer: int
    path: str
    #: its union inode number (maps made before it was recorded lack it)
    origin: int | None = None


class ChunkMapError(OSError):
    pass


class ChunkMap:
    def __init__(self, fd: int, source: Source, chunk: int, limit: int, bits: bytearray,
                 bitmap_at: int):
        self.fd = fd
        self.source = source
        self.chunk = chunk
        self.limit = limit
        self._bits = bits
        self._bitmap_at = bitmap_at

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    @classmethod
    def create(cls, dir_fd: int, map_id: str, source: Source, limit: int) -> ChunkMap:
        header = json.dumps({"layer": source.layer, "path": source.path, "chunk": CHUNK,
                             "origin": source.origin}, separators=(",", ":")).encode()
        fd = os.open(map_id, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                     dir_fd=dir_fd)
        try:
            os.pwrite(fd, _FIXED.pack(_MAGIC, len(header), limit) + header, 0)
        except BaseException:
            os.close(fd)
            os.unlink(map_id, dir_fd=dir_fd)
            raise
        return cls(fd, source, CHUNK, limit, bytearray(), _FIXED.size + len(header))

    @classmethod
    def load(cls, dir_fd: int, map_id: str, file_size: int) -> ChunkMap:
        """Open a map; ``file_size`` is the upper file's size now, which
        caps the limit (a truncate the daemon did not live to record)."""
        fd = os.open(map_id, os.O_RDWR | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            raw = os.pread(fd, os.fstat(fd).st_size, 0)
            header, limit, bitmap_at = _parse(raw, map_id)
            chunk_map = cls(fd, _source(header), header["chunk"], limit,
                            bytearray(raw[bitmap_at:]), bitmap_at)
            # Recorded, so that a later extension cannot bring the data back.
            chunk_map.shrink(file_size)
        except BaseException:
            os.close(fd)
            raise
        return chunk_map

    @staticmethod
    def source_of(dir_fd: int, map_id: str) -> Source:
        """Where the map's absent chunks live, read without changing it."""
        fd = os.open(map_id, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            header = _parse(os.pread(fd, os.fstat(fd).st_size, 0), map_id)[0]
        finally:
            os.close(fd)
        return _source(header)

    @staticmethod
    def remove(dir_fd: int, map_id: str) -> None:
        try:
            os.unlink(map_id, dir_fd=dir_fd)
        except FileNotFoundError:
            pass

    def close(self) -> None:
        os.close(self.fd)

    def chunks(self, start: int, end: int) -> range:
        """The chunks that bytes ``start`` to ``end`` touch."""
        return range(start // self.chunk, (end + self.chunk - 1) // self.chunk)

    def span(self, index: int) -> tuple[int, int]:
        """The bytes of chunk ``index`` that may come from below."""
        first = index * self.chunk
        return first, min(first + self.chunk, self.limit)

    def is_absent(self, index: int) -> bool:
        """True when the chunk's data is still (partly) only below."""
        if index * self.chunk >= self.limit:
            return False
        byte = index >> 3
        return byte >= len(self._bits) or not self._bits[byte] >> (index & 7) & 1

    def absent(self, start: int, end: int) -> list[int]:
        return [i for i in self.chunks(start, end) if self.is_absent(i)]

    def mark_present(self, indexes: list[int]) -> None:
        """Record the chunks as in the upper file: one write to the map."""
        if not indexes:
            return
        first, last = min(indexes) >> 3, max(indexes) >> 3
        if last >= len(self._bits):
            self._bits.extend(bytes(last + 1 - len(self._bits)))
        for i in indexes:
            self._bits[i >> 3] |= 1 << (i & 7)
        os.pwrite(self.fd, bytes(self._bits[first:last + 1]), self._bitmap_at + first)

    def shrink(self, size: int) -> None:
        """After the upper file was truncated to ``size``: nothing at or
        above it may come from below again."""
        if size < self.limit:
            self.limit = size
            os.pwrite(self.fd, struct.pack("<Q", size), _LIMIT_AT)

    def fsync(self) -> None:
        durable.fsync(self.fd)


def _source(header: dict) -> Source:
    return Source(header["layer"], header["path"], header.get("origin"))


def _parse(raw: bytes, map_id: str) -> tuple[dict, int, int]:
    """A map's header, limit, and where its bitmap starts."""
    try:
        magic, header_len, limit = _FIXED.unpack_from(raw)
        if magic != _MAGIC:
            raise ChunkMapError(errno.EIO, f"chunk map {map_id} is not one")
        bitmap_at = _FIXED.size + header_len
        header = json.loads(raw[_FIXED.size:bitmap_at])
        header["layer"], header["path"], header["chunk"]  # noqa: B018 - all must be there
        return header, limit, bitmap_at
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise ChunkMapError(errno.EIO, f"chunk map {map_id} is damaged: {exc!r}") from None
