"""What the kernel's mount table says of a mount point."""

from __future__ import annotations

import re
from typing import NamedTuple


class Mount(NamedTuple):
    device: str  #: "major:minor"
    fstype: str


def find(mountpoint: str) -> Mount | None:
    """The mount on ``mountpoint`` (the topmost, if several are stacked)."""
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == mountpoint:
                found = Mount(fields[2], fields[fields.index("-") + 1])
    return found


def _unescape(field: str) -> str:
    """Undo the octal escapes of /proc/self/mountinfo (space, tab, newline, \\)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
