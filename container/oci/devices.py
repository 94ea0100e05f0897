"""The device nodes a container's ``/dev`` holds: ``linux.devices`` and
runc's defaults (null zero full random urandom tty; one the config names
at the same path replaces the default), as plain data.  Who may open them
is the devices cgroup's business, not this module's.
"""

from __future__ import annotations

import posixpath
import stat
from dataclasses import dataclass

from .reader import Reader

_KINDS = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}


@dataclass(frozen=True)
class Device:
    path: str
    kind: int            # stat.S_IFCHR, S_IFBLK or S_IFIFO
    major: int = 0
    minor: int = 0
    mode: int = 0o666    # permission bits only
    uid: int = 0
    gid: int = 0


DEFAULTS = tuple(Device(f"/dev/{name}", stat.S_IFCHR, major, minor)
                 for name, major, minor in (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7),
                                            ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)))


def parse_device(reader: Reader) -> Device:
    """One item of ``linux.devices``."""
    path = reader.take("path", str)
    clean = "/" + posixpath.normpath(path).lstrip("/")
    if not posixpath.isabs(path) or not clean.startswith("/dev/"):
        raise reader.error("path", f"{path!r} must be an absolute path under /dev")
    kind = reader.take("type", str)
    if kind not in _KINDS:
        raise reader.error("type", f"{kind!r}: must be one of c, u, b, p")
    numbers = (0,) if kind == "p" else ()  # a fifo has none; the others must
    major, minor = (reader.take(key, int, *numbers) for key in ("major", "minor"))
    mode = reader.take("fileMode", int, 0o666)
    uid, gid = reader.take("uid", int, 0), reader.take("gid", int, 0)
    reader.done()
    for key, value in (("major", major), ("minor", minor), ("uid", uid), ("gid", gid)):
        if not 0 <= value < 1 << 32:
            raise reader.error(key, f"{value} is out of range")
    return Device(clean, _KINDS[kind], major, minor, stat.S_IMODE(mode), uid, gid)


def with_defaults(devices: tuple[Device, ...]) -> tuple[Device, ...]:
    """runc's defaults but those ``devices`` name, then ``devices``."""
    named = {device.path for device in devices}
    return tuple(d for d in DEFAULTS if d.path not in named) + devices
