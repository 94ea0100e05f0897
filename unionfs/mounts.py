"""What the kernel's mount table says of a mount point.

The table is bytes, as mount points are: any mount on the system may have
a name that is not UTF-8, so ``/proc/self/mountinfo`` is read as bytes and
compared with the bytes of the path asked about (``os.fsencode``; a ``str``
path holding surrogate escapes stands for the bytes it was decoded from).
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple


class Mount(NamedTuple):
    device: str  #: "major:minor"
    fstype: str


def find(mountpoint: str) -> Mount | None:
    """The mount on ``mountpoint`` (the topmost, if several are stacked)."""
    target = os.fsencode(mountpoint)
    found = None
    for fields in _table("self"):
        if _unescape(fields[4]) == target:
            found = Mount(os.fsdecode(fields[2]), _fstype(fields))
    return found


def fstype_of(device: int) -> str | None:
    """The type of the file system of ``device`` (an ``st_dev``), if mounted here."""
    wanted = _device(device)
    return next((_fstype(fields) for fields in _table("self") if fields[2] == wanted), None)


def ids_of(device: int, pid: str) -> set[bytes]:
    """The ids of the mounts of ``device`` in the mount namespace of ``pid``."""
    wanted = _device(device)
    return {fields[0] for fields in _table(pid) if fields[2] == wanted}


def _table(pid: str) -> list[list[bytes]]:
    """The fields of each line of ``/proc/PID/mountinfo``.  Fields are
    separated by single spaces; the kernel escapes the spaces, tabs,
    newlines and backslashes inside a field."""
    with open(f"/proc/{pid}/mountinfo", "rb") as f:
        return [line.rstrip(b"\n").split(b" ") for line in f]


def _device(device: int) -> bytes:
    return f"{os.major(device)}:{os.minor(device)}".encode()


def _fstype(fields: list[bytes]) -> str:
    return os.fsdecode(fields[fields.index(b"-") + 1])


def _unescape(field: bytes) -> bytes:
    """Undo the octal escapes of /proc/self/mountinfo (space, tab, newline, \\)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), field)
