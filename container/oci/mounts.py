"""The root file system a config asks for, as plain data: its ``mounts``,
``root.readonly``, ``linux.maskedPaths``, ``linux.readonlyPaths``,
``linux.rootfsPropagation``, ``linux.devices`` (read in ``devices``) and
``linux.mountLabel`` (refused: no SELinux here).  ``root_setup`` carries
out the :class:`Plan`; pycontainer's own front end makes one too
(``rootfs.plan_from_spec``), so both faces share one executor.

Options are read as runc reads them (specconv's parseMountOptions): a
known flag sets or clears an MS_* bit, a propagation word is applied after
the mount, ``tmpcopyup`` copies the image's directory into a new tmpfs,
anything else is the file system's data.  Refused where runc warns or
goes on: a relative destination or bind source (runc joins them to its
working directory), ``/`` as a destination, a mount into ``/proc`` but for
the few files lxcfs emulates, and what needs an ID-mapped or
``mount_setattr`` mount (``idmap``, ``ridmap``, uid/gid mappings, the
recursive ``rro``-style flags).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .. import syscalls as sc
from . import devices as dev
from .reader import ConfigError, Reader

#: option -> (clears it?, the MS_* bits): runc's mountFlags table
FLAGS = {
    "async": (True, sc.MS_SYNCHRONOUS), "atime": (True, sc.MS_NOATIME),
    "bind": (False, sc.MS_BIND), "dev": (True, sc.MS_NODEV),
    "diratime": (True, sc.MS_NODIRATIME), "dirsync": (False, sc.MS_DIRSYNC),
    "exec": (True, sc.MS_NOEXEC), "iversion": (False, sc.MS_I_VERSION),
    "lazytime": (False, sc.MS_LAZYTIME), "loud": (True, sc.MS_SILENT),
    "mand": (False, sc.MS_MANDLOCK), "noatime": (False, sc.MS_NOATIME),
    "nodev": (False, sc.MS_NODEV), "nodiratime": (False, sc.MS_NODIRATIME),
    "noexec": (False, sc.MS_NOEXEC), "noiversion": (True, sc.MS_I_VERSION),
    "nolazytime": (True, sc.MS_LAZYTIME), "nomand": (True, sc.MS_MANDLOCK),
    "norelatime": (True, sc.MS_RELATIME), "nostrictatime": (True, sc.MS_STRICTATIME),
    "nosuid": (False, sc.MS_NOSUID), "nosymfollow": (False, sc.MS_NOSYMFOLLOW),
    "rbind": (False, sc.MS_BIND | sc.MS_REC), "relatime": (False, sc.MS_RELATIME),
    "remount": (False, sc.MS_REMOUNT), "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY), "silent": (False, sc.MS_SILENT),
    "strictatime": (False, sc.MS_STRICTATIME), "suid": (True, sc.MS_NOSUID),
    "sync": (False, sc.MS_SYNCHRONOUS), "symfollow": (True, sc.MS_NOSYMFOLLOW),
    "defaults": (False, 0),
}
PROPAGATION = {
    "rprivate": sc.MS_PRIVATE | sc.MS_REC, "private": sc.MS_PRIVATE,
    "rslave": sc.MS_SLAVE | sc.MS_REC, "slave": sc.MS_SLAVE,
    "rshared": sc.MS_SHARED | sc.MS_REC, "shared": sc.MS_SHARED,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC, "unbindable": sc.MS_UNBINDABLE,
}
_NEEDS_SETATTR = {"rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec",
                  "rnodiratime", "rdiratime", "rrelatime", "rnorelatime", "rnoatime", "ratime",
                  "rstrictatime", "rnostrictatime", "rnosymfollow", "rsymfollow"}
#: what may be mounted under /proc (runc's checkProcMount: lxcfs's files)
PROC_FILES = ("/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
              "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/sys/kernel/ns_last_pid",
              "/proc/sys/crypto/fips_enabled")
#: runc's default when a config names no rootfsPropagation
DEFAULT_PROPAGATION = sc.MS_SLAVE | sc.MS_REC


@dataclass(frozen=True)
class Mount:
    """One mount; ``type`` is ``bind`` for every bind, whatever was asked."""

    destination: str
    type: str
    source: str = ""
    flags: int = 0
    cleared: int = 0                  # flags asked off (rw, suid, ...): a bind is remounted
    propagation: tuple[int, ...] = ()
    data: str = ""
    copy_up: bool = False             # tmpcopyup: the tmpfs starts with what it covers

    @property
    def is_bind(self) -> bool:
        return self.type == "bind"


@dataclass(frozen=True)
class Plan:
    """Everything the root file system setup does, in its order."""

    mounts: tuple[Mount, ...]
    devices: tuple[dev.Device, ...] = dev.DEFAULTS
    masked: tuple[str, ...] = ()
    read_only_paths: tuple[str, ...] = ()
    read_only_root: bool = False
    propagation: int = DEFAULT_PROPAGATION
    #: container paths no bind may lead into after its symlinks (the front
    #: end's volumes: what the runtime mounts is the runtime's)
    guarded: tuple[str, ...] = ()


def parse_mount(reader: Reader) -> Mount:
    """One item of ``mounts``."""
    destination = _absolute(reader, "destination")
    if destination == "/":
        raise reader.error("destination", "cannot mount onto the root itself")
    kind = reader.take("type", str, "")
    source = reader.take("source", str, "")
    options = reader.take_list("options", str)
    for key in ("uidMappings", "gidMappings"):
        reader.refuse(key, "ID-mapped mounts are not supported")
    reader.done()
    flags = cleared = 0
    propagation, data, copy_up = [], [], False
    for option in options:
        if option in FLAGS:
            clears, bits = FLAGS[option]
            flags, cleared = (flags & ~bits, cleared | bits) if clears else \
                (flags | bits, cleared & ~bits)
        elif option in PROPAGATION:
            propagation.append(PROPAGATION[option])
        elif option == "tmpcopyup":
            copy_up = True
        elif option in ("idmap", "ridmap"):
            raise reader.error("options", f"{option}: ID-mapped mounts are not supported")
        elif option in _NEEDS_SETATTR:
            raise reader.error("options", f"{option}: recursive mount attributes are not "
                                          "supported")
        else:
            data.append(option)
    if flags & sc.MS_BIND:
        kind = "bind"
        if not posixpath.isabs(source):
            raise reader.error("source", f"{source!r}: a bind source must be an absolute path")
    elif kind == "bind":
        raise reader.error("options", "a bind mount needs 'bind' or 'rbind'")
    elif not kind:
        raise reader.error("type", "required")
    if "\0" in source + kind:
        raise reader.error("source", "contains a null byte")
    if copy_up and kind != "tmpfs":
        raise reader.error("options", "tmpcopyup is for tmpfs mounts only")
    mount = Mount(destination, kind, source, flags, cleared, tuple(propagation), ",".join(data),
                  copy_up)
    why = proc_refusal(destination, mount)
    if why:
        raise reader.error("destination", why)
    return mount


def proc_refusal(path: str, mount: Mount) -> str | None:
    """Why ``mount`` may not go at the container path ``path`` (checked on
    the config's destination, then again where its symlinks lead): over
    /proc only a procfs, in it only lxcfs's files (runc's
    checkProcMount)."""
    if path == "/proc":
        return None if mount.type == "proc" or mount.is_bind else \
            f"{path}: only a proc file system may be mounted there"
    if path.startswith("/proc/") and path not in PROC_FILES:
        return f"{path}: cannot mount inside /proc"
    return None


def parse_plan(config: Reader, root: Reader | None, linux: Reader | None) -> Plan:
    """Takes ``mounts`` from the whole ``config``, ``readonly`` from its
    ``root`` and this module's keys from its ``linux`` (the caller, which
    shares those two with other parts, calls their ``done``)."""
    mounts = config.take_objects("mounts", parse_mount)
    read_only = root.take("readonly", bool, False) if root is not None else False
    if linux is None:
        return Plan(mounts, read_only_root=read_only)
    masked = tuple(_absolute_items(linux, "maskedPaths"))
    read_only_paths = tuple(_absolute_items(linux, "readonlyPaths"))
    propagation = linux.take("rootfsPropagation", str, "")
    if propagation and propagation not in PROPAGATION:
        raise linux.error("rootfsPropagation",
                          f"{propagation!r}: must be one of {', '.join(PROPAGATION)}")
    linux.refuse("mountLabel", "SELinux labels are not supported")
    devices = dev.with_defaults(linux.take_objects("devices", dev.parse_device))
    return Plan(mounts, devices, masked, read_only_paths, read_only,
                PROPAGATION.get(propagation, DEFAULT_PROPAGATION))


def _absolute(reader: Reader, key: str) -> str:
    path = reader.take(key, str)
    if not posixpath.isabs(path):
        raise reader.error(key, f"{path!r} must be an absolute path")
    if "\0" in path:
        raise reader.error(key, "contains a null byte")
    return "/" + posixpath.normpath(path).lstrip("/")


def _absolute_items(reader: Reader, key: str) -> list[str]:
    items = reader.take_list(key, str)
    for index, path in enumerate(items):
        if not posixpath.isabs(path):
            raise ConfigError(f"{reader.path(key)}[{index}]: {path!r} must be an absolute path")
    return ["/" + posixpath.normpath(path).lstrip("/") for path in items]
