"""The device nodes a container's ``/dev`` holds: ``linux.devices`` and
runc's defaults (null zero full random urandom tty; one the config names
at the same path replaces the default), read, then made in the root.  Who
may open them is the devices cgroup's business, not this module's.

They are made with mknod, as runc makes them, on a ``/dev`` that honours
nodes (podman's); on a ``nodev`` one (the front end's: a node a container
makes there opens for no one) the host's node is bound instead, as runc
does where it may not mknod.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from dataclasses import dataclass

from .. import inroot
from .. import syscalls as sc
from .reader import Reader

_KINDS = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}
_DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
              ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))


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


def make(root: str, devices: tuple[Device, ...]) -> None:
    """The device nodes, ``/dev/ptmx`` (the container's own devpts's) and
    the standard links (runc's createDevices, setupPtmx,
    setupDevSymlinks)."""
    with inroot.target(root, "/dev") as dev:
        honours_nodes = not os.statvfs(dev).f_flag & os.ST_NODEV
    for device in devices:
        if device.path != "/dev/ptmx":
            _make_node(root, device, honours_nodes)
    links = (("ptmx", "pts/ptmx"),) + _DEV_LINKS
    if os.path.exists("/proc/kcore"):
        links += (("core", "/proc/kcore"),)
    with inroot.parent(root, "/dev/ptmx") as (dev_fd, _):
        with contextlib.suppress(FileNotFoundError):
            os.unlink("ptmx", dir_fd=dev_fd)
        for name, to in links:
            with contextlib.suppress(FileExistsError):
                os.symlink(to, name, dir_fd=dev_fd)


def _make_node(root: str, device: Device, honours_nodes: bool) -> None:
    with inroot.parent(root, device.path) as (dir_fd, name):
        if not honours_nodes:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0,
                             dir_fd=dir_fd))
            with inroot.target(root, device.path, is_dir=False) as target:
                sc.mount(device.path, target, None, sc.MS_BIND)
            return
        try:
            os.mknod(name, device.kind | device.mode, os.makedev(device.major, device.minor),
                     dir_fd=dir_fd)
        except FileExistsError:
            return
        node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            made = os.fstat(node)
            if stat.S_IFMT(made.st_mode) != device.kind or (
                    device.kind != stat.S_IFIFO
                    and made.st_rdev != os.makedev(device.major, device.minor)):
                raise OSError(f"device {device.path}: another node took its place")
            os.chmod(f"/proc/self/fd/{node}", device.mode)  # whatever the umask took
            os.chown(f"/proc/self/fd/{node}", device.uid, device.gid)
        finally:
            os.close(node)
