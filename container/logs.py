"""A detached container's log: what it writes to its stdout and stderr,
kept in numbered files of bounded size (docker's json-file options
``max-size`` and ``max-file``), and read back in order.

The files are ``DIR/1``, ``DIR/2``, ...: the highest number is the one
being written.  Each file holds at most ``max-size`` bytes, exactly (a
line may go on in the next file); a full one is followed by the next, and
only the newest ``max-file`` are kept.  A number is never reused, so a
reader knows a file is complete once a higher one exists, and a rotation
never moves what a reader holds open.  Without ``max-size`` there is one
file that grows without end, as docker's default.

The container writes into a pipe; a thread of its supervisor copies the
pipe into the files (:class:`Relay`): the container never writes a file
itself, its output never holds up the supervisor's other work (signals,
waiting, cleanup), and it can make the supervisor hold no more than one
read's worth (64 KiB).  While a file cannot be written (a full disk), what
comes is dropped rather than left to block the container.  Not handled: the json-file format itself (the files hold the
output as written, stdout and stderr mixed), compression.
"""

from __future__ import annotations

import fcntl
import os
import select
import sys
import termios
import time
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterable, Iterator

from . import background
from .spec import SpecError, parse_size

_CHUNK = 65536
_FOLLOW_POLL = 0.1  # seconds between looks for more output, with -f


@dataclass(frozen=True)
class Policy:
    """How much of a log is kept: files of ``max_size`` bytes (None: one
    file without bound), the newest ``max_files`` of them."""

    max_size: int | None = None
    max_files: int = 1


def parse_options(options: Iterable[str]) -> Policy:
    """docker's json-file ``--log-opt`` values: ``max-size=SIZE`` (k, m, g
    in thousands, as docker reads them) and ``max-file=N``, which, as in
    docker, is checked but has no effect without ``max-size`` (there is
    nothing to rotate then)."""
    given = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep:
            raise SpecError(f"--log-opt: {option!r} must be KEY=VALUE")
        if key not in ("max-size", "max-file"):
            raise SpecError(f"--log-opt: unknown option {key!r} (known: max-size, max-file)")
        given[key] = value
    max_files = given.get("max-file", "1")
    if not (max_files.isascii() and max_files.isdigit()) or int(max_files) < 1:
        raise SpecError(f"--log-opt max-file: {max_files!r} must be a whole number, 1 or more")
    if "max-size" not in given:
        return Policy()
    max_size = parse_size(given["max-size"], "--log-opt max-size", base=1000)
    if max_size < 1:
        raise SpecError(f"--log-opt max-size: {given['max-size']!r} must be at least 1 byte")
    return Policy(max_size, int(max_files))


class Relay:
    """The pipe a container writes its output into (``fd``, its write
    end), and the thread that copies it into the log's files."""

    def __init__(self, directory: str, policy: Policy):
        self._files = _Files(directory, policy)
        self._pipe, self.fd = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = background.start(self._copy, name="log relay")

    def close(self) -> None:
        """Copy what is left in the pipe, then stop.  Call once nothing
        writes any more (the container has ended): whatever it wrote is in
        the log then, even if something still holds the pipe open."""
        os.close(self.fd)
        os.close(self._stop_w)
        self._thread.join()
        for fd in (self._pipe, self._stop_r):
            os.close(fd)
        self._files.close()

    def _copy(self) -> None:
        poller = select.poll()
        poller.register(self._pipe, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            if self._stop_r in dict(poller.poll()):
                break
            data = os.read(self._pipe, _CHUNK)
            if not data:  # every writer is gone
                return
            self._files.write(data)
        left = _waiting(self._pipe)
        while left > 0:
            data = os.read(self._pipe, min(left, _CHUNK))
            left -= len(data)
            self._files.write(data)


def _waiting(fd: int) -> int:
    """How many bytes wait to be read from the pipe ``fd``."""
    answer = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    return int.from_bytes(answer, sys.byteorder)


class _Files:
    """The writing side of a log's numbered files."""

    def __init__(self, directory: str, policy: Policy):
        os.mkdir(directory, 0o700)
        self._directory, self._policy = directory, policy
        self._number, self._size = 1, 0
        self._fd = self._create(1)

    def write(self, data: bytes) -> None:
        """Append ``data``, going on in a new file whenever one is full;
        dropped if the files cannot be written."""
        rest = memoryview(data)
        try:
            while rest:
                if self._size == self._policy.max_size:
                    self._rotate()
                room = len(rest) if self._policy.max_size is None else \
                    self._policy.max_size - self._size
                written = os.write(self._fd, rest[:room])
                self._size += written
                rest = rest[written:]
        except OSError:
            pass

    def _rotate(self) -> None:
        """Go on in the next file (made before the full one is let go, so
        a reader always finds the newest), and drop the one that makes a
        file too many."""
        fd = self._create(self._number + 1)
        os.close(self._fd)
        self._fd, self._number, self._size = fd, self._number + 1, 0
        stale = self._number - self._policy.max_files
        if stale >= 1:
            os.unlink(os.path.join(self._directory, str(stale)))

    def _create(self, number: int) -> int:
        return os.open(os.path.join(self._directory, str(number)),
                       os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def close(self) -> None:
        os.close(self._fd)


def read(directory: str, running: Callable[[], bool] | None = None) -> Iterator[bytes]:
    """The log's content, oldest kept first, as it is now; with
    ``running`` (``logs -f``), then what comes, from file to file, until
    ``running()`` is false and all is read.  A reader that falls behind by
    more than the kept files goes on from the oldest one left."""
    files = _open_kept(directory)
    for _, f in files[:-1]:
        with f:
            yield from _rest(f)
    number, current = files[-1] if files else (0, None)
    try:
        while True:
            # Looked at before the read, so the last output before the end is read.
            alive = running is not None and running()
            if current is not None:
                yield from _rest(current)
            newer = _open_after(directory, number) if running is not None else None
            if newer is not None:
                if current is not None:  # complete, now that a newer file exists
                    yield from _rest(current)
                    current.close()
                number, current = newer
            elif not alive:
                return
            else:
                time.sleep(_FOLLOW_POLL)
    finally:
        if current is not None:
            current.close()


def _open_kept(directory: str) -> list[tuple[int, BinaryIO]]:
    """Every file of the log, opened together (oldest first), so a
    rotation while they are read takes nothing from the middle: a file
    gone before it could be opened drops the older ones opened before it."""
    files = []
    for number in _numbers(directory):
        try:
            files.append((number, open(os.path.join(directory, str(number)), "rb")))
        except FileNotFoundError:  # rotated away since it was listed
            for _, f in files:
                f.close()
            files = []
    return files


def _open_after(directory: str, number: int) -> tuple[int, BinaryIO] | None:
    """The oldest file of the log numbered above ``number`` that can still
    be opened, if there is one."""
    for newer in _numbers(directory):
        if newer > number:
            try:
                return newer, open(os.path.join(directory, str(newer)), "rb")
            except FileNotFoundError:  # rotated away since it was listed
                continue
    return None


def _numbers(directory: str) -> list[int]:
    """The numbers of the log's files, in order; none before the log is
    made or after it is removed."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(name) for name in names if name.isdigit())


def _rest(f: BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(_CHUNK):
        yield chunk
