"""The root file system a config asks for: its ``mounts``,
``root.readonly``, ``linux.maskedPaths``, ``linux.readonlyPaths``,
``linux.rootfsPropagation``, ``linux.devices`` (``devices``) and
``linux.mountLabel`` (refused: no SELinux here), read into a :class:`Plan`
and carried out by :func:`setup`.  pycontainer's own front end writes its
containers' mounts into their bundles (``bundle.py``): one executor for
both faces.

Options are read as runc reads them (specconv's parseMountOptions): a
known flag sets or clears an MS_* bit, a propagation word is applied after
the mount, ``tmpcopyup`` copies the image's directory into a new tmpfs,
anything else is the file system's data.  Refused where runc warns or
goes on: a relative destination or bind source (runc joins them to its
working directory; a destination is otherwise only cleaned lexically),
``/`` as a destination, a mount into ``/proc`` but for the few files
lxcfs emulates, and what needs an ID-mapped or ``mount_setattr`` mount
(``idmap``, ``ridmap``, uid/gid mappings, the recursive ``rro``-style
flags).

:func:`setup` runs inside the container's new mount namespace (as its
first process, before anything runs), in runc's order (prepareRoot,
mountToRootfs, createDevices, pivotRoot, readonlyPath, maskPaths,
finalizeRootfs): keep the host's mounts from seeing ours (``/`` made as
the plan's propagation says, the root's parent mount never shared), bind
the root onto itself, regaining set-uid (the union is mounted
``nosuid,nodev`` on the host; the kernel ignores set-uid bits reached from
another namespace) but never device nodes; mount each mount with its
mount point resolved in the root (``inroot``: no symlink or rename leads
one out); make ``/dev``'s nodes unless ``/dev`` is a bind; ``pivot_root``
(never a bare chroot) and detach the old root; write-protect and mask;
remount read-only what asked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import inroot
from .. import syscalls as sc
from . import copyup
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
#: every option honoured (what ``features`` lists as mountOptions); any other
#: option but the refused ones is the file system's data
OPTIONS = frozenset({*FLAGS, *PROPAGATION, "tmpcopyup"})
_NEEDS_SETATTR = {"rro", "rrw", "rnosuid", "rsuid", "rnodev", "rdev", "rnoexec", "rexec",
                  "rnodiratime", "rdiratime", "rrelatime", "rnorelatime", "rnoatime", "ratime",
                  "rstrictatime", "rnostrictatime", "rnosymfollow", "rsymfollow"}
#: what may be mounted under /proc (runc's checkProcMount: lxcfs's files)
PROC_FILES = ("/proc/cpuinfo", "/proc/diskstats", "/proc/meminfo", "/proc/stat", "/proc/swaps",
              "/proc/uptime", "/proc/loadavg", "/proc/slabinfo", "/proc/sys/kernel/ns_last_pid",
              "/proc/sys/crypto/fips_enabled")
#: runc's default when a config names no rootfsPropagation
DEFAULT_PROPAGATION = sc.MS_SLAVE | sc.MS_REC
_HARDENED = sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_NODEV
_KEPT_ON_REMOUNT = ((os.ST_NOSUID, sc.MS_NOSUID), (os.ST_NODEV, sc.MS_NODEV),
                    (os.ST_NOEXEC, sc.MS_NOEXEC))


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
    #: container paths no bind may be led into by the image's symlinks:
    #: where the config mounts kernel file systems (what the runtime mounts
    #: is the runtime's; a bind declared there is the config's own choice)
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


def parse(config: Reader, linux: Reader, read_only_root: bool) -> Plan:
    """Takes ``mounts`` from the whole ``config`` and this module's keys
    from its ``linux`` (the caller, which shares ``linux`` and ``root``
    with other parts, calls their ``done``)."""
    mounts = config.take_objects("mounts", parse_mount)
    masked = tuple(_absolute_items(linux, "maskedPaths"))
    read_only_paths = tuple(_absolute_items(linux, "readonlyPaths"))
    propagation = linux.take("rootfsPropagation", str, "")
    if propagation and propagation not in PROPAGATION:
        raise linux.error("rootfsPropagation",
                          f"{propagation!r}: must be one of {', '.join(PROPAGATION)}")
    linux.refuse("mountLabel", "SELinux labels are not supported")
    devices = dev.with_defaults(linux.take_objects("devices", dev.parse_device))
    return Plan(mounts, devices, masked, read_only_paths, read_only_root,
                PROPAGATION.get(propagation, DEFAULT_PROPAGATION),
                guarded=tuple(sorted({m.destination for m in mounts if not m.is_bind})))


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


def setup(root: str, plan: Plan, cgroup_paths: Mapping[str, str] | None = None,
          before_pivot: Callable[[], None] | None = None, no_pivot: bool = False) -> None:
    """Everything up to a read-only root; the caller is then in it.
    ``cgroup_paths``: the container's cgroup, controller -> directory (v1)
    or ``unified`` -> directory (v2), for a ``cgroup`` mount;
    ``before_pivot``: what runs with everything mounted, just before
    ``pivot_root`` (the createContainer hooks); ``no_pivot``: move the
    root over ``/`` and chroot into it instead, as ``runc --no-pivot`` does
    for roots pivot_root refuses (a ramfs) -- weaker, as runc warns: a
    process with CAP_SYS_CHROOT may climb out of a chroot."""
    root = os.path.realpath(root)
    private_or_slave = plan.propagation & (sc.MS_PRIVATE | sc.MS_SLAVE)
    sc.mount("none", "/", None, plan.propagation)
    _unshare_parent(root, sc.MS_SLAVE if plan.propagation & sc.MS_SLAVE else sc.MS_PRIVATE)
    sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)
    sc.mount("none", root, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_NODEV)
    for mount in plan.mounts:
        _mount(root, plan, mount, cgroup_paths)
    if not any(m.is_bind and m.destination == "/dev" for m in plan.mounts):
        dev.make(root, plan.devices)
    if before_pivot is not None:
        before_pivot()
    os.chdir(root)
    if no_pivot:
        sc.mount(root, "/", None, sc.MS_MOVE)
        os.chroot(".")
    else:
        sc.pivot_root(".", ".")
        sc.umount(".", sc.MNT_DETACH)
    os.chdir("/")
    if not private_or_slave:
        sc.mount("none", "/", None, plan.propagation)
    for path in plan.read_only_paths:
        _read_only(path)
    _mask(plan.masked)
    for mount in plan.mounts:
        if mount.flags & sc.MS_RDONLY and (mount.type == "tmpfs" or mount.destination == "/dev"):
            with inroot.target("/", mount.destination) as target:
                sc.mount("none", target, None,
                         mount.flags | sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)
    if plan.read_only_root:
        sc.mount("none", "/", None, _kept("/") | sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)


def _unshare_parent(path: str, flag: int) -> None:
    """Make the mount ``path`` is on private or slave: pivot_root refuses a
    shared parent, and a bind under a shared one would leak to the host."""
    while True:
        try:
            sc.mount("none", path, None, flag)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL or path == "/":  # not a mount point: go up
                raise
        path = os.path.dirname(path)


def _mount(root: str, plan: Plan, mount: Mount, cgroup_paths: Mapping[str, str] | None) -> None:
    is_dir = not mount.is_bind or os.path.isdir(mount.source)
    if mount.is_bind and not os.path.exists(mount.source):
        raise OSError(f"mount {mount.destination}: source {mount.source} does not exist")
    existed = _exists(root, mount.destination)
    with inroot.target(root, mount.destination, is_dir) as target:
        inside = inroot.inside(root, target)
        _check_target(plan, mount, inside, target)
        data = mount.data
        if mount.type == "tmpfs" and existed:  # a tmpfs keeps the mode of what it covers
            data = ",".join(filter(None, (f"mode={stat.S_IMODE(os.stat(target).st_mode):04o}",
                                          data)))
        if mount.type == "cgroup":
            _mount_cgroup(root, mount, inside, target, cgroup_paths or {})
            return
        if mount.copy_up:
            _tmpfs_copy_up(root, mount, inside, target, data)
        else:
            flags = mount.flags
            if mount.type == "tmpfs" or mount.destination == "/dev":
                flags &= ~sc.MS_RDONLY  # made read-only once filled, at the end
            sc.mount(mount.source or mount.type, target,
                     None if mount.is_bind else mount.type, flags, data or None)
    _after_mount(root, mount, inside)


def _exists(root: str, path: str) -> bool:
    try:
        with inroot.parent(root, path) as (dir_fd, name):
            os.stat(name, dir_fd=dir_fd)
        return True
    except FileNotFoundError:
        return False


def _check_target(plan: Plan, mount: Mount, inside: str, target: str) -> None:
    if inside == "/":
        raise OSError(f"mount target {mount.destination} leads to the root itself")
    if mount.type in ("proc", "sysfs"):  # never through a link (runc's checkProcMount)
        if inside != mount.destination:
            raise OSError(f"{mount.type} goes on the directory {mount.destination} itself, "
                          f"not through a link to {inside}")
        if not os.path.isdir(target):
            raise OSError(f"{mount.type} goes on a directory; {inside} is not one")
    if mount.is_bind and inside != mount.destination \
            and any(inside == p or inside.startswith(p + "/") for p in plan.guarded):
        raise OSError(f"mount target {mount.destination} leads to {inside}, "
                      "which the runtime mounts")
    why = proc_refusal(inside, mount)
    if why:
        raise OSError(f"mount target {mount.destination} leads to {why}")


def _after_mount(root: str, mount: Mount, inside: str) -> None:
    """On the new mount (reached afresh: the old descriptor is under it):
    a bind's own flags, then the propagation asked."""
    with inroot.target(root, inside) as target:
        if mount.is_bind and (mount.flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
                              or mount.cleared):
            sc.mount("none", target, None, mount.flags | sc.MS_BIND | sc.MS_REMOUNT)
        for flag in mount.propagation:
            sc.mount("none", target, None, flag)


def _tmpfs_copy_up(root: str, mount: Mount, inside: str, target: str, data: str) -> None:
    """tmpcopyup: the new tmpfs starts with the directory it covers (read
    through a descriptor opened before the mount hid it)."""
    covered = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sc.mount("tmpfs", target, "tmpfs", mount.flags & ~sc.MS_RDONLY, data or None)
        with inroot.target(root, inside) as fresh:
            top = os.open(fresh, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            copyup.copy_tree(covered, top)
        finally:
            os.close(top)
    finally:
        os.close(covered)


def _mount_cgroup(root: str, mount: Mount, inside: str, target: str,
                  cgroup_paths: Mapping[str, str]) -> None:
    if not cgroup_paths or "unified" in cgroup_paths:
        sc.mount("cgroup", target, "cgroup2", mount.flags, mount.data or None)
        _after_mount(root, mount, inside)
        return
    cgroup_dirs = _hierarchies(cgroup_paths)
    # runc's v1 layout: a tmpfs, the container's own cgroup of each
    # hierarchy bound in it, links for controllers mounted together
    sc.mount("tmpfs", target, "tmpfs", _HARDENED, "mode=755")
    _after_mount(root, Mount(inside, "tmpfs", propagation=mount.propagation), inside)
    for name, directory in cgroup_dirs.items():
        bind = Mount(f"{inside}/{name}", "bind", directory,
                     sc.MS_BIND | sc.MS_REC | mount.flags, propagation=mount.propagation)
        with inroot.target(root, bind.destination) as sub:
            sc.mount(directory, sub, None, bind.flags)
        _after_mount(root, bind, bind.destination)
    for name in (name for name in cgroup_dirs if "," in name):
        with inroot.parent(root, f"{inside}/{name}") as (dir_fd, _):
            for controller in name.split(","):
                with contextlib.suppress(FileExistsError):
                    os.symlink(name, controller, dir_fd=dir_fd)
    if mount.flags & sc.MS_RDONLY:
        with inroot.target(root, inside) as fresh:
            sc.mount("none", fresh, None,
                     _HARDENED | sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)


def _hierarchies(cgroup_paths: Mapping[str, str]) -> dict[str, str]:
    """Each v1 hierarchy's name as the host names its mount (``cpu,cpuacct``)
    -> the container's directory in it."""
    named = {}
    for directory in map(os.path.normpath, cgroup_paths.values()):
        mount_point = directory
        while not os.path.ismount(mount_point) and mount_point != "/":
            mount_point = os.path.dirname(mount_point)
        named[os.path.basename(mount_point)] = directory
    return named


def bind_console(name: str) -> None:
    """Bind the terminal ``name`` (a slave of the container's own devpts)
    onto ``/dev/console``; call in the new root."""
    with inroot.target("/", "/dev/console", is_dir=False) as target:
        sc.mount(name, target, None, sc.MS_BIND)


def _read_only(path: str) -> None:
    """runc's readonlyPath: a recursive bind of ``path`` on itself, its top
    remounted read-only (keeping nosuid, nodev, noexec); missing: skipped."""
    try:
        sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
    except FileNotFoundError:
        return
    sc.mount(path, path, None, _kept(path) | sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)


def _kept(path: str) -> int:
    flags = os.statvfs(path).f_flag
    return sum(ms for st, ms in _KEPT_ON_REMOUNT if flags & st)


def _mask(paths: tuple[str, ...]) -> None:
    """A directory gets an empty read-only tmpfs, anything else /dev/null
    (checked to be it); a missing path is skipped (runc's maskPaths)."""
    if not paths:
        return
    null = os.stat("/dev/null")
    if not stat.S_ISCHR(null.st_mode) or null.st_rdev != os.makedev(1, 3):
        raise OSError("the container's /dev/null is not the null device")
    for path in dict.fromkeys(paths):
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            target = f"/proc/self/fd/{fd}"
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, "nr_blocks=1,nr_inodes=1")
            else:
                sc.mount("/dev/null", target, None, sc.MS_BIND)
        finally:
            os.close(fd)
